//! End to end: the Gateway API source against a real etcd and kube-apiserver with the
//! Gateway API v1.6.1 standard-channel CRDs installed (`tests/crds/gateway-api/`), the real
//! binary as `deploy/base`'s ServiceAccount (its ClusterRole and its status-Lease Role) with
//! `kubernetes: {hypershift: false, gateway_api: ...}`: a cluster without HyperShift's
//! objects (Kamaji's, say) routed by TLSRoutes alone.
//!
//! One sniroute serves the whole binary's scenario, in sections: the status Lease is one per
//! namespace, so two sniroutes of one server would share it and only one would write.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::apiserver::hypershift::{namespace, service_addr};
use crate::common::apiserver::{wait_ready, Admin, ApiServer, Opts, NAMESPACE};
use crate::common::fake_kube::{wait_rejected, wait_routed, wait_unrouted};
use crate::common::*;
use serde_json::{json, Value};

const GW_API: &str = "gateway.networking.k8s.io/v1";
const CONTROLLER: &str = "sniroute.dev/gateway-controller";
/// How long a change may take to be routed or to show in status before a test fails (the
/// measured times are printed; CI machines are slow and shared).
const SWAP: Duration = Duration::from_secs(5);

/// The Kamaji Gateway: `kube-apiserver` (6443) and `konnectivity-server` (8132) listeners,
/// TLS, Passthrough, TLSRoutes from All namespaces; plus an HTTP listener sniroute cannot
/// serve and a TLS one for its own namespace's `*.same.example.test` routes only.
fn kamaji_gateway() -> Value {
    let all = json!({"namespaces": {"from": "All"},
                     "kinds": [{"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}]});
    json!({
        "apiVersion": GW_API, "kind": "Gateway",
        "metadata": {"name": "gateway", "namespace": "kamaji-system"},
        "spec": {"gatewayClassName": "sniroute", "listeners": [
            {"name": "kube-apiserver", "port": 6443, "protocol": "TLS",
             "tls": {"mode": "Passthrough"}, "allowedRoutes": all},
            {"name": "konnectivity-server", "port": 8132, "protocol": "TLS",
             "tls": {"mode": "Passthrough"}, "allowedRoutes": all},
            {"name": "http", "port": 80, "protocol": "HTTP"},
            {"name": "same", "port": 9443, "protocol": "TLS", "hostname": "*.same.example.test",
             "tls": {"mode": "Passthrough"}},
        ]},
    })
}

/// A TLSRoute as Kamaji's controller writes one per tenant: parentRefs with
/// name/namespace/sectionName/port, one hostname, one Service backendRef with port.
fn tls_route(ns: &str, name: &str, parent: Value, hostname: &str, backend: Value) -> Value {
    json!({
        "apiVersion": GW_API, "kind": "TLSRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"parentRefs": [parent], "hostnames": [hostname],
                 "rules": [{"backendRefs": [backend]}]},
    })
}

fn kamaji_parent(section: &str, port: u16) -> Value {
    json!({"name": "gateway", "namespace": "kamaji-system", "sectionName": section, "port": port})
}

/// The condition `kind` of `conditions`, as `(status, reason, observedGeneration)`.
fn condition(conditions: &Value, kind: &str) -> Option<(String, String, i64)> {
    conditions
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
                c["observedGeneration"].as_i64().unwrap_or(-1),
            )
        })
}

/// Our entry of a TLSRoute's `status.parents`.
fn our_parent(route: &Value) -> Option<&Value> {
    route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER)
}

/// Waits until TLSRoute `ns/name`'s parent entry says `accepted` and `resolved` (reasons) at
/// the route's generation; the route as stored.
async fn wait_route_status(
    admin: &Admin,
    ns: &str,
    name: &str,
    accepted: &str,
    resolved: &str,
) -> Value {
    admin
        .wait_for(GW_API, "TLSRoute", Some(ns), name, SWAP, |route| {
            let generation = route["metadata"]["generation"].as_i64().unwrap_or(0);
            our_parent(route).is_some_and(|p| {
                let a = condition(&p["conditions"], "Accepted");
                let r = condition(&p["conditions"], "ResolvedRefs");
                let is = |c: Option<(String, String, i64)>, reason: &str| {
                    c.is_some_and(|(status, got, observed)| {
                        got == reason
                            && observed == generation
                            && status
                                == if reason == "Accepted" || reason == "ResolvedRefs" {
                                    "True"
                                } else {
                                    "False"
                                }
                    })
                };
                is(a, accepted) && is(r, resolved)
            })
        })
        .await
}

