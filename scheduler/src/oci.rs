//! OCI registries: Wasm modules as OCI artifacts (the CNCF Wasm OCI
//! artifact layout `wkg` and `wash` use: a config of media type
//! `application/vnd.wasm.config.v0+json` and one `application/wasm`
//! layer), pushed by `roam push` and pulled by the scheduler when a
//! workload is deployed by reference, its tag resolved to a digest once;
//! and cosign-compatible signatures (a "simple signing" payload signed with
//! an ECDSA P-256 key, attached as the manifest tagged `sha256-HEX.sig`),
//! checked against the keys the cluster trusts. No transparency log: a
//! sovereign or air-gapped site has none to reach.
//!
//! Everything a registry sends is untrusted: manifests and blobs are
//! bounded before they are read and checked against their digests.
//! Registries are reached over TLS (the system's roots, plus
//! `--registry-ca`); plain HTTP only for the hosts an operator lists.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The layer media type of a Wasm module.
pub const WASM_LAYER: &str = "application/wasm";
/// The config media type of a Wasm artifact.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// An OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// cosign's signature layer (the signed payload).
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation that carries a cosign signature (base64).
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The config of an image (cosign's signature manifests use it).
const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The largest manifest read.
const MAX_MANIFEST: usize = 4 << 20;
/// The largest token answer read (a JWT and a few fields).
const MAX_TOKEN_ANSWER: usize = 64 << 10;

/// What can go wrong with a registry.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Not a reference.
    #[error("`{0}` is not an OCI reference: {1}")]
    Reference(String, String),
    /// The registry could not be reached or answered with an error.
    #[error("registry {registry}: {why}")]
    Registry {
        /// `host[:port]`.
        registry: String,
        /// What happened.
        why: String,
    },
    /// What the registry sent does not check out.
    #[error("{0}")]
    Invalid(String),
    /// A signature policy refused it.
    #[error("{0}")]
    Unsigned(String),
    /// A key that cannot be used.
    #[error("{0}")]
    Key(String),
}

fn invalid(why: impl Into<String>) -> OciError {
    OciError::Invalid(why.into())
}

/// `oci://REGISTRY/REPOSITORY[:TAG][@sha256:HEX]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`.
    pub registry: String,
    /// Path components, each checked.
    pub repository: String,
    /// Tag, if given.
    pub tag: Option<String>,
    /// Manifest digest, if given (pinned).
    pub digest: Option<String>,
}

