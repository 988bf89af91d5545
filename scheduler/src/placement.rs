//! Placement: which hosts may run a workload, and in what order of preference.
//!
//! Pure code, in the shape of Nomad's feasibility checks and ranking: every
//! host is either *rejected* with a reason an operator can read
//! (`roam describe` shows them) or *ranked* with a score. Deterministic: the
//! same hosts and request give the same answer whatever their order, ties
//! broken by host id.
//!
//! Filters, in order (the first failing one is the reason):
//! 1. the host is alive (heartbeats);
//! 2. not cordoned;
//! 3. its labels meet the workload's selector;
//! 4. it has the memory and a free instance slot;
//! 5. it does not already run a replica of the workload (anti-affinity).
//!
//! Score: spread first — hosts whose value of the spread label (for example
//! `site`) runs fewer replicas of this workload rank higher — then the share
//! of memory left free after placing (least-allocated first).

use std::collections::BTreeMap;
use std::fmt;

use crate::selector::{Labels, Selector};

/// What placement needs to know about a host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostView {
    /// Host id.
    pub id: String,
    /// Labels (trusted ones are bound to the host's join token), shared with
    /// the registry so a view costs no copy of them.
    pub labels: std::sync::Arc<Labels>,
    /// Whether heartbeats are current.
    pub alive: bool,
    /// Cordoned hosts take no new workloads.
    pub cordoned: bool,
    /// Memory for workloads, bytes.
    pub memory_total: u64,
    /// Memory reserved by the workloads placed there, bytes.
    pub memory_used: u64,
    /// Instance slots.
    pub slots_total: u32,
    /// Slots in use.
    pub slots_used: u32,
}

/// What a workload asks of a host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlacementRequest {
    /// Workload name.
    pub workload: String,
    /// Hosts must match it.
    pub selector: Selector,
    /// Memory to reserve, bytes.
    pub memory: u64,
    /// Label to spread replicas across (for example `site`).
    pub spread_by: Option<String>,
    /// Hosts that already run a replica of this workload.
    pub placed_on: Vec<String>,
}

/// Why a host cannot take the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Missed its heartbeats.
    Down,
    /// Cordoned by an operator.
    Cordoned,
    /// A selector requirement fails.
    Selector {
        /// The requirement, as written.
        requirement: String,
        /// The label key.
        key: String,
        /// The host's value of that label, if any.
        value: Option<String>,
    },
    /// Not enough free memory.
    Memory {
        /// Bytes needed.
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// Every instance slot is taken.
    NoSlot,
    /// Already runs a replica of this workload.
    AlreadyRunsReplica,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Down => f.write_str("host is down (missed heartbeats)"),
            Rejection::Cordoned => f.write_str("host is cordoned"),
            Rejection::Selector {
                requirement,
                key,
                value: Some(v),
            } => write!(
                f,
                "label `{key}` is `{v}`, the selector needs `{requirement}`"
            ),
            Rejection::Selector {
                requirement, key, ..
            } => write!(
                f,
                "host has no label `{key}`, the selector needs `{requirement}`"
            ),
            Rejection::Memory { needed, free } => {
                write!(f, "needs {needed} bytes of memory, {free} free")
            }
            Rejection::NoSlot => f.write_str("no free instance slot"),
            Rejection::AlreadyRunsReplica => f.write_str("already runs a replica of this workload"),
        }
    }
}

/// A feasible host and its score (higher is better).
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Host id.
    pub host: String,
    /// Score.
    pub score: f64,
}

/// The outcome: feasible hosts best first, and why every other host was rejected.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    /// Feasible hosts, best first.
    pub ranked: Vec<Candidate>,
    /// Rejected hosts with their reasons, by host id.
    pub rejected: Vec<(String, Rejection)>,
}

impl Placement {
    /// The best host, if any.
    pub fn best(&self) -> Option<&str> {
        self.ranked.first().map(|c| c.host.as_str())
    }
}

