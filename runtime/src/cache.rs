//! The on-disk cache of compiled code.
//!
//! Compiling a large module takes seconds; a host that restarts or receives a
//! workload it ran before should not pay that again. Compiled artifacts are
//! written by this host only, into its own data directory, under a name made
//! of the module digest and a key covering everything that makes compiled code
//! incompatible (the engine's compatibility hash, the rewriter version).
//! Compiled code that came from anywhere else is never loaded:
//! `Module::deserialize` trusts its input completely.

use std::hash::Hasher;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;

use crate::module::Digest;

/// Bump when the rewriter's output changes for the same input.
const REWRITER_VERSION: u32 = 1;

/// Feeds `Hash` output into sha256 so the key is stable across runs.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0
    }
}

/// The compatibility key of an engine: equal keys mean compiled code is
/// interchangeable.
pub fn engine_key(engine: &Engine) -> String {
    use std::hash::Hash;
    let mut h = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    REWRITER_VERSION.hash(&mut h);
    hex::encode(&h.0.finalize()[..12])
}

/// A directory of compiled modules written by this host.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
    key: String,
}

impl CompiledCache {
    /// Use (and create) `dir`.
    pub fn new(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(CompiledCache {
            dir: dir.to_path_buf(),
            key: engine_key(engine),
        })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", digest.hex(), self.key))
    }

    /// The cached compiled module, if present and loadable. A file that fails
    /// to load is removed so it is rebuilt.
    pub fn get(&self, engine: &Engine, digest: &Digest) -> Option<wasmtime::Module> {
        let path = self.path(digest);
        // Read the bytes rather than mapping the file: a mapped file that is
        // truncated underneath us would fault (SIGBUS) at run time.
        let bytes = std::fs::read(&path).ok()?;
        // SAFETY: the file is in this host's own cache directory and was
        // written by `put` below from code this engine compiled; its name
        // carries the engine's compatibility key. Nothing received from
        // another machine is ever written here.
        match unsafe { wasmtime::Module::deserialize(engine, &bytes) } {
            Ok(module) => Some(module),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "dropping unloadable compiled module");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Store a compiled module (atomically: write then rename).
    pub fn put(&self, digest: &Digest, module: &wasmtime::Module) -> std::io::Result<()> {
        let bytes = module
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let path = self.path(digest);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    }
}