impl Reference {
    /// Parse a reference (untrusted: every part checked against the
    /// distribution spec's grammar).
    pub fn parse(text: &str) -> Result<Reference, OciError> {
        let bad = |why: &str| OciError::Reference(text.to_string(), why.to_string());
        let rest = text
            .strip_prefix("oci://")
            .ok_or_else(|| bad("it must start with oci://"))?;
        if rest.len() > 512 {
            return Err(bad("longer than 512 bytes"));
        }
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("it needs REGISTRY/REPOSITORY"))?;
        let registry_ok = !registry.is_empty()
            && registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !registry_ok {
            return Err(bad("bad registry host"));
        }
        let (path, digest) = match path.split_once('@') {
            Some((p, d)) => (p, Some(d.to_string())),
            None => (path, None),
        };
        if let Some(d) = &digest
            && !is_digest(d)
        {
            return Err(bad("the digest must be sha256:64-hex"));
        }
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (path, None),
        };
        if let Some(t) = &tag {
            let ok = t.len() <= 128
                && t.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(bad("bad tag"));
            }
        }
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.chars().all(|ch| {
                    ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
                })
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        if repository.is_empty() || !repository.split('/').all(component_ok) {
            return Err(bad(
                "bad repository (lowercase letters, digits, . _ - and /)",
            ));
        }
        if tag.is_none() && digest.is_none() {
            return Err(bad("give a :TAG or an @sha256:DIGEST"));
        }
        Ok(Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The same artifact pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> String {
        format!("oci://{}/{}@{digest}", self.registry, self.repository)
    }

    /// What a cosign signature names: `REGISTRY/REPOSITORY`.
    pub fn docker_reference(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// `sha256:HEX` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One entry of a manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Digest.
    pub digest: String,
    /// Size, bytes.
    pub size: u64,
    /// Annotations.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// An OCI image manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// [`OCI_MANIFEST`].
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// The artifact's type, if it says.
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    /// Config blob.
    pub config: Descriptor,
    /// Layers.
    pub layers: Vec<Descriptor>,
}

/// Credentials for registries: the Docker config's `auths` (`auth`:
/// base64 `user:password`), as `docker login` writes them.
#[derive(Clone, Debug, Default)]
pub struct Credentials(std::collections::BTreeMap<String, (String, String)>);

impl Credentials {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; none if
    /// neither exists. Credential helpers (`credsStore`) are not read.
    pub fn from_docker_config() -> Result<Credentials, OciError> {
        let path = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => Path::new(&dir).join("config.json"),
            None => match std::env::var_os("HOME") {
                Some(home) => Path::new(&home).join(".docker/config.json"),
                None => return Ok(Credentials::default()),
            },
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(Credentials::default());
        };
        Credentials::parse(&text).map_err(|why| invalid(format!("{}: {why}", path.display())))
    }

    fn parse(text: &str) -> Result<Credentials, String> {
        #[derive(Deserialize)]
        struct Config {
            #[serde(default)]
            auths: std::collections::BTreeMap<String, Auth>,
        }
        #[derive(Deserialize)]
        struct Auth {
            #[serde(default)]
            auth: Option<String>,
        }
        let config: Config = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut out = std::collections::BTreeMap::new();
        for (registry, auth) in config.auths {
            let Some(encoded) = auth.auth else { continue };
            let decoded = B64
                .decode(encoded.trim())
                .map_err(|e| format!("{registry}: {e}"))?;
            let text = String::from_utf8(decoded).map_err(|_| format!("{registry}: not UTF-8"))?;
            let (user, password) = text
                .split_once(':')
                .ok_or_else(|| format!("{registry}: auth is not user:password"))?;
            let host = registry
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or("")
                .to_string();
            out.insert(host, (user.to_string(), password.to_string()));
        }
        Ok(Credentials(out))
    }
}

/// A registry client.
#[derive(Clone, Debug)]
pub struct Registries {
    http: reqwest::Client,
    /// `host[:port]` reached over plain HTTP.
    insecure: Vec<String>,
    credentials: Credentials,
}