/// Why `host` cannot take the workload, or `None` when it can.
pub fn check(request: &PlacementRequest, host: &HostView) -> Option<Rejection> {
    if !host.alive {
        return Some(Rejection::Down);
    }
    if host.cordoned {
        return Some(Rejection::Cordoned);
    }
    if let Some(r) = request.selector.first_failure(&host.labels) {
        return Some(Rejection::Selector {
            requirement: r.to_string(),
            key: r.key().to_string(),
            value: host.labels.get(r.key()).cloned(),
        });
    }
    lacks_room(request, host)
}

/// The capacity part of [`check`] (allocates nothing).
fn lacks_room(request: &PlacementRequest, host: &HostView) -> Option<Rejection> {
    let free = host.memory_total.saturating_sub(host.memory_used);
    if request.memory > free {
        return Some(Rejection::Memory {
            needed: request.memory,
            free,
        });
    }
    if host.slots_used >= host.slots_total {
        return Some(Rejection::NoSlot);
    }
    if request.placed_on.contains(&host.id) {
        return Some(Rejection::AlreadyRunsReplica);
    }
    None
}

/// Whether `check` would accept the host, without building a reason.
fn fits(request: &PlacementRequest, host: &HostView) -> bool {
    host.alive
        && !host.cordoned
        && request.selector.first_failure(&host.labels).is_none()
        && lacks_room(request, host).is_none()
}

/// Replicas per value of the spread label, over the hosts already used.
fn spread_counts<'a>(
    request: &PlacementRequest,
    hosts: &'a [HostView],
) -> BTreeMap<Option<&'a str>, usize> {
    let mut per_value: BTreeMap<Option<&str>, usize> = BTreeMap::new();
    if let Some(key) = &request.spread_by {
        for host in hosts.iter().filter(|h| request.placed_on.contains(&h.id)) {
            *per_value
                .entry(host.labels.get(key).map(String::as_str))
                .or_default() += 1;
        }
    }
    per_value
}

/// A feasible host's score: fewest replicas on its spread value first, then
/// the most memory left free.
fn score(
    request: &PlacementRequest,
    host: &HostView,
    per_value: &BTreeMap<Option<&str>, usize>,
) -> f64 {
    let spread = match &request.spread_by {
        Some(key) => {
            let n = per_value
                .get(&host.labels.get(key).map(String::as_str))
                .copied()
                .unwrap_or(0);
            1.0 / (1.0 + n as f64)
        }
        None => 1.0,
    };
    let free_after = host
        .memory_total
        .saturating_sub(host.memory_used + request.memory) as f64;
    let free_share = if host.memory_total == 0 {
        0.0
    } else {
        free_after / host.memory_total as f64
    };
    spread * 10.0 + free_share
}

/// Rank every host for `request`.
pub fn place(request: &PlacementRequest, hosts: &[HostView]) -> Placement {
    let per_value = spread_counts(request, hosts);
    let mut placement = Placement::default();
    for host in hosts {
        match check(request, host) {
            Some(reason) => placement.rejected.push((host.id.clone(), reason)),
            None => placement.ranked.push(Candidate {
                host: host.id.clone(),
                score: score(request, host, &per_value),
            }),
        }
    }
    placement.ranked.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.host.cmp(&b.host))
    });
    placement.rejected.sort_by(|a, b| a.0.cmp(&b.0));
    placement
}

/// Feasible hosts a decision scores at most: beyond this, the best of a
/// sample is as good as the best of all for spreading and packing, and a
/// decision stays cheap at tens of thousands of hosts (kube-scheduler's
/// `percentageOfNodesToScore`, Nomad's limit iterator).
pub const SCORE_LIMIT: usize = 64;

/// The host to place `request` on, as an index into `hosts`: the best
/// scored of the first [`SCORE_LIMIT`] feasible hosts met on a walk over
/// all hosts whose start and stride depend on the workload (so different
/// workloads look at different hosts, and the same request always gets the
/// same answer). With
/// at most `SCORE_LIMIT` feasible hosts this is exactly the host [`place`]
/// ranks first. One pass, no allocation per host: the reconciler's hot path.
pub fn best(request: &PlacementRequest, hosts: &[HostView]) -> Option<usize> {
    walk(request, hosts, hosts.len(), |k| k, true)
}

