//! When pre-copy stops: a pure rule over the sequence of delta sizes, in
//! the manner of `roam-scheduler`'s `reconcile.rs`, tested alone.
//!
//! After round 0 (the full copy), the source captures and sends a delta
//! per round while the workload runs. It stops — and freezes for the last
//! delta — as soon as one of these holds after a round:
//! - the delta was at most `max_final_bytes` (the last one will be small:
//!   short downtime);
//! - `max_rounds` rounds were sent (a bound whatever the workload does);
//! - [`STALLED_ROUNDS`] rounds in a row did not shrink the delta below
//!   [`CONVERGE`] of the one before (it writes as fast as we send: more
//!   rounds only cost bytes).

/// A delta must shrink below this share of the previous one to count as
/// converging.
pub(crate) const CONVERGE: f64 = 0.9;
/// Rounds in a row without converging before pre-copy stops.
pub(crate) const STALLED_ROUNDS: u32 = 3;

/// Why pre-copy stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The last delta was small enough.
    Small,
    /// The round limit was reached.
    Rounds,
    /// Deltas stopped shrinking.
    Stalled,
}

/// The state of the stop rule between rounds.
#[derive(Clone, Debug)]
pub(crate) struct Convergence {
    max_rounds: u32,
    max_final_bytes: u64,
    round: u32,
    previous: u64,
    stalled: u32,
}

impl Convergence {
    /// After round 0 sent `full` bytes.
    pub(crate) fn new(full: u64, max_rounds: u32, max_final_bytes: u64) -> Convergence {
        Convergence {
            max_rounds,
            max_final_bytes,
            round: 0,
            previous: full,
            stalled: 0,
        }
    }

    /// A pre-copy round sent a delta of `bytes`: stop now, or go on.
    pub(crate) fn after_round(&mut self, bytes: u64) -> Option<Stop> {
        self.round += 1;
        if (bytes as f64) < self.previous as f64 * CONVERGE {
            self.stalled = 0;
        } else {
            self.stalled += 1;
        }
        self.previous = bytes;
        if bytes <= self.max_final_bytes {
            Some(Stop::Small)
        } else if self.round >= self.max_rounds {
            Some(Stop::Rounds)
        } else if self.stalled >= STALLED_ROUNDS {
            Some(Stop::Stalled)
        } else {
            None
        }
    }
}

/// The round after which pre-copy stops, and why, for deltas of `deltas`
/// bytes after a full copy of `full` (`None` if it would go on).
#[cfg(test)]
fn stops(full: u64, deltas: &[u64], max_rounds: u32, max_final: u64) -> Option<(usize, Stop)> {
    let mut c = Convergence::new(full, max_rounds, max_final);
    deltas
        .iter()
        .enumerate()
        .find_map(|(i, &d)| c.after_round(d).map(|s| (i + 1, s)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Pre-copy always ends within `max_rounds` rounds, whatever the
        /// workload writes.
        #[test]
        fn precopy_never_exceeds_max_rounds(
            full in 0u64..1 << 30,
            deltas in proptest::collection::vec(0u64..1 << 30, 0..64),
            max_rounds in 1u32..40,
            max_final in 0u64..1 << 20,
        ) {
            let n = deltas.len();
            match stops(full, &deltas, max_rounds, max_final) {
                Some((round, _)) => prop_assert!(round <= max_rounds as usize),
                None => prop_assert!(n < max_rounds as usize),
            }
        }

        /// It stops at the first delta that is small enough, and never
        /// before a rule holds.
        #[test]
        fn precopy_stops_exactly_when_a_rule_holds(
            full in 0u64..1 << 30,
            deltas in proptest::collection::vec(0u64..1 << 30, 1..40),
            max_rounds in 1u32..40,
            max_final in 0u64..1 << 20,
        ) {
            if let Some((round, why)) = stops(full, &deltas, max_rounds, max_final) {
                let last = deltas[round - 1];
                match why {
                    Stop::Small => prop_assert!(last <= max_final),
                    Stop::Rounds => prop_assert!(last > max_final && round == max_rounds as usize),
                    Stop::Stalled => {
                        prop_assert!(round >= STALLED_ROUNDS as usize);
                        let mut prev = if round > STALLED_ROUNDS as usize {
                            deltas[round - 1 - STALLED_ROUNDS as usize]
                        } else {
                            full
                        };
                        for &d in &deltas[round - STALLED_ROUNDS as usize..round] {
                            prop_assert!(d as f64 >= prev as f64 * CONVERGE);
                            prev = d;
                        }
                    }
                }
                // No earlier round met a rule.
                for r in 1..round {
                    prop_assert!(stops(full, &deltas[..r], max_rounds, max_final).is_none());
                }
            }
        }

        /// Deltas that keep shrinking by more than 10% and stay large run
        /// until the round limit.
        #[test]
        fn converging_large_deltas_run_to_the_limit(max_rounds in 1u32..20) {
            let mut deltas = Vec::new();
            let mut d = 1u64 << 40;
            for _ in 0..max_rounds {
                d = d * 8 / 10;
                deltas.push(d);
            }
            prop_assert_eq!(
                stops(1 << 41, &deltas, max_rounds, 1 << 20),
                Some((max_rounds as usize, Stop::Rounds))
            );
        }
    }

    #[test]
    fn three_rounds_that_do_not_shrink_stop_pre_copy() {
        assert_eq!(
            stops(1000, &[950, 900, 899, 10], 30, 0),
            Some((3, Stop::Stalled))
        );
        assert_eq!(stops(1000, &[800, 100, 5], 30, 10), Some((3, Stop::Small)));
        assert_eq!(stops(1000, &[800, 700, 600], 30, 10), None);
    }
}