impl Registries {
    /// A client trusting the system's roots and `extra_ca` (PEM), reaching
    /// the registries in `insecure` over plain HTTP.
    pub fn new(
        extra_ca: Option<&Path>,
        insecure: Vec<String>,
        credentials: Credentials,
    ) -> Result<Registries, OciError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(300))
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(path) = extra_ca {
            let pem = std::fs::read(path)
                .map_err(|e| invalid(format!("cannot read `{}`: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| invalid(format!("`{}`: {e}", path.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| invalid(format!("registry client: {e}")))?;
        Ok(Registries {
            http,
            insecure,
            credentials,
        })
    }

    /// `https://REGISTRY/v2/REPO/KIND/NAME`, or `http://` for an insecure one;
    /// built from checked segments.
    fn url(&self, r: &Reference, kind: &str, name: &str) -> Result<reqwest::Url, OciError> {
        let scheme = if self.insecure.contains(&r.registry) {
            "http"
        } else {
            "https"
        };
        let mut url = reqwest::Url::parse(&format!("{scheme}://{}/", r.registry))
            .map_err(|e| OciError::Reference(r.registry.clone(), e.to_string()))?;
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| OciError::Reference(r.registry.clone(), "no path".into()))?;
            path.clear().push("v2");
            for component in r.repository.split('/') {
                path.push(component);
            }
            path.push(kind);
            if !name.is_empty() {
                path.push(name);
            }
        }
        Ok(url)
    }

    fn failed(r: &Reference, why: impl std::fmt::Display) -> OciError {
        OciError::Registry {
            registry: r.registry.clone(),
            why: why.to_string(),
        }
    }

    /// Send `request`; on a 401, authenticate as the challenge asks (basic,
    /// or a bearer token from the realm, with the Docker config's
    /// credentials if it has some) and send it again.
    async fn send(
        &self,
        r: &Reference,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, OciError> {
        let first = request().send().await.map_err(|e| Self::failed(r, e))?;
        if first.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenge = first
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let creds = self.credentials.0.get(&r.registry);
        let retried = if challenge.to_ascii_lowercase().starts_with("bearer") {
            let token = self.token(r, &challenge, creds).await?;
            request().bearer_auth(token)
        } else if let Some((user, password)) = creds {
            request().basic_auth(user, Some(password))
        } else {
            return Err(Self::failed(
                r,
                "401: it wants credentials, and the Docker config has none for it",
            ));
        };
        retried.send().await.map_err(|e| Self::failed(r, e))
    }

    /// A bearer token from the challenge's realm.
    async fn token(
        &self,
        r: &Reference,
        challenge: &str,
        creds: Option<&(String, String)>,
    ) -> Result<String, OciError> {
        let params: std::collections::BTreeMap<String, String> = challenge
            .split_once(' ')
            .map_or("", |(_, rest)| rest)
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            })
            .collect();
        let realm = params
            .get("realm")
            .ok_or_else(|| Self::failed(r, "a bearer challenge without a realm"))?;
        let mut url = reqwest::Url::parse(realm).map_err(|e| Self::failed(r, e))?;
        if url.scheme() != "https" && !self.insecure.iter().any(|h| realm.contains(h.as_str())) {
            return Err(Self::failed(r, "the token realm is not https"));
        }
        for key in ["service", "scope"] {
            if let Some(v) = params.get(key) {
                url.query_pairs_mut().append_pair(key, v);
            }
        }
        let mut request = self.http.get(url);
        if let Some((user, password)) = creds {
            request = request.basic_auth(user, Some(password));
        }
        let answer = request.send().await.map_err(|e| Self::failed(r, e))?;
        if !answer.status().is_success() {
            return Err(Self::failed(r, format!("token: {}", answer.status())));
        }
        #[derive(Deserialize)]
        struct Token {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&Self::bounded(r, answer, MAX_TOKEN_ANSWER).await?)
            .map_err(|e| Self::failed(r, format!("token: {e}")))?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| Self::failed(r, "the token answer has no token"))
    }

    /// Read a body of at most `max` bytes.
    async fn bounded(
        r: &Reference,
        answer: reqwest::Response,
        max: usize,
    ) -> Result<Vec<u8>, OciError> {
        roam_tls::answer::bytes(answer, max)
            .await
            .map_err(|e| match e {
                roam_tls::answer::AnswerError::TooLarge { max } => {
                    invalid(format!("{} sends more than {max} bytes", r.registry))
                }
                other => Self::failed(r, other),
            })
    }

    /// The manifest `r` names (its tag resolved now, once), and its
    /// digest; `None` when the registry has no such manifest.
    pub async fn manifest(
        &self,
        r: &Reference,
        tag_or_digest: &str,
    ) -> Result<Option<(String, Manifest)>, OciError> {
        let url = self.url(r, "manifests", tag_or_digest)?;
        let answer = self
            .send(r, || {
                self.http
                    .get(url.clone())
                    .header(reqwest::header::ACCEPT, OCI_MANIFEST)
            })
            .await?;
        if answer.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.status().is_success() {
            return Err(Self::failed(
                r,
                format!("manifest {tag_or_digest}: {}", answer.status()),
            ));
        }
        let bytes = Self::bounded(r, answer, MAX_MANIFEST).await?;
        let digest = digest_of(&bytes);
        if is_digest(tag_or_digest) && digest != tag_or_digest {
            return Err(invalid(format!(
                "the manifest {tag_or_digest} from {} is {digest}: corrupt or tampered with",
                r.registry
            )));
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("a manifest that does not parse: {e}")))?;
        Ok(Some((digest, manifest)))
    }

    /// The blob `digest`, at most `max` bytes, checked against its digest.
    pub async fn blob(&self, r: &Reference, digest: &str, max: usize) -> Result<Vec<u8>, OciError> {
        if !is_digest(digest) {
            return Err(invalid(format!("`{digest}` is not a sha256 digest")));
        }
        let url = self.url(r, "blobs", digest)?;
        let answer = self.send(r, || self.http.get(url.clone())).await?;
        if !answer.status().is_success() {
            return Err(Self::failed(
                r,
                format!("blob {digest}: {}", answer.status()),
            ));
        }
        let bytes = Self::bounded(r, answer, max).await?;
        let got = digest_of(&bytes);
        if got != digest {
            return Err(invalid(format!(
                "the blob {digest} from {} hashes to {got}: corrupt or tampered with; refused",
                r.registry
            )));
        }
        Ok(bytes)
    }

    /// Upload a blob (monolithic: POST, then PUT with the digest).
    pub async fn push_blob(&self, r: &Reference, bytes: &[u8]) -> Result<String, OciError> {
        let digest = digest_of(bytes);
        let head = self.url(r, "blobs", &digest)?;
        let exists = self.send(r, || self.http.head(head.clone())).await?;
        if exists.status().is_success() {
            return Ok(digest);
        }
        let start = self.url(r, "blobs", "uploads")?;
        // `…/blobs/uploads/` with the trailing slash the spec names.
        let start = reqwest::Url::parse(&format!("{start}/")).map_err(|e| Self::failed(r, e))?;
        let answer = self.send(r, || self.http.post(start.clone())).await?;
        if answer.status() != reqwest::StatusCode::ACCEPTED {
            return Err(Self::failed(
                r,
                format!("starting an upload: {}", answer.status()),
            ));
        }
        let location = answer
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Self::failed(r, "an upload without a Location"))?;
        let mut url = start.join(location).map_err(|e| Self::failed(r, e))?;
        if url.host_str() != start.host_str() {
            return Err(Self::failed(
                r,
                "the upload Location points at another host",
            ));
        }
        url.query_pairs_mut().append_pair("digest", &digest);
        let body = bytes.to_vec();
        let answer = self
            .send(r, || {
                self.http
                    .put(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(body.clone())
            })
            .await?;
        if answer.status() != reqwest::StatusCode::CREATED {
            return Err(Self::failed(
                r,
                format!("uploading {digest}: {}", answer.status()),
            ));
        }
        Ok(digest)
    }

    /// Put a manifest under `tag`; its digest.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        tag: &str,
        manifest: &Manifest,
    ) -> Result<String, OciError> {
        let bytes = serde_json::to_vec(manifest).map_err(|e| invalid(e.to_string()))?;
        let url = self.url(r, "manifests", tag)?;
        let answer = self
            .send(r, || {
                self.http
                    .put(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, OCI_MANIFEST)
                    .body(bytes.clone())
            })
            .await?;
        if answer.status() != reqwest::StatusCode::CREATED {
            let status = answer.status();
            let text = roam_tls::answer::error_text(answer).await;
            return Err(Self::failed(
                r,
                format!(
                    "manifest {tag}: {status} {}",
                    text.chars().take(300).collect::<String>()
                ),
            ));
        }
        Ok(digest_of(&bytes))
    }

    /// Push `module` as a Wasm artifact tagged `tag`; the manifest digest.
    pub async fn push_module(
        &self,
        r: &Reference,
        tag: &str,
        module: &[u8],
    ) -> Result<String, OciError> {
        let layer = self.push_blob(r, module).await?;
        let config = serde_json::json!({
            "architecture": "wasm",
            "os": "wasip1",
            "layerDigests": [layer],
        });
        let layer = Descriptor {
            media_type: WASM_LAYER.into(),
            digest: layer,
            size: module.len() as u64,
            annotations: Default::default(),
        };
        self.push_one_layer(r, tag, Some(WASM_LAYER), (WASM_CONFIG, config), layer)
            .await
    }

    /// Push a manifest of one layer (already pushed) and the config blob
    /// it names, tagged `tag`; the manifest digest.
    async fn push_one_layer(
        &self,
        r: &Reference,
        tag: &str,
        artifact_type: Option<&str>,
        (config_type, config): (&str, serde_json::Value),
        layer: Descriptor,
    ) -> Result<String, OciError> {
        let config = serde_json::to_vec(&config).map_err(|e| invalid(e.to_string()))?;
        let config_digest = self.push_blob(r, &config).await?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.into(),
            artifact_type: artifact_type.map(str::to_string),
            config: Descriptor {
                media_type: config_type.into(),
                digest: config_digest,
                size: config.len() as u64,
                annotations: Default::default(),
            },
            layers: vec![layer],
        };
        self.push_manifest(r, tag, &manifest).await
    }

    /// The module `r` names: its tag resolved once to a manifest digest,
    /// the one `application/wasm` layer fetched (at most `max` bytes) and
    /// checked; with `keys`, refused unless one of them signed that
    /// manifest. Returns the manifest digest and the module's bytes.
    pub async fn pull_module(
        &self,
        r: &Reference,
        max: usize,
        keys: &[PublicKey],
    ) -> Result<(String, Vec<u8>), OciError> {
        let wanted = r
            .digest
            .clone()
            .or_else(|| r.tag.clone())
            .unwrap_or_default();
        let (digest, manifest) = self
            .manifest(r, &wanted)
            .await?
            .ok_or_else(|| invalid(format!("{}/{} has no `{wanted}`", r.registry, r.repository)))?;
        let layers: Vec<&Descriptor> = manifest
            .layers
            .iter()
            .filter(|l| l.media_type == WASM_LAYER)
            .collect();
        let [layer] = layers.as_slice() else {
            return Err(invalid(format!(
                "{}:{wanted} is not a Wasm artifact (it needs exactly one `{WASM_LAYER}` layer; it has {})",
                r.repository,
                layers.len()
            )));
        };
        if layer.size > max as u64 {
            return Err(invalid(format!(
                "the module is {} bytes, over the limit of {max}",
                layer.size
            )));
        }
        if !keys.is_empty() {
            self.verify(r, &digest, keys).await?;
        }
        let bytes = self.blob(r, &layer.digest, max).await?;
        Ok((digest, bytes))
    }

    /// Attach a cosign signature of the manifest `digest` made with `key`.
    pub async fn sign(
        &self,
        r: &Reference,
        digest: &str,
        key: &SigningKey,
    ) -> Result<(), OciError> {
        let payload = simple_signing(&r.docker_reference(), digest);
        let signature = key.sign(&payload)?;
        let payload_digest = self.push_blob(r, &payload).await?;
        let config = serde_json::json!({
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [payload_digest]},
            "config": {},
        });
        let layer = Descriptor {
            media_type: SIMPLE_SIGNING.into(),
            digest: payload_digest,
            size: payload.len() as u64,
            annotations: [(SIGNATURE_ANNOTATION.to_string(), B64.encode(signature))]
                .into_iter()
                .collect(),
        };
        let tag = signature_tag(digest);
        self.push_one_layer(r, &tag, None, (IMAGE_CONFIG, config), layer)
            .await?;
        Ok(())
    }

    /// Whether one of `keys` signed the manifest `digest` (cosign's
    /// signature manifest, tagged `sha256-HEX.sig`); the reason if not.
    pub async fn verify(
        &self,
        r: &Reference,
        digest: &str,
        keys: &[PublicKey],
    ) -> Result<(), OciError> {
        let tag = signature_tag(digest);
        let Some((_, signatures)) = self.manifest(r, &tag).await? else {
            return Err(OciError::Unsigned(format!(
                "{}@{digest} is not signed (no `{tag}` in {}), and this cluster requires a signature",
                r.repository, r.registry
            )));
        };
        for layer in signatures
            .layers
            .iter()
            .filter(|l| l.media_type == SIMPLE_SIGNING)
            .take(16)
        {
            let Some(sig) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
                continue;
            };
            let Ok(sig) = B64.decode(sig.trim()) else {
                continue;
            };
            let payload = self.blob(r, &layer.digest, 64 << 10).await?;
            if !signs(&payload, digest) {
                continue;
            }
            if keys.iter().any(|k| k.verifies(&payload, &sig)) {
                return Ok(());
            }
        }
        Err(OciError::Unsigned(format!(
            "{}@{digest} is signed, but by no key this cluster trusts",
            r.repository
        )))
    }
}

