//! End to end: faults a real Kubernetes control plane has, each on an etcd and
//! kube-apiserver of the test's own (tests/common/apiserver.rs): etcd compacting its history
//! under watches, the kube-apiserver stopped and started again on the same etcd, and a watch
//! that stays idle for longer than the server's bookmark period, and how soon a change is
//! routed once a restarted kube-apiserver is ready again.
//!
//! A [`Relay`] stands for the network between sniroute and the API server where a test must
//! break connections without stopping the server.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use crate::common::apiserver::hypershift::{as_written, create_cluster, namespace, HC_API};
use crate::common::apiserver::{wait_ready, ApiServer, AuditEvent, Opts, Relay};
use crate::common::fake_kube::{wait_routed, wait_unrouted};
use crate::common::*;
use serde_json::json;

/// How long a change may take to be routed in calm conditions.
const SWAP: Duration = Duration::from_secs(5);
/// Long enough for the source to retry through its backoff (up to 30 s) after an outage.
const RECOVERY: Duration = Duration::from_secs(60);
/// How soon after a restarted kube-apiserver's `/readyz` turns 200 a change written then is
/// in the table, whatever the outage's length.
const CONVERGED: Duration = Duration::from_secs(5);
/// The audit log's name for sniroute's ServiceAccount.
const SNIROUTE_USER: &str = "system:serviceaccount:hypershift-sharedingress:sniroute";

/// Requests sniroute made for `resource` with `verb`, per the audit log: one event each (a
/// watch's when it started, anything else's when it completed).
fn requests(server: &ApiServer, resource: &str, verb: &str) -> Vec<AuditEvent> {
    let stage = if verb == "watch" {
        "ResponseStarted"
    } else {
        "ResponseComplete"
    };
    server
        .audit(SNIROUTE_USER)
        .into_iter()
        .filter(|r| r.resource == resource && r.verb == verb && r.stage == stage)
        .collect()
}

