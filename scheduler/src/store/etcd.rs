//! The etcd v3 backend: every table a key prefix under the store's prefix
//! (`{prefix}/{table}/{key}`), every commit one etcd transaction whose
//! compares are the commit's expectations.
//!
//! The [`Store`](super::Store) is synchronous, as the embedded store is (a
//! commit returns once it is durable); this backend runs the etcd client on
//! a runtime of its own and waits for each call, so a caller on any tokio
//! runtime, or none, can use it.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};

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

fn etcd_err(e: etcd_client::Error) -> StoreError {
    err(format!("etcd: {e}"))
}

impl Drop for Etcd {
    fn drop(&mut self) {
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
        let mut kv = self.client.kv_client();
        self.run(async move {
            let r = kv
                .txn(Txn::new().when(compares).and_then(ops))
                .await
                .map_err(etcd_err)?;
            Ok(r.succeeded())
        })
    }
}