/// Kamaji's Gateway and our class; tenant-00's Service (kube-apiserver 6443, konnectivity
/// 8132) with a TLS backend on each port of its ClusterIP (`kas-00`, `konnectivity-00`); and
/// its two TLSRoutes as Kamaji writes them: `tenants/tenant-00` for `tenant-00.example.test`
/// and `tenants/tenant-00-konnectivity` for `konnectivity-00.example.test`.
async fn one_tenant(admin: &Admin) -> Vec<TlsBackend> {
    for ns in ["kamaji-system", "tenants"] {
        namespace(admin, ns).await;
    }
    admin
        .apply(&json!({"apiVersion": GW_API, "kind": "GatewayClass",
                       "metadata": {"name": "sniroute"},
                       "spec": {"controllerName": CONTROLLER}}))
        .await;
    admin.apply(&kamaji_gateway()).await;
    let tenant = admin
        .apply(&json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "tenant-00", "namespace": "tenants"},
                       "spec": {"ports": [{"name": "kube-apiserver", "port": 6443},
                                          {"name": "konnectivity-server", "port": 8132}]}}))
        .await;
    let ip = service_addr(&tenant).ip();
    let mut backends = Vec::new();
    for (name, section, port, hostname, id) in [
        (
            "tenant-00",
            "kube-apiserver",
            6443,
            "tenant-00.example.test",
            "kas-00",
        ),
        (
            "tenant-00-konnectivity",
            "konnectivity-server",
            8132,
            "konnectivity-00.example.test",
            "konnectivity-00",
        ),
    ] {
        backends.push(TlsBackend::start_at(
            id,
            SocketAddr::new(ip, port),
            TlsBackendOpts::default(),
        ));
        admin
            .apply(&tls_route(
                "tenants",
                name,
                kamaji_parent(section, port),
                hostname,
                json!({"name": "tenant-00", "port": port}),
            ))
            .await;
    }
    backends
}

/// Merge-patches TLSRoute `tenants/tenant-00`.
async fn patch_tenant_route(admin: &Admin, patch: Value) {
    admin
        .merge_patch(GW_API, "TLSRoute", Some("tenants"), "tenant-00", &patch)
        .await;
}

