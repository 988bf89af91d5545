//! The etcd v3 backend: every table a key prefix under the store's prefix
//! (`{prefix}/{table}/{key}`), every commit one etcd transaction whose
//! compares are the commit's expectations.
//!
//! The [`Store`](super::Store) is synchronous, as the embedded store is (a
//! commit returns once it is durable); this backend runs the etcd client on
//! a runtime of its own and waits for each call, so a caller on any tokio
//! runtime, or none, can use it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use super::{Backend, Expect, StoreError, Table, Write, err};

/// How long one call to etcd may take before it fails (the caller's
/// request then fails with a clear error; nothing half-written: a commit
/// is one transaction).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Keys read per range request when listing a table.
const PAGE: i64 = 1000;

/// etcd's default limit of operations in one transaction
/// (`--max-txn-ops`).
pub(super) const MAX_TXN_OPS: usize = 128;

/// A connection to an etcd cluster.
pub(super) struct Etcd {
    client: Client,
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

    /// Until when it surely lives.
    pub fn valid_until(&self) -> Instant {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn renewed(&self, sent: Instant, ttl: i64) {
        let ttl = Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
        let mut until = self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
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
}

impl Etcd {
    /// Connect to `endpoints` (`http://host:port`, any member of the
    /// cluster), keeping every key under `prefix`.
    pub(super) fn connect(endpoints: &[String], prefix: &str) -> Result<Etcd, StoreError> {
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
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let endpoints = endpoints.to_vec();
        let connected = block(&runtime, async move {
            let mut client = Client::connect(endpoints, Some(options))
                .await
                .map_err(|e| err(format!("cannot reach etcd: {e}")))?;
            // Fail now, not on the first request, if no member answers.
            client
                .status()
                .await
                .map_err(|e| err(format!("etcd does not answer: {e}")))?;
            Ok(client)
        });
        let client = match connected {
            Ok(c) => c,
            Err(e) => {
                runtime.shutdown_background();
                return Err(e);
            }
        };
        Ok(Etcd {
            client,
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

    /// Take a lease of `ttl` and keep it alive until it is lost (then
    /// [`Session::alive`] is false for good and a new session is needed).
    pub(super) fn start_session(&self, ttl: Duration) -> Result<Arc<Session>, StoreError> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut lease = self.client.lease_client();
        let sent = Instant::now();
        let granted = self.run(async move {
            let r = lease.grant(secs, None).await.map_err(etcd_err)?;
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
            self.client.lease_client(),
            session.clone(),
            Duration::from_secs(u64::try_from(granted.1.max(1)).unwrap_or(1)),
        ));
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(session.clone());
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
        let mut kv = self.client.kv_client();
        let key = format!("{}{id}", self.member_prefix());
        let lease = session.id;
        self.run(async move {
            kv.put(key, value, Some(PutOptions::new().with_lease(lease)))
                .await
                .map_err(etcd_err)?;
            Ok(())
        })
    }

    /// Every member's value.
    pub(super) fn members(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut kv = self.client.kv_client();
        let prefix = self.member_prefix();
        self.run(async move {
            let r = kv
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await
                .map_err(etcd_err)?;
            Ok(r.kvs().iter().map(|kv| kv.value().to_vec()).collect())
        })
    }

    /// Become leader if nobody is: the leader key is created with `value`
    /// on the session's lease only if it does not exist. `Ok(term)` if
    /// this replica now leads, else who does (`None`: the key vanished
    /// between the two looks; try again).
    pub(super) fn campaign(
        &self,
        session: &Session,
        value: Vec<u8>,
    ) -> Result<Result<i64, Option<Holder>>, StoreError> {
        let mut kv = self.client.kv_client();
        let key = self.leader_key();
        let lease = session.id;
        self.run(async move {
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key, None)]);
            let r = kv.txn(txn).await.map_err(etcd_err)?;
            if r.succeeded() {
                let revision = r.header().map(|h| h.revision()).unwrap_or(0);
                return if revision > 0 {
                    Ok(Ok(revision))
                } else {
                    Err(err("etcd answered a transaction without its revision"))
                };
            }
            Ok(Err(holder(&r.op_responses())))
        })
    }

    /// Who leads now, if anyone.
    pub(super) fn leader(&self) -> Result<Option<Holder>, StoreError> {
        let mut kv = self.client.kv_client();
        let key = self.leader_key();
        self.run(async move {
            let r = kv.get(key, None).await.map_err(etcd_err)?;
            Ok(r.kvs().first().map(|kv| Holder {
                value: kv.value().to_vec(),
                term: kv.create_revision(),
            }))
        })
    }

    /// Condition every commit from now on on leading in `term` (`None`:
    /// commit nothing).
    pub(super) fn set_fence(&self, term: Option<i64>) {
        *self.fence.write().unwrap_or_else(|e| e.into_inner()) = term;
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
        let mut lease = self.client.lease_client();
        let id = session.id;
        let _ = self.run(async move {
            lease.revoke(id).await.map_err(etcd_err)?;
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
        let mut lease = self.client.lease_client();
        let _ = self.run(async move {
            lease.revoke(id).await.map_err(etcd_err)?;
            Ok(())
        });
    }

    /// How the cluster is: the answering member's version, database size
    /// and whether it sees a leader.
    pub(super) fn health(&self) -> Result<String, StoreError> {
        let mut maintenance = self.client.maintenance_client();
        self.run(async move {
            let r = maintenance.status().await.map_err(etcd_err)?;
            if r.leader() == 0 {
                return Err(err("etcd has no leader"));
            }
            Ok(format!(
                "etcd {}, {} KiB, raft term {}",
                r.version(),
                r.db_size() / 1024,
                r.raft_term()
            ))
        })
    }

    fn table_prefix(&self, table: Table) -> String {
        format!("{}/{}/", self.prefix, table.name())
    }

    fn key(&self, table: Table, key: &str) -> String {
        format!("{}{key}", self.table_prefix(table))
    }

    fn run<T: Send + 'static>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        match &self.runtime {
            Some(runtime) => block(runtime, call),
            None => Err(err("the etcd client stopped")),
        }
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

/// Renew `session`'s lease every third of its TTL until it is lost.
async fn keep_alive(mut lease: etcd_client::LeaseClient, session: Arc<Session>, ttl: Duration) {
    let every = ttl / 3;
    'stream: loop {
        if !session.alive() {
            session.lose();
            return;
        }
        let (mut keeper, mut answers) = match lease.keep_alive(session.id).await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the scheduler's etcd lease; trying again");
                tokio::time::sleep(every / 2).await;
                continue 'stream;
            }
        };
        loop {
            let sent = Instant::now();
            if keeper.keep_alive().await.is_err() {
                continue 'stream;
            }
            match tokio::time::timeout(every, answers.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => session.renewed(sent, r.ttl()),
                Ok(Ok(Some(_))) => {
                    tracing::warn!("the scheduler's etcd lease expired");
                    session.lose();
                    return;
                }
                _ => continue 'stream,
            }
            tokio::time::sleep(every.saturating_sub(sent.elapsed())).await;
            if session.lost.load(Ordering::Acquire) {
                return;
            }
        }
    }
}

