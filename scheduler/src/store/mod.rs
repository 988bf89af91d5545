//! Desired and recorded state, in one of two backends behind one
//! [`Store`]: an embedded redb file (the default, what `roam up` uses) or
//! an etcd v3 cluster (several schedulers share it).
//!
//! What must survive a restart lives here: workloads and their specs,
//! token records, cordoned hosts, generations, placements, host records,
//! migrations, revoked certificates. Each change is one transaction,
//! durable before the call that made it returns — nothing acknowledged is
//! lost. A change that depends on what it read (`update_host`,
//! `revoke_host`, `prune_revoked`) commits only if what it read is still
//! there, and tries again otherwise. Host liveness and usage are soft
//! state rebuilt from heartbeats and are not stored.

mod etcd;
mod redb;

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The tables of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    /// Workloads by name (JSON).
    Workloads,
    /// Token records by token hash (JSON).
    Tokens,
    /// Cordoned host ids (keys only).
    Cordoned,
    /// Cordoned hosts whose drain has not ended (keys only): a scheduler
    /// that takes over goes on with them.
    Draining,
    /// Live migrations by id (JSON).
    Migrations,
    /// Workload generation (fencing token), raised by every committed
    /// migration and failover (a number).
    Generations,
    /// Where each workload is placed (JSON: host → role), written before
    /// the start call; a restarted scheduler accepts exactly these.
    Assignments,
    /// Host identities by host name (JSON): the trusted labels bound to
    /// the name when it first joined.
    Hosts,
    /// Revoked host certificates by fingerprint (JSON).
    Revoked,
    /// What the whole cluster shares, written once by whichever scheduler
    /// starts first: the CA.
    Cluster,
    /// Module bytes in chunks (`{digest}/{n}`) and their manifests
    /// (`{digest}`), with the shared (etcd) store only: each chunk fits one
    /// etcd request.
    Modules,
}

impl Table {
    const ALL: [Table; 11] = [
        Table::Workloads,
        Table::Tokens,
        Table::Cordoned,
        Table::Draining,
        Table::Migrations,
        Table::Generations,
        Table::Assignments,
        Table::Hosts,
        Table::Revoked,
        Table::Cluster,
        Table::Modules,
    ];

    fn name(self) -> &'static str {
        match self {
            Table::Workloads => "workloads",
            Table::Tokens => "tokens",
            Table::Cordoned => "cordoned",
            Table::Draining => "draining",
            Table::Migrations => "migrations",
            Table::Generations => "generations",
            Table::Assignments => "assignments",
            Table::Hosts => "hosts",
            Table::Revoked => "revoked",
            Table::Cluster => "cluster",
            Table::Modules => "modules",
        }
    }
}

/// A commit's condition: `key` in `table` holds `value` (`None`: absent).
pub(crate) struct Expect {
    table: Table,
    key: String,
    value: Option<Vec<u8>>,
}

/// One write of a commit.
pub(crate) enum Write {
    Put(Table, String, Vec<u8>),
    Delete(Table, String),
}

/// The condition that none of `writes`' keys exists.
fn absent(writes: &[Write]) -> Vec<Expect> {
    writes
        .iter()
        .map(|w| {
            let (table, key) = match w {
                Write::Put(t, k, _) | Write::Delete(t, k) => (*t, k.clone()),
            };
            Expect {
                table,
                key,
                value: None,
            }
        })
        .collect()
}

/// Where a [`Store`] keeps its tables.
pub(crate) trait Backend: Send + Sync {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every entry of `table`, by key.
    fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Apply `writes` in one transaction if every `expect` holds; `false`
    /// (and nothing written) if one does not. A shared backend commits only
    /// while this replica leads, in the term it was given
    /// ([`Backend::set_fence`]).
    fn commit(&self, expect: &[Expect], writes: &[Write]) -> Result<bool, StoreError>;
    /// Apply `writes` if none of their keys exists yet, whether or not this
    /// replica leads: the cluster's first bootstrap, which any replica may
    /// win and no replica may overwrite.
    fn bootstrap(&self, writes: &[Write]) -> Result<bool, StoreError> {
        self.commit(&absent(writes), writes)
    }
    /// Condition every later commit on leading in `term` (`None`: refuse
    /// every commit). The embedded store has one writer and ignores it.
    fn set_fence(&self, _term: Option<u64>) {}
}

/// Transactions [`Store::put_assignments`] keeps in flight at once.
const COMMITS_IN_FLIGHT: usize = 8;

/// A store operation failed.
#[derive(Clone, Debug, thiserror::Error)]
#[error("state store: {message}")]
pub struct StoreError {
    message: String,
    not_leader: bool,
}

impl StoreError {
    fn not_leader(message: impl Into<String>) -> StoreError {
        StoreError {
            message: message.into(),
            not_leader: true,
        }
    }

    /// A store call that could not finish (its task failed).
    pub fn from_join(e: tokio::task::JoinError) -> StoreError {
        err(format!("the store call failed: {e}"))
    }