/// `/explain?sni=NAME` on `proxy`'s debug listener.
fn explain(proxy: &Sniroute, sni: &str) -> Value {
    let path = format!("/explain?sni={sni}");
    let (code, body) = http_get(proxy.listener_addr("debug"), &path).unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn start(server: &ApiServer) -> (Sniroute, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = server.sniroute_kubeconfig(dir.path(), &server.url()).await;
    let kubernetes = format!(
        "{{hypershift: false, gateway_api: {{controller_name: {CONTROLLER}, addresses: [127.0.0.1]}}}}"
    );
    let proxy = Sniroute::start_kube(
        Cfg::new().set("kubernetes", &kubernetes).yaml(),
        &kubeconfig,
    );
    (proxy, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamaji_shapes_route_and_every_status_reason_is_reported() {
    let Some(server) = ApiServer::shared().await else {
        return;
    };
    let admin = server.admin().await;
    let _backends = one_tenant(&admin).await;
    namespace(&admin, "backends").await;
    admin
        .apply(&json!({"apiVersion": GW_API, "kind": "GatewayClass",
                       "metadata": {"name": "someone-else"},
                       "spec": {"controllerName": "example.com/other-controller"}}))
        .await;

    let (proxy, _dir) = start(server).await;
    let addr = proxy.proxy_addr();
    wait_ready(&proxy).await;

    // --- Kamaji: routed to the tenant, Accepted and ResolvedRefs on the parent ---
    assert_routes(addr, "tenant-00.example.test", "kas-00")
        .await
        .echo(b"ping")
        .await;
    assert_routes(addr, "konnectivity-00.example.test", "konnectivity-00").await;
    let kas = wait_route_status(&admin, "tenants", "tenant-00", "Accepted", "ResolvedRefs").await;
    let parent = our_parent(&kas).unwrap();
    assert_eq!(parent["parentRef"]["sectionName"], "kube-apiserver");
    assert_eq!(parent["parentRef"]["port"], 6443);
    wait_route_status(
        &admin,
        "tenants",
        "tenant-00-konnectivity",
        "Accepted",
        "ResolvedRefs",
    )
    .await;
    // explain names the TLSRoute and its Gateway.
    let explained = explain(&proxy, "tenant-00.example.test");
    assert_eq!(
        explained["route"]["name"], "tenants/tenant-00",
        "{explained}"
    );
    assert_eq!(
        explained["route"]["source"],
        "tlsroute tenants/tenant-00 on gateway kamaji-system/gateway"
    );

    let gateway = admin
        .wait_for(
            GW_API,
            "Gateway",
            Some("kamaji-system"),
            "gateway",
            SWAP,
            |g| condition(&g["status"]["conditions"], "Programmed").is_some_and(|c| c.0 == "True"),
        )
        .await;
    let status = &gateway["status"];
    assert_eq!(
        status["addresses"],
        json!([{"type": "IPAddress", "value": "127.0.0.1"}])
    );
    assert_eq!(
        condition(&status["conditions"], "Accepted").unwrap().1,
        "ListenersNotValid",
        "the HTTP listener is not valid, the others are served"
    );
    let listener = |name: &str| -> Value {
        status["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no listener {name} in {status}"))
    };
    let kas_listener = listener("kube-apiserver");
    assert_eq!(kas_listener["attachedRoutes"], 1);
    assert_eq!(
        kas_listener["supportedKinds"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}])
    );
    for kind in ["Accepted", "Programmed", "ResolvedRefs"] {
        let (s, _, observed) = condition(&kas_listener["conditions"], kind).unwrap();
        assert_eq!(s, "True", "{kind}: {kas_listener}");
        assert_eq!(
            observed,
            gateway["metadata"]["generation"].as_i64().unwrap()
        );
    }
    assert_eq!(
        condition(&kas_listener["conditions"], "Conflicted")
            .unwrap()
            .0,
        "False"
    );
    let http = listener("http");
    let (accepted, reason, _) = condition(&http["conditions"], "Accepted").unwrap();
    assert_eq!(
        (accepted.as_str(), reason.as_str()),
        ("False", "UnsupportedProtocol")
    );
    let class = admin
        .wait_for(GW_API, "GatewayClass", None, "sniroute", SWAP, |c| {
            condition(&c["status"]["conditions"], "SupportedVersion").is_some_and(|c| c.0 == "True")
        })
        .await;
    assert_eq!(
        condition(&class["status"]["conditions"], "Accepted")
            .unwrap()
            .0,
        "True"
    );
    let theirs = admin
        .get(GW_API, "GatewayClass", None, "someone-else")
        .await
        .unwrap();
    assert_eq!(
        condition(&theirs["status"]["conditions"], "Accepted")
            .unwrap()
            .1,
        "Pending",
        "another controller's class keeps the API's default status"
    );

    // --- every route reason ---
    admin
        .apply(&json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "local", "namespace": "kamaji-system"},
                       "spec": {"ports": [{"port": 443}]}}))
        .await;
    let shared = admin
        .apply(&json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "shared", "namespace": "backends"},
                       "spec": {"ports": [{"port": 443}]}}))
        .await;
    let _shared = TlsBackend::start_at("shared", service_addr(&shared), TlsBackendOpts::default());
    let tenant_00 = json!({"name": "tenant-00", "port": 6443});
    let same = json!({"name": "gateway", "namespace": "kamaji-system", "sectionName": "same"});
    // (namespace, name, parentRef, hostname, backendRef, Accepted reason, ResolvedRefs reason)
    let cases = [
        (
            "tenants",
            "no-parent",
            kamaji_parent("nope", 6443),
            "no-parent.example.test",
            tenant_00.clone(),
            "NoMatchingParent",
            "ResolvedRefs",
        ),
        // `same` admits routes of the Gateway's own namespace only.
        (
            "tenants",
            "not-allowed",
            same.clone(),
            "x.same.example.test",
            tenant_00.clone(),
            "NotAllowedByListeners",
            "ResolvedRefs",
        ),
        (
            "kamaji-system",
            "no-hostname",
            same,
            "x.elsewhere.example.test",
            json!({"name": "local", "port": 443}),
            "NoMatchingListenerHostname",
            "ResolvedRefs",
        ),
        (
            "tenants",
            "missing-backend",
            kamaji_parent("kube-apiserver", 6443),
            "missing.example.test",
            json!({"name": "not-there", "port": 6443}),
            "Accepted",
            "BackendNotFound",
        ),
        (
            "tenants",
            "bad-kind",
            kamaji_parent("kube-apiserver", 6443),
            "bad-kind.example.test",
            json!({"group": "example.com", "kind": "Thing", "name": "tenant-00"}),
            "Accepted",
            "InvalidKind",
        ),
        (
            "tenants",
            "cross-namespace",
            kamaji_parent("kube-apiserver", 6443),
            "cross.example.test",
            json!({"name": "shared", "namespace": "backends", "port": 443}),
            "Accepted",
            "RefNotPermitted",
        ),
    ];
    for (ns, name, parent, hostname, backend, _, _) in &cases {
        admin
            .apply(&tls_route(
                ns,
                name,
                parent.clone(),
                hostname,
                backend.clone(),
            ))
            .await;
    }
    for (ns, name, _, _, _, accepted, resolved) in &cases {
        wait_route_status(&admin, ns, name, accepted, resolved).await;
    }
    // Attached but with no valid backend: refused as the route's own, closed before any TLS
    // answer and without an alert (as the conformance suite wants it), counted as
    // backend_unreachable and logged with the TLSRoute.
    let refused_before = Scrape::of(&proxy).outcome("backend_unreachable");
    for sni in [
        "missing.example.test",
        "bad-kind.example.test",
        "cross.example.test",
    ] {
        wait_rejected(addr, sni, SWAP).await;
    }
    proxy.wait_log(&["no valid backend", "tenants/missing-backend"], SWAP);
    proxy.wait_log(
        &[
            "connection refused",
            "backend_unreachable",
            "route tenants/bad-kind has no valid backend",
        ],
        SWAP,
    );
    assert!(Scrape::of(&proxy).outcome("backend_unreachable") >= refused_before + 3.0);
    let explained = explain(&proxy, "missing.example.test");
    assert_eq!(explained["route"]["name"], "tenants/missing-backend");
    assert_eq!(explained["verdict"]["outcome"], "backend_unreachable");
    assert!(explained["route"]["no_backend"]
        .as_str()
        .is_some_and(|why| why.contains("not-there")));
    // Attached (and counted) whatever their backends: tenant-00, missing-backend, bad-kind,
    // cross-namespace.
    admin
        .wait_for(
            GW_API,
            "Gateway",
            Some("kamaji-system"),
            "gateway",
            SWAP,
            |g| {
                g["status"]["listeners"].as_array().is_some_and(|ls| {
                    ls.iter()
                        .any(|l| l["name"] == "kube-apiserver" && l["attachedRoutes"] == 4)
                })
            },
        )
        .await;

    // A ReferenceGrant in the Service's namespace permits it: resolved and routed.
    admin
        .apply(
            &json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                       "metadata": {"name": "tenants-tlsroutes", "namespace": "backends"},
                       "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "TLSRoute",
                                          "namespace": "tenants"}],
                                "to": [{"group": "", "kind": "Service", "name": "shared"}]}}),
        )
        .await;
    let granted = wait_routed(addr, "cross.example.test", "shared", SWAP).await;
    wait_route_status(
        &admin,
        "tenants",
        "cross-namespace",
        "Accepted",
        "ResolvedRefs",
    )
    .await;

    // --- a change reaches routed as fast as a HostedCluster change does ---
    patch_tenant_route(
        &admin,
        json!({"spec": {"hostnames": ["tenant-00-moved.example.test"]}}),
    )
    .await;
    let moved = wait_routed(addr, "tenant-00-moved.example.test", "kas-00", SWAP).await;
    wait_unrouted(addr, "tenant-00.example.test", SWAP).await;
    let settled =
        wait_route_status(&admin, "tenants", "tenant-00", "Accepted", "ResolvedRefs").await;
    assert_eq!(settled["metadata"]["generation"], 2);

    // Status is written only when it differs: a change elsewhere, once routed, leaves this
    // route's stored object as it was.
    admin
        .apply(&tls_route(
            "tenants",
            "tenant-01",
            kamaji_parent("kube-apiserver", 6443),
            "tenant-01.example.test",
            json!({"name": "tenant-00", "port": 6443}),
        ))
        .await;
    let appear = wait_routed(addr, "tenant-01.example.test", "kas-00", SWAP).await;
    wait_route_status(&admin, "tenants", "tenant-01", "Accepted", "ResolvedRefs").await;
    let after = admin
        .get(GW_API, "TLSRoute", Some("tenants"), "tenant-00")
        .await
        .unwrap();
    assert_eq!(
        after["metadata"]["resourceVersion"], settled["metadata"]["resourceVersion"],
        "an unchanged status was written again"
    );

    eprintln!(
        "gateway API swap latency against the real API server (change written to routed \
         through the proxy): ReferenceGrant {granted:?}, hostname change {moved:?}, new \
         TLSRoute {appear:?}"
    );
    for latency in [granted, moved, appear] {
        assert!(latency < Duration::from_secs(1), "swap took {latency:?}");
    }
}

