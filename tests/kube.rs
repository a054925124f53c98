//! End to end: the Kubernetes source. The real binary watches an in-process fake API server
//! through a kubeconfig; hosted clusters appear, change, move and disappear while real TLS
//! connections through the proxy reach the backends their Services name (ClusterIPs are
//! 127.0.0.1 here, ports are the TLS backends').

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::fake_kube::{tls_connect_from, wait_routed, wait_unrouted, FakeKube, Kind};
use common::*;
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

/// The binary against `fake`, with `kubernetes: {}` and any file routes in `cfg`.
fn start(fake: &FakeKube, cfg: Cfg) -> (Sniroute, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.kubeconfig(dir.path());
    let proxy = Sniroute::start_kube(cfg.set("kubernetes", "{}").yaml(), &kubeconfig);
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
async fn hosted_clusters_appear_change_move_and_disappear() {
    let (a, b, c) = (backend("a"), backend("b"), backend("c"));
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

    assert_routes(addr, &api("c1"), "a")
        .await
        .echo(b"ping")
        .await;
    assert_routes(addr, &oauth("c1"), "b").await;
    let routes = proxy.routes();
    let kas = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "clusters/c1/kube-apiserver")
        .unwrap_or_else(|| panic!("no kube-apiserver route in {routes}"));
    assert_eq!(kas["source"], "hostedcluster clusters/c1");
    assert_eq!(kas["hostnames"], json!([api("c1")]));
    assert_eq!(kas["backends"], json!([a.addr().to_string()]));
    // The client spoke the protocol the fake checks: paged lists, a label selector for
    // Routes, watches with bookmarks.
    assert!(fake.count_requests(&["/hostedclusters?", "limit=500"]) > 0);
    assert!(
        fake.count_requests(&[
            "/routes?",
            "labelSelector=hypershift.openshift.io%2Fhosted-control-plane"
        ]) > 0,
        "{:#?}",
        fake.requests()
    );
    eventually(STEP, "watches with bookmarks", || async {
        (fake.count_requests(&["watch=true", "allowWatchBookmarks=true"]) >= 3).then_some(())
    })
    .await;

    // Appear: a new cluster is routed.
    add_cluster(&fake, "c2", 2, c.addr().port(), b.addr().port());
    let appear = wait_routed(addr, &api("c2"), "c", SWAP).await;

    // Change: a Service port change re-routes at once (no HostedCluster or Route event).
    fake.modify(Kind::Service, "clusters-c1", "kube-apiserver", |svc| {
        set_port(svc, c.addr().port())
    });
    let change = wait_routed(addr, &api("c1"), "c", SWAP).await;

    // Move: a Route's host changes; the old name is refused.
    fake.modify(Kind::Route, "clusters-c1", "oauth", |route| {
        route["spec"]["host"] = json!("oauth-c1.moved.example.test");
    });
    let moved = wait_routed(addr, "oauth-c1.moved.example.test", "b", SWAP).await;
    wait_unrouted(addr, &oauth("c1"), STEP).await;

    // Disappear: a deleted cluster is refused with unrecognized_name; the other stays.
    fake.delete(Kind::HostedCluster, "clusters", "c2");
    let gone = wait_unrouted(addr, &api("c2"), SWAP).await;
    assert_routes(addr, &api("c1"), "c").await;

    // A HostedCluster being deleted (finalizers pending) is no longer routed either.
    fake.modify(Kind::HostedCluster, "clusters", "c1", |hc| {
        hc["metadata"]["deletionTimestamp"] = json!("2026-03-05T08:00:00Z");
    });
    wait_unrouted(addr, &api("c1"), SWAP).await;

    eprintln!(
        "swap latency (event in the API server to routed through the proxy): \
         new cluster {appear:?}, Service port change {change:?}, Route move {moved:?}, \
         delete {gone:?}"
    );
    for latency in [appear, change, moved, gone] {
        assert!(latency < Duration::from_secs(1), "swap took {latency:?}");
    }
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
async fn an_expired_watch_relists_and_picks_up_what_it_missed() {
    let (a, b) = (backend("a"), backend("b"));
    let fake = FakeKube::start();
    add_cluster(&fake, "c1", 1, a.addr().port(), b.addr().port());
    add_cluster(&fake, "c2", 2, a.addr().port(), b.addr().port());
    let (proxy, _dir) = start(&fake, Cfg::new());
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;
    eventually(STEP, "three watches open", || async {
        (fake.count_requests(&["watch=true"]) >= 3).then_some(())
    })
    .await;
    let lists = |fake: &FakeKube| fake.count_requests(&["GET /api/v1/services?", "limit="]);
    let lists_before = lists(&fake);

    // Changes no watch delivers: only a relist after the 410 can find them.
    fake.expire_watches_after(|fake| {
        fake.modify(Kind::Service, "clusters-c1", "kube-apiserver", |svc| {
            set_port(svc, b.addr().port())
        });
        fake.delete(Kind::HostedCluster, "clusters", "c2");
    });
    wait_routed(addr, &api("c1"), "b", RECOVERY).await;
    wait_unrouted(addr, &api("c2"), SWAP).await;
    assert!(
        lists(&fake) > lists_before,
        "no relist of Services after 410 Gone"
    );
    // Never an empty table in between: c1's other routes stayed routed throughout.
    assert_routes(addr, &oauth("c1"), "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_cidr_blocks_admit_listed_sources_only() {
    let (a, b) = (backend("a"), backend("b"));
    let fake = FakeKube::start();
    let mut hc = add_cluster(&fake, "c1", 1, a.addr().port(), b.addr().port());
    hc["spec"]["networking"]["apiServer"] = json!({"allowedCIDRBlocks": ["127.0.0.1/32"]});
    fake.apply(hc);
    let (proxy, _dir) = start(&fake, Cfg::new());
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;

    let localhost: IpAddr = "127.0.0.1".parse().unwrap();
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let conn = tls_connect_from(localhost, addr, &api("c1")).await.unwrap();
    assert_eq!(conn.backend, "a");
    let mark = proxy.log_mark();
    for host in [api("c1"), oauth("c1")] {
        let refused = tls_connect_from(other, addr, &host).await;
        assert!(refused.is_err(), "{host} from 127.0.0.2 was routed");
    }
    proxy.wait_refusal_since(mark, "denied", STEP);

    // Widening the list admits the other source without a restart.
    fake.modify(Kind::HostedCluster, "clusters", "c1", |hc| {
        hc["spec"]["networking"]["apiServer"]["allowedCIDRBlocks"] = json!(["127.0.0.0/8"]);
    });
    eventually(SWAP, "127.0.0.2 admitted", || async {
        tls_connect_from(other, addr, &api("c1")).await.ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_routes_win_conflicts_with_kubernetes_routes() {
    let (a, b, f) = (backend("a"), backend("b"), backend("file"));
    let fake = FakeKube::start();
    add_cluster(&fake, "c1", 1, a.addr().port(), b.addr().port());
    let api_c1 = api("c1");
    let (proxy, _dir) = start(
        &fake,
        Cfg::new().route("pinned", &[api_c1.as_str()], &[f.addr()]),
    );
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;
    assert_routes(addr, &api_c1, "file").await;
    assert_routes(addr, &oauth("c1"), "b").await;
    let line = proxy.wait_log(&["route conflict", "claimed by route pinned (file)"], STEP);
    assert!(line.contains("clusters/c1/kube-apiserver"), "{line}");
    let routes = proxy.routes();
    let sources: Vec<(String, String)> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        sources.contains(&("pinned".into(), "file".into())),
        "{sources:?}"
    );
    assert!(
        sources.contains(&(
            "clusters/c1/oauth".into(),
            "hostedcluster clusters/c1".into()
        )),
        "{sources:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_objects_and_missing_services_skip_only_what_they_break() {
    let (a, b) = (backend("a"), backend("b"));
    let fake = FakeKube::start();
    add_cluster(&fake, "c1", 1, a.addr().port(), b.addr().port());
    let mut broken = add_cluster(&fake, "c2", 2, a.addr().port(), b.addr().port());
    broken["spec"]["networking"] = json!({"apiServer": {"allowedCIDRBlocks": "not-a-list"}});
    fake.apply(broken);
    add_cluster(&fake, "c3", 3, a.addr().port(), b.addr().port());
    fake.delete(Kind::Service, "clusters-c3", "oauth-openshift");
    let (proxy, _dir) = start(&fake, Cfg::new());
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;

    assert_routes(addr, &api("c1"), "a").await;
    assert_routes(addr, &oauth("c1"), "b").await;
    wait_unrouted(addr, &api("c2"), STEP).await;
    assert_routes(addr, &api("c3"), "a").await;
    wait_unrouted(addr, &oauth("c3"), STEP).await;
    let line = proxy.wait_log(&["does not parse", "name=\"c2\""], STEP);
    assert!(line.contains("HostedCluster"), "{line}");
    let line = proxy.wait_log(&["route not made", "missing_service"], STEP);
    assert!(line.contains("clusters-c3/oauth-openshift"), "{line}");
    // Counted: the malformed HostedCluster and the route left out, at least.
    let (_, metrics) = proxy.get("/metrics").unwrap();
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sniroute_source_errors_total{source=\"kubernetes\"} "))
        .unwrap_or_else(|| panic!("no kubernetes source errors in:\n{metrics}"))
        .parse()
        .unwrap();
    assert!(errors >= 2.0, "{errors}");

    // The missing Service appearing routes the Route at once.
    let (_, _, services) = fixtures::cluster("clusters", "c3", 3);
    let mut svc = services
        .into_iter()
        .find(|s| s["metadata"]["name"] == "oauth-openshift")
        .unwrap();
    svc["spec"]["clusterIP"] = json!("127.0.0.1");
    set_port(&mut svc, b.addr().port());
    fake.apply(svc);
    wait_routed(addr, &oauth("c3"), "b", SWAP).await;
}

#[test]
fn kubernetes_without_a_client_config_fails_at_start() {
    let (_dir, path) = config_file(&Cfg::new().set("kubernetes", "{}").yaml());
    let output = std::process::Command::new(binary())
        .arg("--config")
        .arg(&path)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("HOME", "/nonexistent")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("NO_COLOR", "1")
        .output()
        .expect("run sniroute");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no Kubernetes client configuration was found"),
        "{stderr}"
    );
}
