//! The etcd v3 backend: every table a key prefix under the store's prefix
//! (`{prefix}/{table}/{key}`), every commit one etcd transaction whose
//! compares are the commit's expectations.
//!
//! The [`Store`](super::Store) is synchronous, as the embedded store is (a
//! commit returns once it is durable); this backend runs the etcd client on
//! a runtime of its own and waits for each call, so a caller on any tokio
//! runtime, or none, can use it.
//!
//! Each member is reached through a client of its own, one at a time:
//! when the current one fails, the next is tried — at once for a read or
//! a lease call, and for a transaction only when its request never left
//! (the connection was refused), since one that left may have been
//! applied. So losing a member of three changes nothing for the caller.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, Permission,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, UserAddOptions, WatchOptions,
};

use super::{Backend, Expect, StoreError, Table, Write, err};

/// How long one call to etcd may take before it fails (the caller's
/// request then fails with a clear error; nothing half-written: a commit
/// is one transaction).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one attempt on one member may take before an idempotent call
/// tries the next one: a member that lost its peers (or is being killed)
/// can hold a request far longer, and the whole call has only
/// [`CALL_TIMEOUT`].
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Keys read per range request when listing a table.
const PAGE: i64 = 1000;

/// etcd's default limit of operations in one transaction
/// (`--max-txn-ops`).
pub(super) const MAX_TXN_OPS: usize = 128;

/// A connection to an etcd cluster.
pub(super) struct Etcd {
    members: Arc<Members>,
    prefix: String,
    /// Taken only when dropped.
    runtime: Option<tokio::runtime::Runtime>,
    /// The leadership term every commit is conditioned on (the create
    /// revision of the leader key this replica wrote): `None` while this
    /// replica does not lead, when it writes nothing but the cluster's
    /// first bootstrap.
    fence: RwLock<Option<i64>>,
    /// This replica's lease, kept alive while it runs.
    session: Mutex<Option<Arc<Session>>>,
}

/// A client per member, and the one calls go to now.
struct Members {
    clients: Vec<Client>,
    current: AtomicUsize,
}

