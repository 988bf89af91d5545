//! The embedded backend: one redb file in the scheduler's data directory.
//! Each commit is one write transaction, synced to disk before it returns;
//! redb runs one write transaction at a time, so a commit's checks and its
//! writes are atomic.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Backend, Expect, StoreError, Table, Write, err};

fn json_table(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.name())
}

fn u64_table(table: Table) -> TableDefinition<'static, &'static str, u64> {
    TableDefinition::new(table.name())
}

fn unit_table(table: Table) -> TableDefinition<'static, &'static str, ()> {
    TableDefinition::new(table.name())
}

/// How a table's values are kept in the file (the layout of earlier
/// versions, so their files open as they are).
#[derive(Clone, Copy)]
enum Kind {
    /// JSON bytes.
    Json,
    /// A number (the value's JSON is a `u64`).
    Number,
    /// Keys only (the value is ignored; read back as `true`).
    Keys,
}

fn kind(table: Table) -> Kind {
    match table {
        Table::Generations => Kind::Number,
        Table::Cordoned | Table::Draining => Kind::Keys,
        _ => Kind::Json,
    }
}

/// A redb file.
pub(super) struct Redb {
    db: Database,
}

impl Redb {
    pub(super) fn open(path: &Path) -> Result<Redb, StoreError> {
        let db = Database::create(path).map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        for table in Table::ALL {
            match kind(table) {
                Kind::Json => drop(tx.open_table(json_table(table)).map_err(err)?),
                Kind::Number => drop(tx.open_table(u64_table(table)).map_err(err)?),
                Kind::Keys => drop(tx.open_table(unit_table(table)).map_err(err)?),
            }
        }
        tx.commit().map_err(err)?;
        Ok(Redb { db })
    }
}

fn number(bytes: &[u8]) -> Result<u64, StoreError> {
    serde_json::from_slice(bytes).map_err(err)
}

fn number_bytes(n: u64) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// The value of `key` in `table`, read in `tx` (a read or write
/// transaction's table).
macro_rules! read {
    ($tx:expr, $table:expr, $key:expr) => {{
        let table = $table;
        let value: Option<Vec<u8>> = match kind(table) {
            Kind::Json => $tx
                .open_table(json_table(table))
                .map_err(err)?
                .get($key)
                .map_err(err)?
                .map(|v| v.value().to_vec()),
            Kind::Number => $tx
                .open_table(u64_table(table))
                .map_err(err)?
                .get($key)
                .map_err(err)?
                .map(|v| number_bytes(v.value())),
            Kind::Keys => $tx
                .open_table(unit_table(table))
                .map_err(err)?
                .get($key)
                .map_err(err)?
                .map(|_| b"true".to_vec()),
        };
        value
    }};
}

impl Backend for Redb {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        Ok(read!(tx, table, key))
    }

    fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let mut out = Vec::new();
        match kind(table) {
            Kind::Json => {
                for item in tx
                    .open_table(json_table(table))
                    .map_err(err)?
                    .iter()
                    .map_err(err)?
                {
                    let (k, v) = item.map_err(err)?;
                    out.push((k.value().to_string(), v.value().to_vec()));
                }
            }
            Kind::Number => {
                for item in tx
                    .open_table(u64_table(table))
                    .map_err(err)?
                    .iter()
                    .map_err(err)?
                {
                    let (k, v) = item.map_err(err)?;
                    out.push((k.value().to_string(), number_bytes(v.value())));
                }
            }
            Kind::Keys => {
                for item in tx
                    .open_table(unit_table(table))
                    .map_err(err)?
                    .iter()
                    .map_err(err)?
                {
                    let (k, _) = item.map_err(err)?;
                    out.push((k.value().to_string(), b"true".to_vec()));
                }
            }
        }
        Ok(out)
    }

    fn commit(&self, expect: &[Expect], writes: &[Write]) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        for e in expect {
            if read!(tx, e.table, e.key.as_str()) != e.value {
                // Dropped without a commit: nothing written.
                return Ok(false);
            }
        }
        for w in writes {
            match w {
                Write::Put(table, key, value) => match kind(*table) {
                    Kind::Json => {
                        tx.open_table(json_table(*table))
                            .map_err(err)?
                            .insert(key.as_str(), value.as_slice())
                            .map_err(err)?;
                    }
                    Kind::Number => {
                        tx.open_table(u64_table(*table))
                            .map_err(err)?
                            .insert(key.as_str(), number(value)?)
                            .map_err(err)?;
                    }
                    Kind::Keys => {
                        tx.open_table(unit_table(*table))
                            .map_err(err)?
                            .insert(key.as_str(), ())
                            .map_err(err)?;
                    }
                },
                Write::Delete(table, key) => match kind(*table) {
                    Kind::Json => {
                        tx.open_table(json_table(*table))
                            .map_err(err)?
                            .remove(key.as_str())
                            .map_err(err)?;
                    }
                    Kind::Number => {
                        tx.open_table(u64_table(*table))
                            .map_err(err)?
                            .remove(key.as_str())
                            .map_err(err)?;
                    }
                    Kind::Keys => {
                        tx.open_table(unit_table(*table))
                            .map_err(err)?
                            .remove(key.as_str())
                            .map_err(err)?;
                    }
                },
            }
        }
        tx.commit().map_err(err)?;
        Ok(true)
    }
}