    /// The write was refused because this scheduler no longer leads (or
    /// never did): a newer leader exists, or none.
    pub fn is_not_leader(&self) -> bool {
        self.not_leader
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError {
        message: e.to_string(),
        not_leader: false,
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(err)
}

/// Bytes per module chunk: under etcd's default request limit (1.5 MiB)
/// with room for the key and the transaction.
const MODULE_CHUNK: usize = 1 << 20;

/// How a module's chunks are recorded.
#[derive(serde::Serialize, serde::Deserialize)]
struct ModuleManifest {
    size: u64,
    chunks: u64,
}

/// How many times a read-modify-write is tried against concurrent writers
/// before it gives up.
const ATTEMPTS: usize = 64;

/// Where the store is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// An embedded redb file.
    Redb(std::path::PathBuf),
    /// An etcd v3 cluster: its endpoints, and the prefix of every key.
    Etcd {
        /// Client URLs of its members (any of them will do).
        endpoints: Vec<String>,
        /// Every key Roam writes starts with this.
        prefix: String,
        /// How to reach it over TLS (`https://` endpoints).
        tls: Option<EtcdTls>,
    },
}

/// How a scheduler reaches etcd over TLS: the CA that signed etcd's
/// serving certificates, and its own client certificate and key (PEM).
/// With etcd's `--client-cert-auth` and its auth enabled, the client
/// certificate's common name is the etcd user the scheduler acts as.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA certificate etcd's serving certificates chain to.
    pub ca: String,
    /// This client's certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls").finish_non_exhaustive()
    }
}

/// The most a TLS file for etcd may hold.
const MAX_PEM: u64 = 1 << 20;

impl EtcdTls {
    /// Read the three files.
    pub fn read(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<EtcdTls, StoreError> {
        let read = |what: &str, path: &std::path::Path| -> Result<String, StoreError> {
            use std::io::Read;
            let mut text = String::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_PEM).read_to_string(&mut text))
                .map_err(|e| {
                    err(format!(
                        "cannot read the etcd {what} `{}`: {e}",
                        path.display()
                    ))
                })?;
            if !text.contains("-----BEGIN ") {
                return Err(err(format!(
                    "the etcd {what} `{}` is not PEM",
                    path.display()
                )));
            }
            Ok(text)
        };
        Ok(EtcdTls {
            ca: read("CA certificate", ca)?,
            cert: read("client certificate", cert)?,
            key: read("client key", key)?,
        })
    }
}

/// The scheduler's durable state.
pub struct Store {
    backend: std::sync::Arc<dyn Backend>,
    /// The same backend when it is shared by several schedulers (etcd).
    shared: Option<std::sync::Arc<etcd::Etcd>>,
}

/// Leadership among the schedulers that share an etcd store: a lease per
/// replica, a leader key on the leader's lease, and the key's create
/// revision as the term every write of the leader is conditioned on.
#[derive(Clone)]
pub struct Election {
    etcd: std::sync::Arc<etcd::Etcd>,
}

pub use etcd::Session;

/// Who leads: what the leader wrote in the leader key, and its term.
pub struct Holder {
    /// The leader's own description of itself.
    pub value: Vec<u8>,
    /// Its term.
    pub term: u64,
}

impl From<etcd::Holder> for Holder {
    fn from(h: etcd::Holder) -> Holder {
        Holder {
            value: h.value,
            term: u64::try_from(h.term).unwrap_or(0),
        }
    }
}

impl Election {
    /// Take a lease of `ttl` (whole seconds, at least etcd's minimum) and
    /// keep it alive until it is lost.
    pub fn start_session(
        &self,
        ttl: std::time::Duration,
    ) -> Result<std::sync::Arc<Session>, StoreError> {
        self.etcd.start_session(ttl)
    }

    /// Whether the store still writes in `term`: not once a write was
    /// refused because another term began.
    pub fn fenced_in(&self, term: u64) -> bool {
        i64::try_from(term).is_ok_and(|t| self.etcd.fenced_in(t))
    }

    /// Record this replica (`value`) under `id` while its session lives.
    pub fn register(&self, session: &Session, id: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.etcd.register(session, id, value)
    }

    /// Every live replica's record.
    pub fn members(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.etcd.members()
    }

    /// Lead if nobody does: `Ok(term)`, or who leads.
    pub fn campaign(
        &self,
        session: &Session,
        value: Vec<u8>,
    ) -> Result<Result<u64, Option<Holder>>, StoreError> {
        Ok(match self.etcd.campaign(session, value)? {
            Ok(term) => Ok(u64::try_from(term).unwrap_or(0)),
            Err(holder) => Err(holder.map(Holder::from)),
        })
    }

    /// Who leads now.
    pub fn leader(&self) -> Result<Option<Holder>, StoreError> {
        Ok(self.etcd.leader()?.map(Holder::from))
    }

    /// Give up the session (and the lead, if held) at once.
    pub fn resign(&self) {
        self.etcd.resign();
    }