/// cosign's tag for the signatures of manifest `digest`.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// cosign's "simple signing" payload for `manifest` in `reference`.
fn simple_signing(reference: &str, manifest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": manifest},
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap_or_default()
}

/// Whether a payload claims to sign `manifest`.
fn signs(payload: &[u8], manifest: &str) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return false;
    };
    v["critical"]["type"] == "cosign container image signature"
        && v["critical"]["image"]["docker-manifest-digest"] == manifest
}

/// An ECDSA P-256 private key (PKCS#8 PEM, as `roam key generate` writes
/// and `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`
/// makes).
pub struct SigningKey {
    pair: ring::signature::EcdsaKeyPair,
}

impl SigningKey {
    /// Read a PKCS#8 PEM file.
    pub fn load(path: &Path) -> Result<SigningKey, OciError> {
        use rustls_pki_types::pem::PemObject as _;
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| {
            OciError::Key(format!(
                "`{}`: not a PKCS#8 PEM private key ({e}); make one with `roam key generate`",
                path.display()
            ))
        })?;
        let rng = ring::rand::SystemRandom::new();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| {
            OciError::Key(format!(
                "`{}`: not an ECDSA P-256 key ({e})",
                path.display()
            ))
        })?;
        Ok(SigningKey { pair })
    }

    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, OciError> {
        let rng = ring::rand::SystemRandom::new();
        self.pair
            .sign(&rng, payload)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| OciError::Key("signing failed".into()))
    }
}

