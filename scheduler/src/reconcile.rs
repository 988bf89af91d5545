//! The reconciler: compare desired state with what runs, emit commands.
//!
//! Pure, like wadm's `Scaler::reconcile`: it returns [`Command`]s and leaves
//! performing them to the caller, so every decision is testable without a
//! cluster. A replica on a host that is down counts as lost and is placed
//! again elsewhere — only on a host that meets the workload's rules; when no
//! host does, the workload is reported [`Unplaceable`] with every host's
//! reason, never placed on a host that breaks a rule.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::placement::{self, HostView, PlacementRequest, Rejection};
use crate::selector::Selector;

/// What the operator asked for, per workload, as the reconciler reads it:
/// the fields of a `roam_proto::WorkloadSpec` that placement needs, with
/// its selector parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Workload name.
    pub name: String,
    /// Replicas wanted.
    pub replicas: u32,
    /// Hosts must match it.
    pub selector: Selector,
    /// Memory per replica, bytes.
    pub memory: u64,
    /// Label to spread replicas across.
    pub spread_by: Option<String>,
}

/// A replica placed on a host: it runs there (or ran, if its host is down).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// Workload name.
    pub workload: String,
    /// Host it runs on.
    pub host: String,
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Start a replica of `workload` on `host`.
    Start {
        /// Workload name.
        workload: String,
        /// Target host.
        host: String,
    },
    /// Stop the replica of `workload` on `host`.
    Stop {
        /// Workload name.
        workload: String,
        /// Host it runs on.
        host: String,
    },
    /// Move the replica of `workload` off `host`, which no longer meets the
    /// workload's rules: live to a host that does, else stopped (and
    /// started where the rules hold). It counts as placed meanwhile.
    Move {
        /// Workload name.
        workload: String,
        /// Host it runs on.
        host: String,
    },
}

/// A workload short of replicas because no host can take one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unplaceable {
    /// Workload name.
    pub workload: String,
    /// Replicas that could not be placed.
    pub missing: u32,
    /// Why each host was rejected.
    pub reasons: Vec<(String, Rejection)>,
}

/// The outcome of one reconciliation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Commands in order: stops first, then starts.
    pub commands: Vec<Command>,
    /// Workloads that cannot get all their replicas.
    pub unplaceable: Vec<Unplaceable>,
}