/// Indices of the hosts that are alive, not cordoned and match `selector`:
/// what only changes between reconcile rounds, computed once per round and
/// selector.
pub fn eligible(selector: &Selector, hosts: &[HostView]) -> Vec<usize> {
    hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| h.alive && !h.cordoned && selector.first_failure(&h.labels).is_none())
        .map(|(i, _)| i)
        .collect()
}

/// [`best`] over `candidates`, the [`eligible`] hosts for the request's
/// selector: only their room is checked. A narrow selector (100 fitting
/// hosts of 10,000) no longer walks most of the fleet for every decision.
pub fn best_among(
    request: &PlacementRequest,
    hosts: &[HostView],
    candidates: &[usize],
) -> Option<usize> {
    walk(request, hosts, candidates.len(), |k| candidates[k], false)
}

/// Visit `n` hosts (`index` maps a position to a host) in the request's
/// strided order and return the best of the first `SCORE_LIMIT` that fit;
/// `check_labels` says whether liveness, cordons and the selector are still
/// to be checked.
fn walk(
    request: &PlacementRequest,
    hosts: &[HostView],
    n: usize,
    index: impl Fn(usize) -> usize,
    check_labels: bool,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let per_value = spread_counts(request, hosts);
    // Visit every host once in an order spread over the whole list (a start
    // and a stride coprime with its length, both from the request), so the
    // sample is not always the first feasible hosts after a cluster of
    // unfit ones.
    let seed = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        request.workload.hash(&mut h);
        request.placed_on.len().hash(&mut h);
        h.finish()
    };
    let start = (seed % n as u64) as usize;
    let mut stride = ((seed >> 32) % n as u64) as usize | 1;
    while gcd(stride, n) != 1 {
        stride += 1;
    }
    let mut best: Option<(usize, f64)> = None;
    let mut scored = 0;
    for k in 0..n {
        let i = index((start + k * stride) % n);
        let host = &hosts[i];
        let fit = if check_labels {
            fits(request, host)
        } else {
            lacks_room(request, host).is_none()
        };
        if !fit {
            continue;
        }
        let s = score(request, host, &per_value);
        let better = match best {
            None => true,
            Some((j, top)) => s > top || (s == top && host.id < hosts[j].id),
        };
        if better {
            best = Some((i, s));
        }
        scored += 1;
        if scored == SCORE_LIMIT {
            break;
        }
    }
    best.map(|(i, _)| i)
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn host(id: &str, site: &str, jurisdiction: &str) -> HostView {
        HostView {
            id: id.into(),
            labels: std::sync::Arc::new(
                [("site", site), ("jurisdiction", jurisdiction)]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            alive: true,
            cordoned: false,
            memory_total: 1 << 30,
            memory_used: 0,
            slots_total: 10,
            slots_used: 0,
        }
    }

    #[test]
    fn eu_workload_never_lands_outside_the_eu_and_says_why() {
        let hosts = vec![
            host("a", "eu-west-1", "EU"),
            host("b", "us-east-1", "US"),
            host("c", "eu-central-1", "EU"),
        ];
        let req = PlacementRequest {
            workload: "w".into(),
            selector: Selector::parse("jurisdiction=EU").unwrap(),
            memory: 1 << 20,
            ..Default::default()
        };
        let p = place(&req, &hosts);
        let ranked: Vec<&str> = p.ranked.iter().map(|c| c.host.as_str()).collect();
        assert_eq!(ranked, vec!["a", "c"]);
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(
            p.rejected[0].1.to_string(),
            "label `jurisdiction` is `US`, the selector needs `jurisdiction=EU`"
        );
    }

    #[test]
    fn replicas_spread_across_sites() {
        let hosts = vec![
            host("a1", "s1", "EU"),
            host("a2", "s1", "EU"),
            host("b1", "s2", "EU"),
        ];
        let req = PlacementRequest {
            workload: "w".into(),
            spread_by: Some("site".into()),
            placed_on: vec!["a1".into()],
            ..Default::default()
        };
        let p = place(&req, &hosts);
        assert_eq!(p.best(), Some("b1"));
        assert!(
            p.rejected
                .iter()
                .any(|(h, r)| h == "a1" && *r == Rejection::AlreadyRunsReplica)
        );
    }

    #[test]
    fn capacity_cordon_and_liveness_are_filters() {
        let mut full = host("full", "s", "EU");
        full.memory_used = full.memory_total;
        let mut cordoned = host("cordoned", "s", "EU");
        cordoned.cordoned = true;
        let mut down = host("down", "s", "EU");
        down.alive = false;
        let mut busy = host("busy", "s", "EU");
        busy.slots_used = busy.slots_total;
        let req = PlacementRequest {
            memory: 1,
            ..Default::default()
        };
        let p = place(&req, &[full, cordoned, down, busy]);
        assert!(p.ranked.is_empty());
        let reasons: Vec<String> = p
            .rejected
            .iter()
            .map(|(h, r)| format!("{h}: {r}"))
            .collect();
        assert_eq!(
            reasons,
            vec![
                "busy: no free instance slot",
                "cordoned: host is cordoned",
                "down: host is down (missed heartbeats)",
                "full: needs 1 bytes of memory, 0 free",
            ]
        );
    }

    fn arb_host() -> impl Strategy<Value = HostView> {
        (
            "[a-f][0-9]",
            prop::sample::select(vec!["s1", "s2", "s3"]),
            prop::sample::select(vec!["EU", "US", "CH"]),
            any::<bool>(),
            any::<bool>(),
            0u64..8,
            0u32..4,
        )
            .prop_map(|(id, site, j, alive, cordoned, used, slots)| HostView {
                id,
                labels: std::sync::Arc::new(
                    [("site", site), ("jurisdiction", j)]
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                alive,
                cordoned,
                memory_total: 8,
                memory_used: used,
                slots_total: 3,
                slots_used: slots,
            })
    }

    proptest! {
        #[test]
        fn placement_never_returns_a_host_that_breaks_a_constraint(
            mut hosts in prop::collection::vec(arb_host(), 0..20),
            selector in prop::sample::select(vec!["", "jurisdiction=EU", "jurisdiction in (EU,CH)", "site!=s2", "jurisdiction notin (US)"]),
            memory in 0u64..6,
            spread in any::<bool>(),
        ) {
            hosts.sort_by(|a, b| a.id.cmp(&b.id));
            hosts.dedup_by(|a, b| a.id == b.id);
            let req = PlacementRequest {
                workload: "w".into(),
                selector: Selector::parse(selector).unwrap(),
                memory,
                spread_by: spread.then(|| "site".to_string()),
                placed_on: hosts.iter().take(2).map(|h| h.id.clone()).collect(),
            };
            let p = place(&req, &hosts);
            for c in &p.ranked {
                let h = hosts.iter().find(|h| h.id == c.host).unwrap();
                prop_assert!(h.alive && !h.cordoned);
                prop_assert!(req.selector.matches(&h.labels));
                prop_assert!(h.memory_total - h.memory_used >= memory);
                prop_assert!(h.slots_used < h.slots_total);
                prop_assert!(!req.placed_on.contains(&h.id));
            }
            prop_assert_eq!(p.ranked.len() + p.rejected.len(), hosts.len());
            // Deterministic whatever the order of hosts.
            let mut reversed = hosts.clone();
            reversed.reverse();
            prop_assert_eq!(place(&req, &reversed), p.clone());
            // With few hosts the reconciler's sampled choice is the ranking's first.
            prop_assert_eq!(best(&req, &hosts).map(|i| hosts[i].id.as_str()), p.best());
            prop_assert_eq!(best(&req, &reversed).map(|i| reversed[i].id.as_str()), p.best());
            // And so is the choice among the round's eligible hosts.
            let candidates = eligible(&req.selector, &hosts);
            prop_assert_eq!(
                best_among(&req, &hosts, &candidates).map(|i| hosts[i].id.as_str()),
                p.best()
            );
        }
    }
}
