//! Modules on a host: fetched from the scheduler by digest (size-bounded,
//! sha256-checked, see `scheduler_client.rs`) and compiled once, however
//! many starts or migrations wait for the same one.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use roam_proto::reply::error;
use roam_runtime::{Digest, LoadError, Module};

use crate::daemon::Host;

/// Why a module is not available here.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ModuleError {
    /// The scheduler did not hand it over, or its bytes did not check out.
    #[error("{0:#}")]
    Fetch(anyhow::Error),
    /// The runtime refused it.
    #[error(transparent)]
    Load(#[from] LoadError),
}

impl ModuleError {
    /// The answer to whoever asked for it.
    pub(crate) fn reply(&self) -> Response {
        let status = match self {
            ModuleError::Fetch(_) => StatusCode::BAD_GATEWAY,
            ModuleError::Load(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        error(status, self.to_string())
    }
}

impl Host {
    /// The module with `digest`: the copy already in use here, else fetched
    /// from the scheduler and compiled (or taken from the compiled cache).
    pub(crate) async fn module(&self, digest: &Digest) -> Result<Module, ModuleError> {
        if let Some(module) = self.runtime.loaded(digest) {
            return Ok(module);
        }
        // One fetch and compile per module, however many starts wait for it.
        let gate = {
            let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
            loading.retain(|_, g| Arc::strong_count(g) > 1);
            loading.entry(*digest).or_default().clone()
        };
        let _turn = gate.lock().await;
        if let Some(module) = self.runtime.loaded(digest) {
            return Ok(module);
        }
        let bytes = self
            .scheduler
            .fetch_module(digest)
            .await
            .map_err(ModuleError::Fetch)?;
        Ok(self.runtime.load(bytes).await?)
    }
}
