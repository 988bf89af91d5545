//! OCI distribution (issue 21): modules pushed to a real registry (Debian's
//! `docker-registry`, on loopback, over TLS) as Wasm artifacts, deployed
//! by reference with the tag resolved once and pinned, fetched by the
//! scheduler and checked (a corrupted blob is refused), and signed: a
//! cluster that requires signatures refuses unsigned and wrongly signed
//! modules with the reason.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use roam_tests::artifacts;

use crate::cluster::{Cluster, PATIENT, poll};
use crate::relay::free_port;
use crate::rollout::version_of;

/// A `docker-registry` process on loopback with TLS; killed on drop.
struct Registry {
    child: Child,
    addr: String,
    ca: std::path::PathBuf,
    storage: std::path::PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// With `user`, the registry takes only that user, with `password`
    /// (htpasswd: basic authentication over TLS).
    fn start(dir: &Path, user: Option<(&str, &str)>) -> Registry {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let ca = dir.join("registry-ca.pem");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        std::fs::write(dir.join("registry.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("registry.key"), key.serialize_pem()).unwrap();
        let addr = free_port().to_string();
        let storage = dir.join("registry-data");
        let config = dir.join("registry.yml");
        let mut yml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  tls:\n    certificate: {}\n    key: {}\n",
            storage.display(),
            dir.join("registry.crt").display(),
            dir.join("registry.key").display()
        );
        if let Some((user, password)) = user {
            let htpasswd = dir.join("htpasswd");
            let hash = bcrypt::hash(password, 4).unwrap();
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            yml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: roam-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&config, yml).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is not installed; run scripts/setup");
        poll(Duration::from_secs(30), "the registry to listen", || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
        Registry {
            child,
            addr,
            ca,
            storage,
        }
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("oci://{}/{repo_tag}", self.addr)
    }

    /// The file a blob is stored in.
    fn blob_file(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

fn digest_of(path: &Path) -> String {
    roam_proto::Digest::of(&std::fs::read(path).unwrap()).to_string()
}

#[test]
fn modules_deploy_from_a_registry_pinned_checked_and_signed_by_a_trusted_key() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path(), None);
    let ca = registry.ca.to_str().unwrap().to_string();
    // Keys: the cluster trusts `good` only.
    for name in ["good", "bad"] {
        let out = Command::new(env!("CARGO_BIN_EXE_roam"))
            .args(["key", "generate", "--out"])
            .arg(dir.path().join(name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let good = dir.path().join("good.key");
    let bad = dir.path().join("bad.key");
    let mut c = Cluster::start_with(&[
        ("HEARTBEAT_TIMEOUT", PATIENT),
        (
            "SCHEDULER_ARGS",
            &format!(
                "--registry-ca {ca} --require-signed {}",
                dir.path().join("good.pub").display()
            ),
        ),
    ]);
    c.add_host("eu-1", "eu-west-1", "EU");
    c.wait_ready(1);
    let push = |module: &Path, reference: &str, key: Option<&Path>| {
        let mut args = vec![
            "push".to_string(),
            module.to_str().unwrap().to_string(),
            reference.to_string(),
            "--registry-ca".into(),
            ca.clone(),
        ];
        if let Some(k) = key {
            args.extend(["--sign".into(), k.to_str().unwrap().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err) = c.roam(&args);
        assert!(ok, "{err}");
        out.trim().to_string()
    };

    // Push v1, signed; deploy it by its tag: the scheduler resolves the
    // tag once and pins the manifest digest.
    let v1 = Path::new(artifacts::COUNTER);
    let pinned = push(v1, &registry.reference("apps/counter:stable"), Some(&good));
    assert!(pinned.contains("@sha256:"), "{pinned}");
    c.deploy_ready(&registry.reference("apps/counter:stable"), "counter");
    let workload = || {
        let (_, out, _) = c.roam(&["get", "workloads", "-o", "json"]);
        let all: serde_json::Value = serde_json::from_str(&out).unwrap();
        all.as_array().unwrap()[0]["spec"].clone()
    };
    let spec = workload();
    assert_eq!(spec["digest"], digest_of(v1), "{spec}");
    assert_eq!(spec["source"], pinned, "{spec}");
    assert_eq!(c.invoke("counter", "/a").0, 200);

    // The tag moves to another module: the workload keeps its pinned one.
    let v2 = version_of(artifacts::COUNTER, "2", dir.path());
    push(&v2, &registry.reference("apps/counter:stable"), Some(&good));
    let spec = workload();
    assert_eq!(spec["digest"], digest_of(v1), "{spec}");
    assert_eq!(spec["revision"], 1, "{spec}");

    // Unsigned, and signed by a key the cluster does not trust: refused
    // with the reason, nothing changed.
    let deploy = |tag: &str| {
        c.roam(&[
            "deploy",
            &registry.reference(&format!("apps/counter:{tag}")),
            "--name",
            "counter",
        ])
    };
    // (Modules of their own: a signature names a manifest, whatever its tag.)
    let v4 = version_of(artifacts::COUNTER, "4", dir.path());
    push(&v4, &registry.reference("apps/counter:unsigned"), None);
    let (ok, _, err) = deploy("unsigned");
    assert!(!ok && err.contains("is not signed"), "{err}");
    let v5 = version_of(artifacts::COUNTER, "5", dir.path());
    push(
        &v5,
        &registry.reference("apps/counter:stranger"),
        Some(&bad),
    );
    let (ok, _, err) = deploy("stranger");
    assert!(
        !ok && err.contains("by no key this cluster trusts"),
        "{err}"
    );
    // A module uploaded straight to the scheduler is refused too.
    let (ok, _, err) = c.roam(&["deploy", artifacts::COUNTER, "--name", "other"]);
    assert!(!ok && err.contains("requires signed modules"), "{err}");
    assert_eq!(workload()["digest"], digest_of(v1));

    // A blob corrupted in the registry: refused, however well signed.
    let v3 = version_of(artifacts::COUNTER, "3", dir.path());
    push(
        &v3,
        &registry.reference("apps/counter:corrupt"),
        Some(&good),
    );
    let blob = registry.blob_file(&digest_of(&v3));
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let (ok, _, err) = deploy("corrupt");
    assert!(!ok && err.contains("corrupt or tampered with"), "{err}");
    assert_eq!(workload()["digest"], digest_of(v1));

    // The signed new version by its tag: a rollout to it.
    let (ok, out, err) = c.roam(&[
        "deploy",
        &registry.reference("apps/counter:stable"),
        "--name",
        "counter",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains(&digest_of(&v2)), "{out}");
    poll(Duration::from_secs(30), "the rollout", || {
        workload()["revision"] == 2
    });

    // The registry is TLS: without its CA, a push is refused.
    let (ok, _, err) = c.roam(&[
        "push",
        artifacts::COUNTER,
        &registry.reference("apps/counter:x"),
    ]);
    assert!(!ok, "pushed to a registry it cannot authenticate");
    assert!(err.contains("registry"), "{err}");
}

/// A registry that takes only a known user: `roam push` and the scheduler
/// authenticate with the Docker config's credentials (`auths`, as `docker
/// login` writes them); without them, or with wrong ones, both are
/// refused with the registry's answer. Hosts never need them.
#[test]
fn a_registry_that_requires_credentials_gets_them_from_the_docker_config() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path(), Some(("ci", "s3cret-pass")));
    let ca = registry.ca.to_str().unwrap().to_string();
    let docker_config = |name: &str, auth: Option<&str>| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        if let Some(auth) = auth {
            let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, auth);
            let config =
                serde_json::json!({ "auths": { registry.addr.clone(): { "auth": encoded } } });
            std::fs::write(d.join("config.json"), config.to_string()).unwrap();
        }
        d
    };
    let push = |config: &Path, tag: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_roam"))
            .args(["push", artifacts::COUNTER])
            .arg(registry.reference(tag))
            .args(["--registry-ca", &ca])
            .env("DOCKER_CONFIG", config)
            .output()
            .unwrap();
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        eprintln!("roam push {tag} -> {:?}\n{o}\n{e}", out.status);
        (out.status.success(), o, e)
    };
    let none = docker_config("none", None);
    let (ok, _, err) = push(&none, "apps/counter:v1");
    assert!(!ok && err.contains("wants credentials"), "{err}");
    let wrong = docker_config("wrong", Some("ci:not-the-password"));
    let (ok, _, err) = push(&wrong, "apps/counter:v1");
    assert!(!ok && err.contains("401"), "{err}");
    let right = docker_config("right", Some("ci:s3cret-pass"));
    let (ok, pinned, err) = push(&right, "apps/counter:v1");
    assert!(ok && pinned.contains("@sha256:"), "{err}");

    // The scheduler pulls with its own Docker config; the host only
    // fetches from the scheduler.
    let mut c = Cluster::start_with(&[
        ("HEARTBEAT_TIMEOUT", PATIENT),
        ("SCHEDULER_ARGS", &format!("--registry-ca {ca}")),
        ("DOCKER_CONFIG", right.to_str().unwrap()),
    ]);
    c.add_host("eu-1", "eu-west-1", "EU");
    c.wait_ready(1);
    c.deploy_ready(&registry.reference("apps/counter:v1"), "counter");
    assert_eq!(c.invoke("counter", "/a").0, 200);
}
