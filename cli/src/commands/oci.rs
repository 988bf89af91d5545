//! `roam push` and `roam key generate`: a module into an OCI registry as
//! a Wasm artifact, optionally signed (cosign's format, with a key pair),
//! for `roam deploy oci://…`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use roam_scheduler::oci::{Credentials, Reference, Registries, SigningKey};

use super::ops::block_on;

/// `roam push`
#[derive(Args, Debug)]
pub struct PushArgs {
    /// The module (`.wasm`).
    pub file: PathBuf,
    /// Where: `oci://REGISTRY/REPOSITORY:TAG`.
    pub reference: String,
    /// Sign it with this private key (PKCS#8 PEM, `roam key generate`):
    /// a cosign signature, attached as `sha256-DIGEST.sig`.
    #[arg(long)]
    pub sign: Option<PathBuf>,
    /// Extra root certificates (PEM) for the registry.
    #[arg(long)]
    pub registry_ca: Option<PathBuf>,
    /// Reach this registry (`host:port`) over plain HTTP.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
}

/// `roam key`
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Make a signing key pair: PREFIX.key (private, PKCS#8 PEM, readable
    /// only by you) and PREFIX.pub (the public key clusters trust with
    /// `roam scheduler --require-signed`, and `cosign verify --key`).
    Generate {
        /// File name prefix.
        #[arg(long, default_value = "roam-signing")]
        out: PathBuf,
    },
}

/// `roam push FILE oci://… [--sign KEY]`
pub fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse(&args.reference)?;
    let Some(tag) = reference.tag.clone() else {
        bail!("push to a tag: oci://REGISTRY/REPOSITORY:TAG");
    };
    if reference.digest.is_some() {
        bail!("push to a tag, not a digest (the digest is the module's own)");
    }
    let module = std::fs::read(&args.file)
        .with_context(|| format!("cannot read `{}`", args.file.display()))?;
    if !module.starts_with(b"\0asm") {
        bail!("`{}` is not a WebAssembly module", args.file.display());
    }
    let key = args.sign.as_deref().map(SigningKey::load).transpose()?;
    let registries = Registries::new(
        args.registry_ca.as_deref(),
        args.insecure_registries,
        Credentials::from_docker_config()?,
    )?;
    block_on(async move {
        let digest = registries.push_module(&reference, &tag, &module).await?;
        if let Some(key) = &key {
            registries.sign(&reference, &digest, key).await?;
        }
        println!("{}", reference.pinned(&digest));
        eprintln!(
            "pushed {} ({} bytes) as {}:{tag}{}",
            args.file.display(),
            module.len(),
            reference.repository,
            if key.is_some() { ", signed" } else { "" }
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// `roam key generate`
pub fn key(cmd: KeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeyCommand::Generate { out } => {
            let (private, public) = roam_scheduler::oci::generate_key()?;
            let key = out.with_extension("key");
            let pubkey = out.with_extension("pub");
            if key.exists() || pubkey.exists() {
                bail!(
                    "`{}` or `{}` exists; nothing written",
                    key.display(),
                    pubkey.display()
                );
            }
            write_private(&key, private.as_bytes())?;
            std::fs::write(&pubkey, public)
                .with_context(|| format!("cannot write `{}`", pubkey.display()))?;
            println!("{}", pubkey.display());
            eprintln!(
                "private key {} (sign with `roam push --sign {}`); public key {} (trust it with `roam scheduler --require-signed {}`)",
                key.display(),
                key.display(),
                pubkey.display(),
                pubkey.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Write a file only its owner can read.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(())
}
