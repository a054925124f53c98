//! End to end: the Kubernetes source against a real etcd and kube-apiserver (see
//! `tests/common/apiserver.rs`), with the real HostedCluster and Route CRDs installed. The
//! real binary runs as the `sniroute` ServiceAccount bound to exactly `deploy/base`'s
//! ClusterRole, with a TokenRequest token; hosted clusters are written as HyperShift writes
//! them, their Services get ClusterIPs from the server (its service range is inside
//! 127.0.0.0/8), and TLS backends listen on those addresses.
//!
//! One API server serves every test in this binary: each test uses cluster names of its own.
//! Faults (compaction, restarts, idle watches) are in `tests/e2e/kube_faults.rs`, each with a
//! server of its own; what no real server can be made to do stays on the fake, in
//! `tests/e2e/kube_fake.rs`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::common::apiserver::hypershift::{create_cluster, FINALIZER, HC_API};
use crate::common::apiserver::{wait_ready, ApiServer, NAMESPACE};
use crate::common::fake_kube::{wait_routed, wait_unrouted};
use crate::common::*;
use serde_json::{json, Value};

/// How long a change may take to be routed before a test fails (the goal is well under a
/// second; CI machines are slow and shared).
const SWAP: Duration = Duration::from_secs(5);
/// The audit log's name for sniroute's ServiceAccount.
const SNIROUTE_USER: &str = "system:serviceaccount:hypershift-sharedingress:sniroute";

/// The binary as `deploy/base`'s ServiceAccount, with `kubernetes: {}` and `cfg`.
async fn start(server: &ApiServer, cfg: Cfg) -> (Sniroute, tempfile::TempDir) {
    server.start_sniroute(&server.url(), cfg).await
}