/// The status Lease's holder and transitions.
async fn lease(admin: &Admin) -> (String, i64) {
    let lease = admin
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            Some(NAMESPACE),
            "sniroute-gateway-status",
        )
        .await
        .expect("the status Lease");
    (
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        lease["spec"]["leaseTransitions"].as_i64().unwrap_or(-1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_lost_without_a_word_is_replaced_and_status_stays_correct() {
    let Some(server) = ApiServer::start(Opts::default()).await else {
        return;
    };
    let admin = server.admin().await;
    let _backends = one_tenant(&admin).await;
    let (first, _d1) = start(&server).await;
    let (second, _d2) = start(&server).await;
    wait_ready(&first).await;
    wait_ready(&second).await;
    wait_route_status(&admin, "tenants", "tenant-00", "Accepted", "ResolvedRefs").await;
    // Every replica routes, leader or not.
    for proxy in [&first, &second] {
        assert_routes(proxy.proxy_addr(), "tenant-00.example.test", "kas-00").await;
    }
    let (holder, transitions) = lease(&admin).await;
    assert_eq!(transitions, 0);
    let identity = |p: &Sniroute| format!("sniroute-{}", p.pid());
    let (leader, follower) = if holder == identity(&first) {
        (first, second)
    } else {
        assert_eq!(holder, identity(&second), "the Lease is held by neither");
        (second, first)
    };
    let follower_id = identity(&follower);

    // The leader dies (SIGKILL: no release). A change made meanwhile is still reported, by
    // the other replica once the Lease has gone unrenewed for its duration.
    drop(leader);
    patch_tenant_route(
        &admin,
        json!({"spec": {"parentRefs": [kamaji_parent("nope", 6443)]}}),
    )
    .await;
    wait_unrouted(follower.proxy_addr(), "tenant-00.example.test", SWAP).await;
    let took_over = tokio::time::Instant::now();
    admin
        .wait_for(
            GW_API,
            "TLSRoute",
            Some("tenants"),
            "tenant-00",
            Duration::from_secs(60),
            |route| {
                our_parent(route).is_some_and(|p| {
                    condition(&p["conditions"], "Accepted").is_some_and(|(s, reason, g)| {
                        s == "False" && reason == "NoMatchingParent" && g == 2
                    })
                })
            },
        )
        .await;
    eprintln!(
        "status rewritten by the new leader {:?} after the change",
        took_over.elapsed()
    );
    assert_eq!(lease(&admin).await, (follower_id, 1));
    // One entry of ours: the old parent's is gone with it.
    let route = admin
        .get(GW_API, "TLSRoute", Some("tenants"), "tenant-00")
        .await
        .unwrap();
    assert_eq!(
        route["status"]["parents"].as_array().unwrap().len(),
        1,
        "{route}"
    );
}

// === per-Gateway Services (kubernetes.gateway_api.listener_ports) ===

/// `count` consecutive loopback ports free now, for `listener_ports`: below the ephemeral
/// range (32768-60999 on Linux), which a busy machine's own connections crowd.
fn free_port_range(count: u16) -> (u16, u16) {
    for _ in 0..100 {
        // An ephemeral port is as good a random number as any here.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let low = 20_000 + probe.local_addr().unwrap().port() % 10_000;
        drop(probe);
        let free =
            (low..low + count).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return (low, low + count - 1);
        }
    }
    panic!("no {count} consecutive free ports on 127.0.0.1");
}

/// sniroute with per-Gateway Services from `ports`, of type ClusterIP.
async fn start_per_gateway(server: &ApiServer, ports: (u16, u16)) -> (Sniroute, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = server.sniroute_kubeconfig(dir.path(), &server.url()).await;
    let kubernetes = format!(
        "{{hypershift: false, gateway_api: {{controller_name: {CONTROLLER}, \
         listener_ports: {}-{}, service_type: ClusterIP}}}}",
        ports.0, ports.1
    );
    let proxy = Sniroute::start_kube(
        Cfg::new().set("kubernetes", &kubernetes).yaml(),
        &kubeconfig,
    );
    (proxy, dir)
}

/// The Service sniroute made for Gateway `gateway` (`namespace/name`), found by its
/// annotation among those of its label in sniroute's namespace.
async fn gateway_service(admin: &Admin, gateway: &str) -> Option<Value> {
    let path = format!(
        "/api/v1/namespaces/{NAMESPACE}/services?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dsniroute-gateway"
    );
    let reply = admin
        .raw(hyper::Method::GET, &path, None, "")
        .await
        .expect("list Services");
    reply.body["items"]
        .as_array()?
        .iter()
        .find(|s| s["metadata"]["annotations"]["sniroute.dev/gateway"] == gateway)
        .cloned()
}

/// Waits for Gateway `gateway`'s Service with a port 443; its (targetPort, ClusterIP).
async fn wait_gateway_service(admin: &Admin, gateway: &str) -> (Value, u16) {
    let service = crate::common::eventually(SWAP, &format!("the Service of {gateway}"), || async {
        gateway_service(admin, gateway).await
    })
    .await;
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["port"], 443, "{service}");
    let target = port["targetPort"].as_u64().expect("a numeric targetPort");
    (service, u16::try_from(target).unwrap())
}

