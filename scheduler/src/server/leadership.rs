//! Several schedulers, one leader. With the etcd store every replica keeps
//! a lease (its membership hangs on it) and campaigns for the leader key;
//! the one that creates it leads, in the term that is the key's create
//! revision. Only the leader reconciles, places, detects dead hosts,
//! migrates and answers the API: every store write it makes is conditioned
//! on its term ([`Store::fence`](crate::store::Store::fence)) and every
//! control call to a host carries it (`x-roam-term`), so a leader deposed
//! while paused can neither write nor be obeyed. Followers answer `421`
//! with the leader's URL (hosts and the CLI go there), and serve the
//! ingress themselves, routing from placements, generations and host
//! addresses they read from the store (`ingress.rs`), so clients of the
//! ingress do not notice the leader's loss.
//!
//! A leader stops leading the moment its lease may have ended, by its own
//! clock, before etcd lets anyone else in. A replica that becomes leader
//! reloads everything from the store and gives hosts time to report
//! (`started`), as a restarted scheduler does.
//!
//! With the embedded store there is one scheduler, and it always leads in
//! term 0.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use roam_proto::reply::error;
use roam_proto::{SchedulerInfo, SchedulerMember, SchedulersInfo, headers, paths};

use super::Scheduler;
use super::access::Access;
use super::follower::Follow;
use crate::store::{Election, Session};

/// Leadership as this replica sees it.
pub(super) struct Leadership {
    /// `None`: the embedded store, one scheduler that always leads.
    election: Option<Election>,
    /// This replica's record.
    pub(super) me: SchedulerMember,
    /// The lease's time to live.
    ttl: Duration,
    session: Mutex<Option<Arc<Session>>>,
    /// Whether this replica took the lead (still only while its session
    /// surely lives).
    leading: AtomicBool,
    term: AtomicU64,
    since_unix_ms: AtomicU64,
    /// The leader as last seen.
    leader: RwLock<Option<(SchedulerMember, u64)>>,
}

impl Leadership {
    pub(super) fn new(
        election: Option<Election>,
        me: SchedulerMember,
        ttl: Duration,
    ) -> Leadership {
        let single = election.is_none();
        Leadership {
            election,
            since_unix_ms: AtomicU64::new(if single { me.started_unix_ms } else { 0 }),
            me,
            ttl,
            session: Mutex::new(None),
            leading: AtomicBool::new(single),
            term: AtomicU64::new(0),
            leader: RwLock::new(None),
        }
    }

    /// The term this replica leads in, if it leads now.
    pub(super) fn term(&self) -> Option<u64> {
        if !self.leading.load(Ordering::Acquire) {
            return None;
        }
        let term = self.term.load(Ordering::Acquire);
        if let Some(election) = &self.election {
            let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
            if !session.as_ref().is_some_and(|s| s.alive()) {
                return None;
            }
            // A write refused because another term began.
            if !election.fenced_in(term) {
                return None;
            }
        }
        Some(term)
    }

    /// Whether this replica took the lead and has not stepped down (its
    /// memory, not the store, is then the truth), whether or not its lease
    /// still surely lives.
    pub(super) fn leading_flag(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// Whether this replica leads now.
    pub(super) fn leads(&self) -> bool {
        self.term().is_some()
    }

    /// The leader's URL, if another replica leads as far as this one knows.
    pub(super) fn leader_url(&self) -> Option<String> {
        self.leader
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(m, _)| m.id != self.me.id)
            .map(|(m, _)| m.url.clone())
    }

    fn session(&self, election: &Election) -> Option<Arc<Session>> {
        let mut slot = self.session.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slot.as_ref().filter(|s| s.alive()) {
            return Some(s.clone());
        }
        // Past its end by this replica's clock, but still being renewed
        // (etcd electing a new raft leader, a member gone): if etcd kept
        // it, the leader key on it is still this replica's, and nobody
        // else can lead meanwhile; wait for it rather than take another.
        if slot.as_ref().is_some_and(|s| !s.given_up()) {
            return None;
        }
        let started = election.start_session(self.ttl).and_then(|s| {
            let me = serde_json::to_vec(&self.me).unwrap_or_default();
            election.register(&s, &self.me.id, me)?;
            Ok(s)
        });
        match started {
            Ok(s) => {
                *slot = Some(s.clone());
                Some(s)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take an etcd lease; trying again");
                *slot = None;
                None
            }
        }
    }
}