fn route_named<'a>(routes: &'a Value, name: &str) -> &'a Value {
    routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no route {name} in {routes}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosted_clusters_appear_change_move_and_disappear() {
    let Some(server) = ApiServer::shared().await else {
        return;
    };
    let admin = server.admin().await;
    let c1 = create_cluster(&admin, "life", "life1", 1).await;
    let a = c1.backend("a", "kube-apiserver");
    let _b = c1.backend("b", "oauth-openshift");
    let (proxy, _dir) = start(server, Cfg::new()).await;
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;

    assert_routes(addr, &c1.api(), "a")
        .await
        .echo(b"ping")
        .await;
    assert_routes(addr, &c1.oauth(), "b").await;
    let routes = proxy.routes();
    let kas = route_named(&routes, "life/life1/kube-apiserver");
    assert_eq!(kas["source"], "hostedcluster life/life1");
    assert_eq!(kas["hostnames"], json!([c1.api()]));
    assert_eq!(kas["backends"], json!([a.addr().to_string()]));
    // What the client asked the real server for: paged lists, a label selector for Routes,
    // watches with bookmarks (the audit log has every request of the ServiceAccount).
    let requests = server.audit(SNIROUTE_USER);
    let has = |parts: &[&str]| {
        requests
            .iter()
            .any(|r| parts.iter().all(|p| r.uri.contains(p)))
    };
    assert!(has(&["/hostedclusters?", "limit=500"]), "{requests:#?}");
    assert!(
        has(&[
            "/routes?",
            "labelSelector=hypershift.openshift.io%2Fhosted-control-plane"
        ]),
        "{requests:#?}"
    );
    eventually(STEP, "four watches with bookmarks", || async {
        let watches: std::collections::HashSet<String> = server
            .audit(SNIROUTE_USER)
            .into_iter()
            .filter(|r| r.verb == "watch" && r.uri.contains("allowWatchBookmarks=true"))
            .map(|r| r.resource)
            .collect();
        // HostedClusters, Routes, Services, EndpointSlices. A superset: the shared server
        // also serves the kube_gateway module's sniroutes, under the same ServiceAccount.
        ["hostedclusters", "routes", "services", "endpointslices"]
            .iter()
            .all(|r| watches.contains(*r))
            .then_some(())
    })
    .await;

    // Appear: a new cluster is routed.
    let c2 = create_cluster(&admin, "life", "life2", 2).await;
    let _c = c2.backend("c", "kube-apiserver");
    let appear = wait_routed(addr, &c2.api(), "c", SWAP).await;

    // Change: a Service port change re-routes at once (no HostedCluster or Route event).
    let kas_ip = c1.service("kube-apiserver").ip();
    let _a2 = c1.backend_at("a2", SocketAddr::new(kas_ip, 7443));
    c1.set_service_port(&admin, "kube-apiserver", 7443).await;
    let change = wait_routed(addr, &c1.api(), "a2", SWAP).await;

    // Move: a Route's host changes; the old name is refused.
    c1.patch_route(
        &admin,
        "oauth",
        json!({"spec": {"host": "oauth-life1.moved.example.test"}}),
    )
    .await;
    let moved = wait_routed(addr, "oauth-life1.moved.example.test", "b", SWAP).await;
    wait_unrouted(addr, &c1.oauth(), STEP).await;

    // Disappear, HyperShift's way: the delete only sets deletionTimestamp while the
    // operator's finalizer holds the object, and that is when routing stops.
    assert!(
        admin
            .delete(HC_API, "HostedCluster", Some("life"), "life2")
            .await
    );
    let held = admin
        .get(HC_API, "HostedCluster", Some("life"), "life2")
        .await
        .expect("the finalizer keeps the HostedCluster");
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    assert_eq!(held["metadata"]["finalizers"], json!([FINALIZER]));
    let gone = wait_unrouted(addr, &c2.api(), SWAP).await;
    assert_routes(addr, &c1.api(), "a2").await;
    // The operator finishes its cleanup and drops the finalizer: the object goes.
    c2.patch_hosted_cluster(&admin, json!({"metadata": {"finalizers": null}}))
        .await;
    admin
        .wait_for_gone(HC_API, "HostedCluster", Some("life"), "life2", STEP)
        .await;
    wait_unrouted(addr, &c2.api(), STEP).await;
    assert_routes(addr, &c1.api(), "a2").await;

    eprintln!(
        "swap latency against the real API server (change written to routed through the \
         proxy): new cluster {appear:?}, Service port change {change:?}, Route move {moved:?}, \
         delete {gone:?}"
    );
    for latency in [appear, change, moved, gone] {
        assert!(latency < Duration::from_secs(1), "swap took {latency:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_missing_deleted_and_recreated_with_a_new_cluster_ip() {
    let Some(server) = ApiServer::shared().await else {
        return;
    };
    let admin = server.admin().await;
    let mut c = create_cluster(&admin, "svc", "svc1", 3).await;
    // One Route's Service is missing from the start.
    c.delete_service(&admin, "oauth-openshift").await;
    let old = c.backend("old", "kube-apiserver");
    let (proxy, _dir) = start(server, Cfg::new()).await;
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;
    assert_routes(addr, &c.api(), "old").await;
    wait_unrouted(addr, &c.oauth(), STEP).await;
    let line = proxy.wait_log(&["route not made", "missing_service"], STEP);
    assert!(line.contains("svc-svc1/oauth-openshift"), "{line}");

    // The missing Service appearing routes its Route at once.
    let oauth_addr = c.recreate_service(&admin, "oauth-openshift", 3).await;
    let _oauth = c.backend_at("oauth", oauth_addr);
    wait_routed(addr, &c.oauth(), "oauth", SWAP).await;

    // Deleted: the Route is left out, the cluster's other routes stay.
    let old_addr = old.addr();
    c.delete_service(&admin, "kube-apiserver").await;
    wait_unrouted(addr, &c.api(), SWAP).await;
    assert_routes(addr, &c.oauth(), "oauth").await;

    // Recreated: the server allocates a new ClusterIP, and the route follows it.
    let new_addr = c.recreate_service(&admin, "kube-apiserver", 3).await;
    assert_ne!(
        new_addr.ip(),
        old_addr.ip(),
        "the server gave the recreated Service its old ClusterIP"
    );
    let _new = c.backend_at("new", new_addr);
    wait_routed(addr, &c.api(), "new", SWAP).await;
    let routes = proxy.routes();
    let kas = route_named(&routes, "svc/svc1/kube-apiserver");
    assert_eq!(kas["backends"], json!([new_addr.to_string()]));
    drop(old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_api_server_dns_name_is_one_more_name_for_the_kube_apiserver() {
    let Some(server) = ApiServer::shared().await else {
        return;
    };
    let admin = server.admin().await;
    let c = create_cluster(&admin, "dns", "dns1", 4).await;
    let _kas = c.backend("kas", "kube-apiserver");
    let (proxy, _dir) = start(server, Cfg::new()).await;
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;
    let custom = "dns1-api.custom.example.test";
    wait_unrouted(addr, custom, STEP).await;

    let stored = c
        .patch_hosted_cluster(&admin, json!({"spec": {"kubeAPIServerDNSName": custom}}))
        .await;
    // Kept by the schema, as sniroute reads it.
    assert_eq!(stored["spec"]["kubeAPIServerDNSName"], custom);
    wait_routed(addr, custom, "kas", SWAP).await;
    assert_routes(addr, &c.api(), "kas").await;

    c.patch_hosted_cluster(&admin, json!({"spec": {"kubeAPIServerDNSName": null}}))
        .await;
    wait_unrouted(addr, custom, SWAP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_cidr_blocks_admit_listed_sources_only() {
    let Some(server) = ApiServer::shared().await else {
        return;
    };
    let admin = server.admin().await;
    let c = create_cluster(&admin, "cidr", "cidr1", 5).await;
    c.patch_hosted_cluster(
        &admin,
        json!({"spec": {"networking": {"apiServer": {"allowedCIDRBlocks": ["127.0.0.1/32"]}}}}),
    )
    .await;
    let _a = c.backend("a", "kube-apiserver");
    let _b = c.backend("b", "oauth-openshift");
    let (proxy, _dir) = start(server, Cfg::new()).await;
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;

    let localhost: IpAddr = "127.0.0.1".parse().unwrap();
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let conn = eventually(STEP, "routed from 127.0.0.1", || async {
        tls_connect_with(addr, &ClientOpts::sni(&c.api()).bound_to(localhost))
            .await
            .ok()
    })
    .await;
    assert_eq!(conn.backend, "a");
    let mark = proxy.log_mark();
    for host in [c.api(), c.oauth()] {
        let refused = tls_connect_with(addr, &ClientOpts::sni(&host).bound_to(other)).await;
        assert!(refused.is_err(), "{host} from 127.0.0.2 was routed");
    }
    proxy.wait_refusal_since(mark, "denied", STEP);

    // Widening the list admits the other source without a restart.
    c.patch_hosted_cluster(
        &admin,
        json!({"spec": {"networking": {"apiServer": {"allowedCIDRBlocks": ["127.0.0.0/8"]}}}}),
    )
    .await;
    eventually(SWAP, "127.0.0.2 admitted", || async {
        tls_connect_with(addr, &ClientOpts::sni(&c.api()).bound_to(other))
            .await
            .ok()
    })
    .await;

    // The schema's check is a pattern: it admits an address that is no address. sniroute
    // then routes none of the cluster (fail closed) and says why, until it is fixed.
    let mark = proxy.log_mark();
    c.patch_hosted_cluster(
        &admin,
        json!({"spec": {"networking": {"apiServer": {"allowedCIDRBlocks": ["127.0.0.0/8", "300.1.2.3/8"]}}}}),
    )
    .await;
    wait_unrouted(addr, &c.api(), SWAP).await;
    wait_unrouted(addr, &c.oauth(), STEP).await;
    let line = proxy.wait_log_since(mark, &["HostedCluster not routed", "cidr/cidr1"], STEP);
    assert!(line.contains("300.1.2.3/8"), "{line}");
    c.patch_hosted_cluster(
        &admin,
        json!({"spec": {"networking": {"apiServer": {"allowedCIDRBlocks": ["127.0.0.0/8"]}}}}),
    )
    .await;
    wait_routed(addr, &c.api(), "a", SWAP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_refuses_what_the_fake_tests_feed_sniroute() {
    let Some(server) = ApiServer::shared().await else {
        return;
    };
    let admin = server.admin().await;
    let c = create_cluster(&admin, "schema", "schema1", 6).await;
    let (hc, _, _) = control::kube::fixtures::cluster("schema", "schema1", 6);
    let mut broken = crate::common::apiserver::hypershift::as_written(hc);
    broken["spec"]["networking"]["apiServer"] = json!({"allowedCIDRBlocks": "not-a-list"});
    // Server-side apply answers a wrongly typed field with 500 ("failed to create typed
    // patch object"), not 422: refused either way, and named.
    let refused = admin.try_apply(&broken).await.unwrap_err();
    assert!(refused.status >= 400, "{refused}");
    assert!(
        refused.message.contains("allowedCIDRBlocks") && refused.message.contains("expected list"),
        "{refused}"
    );
    // A field the schema does not know is refused too (strict validation), rather than
    // pruned: nothing sniroute reads can be silently missing from what tests write.
    let mut unknown = crate::common::apiserver::hypershift::as_written(
        control::kube::fixtures::cluster("schema", "schema1", 6).0,
    );
    unknown["spec"]["apiServerHostname"] = json!("nowhere.example.test");
    let refused = admin.try_apply(&unknown).await.unwrap_err();
    assert!(refused.message.contains("apiServerHostname"), "{refused}");
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_routes_win_conflicts_with_kubernetes_routes() {
    let Some(server) = ApiServer::shared().await else {
        return;
    };
    let admin = server.admin().await;
    let c = create_cluster(&admin, "pin", "pin1", 7).await;
    let _a = c.backend("a", "kube-apiserver");
    let _b = c.backend("b", "oauth-openshift");
    let f = TlsBackend::start_with(
        "file",
        TlsBackendOpts {
            names: Some(vec![format!(
                "*.pin1.{}",
                control::kube::fixtures::BASE_DOMAIN
            )]),
            ..TlsBackendOpts::default()
        },
    );
    let api = c.api();
    let (proxy, _dir) = start(
        server,
        Cfg::new().route("pinned", &[api.as_str()], &[f.addr()]),
    )
    .await;
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;
    assert_routes(addr, &api, "file").await;
    assert_routes(addr, &c.oauth(), "b").await;
    let line = proxy.wait_log(&["route conflict", "claimed by route pinned (file)"], STEP);
    assert!(line.contains("pin/pin1/kube-apiserver"), "{line}");
    let routes = proxy.routes();
    assert_eq!(route_named(&routes, "pinned")["source"], "file");
    assert_eq!(
        route_named(&routes, "pin/pin1/oauth")["source"],
        "hostedcluster pin/pin1"
    );
}

/// `deploy/base`'s ClusterRole rules, as shipped.
fn shipped_rules() -> Value {
    let rbac = crate::common::apiserver::read_manifests(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/rbac.yaml"),
    );
    let role = rbac
        .into_iter()
        .find(|o| o["kind"] == "ClusterRole")
        .expect("a ClusterRole in deploy/base/rbac.yaml");
    role["rules"].clone()
}

/// [`shipped_rules`] with `verb` taken off the rule for `resource`.
fn rules_without(resource: &str, verb: &str) -> Value {
    let mut rules = shipped_rules();
    let mut found = false;
    for rule in rules.as_array_mut().unwrap() {
        if rule["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == resource)
        {
            let verbs = rule["verbs"].as_array_mut().unwrap();
            let before = verbs.len();
            verbs.retain(|v| v != verb);
            found |= verbs.len() < before;
        }
    }
    assert!(found, "deploy/base grants no {verb} on {resource}");
    rules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_role_without_a_needed_verb_is_named_and_keeps_readyz_503() {
    let Some(server) = ApiServer::shared().await else {
        return;
    };
    let admin = server.admin().await;
    let c = create_cluster(&admin, "rbac", "rbac1", 8).await;
    let _kas = c.backend("kas", "kube-apiserver");
    for (resource, verb) in [("services", "list"), ("hostedclusters", "watch")] {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("sniroute-no-{verb}-{resource}");
        let kubeconfig = server
            .kubeconfig_with_rules(dir.path(), &name, &rules_without(resource, verb))
            .await;
        let proxy = Sniroute::start_kube(Cfg::new().set("kubernetes", "{}").yaml(), &kubeconfig);
        // The check at start (SelfSubjectAccessReview) names what is missing...
        let wanted = format!("`{verb}` on {resource}");
        let line = proxy.wait_log(&["kubernetes RBAC forbids", &wanted, "not ready"], STARTUP);
        assert!(line.contains("deploy/base/rbac.yaml"), "{line}");
        // ...and so does the API server's own refusal of the request.
        proxy.wait_log(
            &[
                "is forbidden",
                &format!("cannot {verb} resource \"{resource}\""),
            ],
            STARTUP,
        );
        // Unready, and it says why, for as long as the verb is missing.
        for _ in 0..3 {
            let (status, body) = proxy.get("/readyz").unwrap();
            assert_eq!(status, 503, "{verb} {resource}: {body}");
            assert!(
                body.contains(resource) && body.contains(verb),
                "{verb} {resource}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Granted (the ClusterRole as shipped): ready at the next check, and routing.
        admin
            .apply(&json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": name}, "rules": shipped_rules()
            }))
            .await;
        eventually(STARTUP * 3, "ready once the verb is granted", || async {
            (proxy.readyz() == 200).then_some(())
        })
        .await;
        assert_routes(proxy.proxy_addr(), &c.api(), "kas").await;
    }
    // With the ClusterRole as shipped, the same cluster is routed (least privilege holds).
    let (proxy, _dir) = start(server, Cfg::new()).await;
    wait_ready(&proxy).await;
    assert_routes(proxy.proxy_addr(), &c.api(), "kas").await;
}

/// When the binary logged `line`.
fn logged_at(line: &str) -> std::time::SystemTime {
    line.split_whitespace()
        .find_map(|word| humantime::parse_rfc3339(word).ok())
        .unwrap_or_else(|| panic!("no timestamp in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_is_a_warning_until_it_persists_for_10s_then_an_rbac_error_and_backs_off() {
    let Some(server) = ApiServer::shared().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let name = "sniroute-403-persists";
    let kubeconfig = server
        .kubeconfig_with_rules(dir.path(), name, &rules_without("services", "list"))
        .await;
    let proxy = Sniroute::start_kube(Cfg::new().set("kubernetes", "{}").yaml(), &kubeconfig);
    // A 403 is what a kube-apiserver that has just started answers until its authorizer has
    // synced: a warning at first...
    let refused = ["refused `list` on services (core)", "is forbidden"];
    let first = proxy.wait_log(&refused, STARTUP);
    assert!(first.contains(" WARN "), "{first}");
    // ...an RBAC error once it has gone on for 10 s.
    let error = proxy.wait_log(
        &[
            "kubernetes RBAC forbids `list` on services (core): services is forbidden",
            "retrying with backoff",
        ],
        Duration::from_secs(60),
    );
    assert!(error.contains(" ERROR "), "{error}");
    let lasted = logged_at(&error)
        .duration_since(logged_at(&first))
        .unwrap_or_default();
    assert!(
        lasted >= Duration::from_secs(10),
        "an RBAC error after {lasted:?}: {error}"
    );
    let warnings = proxy.logs_since(0, &refused);
    assert!(
        warnings
            .iter()
            .all(|line| logged_at(line) <= logged_at(&error)),
        "a warning after the error: {warnings:?}"
    );
    // Retried with a backoff growing from 0.8 s, not stormed: 5 or 6 lists in those 10-50 s.
    let user = format!("system:serviceaccount:{NAMESPACE}:{name}");
    let lists = server
        .audit(&user)
        .into_iter()
        .filter(|e| e.resource == "services" && e.verb == "list" && e.stage == "ResponseComplete")
        .count();
    assert!(
        (2..=8).contains(&lists),
        "{lists} lists of services in {lasted:?}; warnings: {warnings:?}"
    );
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
