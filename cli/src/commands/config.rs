//! The client's contexts, as `kubectl config` keeps them: each a named
//! scheduler (its URLs, a token, the CA to trust), one of them current, in
//! `$XDG_CONFIG_HOME/roam/config.json` (or `~/.config/roam/config.json`),
//! readable only by its owner. `roam up` adds its own context and makes
//! it current; the others stay. `--context NAME` (or `ROAM_CONTEXT`)
//! picks one for a command. A file of the older single-cluster form is
//! read as one context called `default`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use clap::Subcommand;
use comfy_table::Table;
use serde::{Deserialize, Serialize};

use super::client::ClientConfig;

/// The context `--context` names, if given (set once, by `main`).
pub static CHOSEN: OnceLock<String> = OnceLock::new();

/// The name an old single-cluster file's context gets.
const DEFAULT: &str = "default";

/// The client config file: every context, and which is current.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    /// The context commands use unless told otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Every context by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, ClientConfig>,
}

/// `$XDG_CONFIG_HOME/roam/config.json` or `~/.config/roam/config.json`.
pub fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("roam").join("config.json"))
}

impl ConfigFile {
    /// The file as it is (empty when there is none); an error when it
    /// cannot be read or is neither form.
    pub fn load() -> anyhow::Result<ConfigFile> {
        let Some(path) = config_path() else {
            return Ok(ConfigFile::default());
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ConfigFile::default());
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
        };
        ConfigFile::parse(&text)
            .with_context(|| format!("`{}` is not a Roam client config", path.display()))
    }

    /// The file's text, of either form.
    fn parse(text: &str) -> serde_json::Result<ConfigFile> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        if value.get("addr").is_some() {
            // The single-cluster form `roam up` wrote before contexts.
            let old: ClientConfig = serde_json::from_value(value)?;
            return Ok(ConfigFile {
                current: Some(DEFAULT.to_string()),
                contexts: BTreeMap::from([(DEFAULT.to_string(), old)]),
            });
        }
        serde_json::from_value(value)
    }

    /// Write it, readable only by its owner; where.
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        let path =
            config_path().context("no HOME or XDG_CONFIG_HOME to write the client config to")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create `{}`", dir.display()))?;
        }
        roam_scheduler::server::write_private(&path, &serde_json::to_string_pretty(self)?)?;
        Ok(path)
    }

    /// The context to use: `--context` (or `ROAM_CONTEXT`), else the
    /// current one (`None`: there is none). An unknown name is an error.
    pub fn chosen(&self) -> anyhow::Result<Option<(&str, &ClientConfig)>> {
        let name = match CHOSEN.get().cloned().or_else(|| self.current.clone()) {
            Some(n) => n,
            None => return Ok(None),
        };
        match self.contexts.get_key_value(&name) {
            Some((n, c)) => Ok(Some((n.as_str(), c))),
            None => bail!(
                "no context `{name}` (roam config get-contexts lists them: {})",
                self.names()
            ),
        }
    }

    fn names(&self) -> String {
        if self.contexts.is_empty() {
            return "there are none".into();
        }
        self.contexts
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `roam config ...`
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// List the contexts (the current one starred; tokens are not shown).
    GetContexts,
    /// The current context's name.
    CurrentContext,
    /// Make NAME the context commands use.
    UseContext {
        /// Context name.
        name: String,
    },
    /// Add a context, or change the fields given of one.
    SetContext {
        /// Context name.
        name: String,
        /// Scheduler URL (or every replica's, comma-separated).
        #[arg(long)]
        addr: Option<String>,
        /// A file holding the token (one line); not the token itself, so it
        /// stays out of the shell's history.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// The CA certificate (PEM file) to trust for the scheduler.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Remove a context.
    DeleteContext {
        /// Context name.
        name: String,
    },
}

/// Run `roam config ...`.
pub fn main(command: ConfigCommand) -> anyhow::Result<ExitCode> {
    let mut file = ConfigFile::load()?;
    match command {
        ConfigCommand::GetContexts => {
            let mut t = Table::new();
            t.set_header(["CURRENT", "NAME", "ADDR", "CA"]);
            for (name, c) in &file.contexts {
                let current = file.current.as_deref() == Some(name.as_str());
                t.add_row([
                    if current { "*" } else { "" }.to_string(),
                    name.clone(),
                    c.addr.clone(),
                    c.ca.as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "(system roots)".into()),
                ]);
            }
            println!("{t}");
        }
        ConfigCommand::CurrentContext => match &file.current {
            Some(name) => println!("{name}"),
            None => bail!("no current context (roam config use-context NAME)"),
        },
        ConfigCommand::UseContext { name } => {
            if !file.contexts.contains_key(&name) {
                bail!(
                    "no context `{name}` (roam config get-contexts lists them: {})",
                    file.names()
                );
            }
            file.current = Some(name.clone());
            file.save()?;
            println!("now using context `{name}`");
        }
        ConfigCommand::SetContext {
            name,
            addr,
            token_file,
            ca,
        } => {
            roam_proto::names::check("context", &name).map_err(anyhow::Error::msg)?;
            let token = match &token_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read `{}`", path.display()))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            let ca = match ca {
                Some(p) => Some(
                    std::path::absolute(&p)
                        .with_context(|| format!("cannot resolve `{}`", p.display()))?,
                ),
                None => None,
            };
            let context = match file.contexts.remove(&name) {
                Some(mut old) => {
                    if let Some(a) = addr {
                        old.addr = a.trim_end_matches('/').to_string();
                    }
                    if let Some(t) = token {
                        old.token = t;
                    }
                    if ca.is_some() {
                        old.ca = ca;
                    }
                    old
                }
                None => ClientConfig {
                    addr: addr
                        .context("a new context needs --addr")?
                        .trim_end_matches('/')
                        .to_string(),
                    token: token.context("a new context needs --token-file")?,
                    ca,
                },
            };
            file.contexts.insert(name.clone(), context);
            if file.current.is_none() {
                file.current = Some(name.clone());
            }
            let path = file.save()?;
            println!("context `{name}` written to {}", path.display());
        }
        ConfigCommand::DeleteContext { name } => {
            if file.contexts.remove(&name).is_none() {
                bail!("no context `{name}`");
            }
            if file.current.as_deref() == Some(name.as_str()) {
                file.current = None;
            }
            file.save()?;
            println!("context `{name}` deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_single_cluster_file_is_one_context_and_a_new_one_reads_as_written() {
        let old = ConfigFile::parse(r#"{"addr":"https://a:7700","token":"t"}"#).unwrap();
        assert_eq!(old.current.as_deref(), Some("default"));
        assert_eq!(old.contexts["default"].addr, "https://a:7700");
        let new = ConfigFile::parse(
            r#"{"current":"b","contexts":{"b":{"addr":"https://b:7700","token":"u"}}}"#,
        )
        .unwrap();
        assert_eq!(new.chosen().unwrap().unwrap().0, "b");
        assert!(ConfigFile::parse("{}").unwrap().chosen().unwrap().is_none());
        assert!(ConfigFile::parse("[1]").is_err());
    }
}
