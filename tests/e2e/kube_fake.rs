//! End to end: the Kubernetes source against the in-process fake API server, for what a real
//! kube-apiserver cannot be made to do on demand. Everything else runs against the real one
//! (`tests/e2e/kube.rs`, `tests/e2e/kube_faults.rs`). Why each test stays here:
//!
//! - `lists_held_back_keep_it_unready`: a real server cannot be made to hold one list
//!   response while answering the others (RBAC refusals, the real way to keep a kind from
//!   listing, are in `tests/e2e/kube.rs`).
//! - `an_api_outage_keeps_routing_and_the_source_recovers`: a server that stays up and
//!   answers every request with 500/503 while cutting watches; the real server's outage (a
//!   stopped and restarted kube-apiserver) is in `tests/e2e/kube_faults.rs`.
//! - `malformed_objects_skip_only_what_they_break`: an object of the wrong shape, which the
//!   real CRD schema refuses to store (`tests/e2e/kube.rs` checks that it does).

use std::time::Duration;

use crate::common::fake_kube::{wait_routed, wait_unrouted, FakeKube, Kind};
use crate::common::*;
use control::kube::fixtures;
use serde_json::{json, Value};

/// How long a change may take to be routed before a test fails (the goal is well under a
/// second; CI machines are slow and shared).
const SWAP: Duration = Duration::from_secs(5);
/// Long enough for the source to retry through its backoff after an outage.
const RECOVERY: Duration = Duration::from_secs(40);

/// Names every test backend's certificate covers.
const SANS: &[&str] = &[
    "*.c1.hcp.example.test",
    "*.c2.hcp.example.test",
    "*.c3.hcp.example.test",
    "*.moved.example.test",
];

fn backend(id: &str) -> TlsBackend {
    TlsBackend::start_with(
        id,
        TlsBackendOpts {
            names: Some(SANS.iter().map(|s| s.to_string()).collect()),
            ..TlsBackendOpts::default()
        },
    )
}

fn api(cluster: &str) -> String {
    fixtures::host("api", cluster)
}

fn oauth(cluster: &str) -> String {
    fixtures::host("oauth", cluster)
}

/// Puts a fixture cluster into the fake: its kube-apiserver Service at 127.0.0.1:`kas`, its
/// oauth Service at 127.0.0.1:`oauth`, every other Service at a closed loopback port.
/// Returns its HostedCluster, for edits.
fn add_cluster(fake: &FakeKube, name: &str, index: usize, kas: u16, oauth: u16) -> Value {
    let (hc, routes, services) = fixtures::cluster("clusters", name, index);
    fake.apply(hc.clone());
    for route in routes {
        fake.apply(route);
    }
    for mut svc in services {
        let port = match svc["metadata"]["name"].as_str() {
            Some("kube-apiserver") => kas,
            Some("oauth-openshift") => oauth,
            _ => closed_port().port(),
        };
        svc["spec"]["clusterIP"] = json!("127.0.0.1");
        svc["spec"]["clusterIPs"] = json!(["127.0.0.1"]);
        svc["spec"]["ports"][0]["port"] = json!(port);
        fake.apply(svc);
    }
    hc
}

/// The binary against `fake`, with `kubernetes: {backends: service}` and any file routes in
/// `cfg`: the fake serves no EndpointSlices (endpoint routing runs against the real server).
fn start(fake: &FakeKube, cfg: Cfg) -> (Sniroute, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.kubeconfig(dir.path());
    let proxy = Sniroute::start_kube(
        cfg.set("kubernetes", "{backends: service}").yaml(),
        &kubeconfig,
    );
    (proxy, dir)
}

async fn wait_ready(proxy: &Sniroute) {
    eventually(STARTUP, "/readyz 200", || async {
        (proxy.readyz() == 200).then_some(())
    })
    .await;
}

fn set_port(svc: &mut Value, port: u16) {
    svc["spec"]["ports"][0]["port"] = json!(port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_held_back_keep_it_unready() {
    let (a, b) = (backend("a"), backend("b"));
    let fake = FakeKube::start();
    add_cluster(&fake, "c1", 1, a.addr().port(), b.addr().port());
    fake.hold_lists(Kind::Service);
    let (proxy, _dir) = start(&fake, Cfg::new());
    let addr = proxy.proxy_addr();

    // Not ready while one kind has not been listed, and nothing from Kubernetes is routed.
    eventually(STARTUP, "a Service list request", || async {
        (fake.count_requests(&["GET /api/v1/services?"]) > 0).then_some(())
    })
    .await;
    let (status, body) = proxy.get("/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("kubernetes source"), "{body}");
    wait_unrouted(addr, &api("c1"), STEP).await;
    fake.release();
    wait_ready(&proxy).await;
    assert_routes(addr, &api("c1"), "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_keeps_routing_and_the_source_recovers() {
    let (a, b) = (backend("a"), backend("b"));
    let fake = FakeKube::start();
    add_cluster(&fake, "c1", 1, a.addr().port(), b.addr().port());
    let (proxy, _dir) = start(&fake, Cfg::new());
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;
    assert_routes(addr, &api("c1"), "a").await;

    let mark = proxy.log_mark();
    fake.outage();
    proxy.wait_log_since(mark, &["kubernetes watch failed"], STEP);
    // Requests keep failing (503, cut watches) while connections keep routing.
    for _ in 0..4 {
        assert_routes(addr, &api("c1"), "a").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(
        proxy.readyz(),
        200,
        "an outage does not make a loaded source unready"
    );
    assert!(proxy.routes()["routes"].as_array().unwrap().len() >= 5);

    fake.recover();
    fake.modify(Kind::Service, "clusters-c1", "kube-apiserver", |svc| {
        set_port(svc, b.addr().port())
    });
    wait_routed(addr, &api("c1"), "b", RECOVERY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_objects_skip_only_what_they_break() {
    let (a, b) = (backend("a"), backend("b"));
    let fake = FakeKube::start();
    add_cluster(&fake, "c1", 1, a.addr().port(), b.addr().port());
    let mut broken = add_cluster(&fake, "c2", 2, a.addr().port(), b.addr().port());
    broken["spec"]["networking"] = json!({"apiServer": {"allowedCIDRBlocks": "not-a-list"}});
    fake.apply(broken);
    let (proxy, _dir) = start(&fake, Cfg::new());
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;

    assert_routes(addr, &api("c1"), "a").await;
    assert_routes(addr, &oauth("c1"), "b").await;
    wait_unrouted(addr, &api("c2"), STEP).await;
    let line = proxy.wait_log(&["does not parse", "name=\"c2\""], STEP);
    assert!(line.contains("HostedCluster"), "{line}");
    let errors =
        Scrape::of(&proxy).value("sniroute_source_errors_total", &[("source", "kubernetes")]);
    assert!(errors >= 1.0, "{errors}");

    // Fixed, it is routed.
    fake.modify(Kind::HostedCluster, "clusters", "c2", |hc| {
        hc["spec"]["networking"]["apiServer"] = json!({"allowedCIDRBlocks": ["127.0.0.0/8"]});
    });
    wait_routed(addr, &api("c2"), "a", SWAP).await;
}