/// Compare `desired` with `running` on `hosts`.
pub fn reconcile(desired: &[Desired], running: &[Replica], hosts: &[HostView]) -> Plan {
    let mut hosts: Vec<HostView> = hosts.to_vec();
    let alive: HashSet<&str> = hosts
        .iter()
        .filter(|h| h.alive)
        .map(|h| h.id.as_str())
        .collect();
    let mut plan = Plan::default();
    let specs: BTreeMap<&str, &Desired> = desired.iter().map(|s| (s.name.as_str(), s)).collect();

    let labels: HashMap<&str, &crate::selector::Labels> = hosts
        .iter()
        .map(|h| (h.id.as_str(), h.labels.as_ref()))
        .collect();
    // Live replicas by workload; replicas of workloads nobody wants any more
    // are stopped; replicas on hosts that no longer meet their workload's
    // rules (its selector changed, or the host's labels did) are moved
    // where the rules hold (counted as placed until then).
    let mut live_by_workload: HashMap<&str, Vec<String>> = HashMap::new();
    let mut breaking: HashSet<(&str, &str)> = HashSet::new();
    for r in running {
        if !alive.contains(r.host.as_str()) {
            continue;
        }
        let Some(spec) = specs.get(r.workload.as_str()) else {
            plan.commands.push(Command::Stop {
                workload: r.workload.clone(),
                host: r.host.clone(),
            });
            continue;
        };
        let breaks_rules = labels
            .get(r.host.as_str())
            .is_some_and(|l| !spec.selector.matches(l));
        if breaks_rules {
            breaking.insert((r.workload.as_str(), r.host.as_str()));
        }
        live_by_workload
            .entry(r.workload.as_str())
            .or_default()
            .push(r.host.clone());
    }

    let mut starts = Vec::new();
    // Hosts that are alive, not cordoned and match, per selector: fixed for
    // the round (only room changes as replicas are placed).
    let mut eligible: HashMap<String, Vec<usize>> = HashMap::new();
    for spec in specs.values() {
        let mut live = live_by_workload
            .remove(spec.name.as_str())
            .unwrap_or_default();
        let breaks = |host: &str| breaking.contains(&(spec.name.as_str(), host));
        // Those that break the rules last, so they are the first extras.
        live.sort_by(|a, b| (breaks(a), a).cmp(&(breaks(b), b)));
        live.dedup();
        let wanted = spec.replicas as usize;
        // Too many: stop the extras, rule breakers, then highest host id
        // first.
        while live.len() > wanted {
            if let Some(host) = live.pop() {
                plan.commands.push(Command::Stop {
                    workload: spec.name.clone(),
                    host,
                });
            }
        }
        for host in live.iter().filter(|h| breaks(h)) {
            plan.commands.push(Command::Move {
                workload: spec.name.clone(),
                host: host.clone(),
            });
        }
        // Too few: place one at a time, accounting for what was just placed.
        while live.len() < wanted {
            let request = PlacementRequest {
                workload: spec.name.clone(),
                selector: spec.selector.clone(),
                memory: spec.memory,
                spread_by: spec.spread_by.clone(),
                placed_on: live.clone(),
            };
            let candidates = eligible
                .entry(spec.selector.to_string())
                .or_insert_with(|| placement::eligible(&spec.selector, &hosts));
            let Some(best) = placement::best_among(&request, &hosts, candidates) else {
                // Only now work out every host's reason, for the operator.
                plan.unplaceable.push(Unplaceable {
                    workload: spec.name.clone(),
                    missing: (wanted - live.len()) as u32,
                    reasons: placement::place(&request, &hosts).rejected,
                });
                break;
            };
            let host = &mut hosts[best];
            host.memory_used += spec.memory;
            host.slots_used += 1;
            starts.push(Command::Start {
                workload: spec.name.clone(),
                host: host.id.clone(),
            });
            live.push(host.id.clone());
        }
    }
    plan.commands.extend(starts);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, jurisdiction: &str, alive: bool) -> HostView {
        HostView {
            id: id.into(),
            labels: std::sync::Arc::new(
                [("jurisdiction".to_string(), jurisdiction.to_string())].into(),
            ),
            alive,
            cordoned: false,
            memory_total: 100,
            memory_used: 0,
            slots_total: 10,
            slots_used: 0,
        }
    }

    fn spec(name: &str, replicas: u32, selector: &str) -> Desired {
        Desired {
            name: name.into(),
            replicas,
            selector: Selector::parse(selector).unwrap(),
            memory: 10,
            spread_by: None,
        }
    }

    #[test]
    fn lost_replica_is_placed_again_on_an_eligible_host_only() {
        let hosts = vec![
            host("eu-1", "EU", false),
            host("eu-2", "EU", true),
            host("us-1", "US", true),
        ];
        let running = vec![Replica {
            workload: "w".into(),
            host: "eu-1".into(),
        }];
        let plan = reconcile(&[spec("w", 1, "jurisdiction=EU")], &running, &hosts);
        assert_eq!(
            plan.commands,
            vec![Command::Start {
                workload: "w".into(),
                host: "eu-2".into()
            }]
        );
    }

    #[test]
    fn no_eligible_host_means_unplaceable_with_reasons_never_a_rule_break() {
        let hosts = vec![host("eu-1", "EU", false), host("us-1", "US", true)];
        let plan = reconcile(&[spec("w", 1, "jurisdiction=EU")], &[], &hosts);
        assert!(plan.commands.is_empty());
        assert_eq!(plan.unplaceable.len(), 1);
        assert_eq!(plan.unplaceable[0].reasons.len(), 2);
    }

    #[test]
    fn scales_up_and_down_and_stops_what_is_not_wanted() {
        let hosts = vec![
            host("a", "EU", true),
            host("b", "EU", true),
            host("c", "EU", true),
        ];
        let running = vec![
            Replica {
                workload: "w".into(),
                host: "a".into(),
            },
            Replica {
                workload: "w".into(),
                host: "c".into(),
            },
            Replica {
                workload: "old".into(),
                host: "b".into(),
            },
        ];
        let plan = reconcile(&[spec("w", 1, "")], &running, &hosts);
        assert_eq!(
            plan.commands,
            vec![
                Command::Stop {
                    workload: "old".into(),
                    host: "b".into()
                },
                Command::Stop {
                    workload: "w".into(),
                    host: "c".into()
                },
            ]
        );
        let plan = reconcile(&[spec("w", 3, "")], &running[..1], &hosts);
        let started: Vec<_> = plan
            .commands
            .iter()
            .map(|c| match c {
                Command::Start { host, .. } => host.as_str(),
                Command::Stop { .. } | Command::Move { .. } => "stop",
            })
            .collect();
        assert_eq!(started, vec!["b", "c"]);
    }

    #[test]
    fn a_replica_on_a_host_that_no_longer_meets_the_rules_is_moved() {
        let hosts = vec![host("eu", "EU", true), host("us", "US", true)];
        // Placed in the US when the rule allowed it; the rule now says EU.
        let running = vec![Replica {
            workload: "w".into(),
            host: "us".into(),
        }];
        let plan = reconcile(&[spec("w", 1, "jurisdiction=EU")], &running, &hosts);
        assert_eq!(
            plan.commands,
            vec![Command::Move {
                workload: "w".into(),
                host: "us".into()
            }]
        );
        // One replica too many: the one that breaks the rules is stopped,
        // not moved.
        let two = vec![
            Replica {
                workload: "w".into(),
                host: "eu".into(),
            },
            Replica {
                workload: "w".into(),
                host: "us".into(),
            },
        ];
        let plan = reconcile(&[spec("w", 1, "jurisdiction=EU")], &two, &hosts);
        assert_eq!(
            plan.commands,
            vec![Command::Stop {
                workload: "w".into(),
                host: "us".into()
            }]
        );
        // A replica that meets the rules stays.
        let running = vec![Replica {
            workload: "w".into(),
            host: "eu".into(),
        }];
        let plan = reconcile(&[spec("w", 1, "jurisdiction=EU")], &running, &hosts);
        assert!(plan.commands.is_empty(), "{:?}", plan.commands);
    }

    #[test]
    fn at_scale_choices_keep_every_rule_and_spread_replicas_across_sites() {
        // More feasible hosts than a decision scores: the sampled choice must
        // still meet the selector, and replicas still land on distinct sites.
        let hosts: Vec<HostView> = (0..2000)
            .map(|i| {
                let mut h = host(
                    &format!("h{i:04}"),
                    if i % 2 == 0 { "EU" } else { "US" },
                    true,
                );
                std::sync::Arc::make_mut(&mut h.labels)
                    .insert("site".into(), format!("s{}", i % 50));
                h
            })
            .collect();
        let mut specs: Vec<Desired> = (0..200)
            .map(|i| spec(&format!("w{i}"), 1, "jurisdiction=EU"))
            .collect();
        let mut spread = spec("spread", 3, "jurisdiction=EU");
        spread.spread_by = Some("site".into());
        specs.push(spread);
        let plan = reconcile(&specs, &[], &hosts);
        assert!(plan.unplaceable.is_empty());
        let mut spread_sites = std::collections::BTreeSet::new();
        for c in &plan.commands {
            let Command::Start { workload, host } = c else {
                panic!("unexpected {c:?}");
            };
            let h = hosts.iter().find(|h| &h.id == host).unwrap();
            assert_eq!(h.labels["jurisdiction"], "EU", "{workload} on {host}");
            if workload == "spread" {
                spread_sites.insert(h.labels["site"].clone());
            }
        }
        assert_eq!(plan.commands.len(), 203);
        assert_eq!(spread_sites.len(), 3, "{spread_sites:?}");
    }

    #[test]
    fn sampled_choices_reach_all_feasible_hosts_even_when_they_cluster() {
        // The 200 feasible hosts come first in id order, 1,800 unfit ones
        // after: a walk from a random offset alone would keep sampling the
        // same first 64 of them.
        let hosts: Vec<HostView> = (0..2000)
            .map(|i| host(&format!("h{i:04}"), if i < 200 { "EU" } else { "US" }, true))
            .collect();
        let specs: Vec<Desired> = (0..500)
            .map(|i| spec(&format!("w{i}"), 1, "jurisdiction=EU"))
            .collect();
        let plan = reconcile(&specs, &[], &hosts);
        let used: std::collections::BTreeSet<&String> = plan
            .commands
            .iter()
            .filter_map(|c| match c {
                Command::Start { host, .. } => Some(host),
                Command::Stop { .. } | Command::Move { .. } => None,
            })
            .collect();
        assert_eq!(plan.commands.len(), 500);
        assert!(used.len() > 150, "only {} hosts used", used.len());
    }
}