/// Requests of sniroute's that the server answered, per the audit log (watches once, when
/// they start; those refused before starting when refused).
fn answered(server: &ApiServer) -> usize {
    server
        .audit(SNIROUTE_USER)
        .iter()
        .filter(|r| match r.stage.as_str() {
            "ResponseStarted" => true,
            "ResponseComplete" => r.verb != "watch" || r.code != 200,
            _ => false,
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compaction_sends_watches_410_and_they_relist_without_emptying_the_table() {
    // Without the watch cache every watch is etcd's own: a watch resumed from a revision
    // etcd compacted away gets 410 Gone from etcd itself. (With the cache, the cache's own
    // window decides, which the restart test below exercises.)
    let Some(server) = ApiServer::start(Opts {
        no_watch_cache: true,
    })
    .await
    else {
        return;
    };
    let admin = server.admin().await;
    let c1 = create_cluster(&admin, "compact", "k1", 1).await;
    let c2 = create_cluster(&admin, "compact", "k2", 2).await;
    let _a = c1.backend("a", "kube-apiserver");
    let _b = c1.backend("b", "oauth-openshift");
    let _c = c2.backend("c", "kube-apiserver");
    let relay = Relay::start(server.addr());
    let (proxy, _dir) = server.start_sniroute(&relay.url(), Cfg::new()).await;
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;
    assert_routes(addr, &c1.api(), "a").await;
    assert_routes(addr, &c2.api(), "c").await;
    let service_lists = requests(&server, "services", "list").len();

    // The network breaks; meanwhile c1's kube-apiserver moves to another port, c2 is
    // deleted (finalizer and all), and etcd compacts away every revision sniroute saw.
    relay.cut(true);
    let kas_ip = c1.service("kube-apiserver").ip();
    let _a2 = c1.backend_at("a2", SocketAddr::new(kas_ip, 7443));
    c1.set_service_port(&admin, "kube-apiserver", 7443).await;
    assert!(
        admin
            .delete(HC_API, "HostedCluster", Some("compact"), "k2")
            .await
    );
    c2.patch_hosted_cluster(&admin, json!({"metadata": {"finalizers": null}}))
        .await;
    let mark = proxy.log_mark();
    let revision = server.compact_etcd();
    // The last table keeps routing while the API server is out of reach.
    assert_routes(addr, &c1.api(), "a").await;
    assert_routes(addr, &c2.api(), "c").await;

    relay.heal();
    wait_routed(addr, &c1.api(), "a2", RECOVERY).await;
    wait_unrouted(addr, &c2.api(), SWAP).await;
    // c1's other routes never left: the relist replaced the objects, not the table.
    assert_routes(addr, &c1.oauth(), "b").await;
    let line = proxy.wait_log_since(mark, &["kubernetes watch failed", "Expired"], STEP);
    assert!(line.contains("too old"), "{line}");
    assert!(
        requests(&server, "services", "list").len() > service_lists,
        "no relist of Services after etcd compacted to revision {revision}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_kube_apiserver_resumes_watches_and_what_changed_meanwhile_is_routed() {
    let Some(server) = ApiServer::start(Opts::default()).await else {
        return;
    };
    let admin = server.admin().await;
    let c1 = create_cluster(&admin, "restart", "r1", 1).await;
    let _a = c1.backend("a", "kube-apiserver");
    let (proxy, _dir) = server.start_sniroute(&server.url(), Cfg::new()).await;
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;
    assert_routes(addr, &c1.api(), "a").await;

    // Another replica on the same etcd takes the writes while this one is down, as in a
    // control plane with more than one kube-apiserver.
    let other = server.second_kube_apiserver().await;
    let mark = proxy.log_mark();
    server.stop_kube_apiserver();
    proxy.wait_log_since(mark, &["kubernetes watch failed"], STEP);
    for _ in 0..3 {
        assert_routes(addr, &c1.api(), "a").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        proxy.readyz(),
        200,
        "an API server outage does not make a loaded source unready"
    );

    let other_admin = other.admin().await;
    let kas_ip = c1.service("kube-apiserver").ip();
    let _a2 = c1.backend_at("a2", SocketAddr::new(kas_ip, 7443));
    c1.set_service_port(&other_admin, "kube-apiserver", 7443)
        .await;
    let c2 = create_cluster(&other_admin, "restart", "r2", 2).await;
    let _c = c2.backend("c", "kube-apiserver");
    // Still the last table: nothing reached sniroute yet.
    assert_routes(addr, &c1.api(), "a").await;
    wait_unrouted(addr, &c2.api(), STEP).await;

    let restart = Instant::now();
    server.start_kube_apiserver().await;
    let restarted = restart.elapsed();
    // The restarted server's watch cache begins at etcd's current revision: each resumed
    // watch gets 410 (too old resource version) and relists, after the watcher's backoff.
    wait_routed(addr, &c1.api(), "a2", RECOVERY).await;
    wait_routed(addr, &c2.api(), "c", RECOVERY).await;
    eprintln!(
        "kube-apiserver restarted (to /readyz 200) in {restarted:?}; both changes routed \
         {:?} after the restart began",
        restart.elapsed()
    );
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_filtered_watch_is_kept_current_by_bookmarks() {
    let Some(server) = ApiServer::start(Opts::default()).await else {
        return;
    };
    let admin = server.admin().await;
    let c1 = create_cluster(&admin, "idle", "i1", 1).await;
    let _a = c1.backend("a", "kube-apiserver");
    let _b = c1.backend("b", "oauth-openshift");
    let relay = Relay::start(server.addr());
    let (proxy, _dir) = server.start_sniroute(&relay.url(), Cfg::new()).await;
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;
    let started = server.etcd_revision();

    // For longer than the watch cache's bookmark period (one minute), no Route sniroute
    // selects changes; Routes it does not select (no hosted-control-plane label) do, so only
    // a bookmark can tell its watch that the store moved on.
    namespace(&admin, "idle-noise").await;
    let idle = Instant::now();
    let mut noise = 0;
    while idle.elapsed() < Duration::from_secs(70) {
        let mut route = control::kube::fixtures::route(
            "idle-noise",
            &format!("noise-{noise}"),
            &format!("noise-{noise}.other.test"),
            "nothing",
        );
        route["metadata"]["labels"] = json!({"app": "noise"});
        admin.apply(&as_written(route)).await;
        noise += 1;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let lists = requests(&server, "routes", "list").len();

    // The connection breaks: the Route watch resumes from the bookmark's resourceVersion,
    // newer than anything it was sent, and without a relist.
    let watches = requests(&server, "routes", "watch").len();
    relay.cut(false);
    let resumed = eventually(SWAP, "the Route watch resumed", || async {
        requests(&server, "routes", "watch")
            .get(watches..)
            .and_then(|new| new.first().cloned())
    })
    .await;
    let from = resumed
        .resource_version()
        .unwrap_or_else(|| panic!("no resourceVersion in {}", resumed.uri));
    assert!(
        from > started as u64,
        "the watch resumed from {from}, not past revision {started}: no bookmark reached it"
    );
    assert_eq!(
        requests(&server, "routes", "list").len(),
        lists,
        "the resumed watch relisted"
    );
    // And it delivers: a Route change after the idle minute is routed at once.
    c1.patch_route(
        &admin,
        "oauth",
        json!({"spec": {"host": "oauth-i1.moved.example.test"}}),
    )
    .await;
    wait_routed(addr, "oauth-i1.moved.example.test", "b", SWAP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_3s_outage_changes_are_routed_within_5s_of_readyz_without_a_storm() {
    outage_then_changes(Duration::from_secs(3)).await;
}

/// Long enough for each watch's backoff to reach its longest pause (30 s, up to 60 s with
/// jitter) before the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_30s_outage_changes_are_routed_within_5s_of_readyz_without_a_storm() {
    outage_then_changes(Duration::from_secs(30)).await;
}

/// Stops the kube-apiserver for `outage`, starts it again on the same etcd, and as soon as its
/// `/readyz` is 200 deletes a HostedCluster and narrows another's allowedCIDRBlocks: both are
/// in the table within [`CONVERGED`], sniroute tried to connect about once a second while the
/// server was down, and nothing was logged as an error (the restart's 403s are warnings).
async fn outage_then_changes(outage: Duration) {
    let Some(server) = ApiServer::start(Opts::default()).await else {
        return;
    };
    let admin = server.admin().await;
    let gone = create_cluster(&admin, "outage", "gone", 1).await;
    let narrowed = create_cluster(&admin, "outage", "narrowed", 2).await;
    narrowed
        .patch_hosted_cluster(
            &admin,
            json!({"spec": {"networking": {"apiServer": {"allowedCIDRBlocks": ["127.0.0.0/8"]}}}}),
        )
        .await;
    let _g = gone.backend("g", "kube-apiserver");
    let _n = narrowed.backend("n", "kube-apiserver");
    // Between sniroute and the server, to count its connection attempts while it is down.
    let relay = Relay::start(server.addr());
    let (proxy, _dir) = server.start_sniroute(&relay.url(), Cfg::new()).await;
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let from_other = || async {
        tls_connect_with(addr, &ClientOpts::sni(&narrowed.api()).bound_to(other)).await
    };
    assert_routes(addr, &gone.api(), "g").await;
    let conn = from_other().await.expect("routed from 127.0.0.2");
    assert_eq!(conn.backend, "n");

    let mark = proxy.log_mark();
    let answered_before = answered(&server);
    server.stop_kube_apiserver();
    let before = relay.accepted();
    tokio::time::sleep(outage).await;
    let restarting = Instant::now();
    server.start_kube_apiserver().await;
    // `/readyz` is 200 (asked every 100 ms): from here the clock runs.
    let ready = Instant::now();
    let attempts = relay.accepted() - before;
    let down = outage + (ready - restarting);
    assert!(
        admin
            .delete(HC_API, "HostedCluster", Some("outage"), "gone")
            .await
    );
    narrowed
        .patch_hosted_cluster(
            &admin,
            json!({"spec": {"networking": {"apiServer": {"allowedCIDRBlocks": ["127.0.0.1/32"]}}}}),
        )
        .await;
    wait_unrouted(addr, &gone.api(), RECOVERY).await;
    let deleted = ready.elapsed();
    eventually(RECOVERY, "127.0.0.2 refused", || async {
        from_other().await.is_err().then_some(())
    })
    .await;
    let narrowed_in = ready.elapsed();
    let answers = answered(&server) - answered_before;
    let refused = proxy.logs_since(mark, &["refused `"]).len();
    let line = format!(
        "outage {outage:?} (down {down:.1?} until /readyz 200): deletion routed {deleted:.2?} \
         and narrowing {narrowed_in:.2?} after /readyz 200; {attempts} connection attempts \
         until /readyz 200, {answers} requests answered from the stop until both were routed; \
         {refused} transient 403s"
    );
    eprintln!("{line}");
    assert!(
        deleted.max(narrowed_in) <= CONVERGED,
        "{line}: not within {CONVERGED:?}"
    );
    // One probe a second and each watch's own backoff: no storm.
    let bound = 2 * down.as_secs() + 10;
    assert!(attempts <= bound, "{line}: more than {bound}");
    // A routine restart is no error: its 403s are warnings, and each failed request is
    // logged once, by the source, as a warning.
    let errors = proxy.logs_since(mark, &[" ERROR "]);
    assert!(errors.is_empty(), "{line}: errors logged: {errors:#?}");
}