impl Members {
    /// Run `op` on the current member; on failure move to the next and
    /// try again (a few times around), on any failure when `idempotent`,
    /// else only when the request never left.
    async fn call<T, F, Fut>(&self, idempotent: bool, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len().max(1);
        let mut pause = Duration::from_millis(20);
        let mut attempt = 0;
        loop {
            let i = self.current.load(Ordering::Acquire) % n;
            let Some(client) = self.clients.get(i) else {
                return Err(etcd_client::Error::InvalidArgs("no etcd member".into()));
            };
            // A call that cannot be repeated has the whole budget on its
            // member: cutting it short would leave its outcome unknown.
            let budget = if idempotent {
                ATTEMPT_TIMEOUT
            } else {
                CALL_TIMEOUT
            };
            let answer = match tokio::time::timeout(budget, op(client.clone())).await {
                Ok(answer) => answer,
                Err(_) => Err(etcd_client::Error::IoError(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "etcd member {i} did not answer within {} ms",
                        budget.as_millis()
                    ),
                ))),
            };
            match answer {
                Err(e) if (idempotent || never_sent(&e)) && attempt < 3 * n => {
                    if matches!(&e, etcd_client::Error::IoError(io) if io.kind() == std::io::ErrorKind::TimedOut)
                    {
                        // Rare and telling: a member that hangs rather
                        // than fails (cut off from its peers, or etcd
                        // electing a raft leader).
                        tracing::info!(error = %e, member = i, "etcd call timed out; trying the next member");
                    } else {
                        tracing::debug!(error = %e, member = i, "etcd call failed; trying the next member");
                    }
                    self.failed(i);
                    attempt += 1;
                    if attempt % n == 0 {
                        tokio::time::sleep(pause).await;
                        pause *= 4;
                    }
                }
                other => return other,
            }
        }
    }

    /// Member `i` failed: the next one, unless another call moved on.
    fn failed(&self, i: usize) {
        let next = (i + 1) % self.clients.len().max(1);
        let _ = self
            .current
            .compare_exchange(i, next, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// A lease this replica keeps alive: its membership and, while it leads,
/// the leader key hang on it.
pub struct Session {
    id: i64,
    /// Until when the lease surely lives (measured from before the last
    /// renewal was sent, so never later than etcd's own expiry).
    valid_until: Mutex<Instant>,
    /// Gone: expired, revoked, or not renewed in time.
    lost: AtomicBool,
}

impl Session {
    /// Whether the lease still surely lives.
    pub fn alive(&self) -> bool {
        !self.lost.load(Ordering::Acquire)
            && Instant::now() < *self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this replica gave it up (or etcd said it ended): never
    /// renewed again, and the replica takes a new one.
    pub fn given_up(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Until when it surely lives.
    pub fn valid_until(&self) -> Instant {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn renewed(&self, sent: Instant, ttl: i64) {
        let ttl = Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
        let mut until = self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        // Also after it may have ended by this replica's clock: an answer
        // with a TTL proves the lease never ended in etcd (no other replica
        // could take the leader key meanwhile), so the same term may go on.
        *until = (*until).max(sent + ttl);
    }

    fn lose(&self) {
        self.lost.store(true, Ordering::Release);
    }
}

/// Who holds the leader key, and since which revision (the term).
pub(crate) struct Holder {
    /// The value the leader wrote.
    pub(crate) value: Vec<u8>,
    /// The key's create revision: the leader's term.
    pub(crate) term: i64,
    /// The lease the key hangs on.
    lease: i64,
}

impl Holder {
    fn of(kv: &etcd_client::KeyValue) -> Holder {
        Holder {
            value: kv.value().to_vec(),
            term: kv.create_revision(),
            lease: kv.lease(),
        }
    }
}

impl Etcd {
    /// Connect to `endpoints` (`http://host:port`, any member of the
    /// cluster), keeping every key under `prefix`.
    pub(super) fn connect(
        endpoints: &[String],
        prefix: &str,
        tls: Option<&super::EtcdTls>,
    ) -> Result<Etcd, StoreError> {
        if endpoints.is_empty() {
            return Err(err("no etcd endpoint given"));
        }
        let prefix = prefix.trim_end_matches('/').to_string();
        if !prefix.starts_with('/') {
            return Err(err(format!(
                "the etcd prefix `{prefix}` must start with `/`"
            )));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("roam-etcd")
            .enable_all()
            .build()
            .map_err(err)?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if let Some(tls) = tls {
            if let Some(plain) = endpoints.iter().find(|e| !e.starts_with("https://")) {
                return Err(err(format!(
                    "`{plain}`: with TLS for etcd every endpoint is an https:// URL"
                )));
            }
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(&tls.ca))
                    .identity(Identity::from_pem(&tls.cert, &tls.key)),
            );
        }
        let endpoints = endpoints.to_vec();
        let connected = block(&runtime, async move {
            let mut clients = Vec::new();
            for endpoint in endpoints {
                // Lazy: a member down now is tried when its turn comes.
                let client = Client::connect([endpoint.as_str()], Some(options.clone()))
                    .await
                    .map_err(|e| err(format!("cannot reach etcd at {endpoint}: {e}")))?;
                clients.push(client);
            }
            let members = Arc::new(Members {
                clients,
                current: AtomicUsize::new(0),
            });
            // Fail now, not on the first request, if no member answers.
            members
                .call(true, |mut c| async move { c.status().await })
                .await
                .map_err(|e| err(format!("etcd does not answer: {e}")))?;
            Ok(members)
        });
        let members = match connected {
            Ok(m) => m,
            Err(e) => {
                runtime.shutdown_background();
                return Err(e);
            }
        };
        Ok(Etcd {
            members,
            prefix,
            runtime: Some(runtime),
            fence: RwLock::new(None),
            session: Mutex::new(None),
        })
    }

    fn leader_key(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    fn member_prefix(&self) -> String {
        format!("{}/schedulers/", self.prefix)
    }

    fn table_prefix(&self, table: Table) -> String {
        format!("{}/{}/", self.prefix, table.name())
    }

    fn key(&self, table: Table, key: &str) -> String {
        format!("{}{key}", self.table_prefix(table))
    }

    /// Run `op` on a member (see [`Members::call`]) and wait for it.
    fn call<T, F, Fut>(&self, idempotent: bool, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let members = self.members.clone();
        let Some(runtime) = &self.runtime else {
            return Err(err("the etcd client stopped"));
        };
        block(runtime, async move {
            members.call(idempotent, op).await.map_err(etcd_err)
        })
    }

    /// A counter raised whenever a key of `tables` changes (and once each
    /// time the watch is (re)established, since changes may have been
    /// missed meanwhile): an etcd watch on each table's prefix, on this
    /// store's runtime, moving to another member when its stream breaks.
    /// It ends when every receiver is gone.
    pub(super) fn watch(&self, tables: &[Table]) -> Option<tokio::sync::watch::Receiver<u64>> {
        let runtime = self.runtime.as_ref()?;
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let prefixes: Vec<String> = tables.iter().map(|t| self.table_prefix(*t)).collect();
        runtime.spawn(watch_loop(self.members.clone(), prefixes, tx));
        Some(rx)
    }

    /// Turn on etcd's own auth (as a client whose certificate names the
    /// `root` user): a `root` user, and a `user` whose role may read and
    /// write only the keys under this connection's prefix; both without a
    /// password, so they are who their client certificates name (etcd's
    /// `--client-cert-auth`). What exists already is left as it is.
    pub(super) fn enable_auth(&self, user: &str) -> Result<(), StoreError> {
        let user = user.to_string();
        let scope = format!("{}/", self.prefix);
        let done = |r: Result<(), etcd_client::Error>| match r {
            Err(e) if e.to_string().contains("already") => Ok(()),
            other => other,
        };
        self.call(false, move |mut c| {
            let (user, scope) = (user.clone(), scope.clone());
            async move {
                let no_password = || Some(UserAddOptions::new().with_no_pwd());
                done(c.user_add("root", "", no_password()).await.map(drop))?;
                done(c.user_grant_role("root", "root").await.map(drop))?;
                done(c.role_add(user.as_str()).await.map(drop))?;
                c.role_grant_permission(user.as_str(), Permission::read_write(scope).with_prefix())
                    .await?;
                done(c.user_add(user.as_str(), "", no_password()).await.map(drop))?;
                done(
                    c.user_grant_role(user.as_str(), user.as_str())
                        .await
                        .map(drop),
                )?;
                done(c.auth_enable().await.map(drop))
            }
        })
    }

    /// Take a lease of `ttl` and keep it alive until it is lost (then
    /// [`Session::alive`] is false for good and a new session is needed).
    pub(super) fn start_session(&self, ttl: Duration) -> Result<Arc<Session>, StoreError> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let sent = Instant::now();
        let granted = self.call(true, move |c| async move {
            let r = c.lease_client().grant(secs, None).await?;
            Ok((r.id(), r.ttl()))
        })?;
        let session = Arc::new(Session {
            id: granted.0,
            valid_until: Mutex::new(sent),
            lost: AtomicBool::new(false),
        });
        session.renewed(sent, granted.1);
        let Some(runtime) = &self.runtime else {
            return Err(err("the etcd client stopped"));
        };
        runtime.spawn(keep_alive(
            self.members.clone(),
            session.clone(),
            Duration::from_secs(u64::try_from(granted.1.max(1)).unwrap_or(1)),
        ));
        let previous = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(session.clone());
        // The session this one replaces is given up for good: never renewed
        // again (a late renewal would keep its keys, the leader key among
        // them, alive on a lease no replica campaigns with), and revoked so
        // that its keys go now.
        if let Some(old) = previous.filter(|old| old.id != session.id) {
            old.lose();
            let (members, id) = (self.members.clone(), old.id);
            runtime.spawn(async move {
                let revoked = tokio::time::timeout(
                    CALL_TIMEOUT,
                    members.call(true, move |c| async move {
                        c.lease_client().revoke(id).await.map(drop)
                    }),
                )
                .await;
                tracing::debug!(lease = id, ?revoked, "gave up an earlier etcd lease");
            });
        }
        Ok(session)
    }

    /// Record this replica as a member (`value` under its `id`), on its
    /// session's lease.
    pub(super) fn register(
        &self,
        session: &Session,
        id: &str,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        let key = format!("{}{id}", self.member_prefix());
        let lease = session.id;
        self.call(true, move |c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.kv_client()
                    .put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await?;
                Ok(())
            }
        })
    }

    /// Every member's value.
    pub(super) fn members(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = self.member_prefix();
        self.call(true, move |c| {
            let prefix = prefix.clone();
            async move {
                let r = c
                    .kv_client()
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await?;
                Ok(r.kvs().iter().map(|kv| kv.value().to_vec()).collect())
            }
        })
    }

    /// Become leader if nobody is: the leader key is created with `value`
    /// on the session's lease only if it does not exist. `Ok(term)` if
    /// this replica now leads (also when an earlier try it could not see
    /// the answer of made it leader), else who does (`None`: the key
    /// vanished between the two looks; try again).
    pub(super) fn campaign(
        &self,
        session: &Session,
        value: Vec<u8>,
    ) -> Result<Result<i64, Option<Holder>>, StoreError> {
        let key = self.leader_key();
        let lease = session.id;
        // Repeatable: a retry of a put that landed finds the key on this
        // replica's own lease, which is a win.
        let r = self.call(true, move |c| {
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
            async move { c.kv_client().txn(txn).await }
        })?;
        if r.succeeded() {
            let revision = r.header().map(|h| h.revision()).unwrap_or(0);
            return if revision > 0 {
                Ok(Ok(revision))
            } else {
                Err(err("etcd answered a transaction without its revision"))
            };
        }
        match holder(&r.op_responses()) {
            Some(h) if h.lease == lease => Ok(Ok(h.term)),
            other => Ok(Err(other)),
        }
    }

    /// Who leads now, if anyone.
    pub(super) fn leader(&self) -> Result<Option<Holder>, StoreError> {
        let key = self.leader_key();
        self.call(true, move |c| {
            let key = key.clone();
            async move {
                let r = c.kv_client().get(key, None).await?;
                Ok(r.kvs().first().map(Holder::of))
            }
        })
    }

    /// Condition every commit from now on on leading in `term` (`None`:
    /// commit nothing).
    pub(super) fn set_fence(&self, term: Option<i64>) {
        *self.fence.write().unwrap_or_else(|e| e.into_inner()) = term;
    }

    /// Whether commits are still conditioned on `term` (a refused commit
    /// ends it).
    pub(super) fn fenced_in(&self, term: i64) -> bool {
        *self.fence.read().unwrap_or_else(|e| e.into_inner()) == Some(term)
    }

    /// End the session: its lease is revoked, so the keys on it (the
    /// membership, and the leader key if this replica leads) go at once.
    pub(super) fn resign(&self) {
        self.set_fence(None);
        let Some(session) = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        session.lose();
        let id = session.id;
        let _ = self.call(true, move |c| async move {
            c.lease_client().revoke(id).await?;
            Ok(())
        });
    }

    /// End the session's lease without this replica knowing (what a pause
    /// past the TTL does).
    #[cfg(test)]
    pub(super) fn revoke_lease_for_test(&self) {
        let Some(id) = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.id)
        else {
            return;
        };
        let _ = self.call(true, move |c| async move {
            c.lease_client().revoke(id).await?;
            Ok(())
        });
    }

    /// How the cluster is: the answering member's version, database size
    /// and whether it sees a leader.
    pub(super) fn health(&self) -> Result<String, StoreError> {
        let r = self.call(true, |mut c| async move { c.status().await })?;
        if r.leader() == 0 {
            return Err(err("etcd has no leader"));
        }
        Ok(format!(
            "etcd {}, {} KiB, raft term {}",
            r.version(),
            r.db_size() / 1024,
            r.raft_term()
        ))
    }

    /// One transaction: `writes` if every `expect` holds and, with a
    /// `fence`, this replica still leads in that term.
    fn transact(
        &self,
        expect: &[Expect],
        writes: &[Write],
        fence: Option<i64>,
    ) -> Result<bool, StoreError> {
        if expect.len() > MAX_TXN_OPS || writes.len() > MAX_TXN_OPS {
            return Err(err(format!(
                "{} checks and {} writes do not fit one etcd transaction ({MAX_TXN_OPS} at most)",
                expect.len(),
                writes.len()
            )));
        }
        let mut compares: Vec<Compare> = expect
            .iter()
            .map(|e| {
                let key = self.key(e.table, &e.key);
                match &e.value {
                    Some(v) => Compare::value(key, CompareOp::Equal, v.clone()),
                    None => Compare::version(key, CompareOp::Equal, 0),
                }
            })
            .collect();
        let ops: Vec<TxnOp> = writes
            .iter()
            .map(|w| match w {
                Write::Put(table, key, value) => {
                    TxnOp::put(self.key(*table, key), value.clone(), None)
                }
                Write::Delete(table, key) => TxnOp::delete(self.key(*table, key), None),
            })
            .collect();
        let leader_key = self.leader_key();
        if let Some(term) = fence {
            compares.push(Compare::create_revision(
                leader_key.clone(),
                CompareOp::Equal,
                term,
            ));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then(ops)
            .or_else([TxnOp::get(leader_key, None)]);
        let r = self.call(false, move |c| {
            let txn = txn.clone();
            async move { c.kv_client().txn(txn).await }
        })?;
        if r.succeeded() {
            return Ok(true);
        }
        if let Some(term) = fence {
            let now = holder(&r.op_responses()).map(|h| h.term);
            if now != Some(term) {
                // Deposed: nothing more is written in this term, and the
                // replica sees at once that it no longer leads.
                let mut fence = self.fence.write().unwrap_or_else(|e| e.into_inner());
                if *fence == Some(term) {
                    *fence = None;
                }
                drop(fence);
                return Err(StoreError::not_leader(format!(
                    "refused: this scheduler's term {term} has ended (the leader's term is now {})",
                    now.map_or_else(|| "none".to_string(), |t| t.to_string())
                )));
            }
        }
        Ok(false)
    }
}

/// Run `call` on `runtime` and wait for it (at most [`CALL_TIMEOUT`]),
/// from any thread: a tokio worker of another runtime blocks meanwhile, as
/// it does on the embedded store's disk writes.
fn block<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    call: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let result = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => Err(err(format!(
                "etcd did not answer within {} s",
                CALL_TIMEOUT.as_secs()
            ))),
        };
        let _ = tx.send(result);
    });
    rx.recv().map_err(|_| err("the etcd client stopped"))?
}

