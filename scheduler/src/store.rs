//! Desired state in an embedded transactional store (redb).
//!
//! One file in the scheduler's data directory holds what must survive a
//! restart: workloads and their specs, token records, cordoned hosts. Each
//! change is one write transaction, committed (and so synced to disk) before
//! the call that made it returns — nothing acknowledged is lost. Host
//! liveness and usage are soft state rebuilt from heartbeats and are not
//! stored.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Workloads by name (JSON values).
const WORKLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("workloads");
/// Token records by token hash (JSON values).
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// Cordoned host ids.
const CORDONED: TableDefinition<&str, ()> = TableDefinition::new("cordoned");
/// Live migrations by id (JSON values).
const MIGRATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("migrations");
/// Workload generation (fencing token), raised by every committed migration.
const GENERATIONS: TableDefinition<&str, u64> = TableDefinition::new("generations");
/// Where each workload is placed (JSON values: host → role), written before
/// the start call; a restarted scheduler accepts exactly these.
const ASSIGNMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("assignments");
/// Host identities by host name (JSON values): the trusted labels bound to
/// the name when it first joined.
const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");
/// Revoked host certificates by fingerprint (JSON values).
const REVOKED: TableDefinition<&str, &[u8]> = TableDefinition::new("revoked");

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Write where `workload` is placed and its generation in `tx`.
fn place_at<P: Serialize>(
    tx: &redb::WriteTransaction,
    workload: &str,
    placement: &P,
    generation: u64,
) -> Result<(), StoreError> {
    let placed = serde_json::to_vec(placement).map_err(err)?;
    tx.open_table(ASSIGNMENTS)
        .map_err(err)?
        .insert(workload, placed.as_slice())
        .map_err(err)?;
    tx.open_table(GENERATIONS)
        .map_err(err)?
        .insert(workload, generation)
        .map_err(err)?;
    Ok(())
}