impl Scheduler {
    /// Keep campaigning while following, and step down the moment the
    /// lease may have ended while leading.
    pub(super) async fn leadership_loop(self: Arc<Self>) {
        let Some(election) = self.leadership.election.clone() else {
            return;
        };
        let tick = (self.leadership.ttl / 6).max(Duration::from_millis(100));
        loop {
            let s = self.clone();
            let e = election.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || s.leadership_round(&e)).await {
                tracing::error!(error = %e, "leadership round failed");
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// One campaign at start (with the etcd store).
    pub(super) fn first_campaign(&self) {
        if let Some(election) = &self.leadership.election {
            self.leadership_round(election);
        }
    }

    fn leadership_round(&self, election: &Election) {
        let l = &self.leadership;
        if l.leading.load(Ordering::Acquire) {
            match l.term() {
                None if !election.fenced_in(l.term.load(Ordering::Acquire)) => {
                    self.step_down("etcd refused a write: another term began")
                }
                None => self.step_down("its etcd lease may have ended"),
                // The leader key is still this replica's (someone may have
                // deleted it; then every write is refused anyway).
                Some(term) => match election.leader() {
                    Ok(Some(h)) if h.term == term => {}
                    Ok(_) => self.step_down("the leader key is no longer this replica's"),
                    // etcd unreachable: the lease decides.
                    Err(_) => {}
                },
            }
            return;
        }
        let Some(session) = l.session(election) else {
            return;
        };
        let mut me = l.me.clone();
        me.leading_since_unix_ms = Some(super::migrations::now_ms());
        let me = serde_json::to_vec(&me).unwrap_or_default();
        match election.campaign(&session, me) {
            Ok(Ok(term)) => self.take_over(term),
            Ok(Err(holder)) => {
                let seen = holder.and_then(|h| {
                    let member: SchedulerMember = serde_json::from_slice(&h.value).ok()?;
                    Some((member, h.term))
                });
                *l.leader.write().unwrap_or_else(|e| e.into_inner()) = seen;
            }
            Err(e) => tracing::warn!(error = %e, "cannot campaign for the lead"),
        }
    }

    /// Lead in `term`: fence the store on it, reload every record, forget
    /// the hosts (they report again within a heartbeat, and none is
    /// declared dead before `heartbeat_timeout` after this), then open.
    fn take_over(&self, term: u64) {
        let l = &self.leadership;
        // Not while a follower's read of the store is being applied: it
        // would overwrite what this reload reads.
        let _view = self.view_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.store.fence(Some(term));
        if let Err(e) = self.reload() {
            tracing::error!(error = %e, "cannot load the cluster's state; giving the lead back");
            self.store.fence(None);
            if let Some(election) = &l.election {
                election.resign();
            }
            *l.session.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return;
        }
        l.term.store(term, Ordering::Release);
        l.since_unix_ms
            .store(super::migrations::now_ms(), Ordering::Release);
        *l.leader.write().unwrap_or_else(|e| e.into_inner()) = Some((l.me.clone(), term));
        l.leading.store(true, Ordering::Release);
        tracing::info!(term, replica = %l.me.id, "this scheduler leads");
        self.event(
            "leader_elected",
            serde_json::json!({ "replica": l.me.id, "term": term }),
        );
        self.touch();
    }

    /// Stop leading at once: nothing more is written or called in this
    /// term.
    fn step_down(&self, why: &str) {
        let l = &self.leadership;
        l.leading.store(false, Ordering::Release);
        self.store.fence(None);
        // The ingress routes on with what this replica knew as leader (its
        // hosts no longer report here) until it reads the store again.
        let routes = self.routes_from_memory();
        *self
            .stored_routes
            .write()
            .unwrap_or_else(|e| e.into_inner()) = routes;
        *l.leader.write().unwrap_or_else(|e| e.into_inner()) = None;
        let term = l.term.load(Ordering::Acquire);
        tracing::warn!(term, why, "this scheduler no longer leads");
        self.event(
            "leader_lost",
            serde_json::json!({ "replica": l.me.id, "term": term, "reason": why }),
        );
    }

    /// Give the lead away on shutdown, so another replica takes it at
    /// once instead of after the lease's TTL.
    pub(super) fn resign(&self) {
        if let Some(election) = &self.leadership.election {
            self.leadership.leading.store(false, Ordering::Release);
            election.resign();
        }
    }

    /// `GET /v1/schedulers`.
    fn schedulers_info(&self) -> SchedulersInfo {
        let l = &self.leadership;
        let store = self.store_description();
        let Some(election) = &l.election else {
            return SchedulersInfo {
                answered_by: l.me.id.clone(),
                replicas: vec![SchedulerInfo {
                    member: l.me.clone(),
                    leader: true,
                    term: Some(0),
                    leader_since_unix_ms: Some(l.since_unix_ms.load(Ordering::Acquire)),
                }],
                store,
                store_health: "embedded".into(),
                store_healthy: true,
            };
        };
        let (store_health, store_healthy) = match election.health() {
            Ok(h) => (h, true),
            Err(e) => (e.to_string(), false),
        };
        let members: Vec<SchedulerMember> = election
            .members()
            .unwrap_or_default()
            .iter()
            .filter_map(|v| serde_json::from_slice(v).ok())
            .collect();
        let holder = election.leader().ok().flatten().and_then(|h| {
            let m: SchedulerMember = serde_json::from_slice(&h.value).ok()?;
            Some((m, h.term))
        });
        let replicas = members
            .into_iter()
            .map(|member| {
                let lead = holder.as_ref().filter(|(m, _)| m.id == member.id);
                SchedulerInfo {
                    leader: lead.is_some(),
                    term: lead.map(|(_, t)| *t),
                    leader_since_unix_ms: lead.and_then(|(m, _)| m.leading_since_unix_ms),
                    member,
                }
            })
            .collect();
        SchedulersInfo {
            answered_by: l.me.id.clone(),
            replicas,
            store,
            store_health,
            store_healthy,
        }
    }
}

/// `GET /v1/schedulers` (viewer; every replica answers itself).
pub(super) async fn schedulers(State(s): State<Arc<Scheduler>>) -> Response {
    match tokio::task::spawn_blocking(move || s.schedulers_info()).await {
        Ok(info) => axum::Json(info).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Routes a follower answers itself; everything else is the leader's.
fn local_route(path: &str) -> bool {
    paths::ingress_target(path).is_some()
        || path == paths::scheduler::SCHEDULERS
        || path == paths::scheduler::CA
        || path == paths::scheduler::METRICS
        // The console's page and sessions (its API calls are forwarded).
        || path
            .strip_prefix(paths::scheduler::UI)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// In front of every route (after routing): the leader answers; a
/// follower answers its own routes, forwards operator calls to the leader
/// (or answers reads of stored state from its copy when no leader
/// answers) and sends hosts to the leader (`421` with its URL): see
/// `follower.rs`.
pub(super) async fn leader_only(
    State(s): State<Arc<Scheduler>>,
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The cheap check first: the ingress passes on every request.
    if local_route(request.uri().path()) {
        return next.run(request).await;
    }
    if s.leadership.leads() {
        let answer = next.run(request).await;
        // Deposed while answering (etcd refused its write, or its lease
        // ran out): the caller goes to the new leader, as if it had come
        // a moment later. Only a failure is turned around: what succeeded
        // was done in this replica's term.
        if !answer.status().is_server_error() || s.leadership.leads() {
            return answer;
        }
        return misdirected(&s);
    }
    let Some(pattern) = matched.as_ref().map(|m| m.as_str()) else {
        return misdirected(&s);
    };
    let method = request.method().clone();
    let token_route = matches!(
        s.rule(&method, pattern),
        Some(Access::Viewer | Access::Operator | Access::Admin)
    );
    if !token_route {
        return misdirected(&s);
    }
    let forwarded = request.headers().contains_key(headers::FORWARDED_BY);
    let request = match s.follow(&method, pattern, forwarded) {
        Follow::Misdirect => return misdirected(&s),
        Follow::FromCache => request,
        Follow::Forward(leader) => match s.forward(&leader, request).await {
            Ok(answer) => return answer,
            // The leader died a moment ago: a read of stored state is
            // answered from this replica's copy.
            Err(request) if super::follower::cached(&method, pattern) => request,
            Err(_) => return misdirected(&s),
        },
    };
    super::follower::from_cache(&s, next.run(request).await)
}

/// `421`, naming the leader if this replica knows it.
pub(super) fn misdirected(s: &Scheduler) -> Response {
    let leader = s.leadership.leader_url();
    let mut answer = error(
        StatusCode::MISDIRECTED_REQUEST,
        match &leader {
            Some(url) => format!("this scheduler replica does not lead; the leader is {url}"),
            None => "no scheduler replica leads at the moment; try again shortly".to_string(),
        },
    );
    if let Some(v) = leader.and_then(|u| HeaderValue::from_str(&u).ok()) {
        answer.headers_mut().insert(headers::LEADER, v);
    }
    answer
}
