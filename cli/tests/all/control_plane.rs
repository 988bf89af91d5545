//! The control plane's state in etcd (issue 19): a scheduler started with
//! `--store etcd=URL` keeps workloads, placements and tokens there, and a
//! scheduler restarted on the same etcd carries on with them.

use std::time::Duration;

use roam_scheduler::store::testing::Etcd;
use roam_tests::artifacts;

use crate::cluster::{Cluster, poll};
use crate::migrate::deploy;

#[test]
fn a_scheduler_on_etcd_keeps_its_state_there_across_a_restart() {
    let etcd = Etcd::start();
    let store = format!("etcd={}", etcd.url());
    let mut c = Cluster::start_with(&[("STORE", &store)]);
    c.add_host("eu-1", "eu-west-1", "EU");
    c.wait_ready(1);
    deploy(&c, &[artifacts::COUNTER, "--name", "counter"]);
    poll(Duration::from_secs(30), "counter to serve", || {
        c.invoke("counter", "/apples").0 == 200
    });
    assert!(
        !c.dir.path().join("scheduler/state.redb").exists(),
        "no embedded store beside etcd"
    );
    // What etcd itself holds, as its own client lists it.
    let out = std::process::Command::new("etcdctl")
        .args([
            "--endpoints",
            &etcd.url(),
            "get",
            "--prefix",
            "--keys-only",
            "/roam/",
        ])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl (Debian `etcd-client`)");
    let keys = String::from_utf8_lossy(&out.stdout);
    for key in ["/roam/workloads/counter", "/roam/assignments/counter"] {
        assert!(keys.lines().any(|k| k == key), "{key} not in etcd: {keys}");
    }

    c.restart_scheduler();
    c.wait_ready(1);
    let (ok, out, err) = c.roam(&["get", "workloads"]);
    assert!(ok && out.contains("counter"), "{out}{err}");
    poll(Duration::from_secs(30), "counter to serve again", || {
        c.invoke("counter", "/apples").0 == 200
    });
}