fn gateway_of_one_listener(name: &str, infrastructure: Value) -> Value {
    json!({
        "apiVersion": GW_API, "kind": "Gateway",
        "metadata": {"name": name, "namespace": "infra"},
        "spec": {"gatewayClassName": "sniroute", "infrastructure": infrastructure,
                 "listeners": [{"name": "tls", "port": 443, "protocol": "TLS",
                                "tls": {"mode": "Passthrough"},
                                "allowedRoutes": {"namespaces": {"from": "All"}}}]},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_gateway_has_its_own_service_address_and_listener_and_comes_and_goes_under_load() {
    let Some(server) = ApiServer::start(Opts::default()).await else {
        return;
    };
    let admin = server.admin().await;
    for ns in ["infra", "tenants"] {
        namespace(&admin, ns).await;
    }
    admin
        .apply(&json!({"apiVersion": GW_API, "kind": "GatewayClass",
                       "metadata": {"name": "sniroute"},
                       "spec": {"controllerName": CONTROLLER}}))
        .await;
    let mut backends = Vec::new();
    for name in ["svc-a", "svc-b"] {
        let service = admin
            .apply(&json!({"apiVersion": "v1", "kind": "Service",
                           "metadata": {"name": name, "namespace": "tenants"},
                           "spec": {"ports": [{"port": 443}]}}))
            .await;
        backends.push(TlsBackend::start_at(
            name,
            service_addr(&service),
            TlsBackendOpts::default(),
        ));
    }
    admin
        .apply(&gateway_of_one_listener(
            "a",
            json!({"labels": {"team": "edge"},
                   "annotations": {"service.beta.kubernetes.io/azure-load-balancer-internal": "true"}}),
        ))
        .await;
    admin.apply(&gateway_of_one_listener("b", json!({}))).await;
    let route = |name: &str, gateway: &str, hostname: &str, service: &str| {
        tls_route(
            "tenants",
            name,
            json!({"name": gateway, "namespace": "infra"}),
            hostname,
            json!({"name": service, "port": 443}),
        )
    };
    for (name, gateway, hostname, service) in [
        ("on-a", "a", "shared.example.test", "svc-a"),
        ("on-b", "b", "shared.example.test", "svc-b"),
        ("only-a", "a", "only-a.example.test", "svc-a"),
    ] {
        admin.apply(&route(name, gateway, hostname, service)).await;
    }
    let range = free_port_range(8);
    let (proxy, _dir) = start_per_gateway(&server, range).await;
    wait_ready(&proxy).await;

    // --- each Gateway its own Service, pod port and address ---
    let (service_a, port_a) = wait_gateway_service(&admin, "infra/a").await;
    let (service_b, port_b) = wait_gateway_service(&admin, "infra/b").await;
    assert_ne!(port_a, port_b);
    for port in [port_a, port_b] {
        assert!(
            (range.0..=range.1).contains(&port),
            "{port} outside {range:?}"
        );
    }
    let meta = &service_a["metadata"];
    assert_eq!(meta["namespace"], NAMESPACE);
    assert_eq!(meta["labels"]["team"], "edge", "{service_a}");
    assert_eq!(
        meta["labels"]["gateway.networking.k8s.io/gateway-name"],
        "a"
    );
    assert_eq!(
        meta["annotations"]["service.beta.kubernetes.io/azure-load-balancer-internal"],
        "true"
    );
    assert_eq!(service_a["spec"]["type"], "ClusterIP");
    assert_eq!(
        service_a["spec"]["selector"],
        json!({"app.kubernetes.io/name": "sniroute"})
    );
    assert!(service_b["metadata"]["labels"].get("team").is_none());
    for (gateway, service) in [("a", &service_a), ("b", &service_b)] {
        let ip = service["spec"]["clusterIP"].as_str().unwrap().to_owned();
        admin
            .wait_for(GW_API, "Gateway", Some("infra"), gateway, SWAP, |g| {
                g["status"]["addresses"] == json!([{"type": "IPAddress", "value": ip}])
                    && condition(&g["status"]["conditions"], "Programmed")
                        .is_some_and(|c| c.0 == "True")
            })
            .await;
    }

    // --- one name, two Gateways, two backends; nothing of one on the other's port ---
    let on = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    wait_routed(on(port_a), "shared.example.test", "svc-a", SWAP).await;
    wait_routed(on(port_b), "shared.example.test", "svc-b", SWAP).await;
    wait_routed(on(port_a), "only-a.example.test", "svc-a", SWAP).await;
    // Refused on b's listener with a bare close (the Gateway API's rejection); on the
    // `listen` listeners, with unrecognized_name as ever.
    wait_rejected(on(port_b), "only-a.example.test", SWAP).await;
    wait_unrouted(proxy.proxy_addr(), "shared.example.test", SWAP).await;
    let explained = explain(&proxy, &format!("shared.example.test&port={port_b}"));
    assert_eq!(explained["route"]["name"], "tenants/on-b", "{explained}");
    assert_eq!(explained["route"]["listener_port"], port_b);
    assert_eq!(
        explained["route"]["source"],
        format!("tlsroute tenants/on-b on gateway infra/b:443 (pod port {port_b})")
    );

    let (code, body) = http_get(proxy.listener_addr("debug"), "/routes").unwrap();
    assert_eq!(code, 200, "{body}");
    let routes: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        routes["gateway_listeners"],
        json!([port_a.min(port_b), port_a.max(port_b)])
    );
    let on_a = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "tenants/on-a")
        .unwrap_or_else(|| panic!("no tenants/on-a in {routes}"));
    assert_eq!(on_a["listener_port"], port_a);

    // --- a Gateway added and removed under load on another's listener ---
    let mut held = assert_routes(on(port_a), "shared.example.test", "svc-a").await;
    held.echo(b"before").await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let looping = tokio::spawn({
        let (stop, done) = (stop.clone(), done.clone());
        async move {
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match tls_connect(on(port_a), "shared.example.test").await {
                    Ok(mut conn) if conn.backend == "svc-a" => {
                        conn.echo(b"ping").await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(conn) => failed.push(format!("reached {}", conn.backend)),
                    Err(error) => failed.push(error.to_string()),
                }
            }
            failed
        }
    });
    // Load before, through and after each change.
    let after = |n: u64| {
        let done = done.clone();
        crate::common::eventually(SWAP, "Gateway a's looping client goes on", move || {
            let done = done.clone();
            async move { (done.load(Ordering::Relaxed) >= n).then_some(()) }
        })
    };
    after(10).await;
    admin.apply(&gateway_of_one_listener("c", json!({}))).await;
    admin
        .apply(&route("on-c", "c", "c.example.test", "svc-b"))
        .await;
    let (_, port_c) = wait_gateway_service(&admin, "infra/c").await;
    assert!(![port_a, port_b].contains(&port_c));
    let bound = wait_routed(on(port_c), "c.example.test", "svc-b", SWAP).await;
    let gone_at = tokio::time::Instant::now();
    assert!(admin.delete(GW_API, "Gateway", Some("infra"), "c").await);
    crate::common::eventually(SWAP, "Gateway c's Service deleted", || async {
        gateway_service(&admin, "infra/c")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    // Unbound: nothing listens on its port any more.
    crate::common::eventually(SWAP, "Gateway c's listener unbound", || async {
        tokio::net::TcpStream::connect(on(port_c))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let unbound = gone_at.elapsed();
    after(done.load(Ordering::Relaxed) + 10).await;
    stop.store(true, Ordering::Relaxed);
    let failed = looping.await.unwrap();
    let ok = done.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "Gateway a's connections failed: {failed:?}"
    );
    held.echo(b"after").await;
    // Gateway b is as it was.
    assert_routes(on(port_b), "shared.example.test", "svc-b").await;
    assert_eq!(wait_gateway_service(&admin, "infra/b").await.1, port_b);

    // --- a restart: the new process binds what the Services say before it holds the Lease,
    // and as the new leader rewrites none of them ---
    let versions = |a: &Value, b: &Value| {
        (
            a["metadata"]["resourceVersion"].clone(),
            b["metadata"]["resourceVersion"].clone(),
        )
    };
    let before = versions(
        &gateway_service(&admin, "infra/a").await.unwrap(),
        &gateway_service(&admin, "infra/b").await.unwrap(),
    );
    let old_leader = format!("sniroute-{}", proxy.pid());
    drop(proxy);
    let (proxy, _dir2) = start_per_gateway(&server, range).await;
    wait_routed(on(port_a), "shared.example.test", "svc-a", SWAP).await;
    wait_routed(on(port_b), "shared.example.test", "svc-b", SWAP).await;
    assert_eq!(
        lease(&admin).await.0,
        old_leader,
        "served before taking the Lease"
    );
    let new_leader = format!("sniroute-{}", proxy.pid());
    crate::common::eventually(
        Duration::from_secs(60),
        "the new process takes the Lease",
        || async { (lease(&admin).await.0 == new_leader).then_some(()) },
    )
    .await;
    // The new leader has written status (Programmed, its addresses) by now or soon; the
    // Services stay as they were.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = versions(
        &gateway_service(&admin, "infra/a").await.unwrap(),
        &gateway_service(&admin, "infra/b").await.unwrap(),
    );
    assert_eq!(before, after, "a new leader rewrote a Gateway's Service");
    assert_routes(on(port_a), "shared.example.test", "svc-a").await;
    eprintln!(
        "per-Gateway listeners under load: {ok} connections on Gateway a, none failed; \
         Gateway c bound and routed {bound:?} after its Service, unbound {unbound:?} after \
         its deletion"
    );
}