    /// A line on the store's health, or why it is not healthy.
    pub fn health(&self) -> Result<String, StoreError> {
        self.etcd.health()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Open (or create) the embedded store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            backend: std::sync::Arc::new(redb::Redb::open(path)?),
            shared: None,
        })
    }

    /// Connect to the etcd cluster at `endpoints`, every key under
    /// `prefix`. It writes nothing until [`Store::fence`] gives it the term
    /// this replica leads in.
    pub fn etcd(endpoints: &[String], prefix: &str) -> Result<Store, StoreError> {
        Store::etcd_over(endpoints, prefix, None)
    }

    /// [`Store::etcd`], over TLS with a client certificate when `tls` is
    /// given.
    pub fn etcd_over(
        endpoints: &[String],
        prefix: &str,
        tls: Option<&EtcdTls>,
    ) -> Result<Store, StoreError> {
        let etcd = std::sync::Arc::new(etcd::Etcd::connect(endpoints, prefix, tls)?);
        Ok(Store {
            backend: etcd.clone(),
            shared: Some(etcd),
        })
    }

    /// Turn on the auth of the etcd at `endpoints`, reached over `tls` as
    /// its `root` user: `user` may then read and write only the keys
    /// under `prefix` ([`EtcdTls`] says how certificates name users).
    /// Repeating it changes nothing.
    pub fn enable_etcd_auth(
        endpoints: &[String],
        prefix: &str,
        tls: &EtcdTls,
        user: &str,
    ) -> Result<(), StoreError> {
        etcd::Etcd::connect(endpoints, prefix, Some(tls))?.enable_auth(user)
    }

    /// The election among the schedulers sharing this store (`None`: the
    /// embedded store, which one scheduler owns).
    pub fn election(&self) -> Option<Election> {
        self.shared.clone().map(|etcd| Election { etcd })
    }

    /// Condition every later write on leading in `term` (`None`: write
    /// nothing). No effect on the embedded store.
    pub fn fence(&self, term: Option<u64>) {
        self.backend.set_fence(term);
    }

    /// Write the cluster's shared values if none of them exists yet
    /// (whoever starts first wins; nobody overwrites). `false`: some
    /// already existed, and nothing was written.
    pub fn bootstrap_cluster(&self, values: &[(&str, Vec<u8>)]) -> Result<bool, StoreError> {
        let writes: Vec<Write> = values
            .iter()
            .map(|(k, v)| Write::Put(Table::Cluster, k.to_string(), v.clone()))
            .collect();
        self.backend.bootstrap(&writes)
    }

    /// A shared value of the cluster.
    pub fn cluster_value(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.backend.get(Table::Cluster, key)
    }

    /// Create the first admin token, once for the whole cluster: `false`
    /// if one was created already (by this or another scheduler).
    pub fn bootstrap_admin<T: Serialize>(
        &self,
        hash: &str,
        record: &T,
    ) -> Result<bool, StoreError> {
        self.backend.bootstrap(&[
            Write::Put(
                Table::Cluster,
                "admin-token".into(),
                hash.as_bytes().to_vec(),
            ),
            Write::Put(Table::Tokens, hash.to_string(), json(record)?),
        ])
    }

    /// With a shared store: a counter raised whenever another replica may
    /// have changed what a follower shows (workloads, tokens, cordons,
    /// drains, migrations, generations, placements, host records,
    /// revocations), from an etcd watch. `None` with the embedded store,
    /// where this scheduler is the only writer.
    pub fn watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        let tables: Vec<Table> = Table::ALL
            .into_iter()
            .filter(|t| !matches!(t, Table::Modules | Table::Cluster))
            .collect();
        self.shared.as_ref()?.watch(&tables)
    }

    /// Whether several schedulers share this store.
    pub fn shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Keep a module's bytes in the store, in chunks each small enough for
    /// one etcd request, the manifest last (so a module is there whole or
    /// not at all). Only a shared store keeps modules; the embedded one's
    /// scheduler keeps them in its data directory.
    pub fn put_module(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
        if !self.shared() {
            return Ok(());
        }
        if self.backend.get(Table::Modules, digest)?.is_some() {
            return Ok(());
        }
        let chunks: Vec<&[u8]> = bytes.chunks(MODULE_CHUNK).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            self.write(&[Write::Put(
                Table::Modules,
                format!("{digest}/{n:06}"),
                chunk.to_vec(),
            )])?;
        }
        let manifest = ModuleManifest {
            size: bytes.len() as u64,
            chunks: chunks.len() as u64,
        };
        self.write(&[Write::Put(
            Table::Modules,
            digest.to_string(),
            json(&manifest)?,
        )])
    }

    /// A module's bytes from the store, if it keeps them whole; at most
    /// `max` bytes (a bigger manifest is refused before anything is read).
    /// The caller checks them against the digest.
    pub fn module(&self, digest: &str, max: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.shared() {
            return Ok(None);
        }
        let Some(manifest) = self.backend.get(Table::Modules, digest)? else {
            return Ok(None);
        };
        let manifest: ModuleManifest = serde_json::from_slice(&manifest).map_err(err)?;
        if manifest.size > max || manifest.chunks != manifest.size.div_ceil(MODULE_CHUNK as u64) {
            return Err(err(format!(
                "module {digest}: a manifest of {} bytes in {} chunks is refused",
                manifest.size, manifest.chunks
            )));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(manifest.size).unwrap_or(0));
        for n in 0..manifest.chunks {
            let Some(chunk) = self
                .backend
                .get(Table::Modules, &format!("{digest}/{n:06}"))?
            else {
                return Err(err(format!("module {digest}: chunk {n} is missing")));
            };
            if bytes.len() + chunk.len() > usize::try_from(manifest.size).unwrap_or(0) {
                return Err(err(format!("module {digest}: chunks exceed the manifest")));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some(bytes))
    }

    /// Open the store at `location`.
    pub fn at(location: &StoreLocation) -> Result<Store, StoreError> {
        match location {
            StoreLocation::Redb(path) => Store::open(path),
            StoreLocation::Etcd {
                endpoints,
                prefix,
                tls,
            } => Store::etcd_over(endpoints, prefix, tls.as_ref()),
        }
    }

    fn commit(&self, expect: &[Expect], writes: &[Write]) -> Result<bool, StoreError> {
        self.backend.commit(expect, writes)
    }

    fn write(&self, writes: &[Write]) -> Result<(), StoreError> {
        if self.commit(&[], writes)? {
            Ok(())
        } else {
            Err(err("a write without conditions was refused"))
        }
    }

    fn put_json<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), StoreError> {
        self.write(&[Write::Put(table, key.to_string(), json(value)?)])
    }

    fn get_json<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.backend.get(table, key)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(err)?)),
            None => Ok(None),
        }
    }

    fn all_json<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>, StoreError> {
        self.backend
            .scan(table)?
            .into_iter()
            .map(|(k, v)| Ok((k, serde_json::from_slice(&v).map_err(err)?)))
            .collect()
    }

    /// Delete `key`; `true` if it existed.
    fn remove(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        for _ in 0..ATTEMPTS {
            let Some(old) = self.backend.get(table, key)? else {
                return Ok(false);
            };
            let expect = [Expect {
                table,
                key: key.to_string(),
                value: Some(old),
            }];
            if self.commit(&expect, &[Write::Delete(table, key.to_string())])? {
                return Ok(true);
            }
        }
        Err(contended(table, key))
    }

    /// Record where `workload` is placed (or, with `None`, that it is
    /// placed nowhere).
    pub fn put_assignment<T: Serialize>(
        &self,
        workload: &str,
        placement: Option<&T>,
    ) -> Result<(), StoreError> {
        match placement {
            Some(p) => self.put_json(Table::Assignments, workload, p),
            None => self.write(&[Write::Delete(Table::Assignments, workload.to_string())]),
        }
    }

    /// Record many placements ([`Store::put_assignment`] each), in as few
    /// commits as the backend allows: one with the embedded store; with
    /// etcd, transactions of 128 writes (its limit), several in flight at
    /// once. Each commit is all or nothing; the answer says, per placement
    /// in order, whether it was recorded.
    pub fn put_assignments<T: Serialize + Sync>(
        &self,
        placements: &[(String, Option<T>)],
    ) -> Vec<Result<(), StoreError>> {
        let mut out: Vec<Result<(), StoreError>> = placements
            .iter()
            .map(|_| Err(err("a commit did not run")))
            .collect();
        self.put_assignments_each(placements, |range, result| {
            for slot in out.get_mut(range).into_iter().flatten() {
                *slot = result.clone();
            }
        });
        out
    }

    /// [`Store::put_assignments`], telling `done` on the calling thread as
    /// each commit lands (which placements, by index range, and whether it
    /// was recorded), so that the caller can act on the first ones while
    /// the others are still being written.
    pub fn put_assignments_each<T: Serialize + Sync>(
        &self,
        placements: &[(String, Option<T>)],
        mut done: impl FnMut(std::ops::Range<usize>, Result<(), StoreError>),
    ) {
        let size = if self.shared() {
            etcd::MAX_TXN_OPS
        } else {
            placements.len().max(1)
        };
        let chunks: Vec<&[(String, Option<T>)]> = placements.chunks(size).collect();
        let range = |i: usize| {
            let first = i * size;
            first..(first + chunks.get(i).map_or(0, |c| c.len()))
        };
        let commit = |chunk: &[(String, Option<T>)]| -> Result<(), StoreError> {
            let writes = chunk
                .iter()
                .map(|(workload, placement)| {
                    Ok(match placement {
                        Some(p) => Write::Put(Table::Assignments, workload.clone(), json(p)?),
                        None => Write::Delete(Table::Assignments, workload.clone()),
                    })
                })
                .collect::<Result<Vec<Write>, StoreError>>()?;
            self.write(&writes)
        };
        if chunks.len() <= 1 {
            for (i, chunk) in chunks.iter().enumerate() {
                done(range(i), commit(chunk));
            }
            return;
        }
        // etcd commits transactions in flight together (one fsync for
        // several): a few threads, each taking the next chunk, and the
        // calling thread hearing of each as it lands.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let (landed, arrivals) = std::sync::mpsc::channel();
        let mut heard = vec![false; chunks.len()];
        std::thread::scope(|scope| {
            for _ in 0..COMMITS_IN_FLIGHT.min(chunks.len()) {
                let landed = landed.clone();
                let (next, chunks, commit) = (&next, &chunks, &commit);
                scope.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(chunk) = chunks.get(i) else { break };
                        if landed.send((i, commit(chunk))).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(landed);
            for (i, result) in arrivals {
                if let Some(h) = heard.get_mut(i) {
                    *h = true;
                }
                done(range(i), result);
            }
        });
        for (i, h) in heard.into_iter().enumerate() {
            if !h {
                done(range(i), Err(err("a commit did not run")));
            }
        }
    }

    /// Every workload's placement.
    pub fn assignments<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StoreError> {
        self.all_json(Table::Assignments)
    }

    /// Create or replace a host's identity record.
    pub fn put_host<T: Serialize>(&self, name: &str, record: &T) -> Result<(), StoreError> {
        self.put_json(Table::Hosts, name, record)
    }

    /// A host's identity record.
    pub fn host<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        self.get_json(Table::Hosts, name)
    }

    /// Every host's identity record.
    pub fn hosts<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StoreError> {
        self.all_json(Table::Hosts)
    }

    /// Change a host's identity record in one transaction: `change` gets
    /// the record (or `None`) and returns what to keep (or `None` to keep
    /// nothing). Concurrent updates of one record are serialised, so none
    /// is lost (`change` may run again on the newer record).
    pub fn update_host<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        mut change: impl FnMut(Option<T>) -> Option<T>,
    ) -> Result<(), StoreError> {
        for _ in 0..ATTEMPTS {
            let old = self.backend.get(Table::Hosts, name)?;
            let record = match &old {
                Some(v) => Some(serde_json::from_slice(v).map_err(err)?),
                None => None,
            };
            let write = match change(record) {
                Some(new) => Write::Put(Table::Hosts, name.to_string(), json(&new)?),
                None => Write::Delete(Table::Hosts, name.to_string()),
            };
            let expect = [Expect {
                table: Table::Hosts,
                key: name.to_string(),
                value: old,
            }];
            if self.commit(&expect, &[write])? {
                return Ok(());
            }
        }
        Err(contended(Table::Hosts, name))
    }

    /// End host `name`'s identity, in one transaction: `revoke` gets its
    /// record and returns what to keep of it and the certificates to add to
    /// the revoked ones (fingerprint → entry). The record is checked
    /// unchanged when the transaction commits, so a certificate issued
    /// concurrently is either in it, or issued after and refused (the
    /// caller's renewal checks the record it writes to). `None` when there
    /// is no such host.
    pub fn revoke_host<T, E>(
        &self,
        name: &str,
        mut revoke: impl FnMut(T) -> (T, Vec<(String, E)>),
    ) -> Result<Option<Vec<String>>, StoreError>
    where
        T: Serialize + DeserializeOwned,
        E: Serialize,
    {
        for _ in 0..ATTEMPTS {
            let Some(old) = self.backend.get(Table::Hosts, name)? else {
                return Ok(None);
            };
            let record: T = serde_json::from_slice(&old).map_err(err)?;
            let (kept, revoked) = revoke(record);
            let mut writes = vec![Write::Put(Table::Hosts, name.to_string(), json(&kept)?)];
            for (fingerprint, entry) in &revoked {
                writes.push(Write::Put(
                    Table::Revoked,
                    fingerprint.clone(),
                    json(entry)?,
                ));
            }
            let expect = [Expect {
                table: Table::Hosts,
                key: name.to_string(),
                value: Some(old),
            }];
            if self.commit(&expect, &writes)? {
                return Ok(Some(revoked.into_iter().map(|(f, _)| f).collect()));
            }
        }
        Err(contended(Table::Hosts, name))
    }

    /// Forget revoked certificates for which `expired` holds (they are
    /// refused anyway once past their end of validity). Each is deleted
    /// only if unchanged since it was read.
    pub fn prune_revoked<E: DeserializeOwned>(
        &self,
        expired: impl Fn(&E) -> bool,
    ) -> Result<(), StoreError> {
        let gone: Vec<(String, Vec<u8>)> = self
            .backend
            .scan(Table::Revoked)?
            .into_iter()
            .filter(|(_, v)| serde_json::from_slice(v).is_ok_and(|e| expired(&e)))
            .collect();
        for batch in gone.chunks(etcd::MAX_TXN_OPS / 2) {
            let expect: Vec<Expect> = batch
                .iter()
                .map(|(k, v)| Expect {
                    table: Table::Revoked,
                    key: k.clone(),
                    value: Some(v.clone()),
                })
                .collect();
            let writes: Vec<Write> = batch
                .iter()
                .map(|(k, _)| Write::Delete(Table::Revoked, k.clone()))
                .collect();
            // Changed meanwhile: kept until the next prune.
            self.commit(&expect, &writes)?;
        }
        Ok(())
    }

    /// Revoked certificates: fingerprint → entry.
    pub fn revoked<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StoreError> {
        self.all_json(Table::Revoked)
    }

    /// Create or replace a workload.
    pub fn put_workload<T: Serialize>(&self, name: &str, spec: &T) -> Result<(), StoreError> {
        self.put_json(Table::Workloads, name, spec)
    }

    /// A workload by name.
    pub fn workload<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        self.get_json(Table::Workloads, name)
    }

    /// Every workload, by name.
    pub fn workloads<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StoreError> {
        self.all_json(Table::Workloads)
    }

    /// Delete a workload; `true` if it existed.
    pub fn delete_workload(&self, name: &str) -> Result<bool, StoreError> {
        self.remove(Table::Workloads, name)
    }

    /// Store a token record under its hash.
    pub fn put_token<T: Serialize>(&self, hash: &str, record: &T) -> Result<(), StoreError> {
        self.put_json(Table::Tokens, hash, record)
    }

    /// Forget a token (revoked).
    pub fn delete_token(&self, hash: &str) -> Result<bool, StoreError> {
        self.remove(Table::Tokens, hash)
    }

    /// Every token record.
    pub fn tokens<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StoreError> {
        self.all_json(Table::Tokens)
    }

    /// Record a migration's state.
    pub fn put_migration<T: Serialize>(&self, id: &str, record: &T) -> Result<(), StoreError> {
        self.put_json(Table::Migrations, id, record)
    }

    /// Forget a migration record.
    pub fn delete_migration(&self, id: &str) -> Result<bool, StoreError> {
        self.remove(Table::Migrations, id)
    }

    /// Every migration record.
    pub fn migrations<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StoreError> {
        self.all_json(Table::Migrations)
    }

    /// Record a migration's state, set its workload's generation and where
    /// the workload is placed from now on, in one transaction: the end of a
    /// migration, or the generation a source resumes at.
    pub fn commit_migration<T: Serialize, P: Serialize>(
        &self,
        id: &str,
        record: &T,
        workload: &str,
        generation: u64,
        placement: &P,
    ) -> Result<(), StoreError> {
        let mut writes = vec![Write::Put(Table::Migrations, id.to_string(), json(record)?)];
        writes.extend(place_at(workload, placement, generation)?);
        self.write(&writes)
    }

    /// Record where `workload` is placed and its generation, in one
    /// transaction: a failover promotes a standby at a higher generation.
    pub fn put_placement_at<P: Serialize>(
        &self,
        workload: &str,
        placement: &P,
        generation: u64,
    ) -> Result<(), StoreError> {
        self.write(&place_at(workload, placement, generation)?)
    }

    /// Every workload's generation.
    pub fn generations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.all_json(Table::Generations)
    }

    /// Cordon or uncordon a host (uncordoning ends its drain, if any).
    pub fn set_cordoned(&self, host: &str, cordoned: bool) -> Result<(), StoreError> {
        if cordoned {
            self.write(&[Write::Put(
                Table::Cordoned,
                host.to_string(),
                b"true".to_vec(),
            )])
        } else {
            self.write(&[
                Write::Delete(Table::Cordoned, host.to_string()),
                Write::Delete(Table::Draining, host.to_string()),
            ])
        }
    }

    /// Cordon a host and mark it as being drained (`true`), or only
    /// cordoned (`false`, once its drain has ended): a scheduler that
    /// takes over goes on with the drains it finds marked.
    pub fn set_draining(&self, host: &str, draining: bool) -> Result<(), StoreError> {
        let cordon = Write::Put(Table::Cordoned, host.to_string(), b"true".to_vec());
        let mark = if draining {
            Write::Put(Table::Draining, host.to_string(), b"true".to_vec())
        } else {
            Write::Delete(Table::Draining, host.to_string())
        };
        self.write(&[cordon, mark])
    }

    /// Hosts being drained.
    pub fn draining(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .backend
            .scan(Table::Draining)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Cordoned hosts (drained or not).
    pub fn cordoned(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .backend
            .scan(Table::Cordoned)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }
}