/// Renew `session`'s lease every third of its TTL until it is lost, on
/// the next member when one fails.
async fn keep_alive(members: Arc<Members>, session: Arc<Session>, ttl: Duration) {
    let every = ttl / 3;
    let n = members.clients.len().max(1);
    'stream: loop {
        // Members fail, and etcd elects a new raft leader meanwhile (it
        // extends every lease when it does): renewals go on for a TTL past
        // this replica's own reckoning of the end, then it gives up.
        if session.given_up() || Instant::now() > session.valid_until() + ttl {
            session.lose();
            return;
        }
        let i = members.current.load(Ordering::Acquire) % n;
        let Some(client) = members.clients.get(i) else {
            return;
        };
        let (mut keeper, mut answers) = match client.lease_client().keep_alive(session.id).await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the scheduler's etcd lease; trying the next member");
                members.failed(i);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue 'stream;
            }
        };
        loop {
            if session.given_up() {
                return;
            }
            let sent = Instant::now();
            if keeper.keep_alive().await.is_err() {
                members.failed(i);
                continue 'stream;
            }
            match tokio::time::timeout(every, answers.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => session.renewed(sent, r.ttl()),
                Ok(Ok(Some(_))) => {
                    tracing::warn!("the scheduler's etcd lease expired");
                    session.lose();
                    return;
                }
                _ => {
                    members.failed(i);
                    continue 'stream;
                }
            }
            tokio::time::sleep(every.saturating_sub(sent.elapsed())).await;
            if session.lost.load(Ordering::Acquire) {
                return;
            }
        }
    }
}