/// The leader key from the else branch of a campaign or fenced commit.
fn holder(responses: &[TxnOpResponse]) -> Option<Holder> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| Holder {
            value: kv.value().to_vec(),
            term: kv.create_revision(),
        }),
        _ => None,
    })
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
        let mut kv = self.client.kv_client();
        let key = self.key(table, key);
        self.run(async move {
            let r = kv.get(key, None).await.map_err(etcd_err)?;
            Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
        })
    }

    fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut kv = self.client.kv_client();
        let prefix = self.table_prefix(table);
        self.run(async move {
            let mut end = prefix.clone().into_bytes();
            // The first key after every key that starts with `prefix`
            // (its last byte is `/`, so adding one cannot overflow).
            if let Some(last) = end.last_mut() {
                *last += 1;
            }
            let mut start = prefix.clone().into_bytes();
            let mut out = Vec::new();
            loop {
                let options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
                let r = kv
                    .get(start.clone(), Some(options))
                    .await
                    .map_err(etcd_err)?;
                for item in r.kvs() {
                    let key = item.key_str().map_err(etcd_err)?;
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

impl Etcd {
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
        let compares: Vec<Compare> = expect
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
        let mut compares = compares;
        let leader_key = self.leader_key();
        if let Some(term) = fence {
            compares.push(Compare::create_revision(
                leader_key.clone(),
                CompareOp::Equal,
                term,
            ));
        }
        let mut kv = self.client.kv_client();
        self.run(async move {
            let txn = Txn::new()
                .when(compares)
                .and_then(ops)
                .or_else([TxnOp::get(leader_key, None)]);
            let r = kv.txn(txn).await.map_err(etcd_err)?;
            if r.succeeded() {
                return Ok(true);
            }
            if let Some(term) = fence {
                let now = holder(&r.op_responses()).map(|h| h.term);
                if now != Some(term) {
                    return Err(StoreError::not_leader(format!(
                        "refused: this scheduler's term {term} has ended (the leader's term is now {})",
                        now.map_or_else(|| "none".to_string(), |t| t.to_string())
                    )));
                }
            }
            Ok(false)
        })
    }
}
