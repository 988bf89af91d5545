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
}

impl Table {
    const ALL: [Table; 8] = [
        Table::Workloads,
        Table::Tokens,
        Table::Cordoned,
        Table::Migrations,
        Table::Generations,
        Table::Assignments,
        Table::Hosts,
        Table::Revoked,
    ];

    fn name(self) -> &'static str {
        match self {
            Table::Workloads => "workloads",
            Table::Tokens => "tokens",
            Table::Cordoned => "cordoned",
            Table::Migrations => "migrations",
            Table::Generations => "generations",
            Table::Assignments => "assignments",
            Table::Hosts => "hosts",
            Table::Revoked => "revoked",
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

/// Where a [`Store`] keeps its tables.
pub(crate) trait Backend: Send + Sync {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every entry of `table`, by key.
    fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Apply `writes` in one transaction if every `expect` holds; `false`
    /// (and nothing written) if one does not.
    fn commit(&self, expect: &[Expect], writes: &[Write]) -> Result<bool, StoreError>;
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(err)
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
    },
}

/// The scheduler's durable state.
pub struct Store {
    backend: Box<dyn Backend>,
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
            backend: Box::new(redb::Redb::open(path)?),
        })
    }

    /// Connect to the etcd cluster at `endpoints`, every key under
    /// `prefix`.
    pub fn etcd(endpoints: &[String], prefix: &str) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Box::new(etcd::Etcd::connect(endpoints, prefix)?),
        })
    }

    /// Open the store at `location`.
    pub fn at(location: &StoreLocation) -> Result<Store, StoreError> {
        match location {
            StoreLocation::Redb(path) => Store::open(path),
            StoreLocation::Etcd { endpoints, prefix } => Store::etcd(endpoints, prefix),
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

    /// Cordon or uncordon a host.
    pub fn set_cordoned(&self, host: &str, cordoned: bool) -> Result<(), StoreError> {
        let write = if cordoned {
            Write::Put(Table::Cordoned, host.to_string(), b"true".to_vec())
        } else {
            Write::Delete(Table::Cordoned, host.to_string())
        };
        self.write(&[write])
    }

    /// Cordoned hosts.
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
        suite(&store);
        concurrent_updates(std::sync::Arc::new(store));
        // Another prefix is another store.
        let other = Store::etcd(&[etcd.url()], "/other").unwrap();
        assert!(other.workloads::<Value>().unwrap().is_empty());
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
            let dir = tempfile::tempdir().unwrap();
            let (client, peer) = (free_port(), free_port());
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new("etcd")
                .args(["--name", "t", "--data-dir"])
                .arg(dir.path())
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("t={peer_url}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("etcd (Debian `etcd-server`; scripts/setup installs it)");
            let etcd = Etcd {
                child,
                client,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
                assert!(Instant::now() < deadline, "etcd did not start listening");
                std::thread::sleep(Duration::from_millis(20));
            }
            etcd
        }

        /// Its client URL.
        pub fn url(&self) -> String {
            format!("http://127.0.0.1:{}", self.client)
        }
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