/// The scheduler's durable state.
pub struct Store {
    db: Database,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Open (or create) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(WORKLOADS).map_err(err)?;
        tx.open_table(TOKENS).map_err(err)?;
        tx.open_table(CORDONED).map_err(err)?;
        tx.open_table(MIGRATIONS).map_err(err)?;
        tx.open_table(GENERATIONS).map_err(err)?;
        tx.open_table(HOSTS).map_err(err)?;
        tx.open_table(ASSIGNMENTS).map_err(err)?;
        tx.open_table(REVOKED).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Store { db })
    }

    fn put_json<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(err)?;
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(table)
            .map_err(err)?
            .insert(key, bytes.as_slice())
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    fn get_json<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(table).map_err(err)?;
        match t.get(key).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
    }

    fn all_json<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(table).map_err(err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(err)? {
            let (k, v) = item.map_err(err)?;
            out.push((
                k.value().to_string(),
                serde_json::from_slice(v.value()).map_err(err)?,
            ));
        }
        Ok(out)
    }

    fn remove(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        let existed = tx
            .open_table(table)
            .map_err(err)?
            .remove(key)
            .map_err(err)?
            .is_some();
        tx.commit().map_err(err)?;
        Ok(existed)
    }

    /// Record where `workload` is placed (or, with `None`, that it is
    /// placed nowhere).
    pub fn put_assignment<T: Serialize>(
        &self,
        workload: &str,
        placement: Option<&T>,
    ) -> Result<(), StoreError> {
        match placement {
            Some(p) => self.put_json(ASSIGNMENTS, workload, p),
            None => self.remove(ASSIGNMENTS, workload).map(drop),
        }
    }

    /// Every workload's placement.
    pub fn assignments<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StoreError> {
        self.all_json(ASSIGNMENTS)
    }

    /// Create or replace a host's identity record.
    pub fn put_host<T: Serialize>(&self, name: &str, record: &T) -> Result<(), StoreError> {
        self.put_json(HOSTS, name, record)
    }

    /// A host's identity record.
    pub fn host<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        self.get_json(HOSTS, name)
    }

    /// Change a host's identity record in one transaction: `change` gets
    /// the record (or `None`) and returns what to keep (or `None` to keep
    /// nothing). Concurrent updates of one record are serialised, so none
    /// is lost.
    pub fn update_host<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        change: impl FnOnce(Option<T>) -> Option<T>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut t = tx.open_table(HOSTS).map_err(err)?;
            let old = match t.get(name).map_err(err)? {
                Some(v) => Some(serde_json::from_slice(v.value()).map_err(err)?),
                None => None,
            };
            match change(old) {
                Some(new) => {
                    let bytes = serde_json::to_vec(&new).map_err(err)?;
                    t.insert(name, bytes.as_slice()).map_err(err)?;
                }
                None => {
                    t.remove(name).map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)
    }

    /// End host `name`'s identity, in one transaction: `revoke` gets its
    /// record and returns what to keep of it and the certificates to add to
    /// the revoked ones (fingerprint → entry). Reading the record in the
    /// same transaction means a certificate issued concurrently is either
    /// in it, or issued after and refused (the caller's renewal checks the
    /// record it writes to). `None` when there is no such host.
    pub fn revoke_host<T, E>(
        &self,
        name: &str,
        revoke: impl FnOnce(T) -> (T, Vec<(String, E)>),
    ) -> Result<Option<Vec<String>>, StoreError>
    where
        T: Serialize + DeserializeOwned,
        E: Serialize,
    {
        let tx = self.db.begin_write().map_err(err)?;
        let fingerprints = {
            let mut hosts = tx.open_table(HOSTS).map_err(err)?;
            let record: T = match hosts.get(name).map_err(err)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(err)?,
                None => return Ok(None),
            };
            let (kept, revoked) = revoke(record);
            let bytes = serde_json::to_vec(&kept).map_err(err)?;
            hosts.insert(name, bytes.as_slice()).map_err(err)?;
            let mut t = tx.open_table(REVOKED).map_err(err)?;
            for (fingerprint, entry) in &revoked {
                let bytes = serde_json::to_vec(entry).map_err(err)?;
                t.insert(fingerprint.as_str(), bytes.as_slice())
                    .map_err(err)?;
            }
            revoked.into_iter().map(|(f, _)| f).collect()
        };
        tx.commit().map_err(err)?;
        Ok(Some(fingerprints))
    }

    /// Forget revoked certificates for which `expired` holds (they are
    /// refused anyway once past their end of validity).
    pub fn prune_revoked<E: DeserializeOwned>(
        &self,
        expired: impl Fn(&E) -> bool,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut t = tx.open_table(REVOKED).map_err(err)?;
            t.retain(|_, v| !serde_json::from_slice(v).is_ok_and(|e| expired(&e)))
                .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Revoked certificates: fingerprint → entry.
    pub fn revoked<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StoreError> {
        self.all_json(REVOKED)
    }

    /// Create or replace a workload.
    pub fn put_workload<T: Serialize>(&self, name: &str, spec: &T) -> Result<(), StoreError> {
        self.put_json(WORKLOADS, name, spec)
    }

    /// A workload by name.
    pub fn workload<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        self.get_json(WORKLOADS, name)
    }

    /// Every workload, by name.
    pub fn workloads<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StoreError> {
        self.all_json(WORKLOADS)
    }

    /// Delete a workload; `true` if it existed.
    pub fn delete_workload(&self, name: &str) -> Result<bool, StoreError> {
        self.remove(WORKLOADS, name)
    }

    /// Store a token record under its hash.
    pub fn put_token<T: Serialize>(&self, hash: &str, record: &T) -> Result<(), StoreError> {
        self.put_json(TOKENS, hash, record)
    }

    /// Forget a token (revoked).
    pub fn delete_token(&self, hash: &str) -> Result<bool, StoreError> {
        self.remove(TOKENS, hash)
    }

    /// Every token record.
    pub fn tokens<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StoreError> {
        self.all_json(TOKENS)
    }

    /// Record a migration's state.
    pub fn put_migration<T: Serialize>(&self, id: &str, record: &T) -> Result<(), StoreError> {
        self.put_json(MIGRATIONS, id, record)
    }

    /// Forget a migration record.
    pub fn delete_migration(&self, id: &str) -> Result<bool, StoreError> {
        self.remove(MIGRATIONS, id)
    }

    /// Every migration record.
    pub fn migrations<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StoreError> {
        self.all_json(MIGRATIONS)
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
        let bytes = serde_json::to_vec(record).map_err(err)?;
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(MIGRATIONS)
            .map_err(err)?
            .insert(id, bytes.as_slice())
            .map_err(err)?;
        place_at(&tx, workload, placement, generation)?;
        tx.commit().map_err(err)
    }

    /// Record where `workload` is placed and its generation, in one
    /// transaction: a failover promotes a standby at a higher generation.
    pub fn put_placement_at<P: Serialize>(
        &self,
        workload: &str,
        placement: &P,
        generation: u64,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        place_at(&tx, workload, placement, generation)?;
        tx.commit().map_err(err)
    }

    /// Every workload's generation.
    pub fn generations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(GENERATIONS).map_err(err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(err)? {
            let (k, v) = item.map_err(err)?;
            out.push((k.value().to_string(), v.value()));
        }
        Ok(out)
    }

    /// Cordon or uncordon a host.
    pub fn set_cordoned(&self, host: &str, cordoned: bool) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut t = tx.open_table(CORDONED).map_err(err)?;
            if cordoned {
                t.insert(host, ()).map_err(err)?;
            } else {
                t.remove(host).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Cordoned hosts.
    pub fn cordoned(&self) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(CORDONED).map_err(err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(err)? {
            out.push(item.map_err(err)?.0.value().to_string());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path).unwrap();
            store
                .put_workload("counter", &serde_json::json!({"replicas": 2}))
                .unwrap();
            store.put_workload("gone", &serde_json::json!({})).unwrap();
            assert!(store.delete_workload("gone").unwrap());
            store.set_cordoned("h1", true).unwrap();
            store.set_cordoned("h2", true).unwrap();
            store.set_cordoned("h2", false).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let all: Vec<(String, serde_json::Value)> = store.workloads().unwrap();
        assert_eq!(
            all,
            vec![("counter".to_string(), serde_json::json!({"replicas": 2}))]
        );
        assert_eq!(store.cordoned().unwrap(), vec!["h1".to_string()]);
        assert_eq!(store.workload::<serde_json::Value>("gone").unwrap(), None);
    }
}