/// The writes that place `workload` and set its generation.
fn place_at<P: Serialize>(
    workload: &str,
    placement: &P,
    generation: u64,
) -> Result<[Write; 2], StoreError> {
    Ok([
        Write::Put(Table::Assignments, workload.to_string(), json(placement)?),
        Write::Put(Table::Generations, workload.to_string(), json(&generation)?),
    ])
}

fn contended(table: Table, key: &str) -> StoreError {
    err(format!(
        "`{key}` in {} kept changing under {ATTEMPTS} attempts to update it",
        table.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path).unwrap();
            store
                .put_workload("counter", &json!({"replicas": 2}))
                .unwrap();
            store
                .put_placement_at("counter", &json!({"h1": "primary"}), 3)
                .unwrap();
            store.set_cordoned("h1", true).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let all: Vec<(String, Value)> = store.workloads().unwrap();
        assert_eq!(all, vec![("counter".to_string(), json!({"replicas": 2}))]);
        assert_eq!(
            store.generations().unwrap(),
            vec![("counter".to_string(), 3)]
        );
        assert_eq!(store.cordoned().unwrap(), vec!["h1".to_string()]);
    }

    #[test]
    fn the_embedded_store_keeps_what_the_suite_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        suite(&store);
        concurrent_updates(std::sync::Arc::new(store));
    }

    #[test]
    fn the_etcd_store_keeps_what_the_suite_writes() {
        let etcd = testing::Etcd::start();
        let store = Store::etcd(&[etcd.url()], "/roam-test").unwrap();
        let e = store.put_workload("w", &json!({})).unwrap_err();
        assert!(
            e.is_not_leader(),
            "a replica that does not lead writes: {e}"
        );
        lead(&store);
        suite(&store);
        concurrent_updates(std::sync::Arc::new(store));
        // Another prefix is another store.
        let other = Store::etcd(&[etcd.url()], "/other").unwrap();
        assert!(other.workloads::<Value>().unwrap().is_empty());
    }

    /// Make `store`'s replica the leader (nobody else campaigns).
    fn lead(store: &Store) -> u64 {
        let election = store.election().unwrap();
        let session = election
            .start_session(std::time::Duration::from_secs(5))
            .unwrap();
        let term = election
            .campaign(&session, b"me".to_vec())
            .unwrap()
            .ok()
            .unwrap();
        store.fence(Some(term));
        term
    }

    #[test]
    fn a_lease_replaced_by_another_is_given_up_and_frees_the_leader_key() {
        let etcd = testing::Etcd::start();
        let old = Store::etcd(&[etcd.url()], "/roam").unwrap();
        let other = Store::etcd(&[etcd.url()], "/roam").unwrap();
        let ttl = std::time::Duration::from_secs(5);
        let election = old.election().unwrap();
        let first = election.start_session(ttl).unwrap();
        assert!(election.campaign(&first, b"old".to_vec()).unwrap().is_ok());
        // The replica takes another lease (what it does once it gave the
        // first up): the first is never renewed again and is revoked, so
        // the leader key on it goes now — not when etcd would expire it,
        // and never kept alive by a late renewal (nobody could lead then).
        let _second = election.start_session(ttl).unwrap();
        assert!(first.given_up() && !first.alive());
        let theirs = other.election().unwrap();
        let session = theirs.start_session(ttl).unwrap();
        let began = std::time::Instant::now();
        loop {
            if theirs
                .campaign(&session, b"other".to_vec())
                .unwrap()
                .is_ok()
            {
                break;
            }
            assert!(
                began.elapsed() < std::time::Duration::from_secs(3),
                "the given-up lease still holds the leader key"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn a_deposed_leader_cannot_write_once_another_leads() {
        let etcd = testing::Etcd::start();
        let old = Store::etcd(&[etcd.url()], "/roam").unwrap();
        let new = Store::etcd(&[etcd.url()], "/roam").unwrap();
        let first = lead(&old);
        old.put_workload("w", &json!({"by": "old"})).unwrap();
        // While the first leads, nobody else can.
        let (elect, session) = {
            let e = new.election().unwrap();
            let s = e.start_session(std::time::Duration::from_secs(5)).unwrap();
            (e, s)
        };
        let holder = elect
            .campaign(&session, b"new".to_vec())
            .unwrap()
            .err()
            .unwrap()
            .unwrap();
        assert_eq!((holder.value, holder.term), (b"me".to_vec(), first));
        // The first's lease ends (as if it paused past its TTL); the other
        // takes over with a newer term.
        old.election().unwrap().etcd.revoke_lease_for_test();
        let second = elect
            .campaign(&session, b"new".to_vec())
            .unwrap()
            .ok()
            .unwrap();
        assert!(second > first);
        new.fence(Some(second));
        // The deposed leader still believes it leads in `first`: every kind
        // of write it makes is refused, and none lands.
        let e = old.put_workload("w", &json!({"by": "stale"})).unwrap_err();
        assert!(e.is_not_leader(), "{e}");
        assert!(e.to_string().contains(&format!("term {first}")), "{e}");
        // The refusal ends its fence: it knows at once that it does not
        // lead, and sends nothing more ...
        assert!(!old.election().unwrap().fenced_in(first));
        let e = old.delete_workload("w").unwrap_err();
        assert!(e.to_string().contains("does not lead"), "{e}");
        // ... and were it to send with the stale term again, etcd refuses
        // each kind of write.
        old.fence(Some(first));
        assert!(old.delete_workload("w").unwrap_err().is_not_leader());
        old.fence(Some(first));
        assert!(
            old.update_host("h", |_: Option<Value>| Some(json!({})))
                .unwrap_err()
                .is_not_leader()
        );
        new.put_workload("v", &json!({"by": "new"})).unwrap();
        let all: Vec<(String, Value)> = new.workloads().unwrap();
        assert_eq!(
            all,
            vec![
                ("v".into(), json!({"by": "new"})),
                ("w".into(), json!({"by": "old"}))
            ]
        );
        assert_eq!(new.host::<Value>("h").unwrap(), None);
    }

    #[test]
    fn modules_bigger_than_an_etcd_request_are_kept_in_chunks() {
        let etcd = testing::Etcd::start();
        let store = Store::etcd(&[etcd.url()], "/roam").unwrap();
        lead(&store);
        let bytes: Vec<u8> = (0..(5 << 19) + 7).map(|i| (i % 251) as u8).collect();
        store.put_module("sha256:ab", &bytes).unwrap();
        assert_eq!(store.module("sha256:ab", 64 << 20).unwrap(), Some(bytes));
        assert_eq!(store.module("sha256:cd", 64 << 20).unwrap(), None);
        let e = store.module("sha256:ab", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
    }

    #[test]
    fn the_first_bootstrap_wins_and_nobody_overwrites_it() {
        let etcd = testing::Etcd::start();
        let a = Store::etcd(&[etcd.url()], "/roam").unwrap();
        let b = Store::etcd(&[etcd.url()], "/roam").unwrap();
        assert!(a.bootstrap_cluster(&[("ca.crt", b"A".to_vec())]).unwrap());
        assert!(!b.bootstrap_cluster(&[("ca.crt", b"B".to_vec())]).unwrap());
        assert_eq!(b.cluster_value("ca.crt").unwrap(), Some(b"A".to_vec()));
        assert!(a.bootstrap_admin("h1", &json!({"role": "admin"})).unwrap());
        assert!(!b.bootstrap_admin("h2", &json!({"role": "admin"})).unwrap());
        assert_eq!(b.tokens::<Value>().unwrap().len(), 1);
    }

    #[test]
    fn an_unreachable_etcd_is_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = Store::etcd(&[format!("http://127.0.0.1:{port}")], "/roam").unwrap_err();
        assert!(e.to_string().contains("etcd"), "{e}");
        let e = Store::etcd(&[], "/roam").unwrap_err();
        assert!(e.to_string().contains("no etcd endpoint"), "{e}");
    }

    /// What every backend must do, the same way.
    fn suite(store: &Store) {
        // Workloads: put, get, list in key order, delete once.
        store.put_workload("b", &json!({"n": 1})).unwrap();
        store.put_workload("a", &json!({"n": 2})).unwrap();
        store.put_workload("b", &json!({"n": 3})).unwrap();
        assert_eq!(store.workload::<Value>("b").unwrap(), Some(json!({"n": 3})));
        assert_eq!(store.workload::<Value>("nope").unwrap(), None);
        let all: Vec<(String, Value)> = store.workloads().unwrap();
        assert_eq!(
            all,
            vec![("a".into(), json!({"n": 2})), ("b".into(), json!({"n": 3}))]
        );
        assert!(store.delete_workload("a").unwrap());
        assert!(!store.delete_workload("a").unwrap());

        // Tokens.
        store.put_token("h1", &json!({"role": "admin"})).unwrap();
        assert_eq!(store.tokens::<Value>().unwrap().len(), 1);
        assert!(store.delete_token("h1").unwrap());
        assert!(store.tokens::<Value>().unwrap().is_empty());

        // Cordons.
        store.set_cordoned("h1", true).unwrap();
        store.set_cordoned("h2", true).unwrap();
        store.set_cordoned("h2", false).unwrap();
        store.set_cordoned("h3", false).unwrap();
        assert_eq!(store.cordoned().unwrap(), vec!["h1".to_string()]);
        // A drain marks its host until it ends; the host stays cordoned.
        store.set_draining("h2", true).unwrap();
        assert_eq!(store.draining().unwrap(), vec!["h2".to_string()]);
        assert_eq!(
            store.cordoned().unwrap(),
            vec!["h1".to_string(), "h2".to_string()]
        );
        store.set_draining("h2", false).unwrap();
        assert!(store.draining().unwrap().is_empty());
        // Uncordoning ends a drain.
        store.set_draining("h3", true).unwrap();
        store.set_cordoned("h3", false).unwrap();
        assert!(store.draining().unwrap().is_empty());
        assert_eq!(
            store.cordoned().unwrap(),
            vec!["h1".to_string(), "h2".to_string()]
        );

        // Placements and generations, alone and with a migration record.
        store
            .put_placement_at("w", &json!({"h1": "primary"}), 4)
            .unwrap();
        store
            .commit_migration(
                "m1",
                &json!({"record": 1}),
                "w",
                5,
                &json!({"h2": "primary"}),
            )
            .unwrap();
        assert_eq!(store.generations().unwrap(), vec![("w".to_string(), 5)]);
        let placed: Vec<(String, Value)> = store.assignments().unwrap();
        assert_eq!(placed, vec![("w".into(), json!({"h2": "primary"}))]);
        store.put_assignment::<Value>("w", None).unwrap();
        assert!(store.assignments::<Value>().unwrap().is_empty());
        // Many placements at once (more than etcd takes in one
        // transaction): every one recorded, then every one removed.
        let many: Vec<(String, Option<Value>)> = (0..300)
            .map(|i| (format!("w{i:03}"), Some(json!({ "h": i }))))
            .collect();
        assert!(store.put_assignments(&many).iter().all(Result::is_ok));
        // Each commit is heard of as it lands: every placement once.
        let mut heard = vec![0; many.len()];
        store.put_assignments_each(&many, |range, result| {
            assert!(result.is_ok(), "{result:?}");
            for i in range {
                heard[i] += 1;
            }
        });
        assert!(heard.iter().all(|n| *n == 1), "{heard:?}");
        let placed: Vec<(String, Value)> = store.assignments().unwrap();
        assert_eq!(placed.len(), 300);
        assert_eq!(placed[299], ("w299".to_string(), json!({ "h": 299 })));
        let none: Vec<(String, Option<Value>)> = many.into_iter().map(|(w, _)| (w, None)).collect();
        assert!(store.put_assignments(&none).iter().all(Result::is_ok));
        assert!(store.assignments::<Value>().unwrap().is_empty());
        assert_eq!(store.migrations::<Value>().unwrap().len(), 1);
        assert!(store.delete_migration("m1").unwrap());

        // Host records: read-modify-write, revocation, pruning.
        store
            .put_host("h1", &json!({"certs": ["f1", "f2"]}))
            .unwrap();
        store
            .update_host("h1", |r: Option<Value>| {
                let mut r = r.unwrap();
                r["certs"].as_array_mut().unwrap().push(json!("f3"));
                Some(r)
            })
            .unwrap();
        let fingerprints = store
            .revoke_host("h1", |r: Value| {
                let certs: Vec<(String, Value)> = r["certs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| {
                        (
                            f.as_str().unwrap().to_string(),
                            json!({"expired": f == "f1"}),
                        )
                    })
                    .collect();
                (json!({"certs": []}), certs)
            })
            .unwrap()
            .unwrap();
        assert_eq!(fingerprints, vec!["f1", "f2", "f3"]);
        assert_eq!(
            store.host::<Value>("h1").unwrap(),
            Some(json!({"certs": []}))
        );
        assert_eq!(
            store
                .revoke_host("nobody", |r: Value| (r, Vec::<(String, Value)>::new()))
                .unwrap(),
            None
        );
        store
            .prune_revoked(|e: &Value| e["expired"] == true)
            .unwrap();
        let left: Vec<String> = store
            .revoked::<Value>()
            .unwrap()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(left, vec!["f2", "f3"]);
        store.update_host("h1", |_: Option<Value>| None).unwrap();
        assert_eq!(store.host::<Value>("h1").unwrap(), None);
    }

    /// Read-modify-writes of one record from several threads: none lost.
    fn concurrent_updates(store: std::sync::Arc<Store>) {
        store.put_host("c", &json!({"n": 0})).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        store
                            .update_host("c", |r: Option<Value>| {
                                let n = r.unwrap()["n"].as_u64().unwrap();
                                Some(json!({"n": n + 1}))
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.host::<Value>("c").unwrap(), Some(json!({"n": 100})));
    }
}

/// A real etcd for tests: one member on loopback ports, its data in a
/// temporary directory, killed when dropped.
#[cfg(any(test, feature = "testing"))]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a failure to start etcd fails the test that asked"
)]
pub mod testing {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// An etcd process.
    pub struct Etcd {
        child: Child,
        client: u16,
        _dir: tempfile::TempDir,
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    impl Etcd {
        /// Start one, and wait until it listens.
        pub fn start() -> Etcd {
            EtcdCluster::start(1)
                .members
                .pop()
                .flatten()
                .expect("one member")
        }

        /// Its client URL.
        pub fn url(&self) -> String {
            format!("http://127.0.0.1:{}", self.client)
        }

        /// Kill it (SIGKILL).
        pub fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A real etcd cluster of several members on loopback ports.
    pub struct EtcdCluster {
        /// Its members (`None` once killed).
        pub members: Vec<Option<Etcd>>,
    }

    impl EtcdCluster {
        /// Start `n` members, and wait until each listens.
        pub fn start(n: usize) -> EtcdCluster {
            let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
            let initial: Vec<String> = ports
                .iter()
                .enumerate()
                .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
                .collect();
            let initial = initial.join(",");
            let members = ports
                .iter()
                .enumerate()
                .map(|(i, (client, peer))| {
                    let dir = tempfile::tempdir().unwrap();
                    let client_url = format!("http://127.0.0.1:{client}");
                    let peer_url = format!("http://127.0.0.1:{peer}");
                    let child = Command::new("etcd")
                        .args(["--name", &format!("m{i}"), "--data-dir"])
                        .arg(dir.path())
                        .args(["--listen-client-urls", &client_url])
                        .args(["--advertise-client-urls", &client_url])
                        .args(["--listen-peer-urls", &peer_url])
                        .args(["--initial-advertise-peer-urls", &peer_url])
                        .args(["--initial-cluster", &initial])
                        .args(["--initial-cluster-state", "new"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("etcd (Debian `etcd-server`; scripts/setup installs it)");
                    Some(Etcd {
                        child,
                        client: *client,
                        _dir: dir,
                    })
                })
                .collect::<Vec<_>>();
            let deadline = Instant::now() + Duration::from_secs(30);
            for (client, _) in &ports {
                while std::net::TcpStream::connect(("127.0.0.1", *client)).is_err() {
                    assert!(Instant::now() < deadline, "etcd did not start listening");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            EtcdCluster { members }
        }

        /// Every member's client URL, comma-separated (`--store etcd=...`).
        pub fn urls(&self) -> String {
            self.members
                .iter()
                .flatten()
                .map(Etcd::url)
                .collect::<Vec<_>>()
                .join(",")
        }
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