/// A public key a cluster trusts (SPKI PEM, `cosign.pub`'s format).
#[derive(Clone, Debug)]
pub struct PublicKey {
    /// The uncompressed point.
    point: Vec<u8>,
}

/// The DER prefix of a P-256 SubjectPublicKeyInfo before its 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl PublicKey {
    /// Read an SPKI PEM file (ECDSA P-256).
    pub fn load(path: &Path) -> Result<PublicKey, OciError> {
        let pem = std::fs::read(path)
            .map_err(|e| OciError::Key(format!("cannot read `{}`: {e}", path.display())))?;
        PublicKey::from_pem(&pem)
            .map_err(|why| OciError::Key(format!("`{}`: {why}", path.display())))
    }

    fn from_pem(pem: &[u8]) -> Result<PublicKey, String> {
        use rustls_pki_types::pem::PemObject as _;
        let der = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PEM public key ({e})"))?;
        let der: &[u8] = der.as_ref();
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 65 && point[0] == 4 => Ok(PublicKey {
                point: point.to_vec(),
            }),
            _ => Err("not an ECDSA P-256 public key".into()),
        }
    }

    fn verifies(&self, payload: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &self.point,
        )
        .verify(payload, signature)
        .is_ok()
    }
}

/// A new key pair: the PKCS#8 PEM private key and the SPKI PEM public key.
pub fn generate_key() -> Result<(String, String), OciError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &rng,
    )
    .map_err(|_| OciError::Key("cannot generate a key".into()))?;
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .map_err(|_| OciError::Key("cannot read the new key".into()))?;
    use ring::signature::KeyPair as _;
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    Ok((pem("PRIVATE KEY", pkcs8.as_ref()), pem("PUBLIC KEY", &spki)))
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_the_distribution_spec_says_and_nothing_else_does() {
        let r = Reference::parse("oci://127.0.0.1:5000/apps/visits:v2").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "apps/visits");
        assert_eq!(r.tag.as_deref(), Some("v2"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("oci://reg.example/visits@{d}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.pinned(&d), format!("oci://reg.example/visits@{d}"));
        for bad in [
            "reg/x:1",
            "oci://reg",
            "oci://reg/x",
            "oci://reg/X:1",
            "oci://reg/x/../y:1",
            "oci://reg/x:-bad",
            "oci://reg/x@sha256:12",
            "oci://re g/x:1",
            "oci://reg/x%2f:1",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_only_for_the_listed_registries() {
        let r = Reference::parse("oci://127.0.0.1:5000/a/b:1").unwrap();
        let tls = Registries::new(None, vec![], Credentials::default()).unwrap();
        assert_eq!(
            tls.url(&r, "manifests", "1").unwrap().as_str(),
            "https://127.0.0.1:5000/v2/a/b/manifests/1"
        );
        let plain =
            Registries::new(None, vec!["127.0.0.1:5000".into()], Credentials::default()).unwrap();
        assert!(
            plain
                .url(&r, "blobs", "x")
                .unwrap()
                .as_str()
                .starts_with("http://")
        );
    }

    #[test]
    fn docker_config_credentials_are_read_per_registry() {
        let auth = B64.encode("me:secret");
        let c = Credentials::parse(&format!(
            r#"{{"auths": {{"https://reg.example:5000/": {{"auth": "{auth}"}}, "other": {{}}}}}}"#
        ))
        .unwrap();
        assert_eq!(
            c.0.get("reg.example:5000"),
            Some(&("me".into(), "secret".into()))
        );
        assert!(Credentials::parse(r#"{"auths": {"x": {"auth": "!!"}}}"#).is_err());
    }

    #[test]
    fn a_signature_verifies_with_its_key_only_and_only_for_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = generate_key().unwrap();
        std::fs::write(dir.path().join("k.key"), &private).unwrap();
        std::fs::write(dir.path().join("k.pub"), &public).unwrap();
        let key = SigningKey::load(&dir.path().join("k.key")).unwrap();
        let public = PublicKey::load(&dir.path().join("k.pub")).unwrap();
        let other = PublicKey::from_pem(generate_key().unwrap().1.as_bytes()).unwrap();
        let digest = format!("sha256:{}", "b".repeat(64));
        let payload = simple_signing("reg/x", &digest);
        let sig = key.sign(&payload).unwrap();
        assert!(public.verifies(&payload, &sig));
        assert!(!other.verifies(&payload, &sig));
        assert!(signs(&payload, &digest));
        assert!(!signs(&payload, &format!("sha256:{}", "c".repeat(64))));
        assert_eq!(
            signature_tag(&digest),
            format!("sha256-{}.sig", "b".repeat(64))
        );
    }

    /// A signature `cosign sign --key` made (the key, payload and
    /// signature sigstore-rs 0.13 tests its verifier with,
    /// `src/crypto/verification_key.rs`): it verifies here, for its
    /// manifest only.
    #[test]
    fn a_signature_cosign_made_verifies_with_its_key() {
        const KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAENptdY/l3nB0yqkXLBWkZWQwo6+cu
OSWS1X9vPavpiQOoTTGC0xX57OojUadxF1cdQmrsiReWg2Wn4FneJfa8xw==
-----END PUBLIC KEY-----";
        const SIGNATURE: &str = "MEUCIQD6q/COgzOyW0YH1Dk+CCYSt4uAhm3FDHUwvPI55zwnlwIgE0ZK58ZOWpZw8YVmBapJhBqCfdPekIknimuO0xH8Jh8=";
        const MANIFEST: &str =
            "sha256:f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b";
        let payload = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"registry-testing.svc.lan/busybox"}},"image":{{"docker-manifest-digest":"{MANIFEST}"}},"type":"cosign container image signature"}},"optional":null}}"#
        );
        let key = PublicKey::from_pem(KEY.as_bytes()).unwrap();
        let signature = B64.decode(SIGNATURE).unwrap();
        assert!(key.verifies(payload.as_bytes(), &signature));
        assert!(signs(payload.as_bytes(), MANIFEST));
        assert!(!key.verifies(payload.replace("busybox", "other").as_bytes(), &signature));
        let (_, stranger) = generate_key().unwrap();
        let stranger = PublicKey::from_pem(stranger.as_bytes()).unwrap();
        assert!(!stranger.verifies(payload.as_bytes(), &signature));
    }
}
