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
//!   rounds only cost bytes);
//! - the delta crossed the link in at most [`LATENCY_SHARE`] of a round
//!   trip (`Stop::Latency`). Every round costs at least a round trip, in
//!   which the workload writes about as much again: a delta whose transfer
//!   is a sliver of the round trip is as small as more rounds can make it
//!   (the next is at most 1 + `LATENCY_SHARE` times as large), so across
//!   sites pre-copy stops there instead of spending three more round trips
//!   finding out that it stalled. On loopback that is a delta of a few
//!   hundred KiB, about what the first rule allows anyway.

/// A delta must shrink below this share of the previous one to count as
/// converging.
pub(crate) const CONVERGE: f64 = 0.9;
/// Rounds in a row without converging before pre-copy stops.
pub(crate) const STALLED_ROUNDS: u32 = 3;
/// A delta that crossed the link in at most this share of a round trip
/// is as small as pre-copy can make it.
pub(crate) const LATENCY_SHARE: f64 = 0.1;

/// What a round's delta cost on the link, as the source measured it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Link {
    /// The delta's bytes on the wire over the link's measured rate.
    pub(crate) transfer: std::time::Duration,
    /// The shortest request to the target so far: at least a round trip.
    pub(crate) round_trip: std::time::Duration,
}

/// Why pre-copy stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The last delta was small enough.
    Small,
    /// The round limit was reached.
    Rounds,
    /// Deltas stopped shrinking.
    Stalled,
    /// The delta crossed the link in a sliver of a round trip.
    Latency,
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

    /// A pre-copy round sent a delta of `bytes`, which cost `link` on the
    /// link: stop now, or go on.
    pub(crate) fn after_round(&mut self, bytes: u64, link: Link) -> Option<Stop> {
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
        } else if !link.round_trip.is_zero()
            && link.transfer.as_secs_f64() <= LATENCY_SHARE * link.round_trip.as_secs_f64()
        {
            Some(Stop::Latency)
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
        .find_map(|(i, &d)| c.after_round(d, Link::default()).map(|s| (i + 1, s)))
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
                    Stop::Latency => prop_assert!(false, "no round trip was given"),
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

    /// Across sites (50 ms round trips), a delta that crosses in 3 ms ends
    /// pre-copy; the same delta over a round trip of 1 ms, or one that
    /// takes 20 ms to cross, does not.
    #[test]
    fn a_delta_that_crosses_in_a_sliver_of_a_round_trip_ends_pre_copy() {
        let ms = std::time::Duration::from_millis;
        let link = |transfer, round_trip| Link {
            transfer: ms(transfer),
            round_trip: ms(round_trip),
        };
        let mut c = Convergence::new(64 << 20, 30, 256 << 10);
        assert_eq!(c.after_round(6 << 20, link(20, 50)), None);
        assert_eq!(c.after_round(600 << 10, link(3, 50)), Some(Stop::Latency));
        let mut c = Convergence::new(64 << 20, 30, 256 << 10);
        assert_eq!(c.after_round(600 << 10, link(3, 1)), None);
        // The other rules come first.
        assert_eq!(c.after_round(100 << 10, link(1, 50)), Some(Stop::Small));
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