/// The leader key from the else branch of a campaign or fenced commit.
/// See [`Etcd::watch`].
async fn watch_loop(
    members: Arc<Members>,
    prefixes: Vec<String>,
    changed: tokio::sync::watch::Sender<u64>,
) {
    let mut pause = Duration::from_millis(100);
    while !changed.is_closed() {
        let opened = members
            .call(true, |mut c| {
                let prefixes = prefixes.clone();
                async move {
                    let options = || Some(WatchOptions::new().with_prefix());
                    let mut prefixes = prefixes.into_iter();
                    let first = prefixes.next().unwrap_or_default();
                    let mut stream = c.watch(first, options()).await?;
                    for p in prefixes {
                        stream.watch(p, options()).await?;
                    }
                    Ok(stream)
                }
            })
            .await;
        match opened {
            Ok(mut stream) => {
                pause = Duration::from_millis(100);
                // Whatever changed before the watch began.
                changed.send_modify(|n| *n += 1);
                loop {
                    let message = tokio::select! {
                        m = stream.message() => m,
                        () = changed.closed() => return,
                    };
                    match message {
                        Ok(Some(r)) if r.canceled() => {
                            tracing::debug!(reason = r.cancel_reason(), "etcd watch cancelled");
                            break;
                        }
                        Ok(Some(r)) => {
                            if !r.events().is_empty() {
                                changed.send_modify(|n| *n += 1);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "etcd watch broke");
                            break;
                        }
                    }
                }
                // Another member next time.
                members
                    .failed(members.current.load(Ordering::Acquire) % members.clients.len().max(1));
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch etcd; trying again"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

fn holder(responses: &[TxnOpResponse]) -> Option<Holder> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().map(Holder::of),
        _ => None,
    })
}

/// Whether a call failed before its request reached any etcd member.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable && status.message().contains("connect")
        }
        _ => false,
    }
}

fn etcd_err(e: etcd_client::Error) -> StoreError {
    err(format!("etcd: {e}"))
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(session) = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            session.lose();
        }
        // Dropping a runtime waits for its threads, which a tokio worker
        // (where a scheduler drops its store) must not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Backend for Etcd {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key(table, key);
        self.call(true, move |c| {
            let key = key.clone();
            async move {
                let r = c.kv_client().get(key, None).await?;
                Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
            }
        })
    }

    fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = self.table_prefix(table);
        self.call(true, move |c| {
            let prefix = prefix.clone();
            async move {
                let mut kv = c.kv_client();
                let mut end = prefix.clone().into_bytes();
                // The first key after every key that starts with `prefix`
                // (its last byte is `/`, so adding one cannot overflow).
                if let Some(last) = end.last_mut() {
                    *last += 1;
                }
                let mut start = prefix.clone().into_bytes();
                let mut out = Vec::new();
                // Every page at the first page's revision: one snapshot.
                let mut revision = 0;
                loop {
                    let options = GetOptions::new()
                        .with_range(end.clone())
                        .with_limit(PAGE)
                        .with_revision(revision);
                    let r = kv.get(start.clone(), Some(options)).await?;
                    if revision == 0 {
                        revision = r.header().map_or(0, |h| h.revision());
                    }
                    for item in r.kvs() {
                        let key = item.key_str()?;
                        let name = key.strip_prefix(prefix.as_str()).unwrap_or(key);
                        out.push((name.to_string(), item.value().to_vec()));
                    }
                    match r.kvs().last() {
                        Some(last) if r.more() => {
                            start = last.key().to_vec();
                            start.push(0);
                        }
                        _ => return Ok(out),
                    }
                }
            }
        })
    }

    fn commit(&self, expect: &[Expect], writes: &[Write]) -> Result<bool, StoreError> {
        let fence = *self.fence.read().unwrap_or_else(|e| e.into_inner());
        let Some(term) = fence else {
            return Err(StoreError::not_leader(
                "this scheduler does not lead: it writes nothing",
            ));
        };
        self.transact(expect, writes, Some(term))
    }

    fn bootstrap(&self, writes: &[Write]) -> Result<bool, StoreError> {
        self.transact(&super::absent(writes), writes, None)
    }

    fn set_fence(&self, term: Option<u64>) {
        Etcd::set_fence(self, term.and_then(|t| i64::try_from(t).ok()));
    }
}
