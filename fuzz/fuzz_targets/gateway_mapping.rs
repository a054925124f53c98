//! Gateway API objects into the pure mapping (`control::gateway::build`) and the status
//! writer (`control::gateway::status`), the way the Gateway API source feeds them: each
//! object deserialised from JSON (one that does not parse is left out, as the watch does).
//!
//! Two ways in, chosen by the first byte:
//! - `{`: one JSON document `{"classes": […], "gateways": […], "routes": […], "grants": […],
//!   "services": […], "namespaces": […]}` (the committed seeds, so libFuzzer mutates real
//!   shapes such as Kamaji's);
//! - anything else: `arbitrary` builds the objects field by field from values that matter to
//!   the rules (protocols, modes, hostnames and wildcards, sections, ports, kinds,
//!   namespaces, selectors) or arbitrary text.
//!
//! Checks: no panic; the same objects give the same graph; every route builds into a
//! `Table` on its own and all merge into one as the publisher merges them; a routed TLSRoute
//! has a parent Accepted and is counted by a listener; a refused one is routed with no
//! backend and its reason, and is the only kind so routed; every
//! status parent has Accepted then ResolvedRefs with a reason the spec names; a status
//! written and read back asks for no second write; and with per-Gateway Services (the
//! Services the plan writes read back), a second plan writes nothing, no pod port is given
//! twice, and every route is served on a port the table binds.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use control::gateway::graph::{build, Key, Objects, Settings};
use control::gateway::infra::{self, ServiceSettings};
use control::gateway::objects::{Gateway, GatewayAddress, GatewayClass, TlsRoute};
use control::gateway::status;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use libfuzzer_sys::fuzz_target;
use proxy::{Route, Table};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

const CONTROLLER: &str = "sniroute.dev/gateway-controller";

fuzz_target!(|data: &[u8]| {
    let doc = if data.first() == Some(&b'{') {
        match serde_json::from_slice::<Value>(data) {
            Ok(doc) => doc,
            Err(_) => return,
        }
    } else {
        match Gen::arbitrary(&mut Unstructured::new(data)) {
            Ok(gen) => gen.to_json(),
            Err(_) => return,
        }
    };
    let objects = objects(&doc);
    check(&objects);
    check_per_gateway(&objects);
});

fn list<T: DeserializeOwned>(doc: &Value, key: &str) -> Vec<T> {
    doc.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .take(16)
        .filter_map(|v| serde_json::from_value(v.clone()).ok())
        .collect()
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<Key> {
    Some(Key::new(meta.namespace.clone()?, meta.name.clone()?))
}

fn objects(doc: &Value) -> Objects {
    let mut objects = Objects::default();
    for class in list::<GatewayClass>(doc, "classes") {
        if let Some(name) = class.metadata.name.clone() {
            objects.classes.insert(name, class);
        }
    }
    for gateway in list::<Gateway>(doc, "gateways") {
        if let Some(key) = key_of(&gateway.metadata) {
            objects.gateways.insert(key, gateway);
        }
    }
    for route in list::<TlsRoute>(doc, "routes") {
        if let Some(key) = key_of(&route.metadata) {
            objects.routes.insert(key, route);
        }
    }
    for grant in list::<control::gateway::objects::ReferenceGrant>(doc, "grants") {
        if let Some(key) = key_of(&grant.metadata) {
            objects.grants.insert(key, grant);
        }
    }
    for service in list::<control::kube::objects::Service>(doc, "services") {
        if let Some(key) = key_of(&service.metadata) {
            objects.services.insert(key, service);
        }
    }
    for ns in list::<control::gateway::objects::Namespace>(doc, "namespaces") {
        if let Some(name) = ns.metadata.name.clone() {
            objects
                .namespaces
                .insert(name, ns.metadata.labels.clone().unwrap_or_default());
        }
    }
    objects
}

const ACCEPTED: &[&str] = &[
    "Accepted",
    "NoMatchingParent",
    "NotAllowedByListeners",
    "NoMatchingListenerHostname",
];
const RESOLVED: &[&str] = &[
    "ResolvedRefs",
    "BackendNotFound",
    "RefNotPermitted",
    "InvalidKind",
];

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).expect("a valid time"))
}

fn check(objects: &Objects) {
    let settings = Settings {
        controller_name: CONTROLLER.into(),
        addresses: vec![GatewayAddress {
            kind: None,
            value: Some("198.18.0.10".into()),
        }],
        zone: None,
        services: None,
    };
    let graph = build(objects, &settings);
    assert_eq!(graph, build(objects, &settings), "not deterministic");

    for spec in &graph.routes {
        let route = Route::new(spec.clone()).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        Table::new(vec![route]).unwrap_or_else(|e| panic!("{spec:?} makes no table: {e}"));
        let parents = graph
            .routes_status
            .iter()
            .find(|(k, _)| k.to_string() == *spec.name)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("routed without status: {spec:?}"));
        assert!(
            parents.iter().any(|p| p.conditions[0].status),
            "routed but accepted by no parent: {spec:?}"
        );
        // A refused route is in the table with no backend and why; no other route is.
        let refused = graph
            .refused
            .iter()
            .any(|r| r.route.to_string() == *spec.name);
        assert_eq!(
            refused,
            spec.no_backend.is_some() && spec.backends.is_empty(),
            "refused and routed: {spec:?}"
        );
    }
    let (merged, _) = control::publish::merge([graph.routes.as_slice()]);
    Table::new(merged.expect("merge")).expect("merged routes make a table");

    let attached: i32 = graph
        .gateways
        .values()
        .flat_map(|g| &g.listeners)
        .map(|l| l.attached_routes)
        .sum();
    let routed = i32::try_from(graph.routes.len()).expect("small");
    assert!(
        attached >= routed,
        "{attached} attachments for {routed} routes"
    );

    for parents in graph.routes_status.values() {
        for parent in parents {
            let c = &parent.conditions;
            assert_eq!(c.len(), 2);
            assert_eq!((c[0].kind, c[1].kind), ("Accepted", "ResolvedRefs"));
            assert!(ACCEPTED.contains(&c[0].reason), "{:?}", c[0]);
            assert!(RESOLVED.contains(&c[1].reason), "{:?}", c[1]);
            assert_eq!(c[0].status, c[0].reason == "Accepted");
            assert_eq!(c[1].status, c[1].reason == "ResolvedRefs");
        }
    }

    // Written, then read back as the API server keeps it: nothing more to write.
    for (key, want) in &graph.routes_status {
        let have = &objects.routes[key];
        let Some(body) = status::route_apply(key, CONTROLLER, want, have, &now()) else {
            continue;
        };
        let mut back = have.clone();
        back.status = serde_json::from_value(body["status"].clone()).expect("status reads back");
        assert_eq!(
            status::route_apply(key, CONTROLLER, want, &back, &now()),
            None,
            "{body}"
        );
    }
    for (key, want) in &graph.gateways {
        let have = &objects.gateways[key];
        let Some(body) = status::gateway_apply(key, want, have, &now()) else {
            continue;
        };
        let mut back = have.clone();
        back.status = serde_json::from_value(body["status"].clone()).expect("status reads back");
        assert_eq!(
            status::gateway_apply(key, want, &back, &now()),
            None,
            "{body}"
        );
    }
    for (name, want) in &graph.classes {
        let have = &objects.classes[name];
        let Some(body) = status::class_apply(name, want, have, &now()) else {
            continue;
        };
        let mut back = have.clone();
        back.status = serde_json::from_value(body["status"].clone()).expect("status reads back");
        assert_eq!(
            status::class_apply(name, want, &back, &now()),
            None,
            "{body}"
        );
    }
}

/// With per-Gateway Services (`listener_ports`), as the Lease holder and every replica run
/// it: build, write the Services the plan says (read back as the API server keeps them),
/// build again. Then a second plan writes nothing; every route is served on a pod port the
/// table binds, from the range, each Gateway's its own; and all merge into one table.
fn check_per_gateway(objects: &Objects) {
    let services = ServiceSettings {
        namespace: "sniroute".into(),
        ports: 20000..=20007,
        service_type: "ClusterIP".into(),
    };
    let settings = Settings {
        controller_name: CONTROLLER.into(),
        addresses: Vec::new(),
        zone: None,
        services: Some(services.clone()),
    };
    let mut objects = objects.clone();
    // The API server refuses a `/` in a name; the Service's annotation is `namespace/name`.
    objects
        .gateways
        .retain(|k, _| !k.namespace.contains('/') && !k.name.contains('/'));
    let first = build(&objects, &settings);
    let plan = infra::plan(&first.wanted_services, &objects.gateway_services, &services);
    for (name, mut body) in plan.apply {
        body["spec"]["clusterIP"] = json!("198.19.0.9");
        let stored = serde_json::from_value(body).expect("a Service reads back");
        objects.gateway_services.insert(name, stored);
    }
    let graph = build(&objects, &settings);
    assert_eq!(graph, build(&objects, &settings), "not deterministic");
    let again = infra::plan(&graph.wanted_services, &objects.gateway_services, &services);
    assert!(
        again.apply.is_empty() && again.delete.is_empty(),
        "a second plan writes again: {again:?}"
    );
    let allocations = infra::allocations(&objects.gateway_services);
    let mut targets: Vec<u16> = allocations
        .values()
        .flat_map(|a| a.ports.values().copied())
        .collect();
    let all = targets.len();
    targets.sort_unstable();
    targets.dedup();
    assert_eq!(
        targets.len(),
        all,
        "a pod port given twice: {allocations:?}"
    );
    assert!(targets.iter().all(|t| services.ports.contains(t)));
    for spec in &graph.routes {
        let port = spec
            .port
            .unwrap_or_else(|| panic!("served on listen: {spec:?}"));
        assert!(
            graph.listeners.contains(&port),
            "{spec:?} on an unbound port"
        );
        let route = spec.name.split('@').next().unwrap_or_default();
        assert!(
            graph.routes_status.keys().any(|k| k.to_string() == route),
            "routed without status: {spec:?}"
        );
    }
    let (merged, _) = control::publish::merge([graph.routes.as_slice()]);
    Table::new(merged.expect("merge")).expect("merged routes make a table");
}

// === structured inputs ===

const POOL: &[&str] = &[
    "",
    "tenants",
    "kamaji-system",
    "infra",
    "gateway",
    "kube-apiserver",
    "konnectivity",
    "TLS",
    "HTTP",
    "TCP",
    "Passthrough",
    "Terminate",
    "Same",
    "All",
    "Selector",
    "TLSRoute",
    "HTTPRoute",
    "Service",
    "Gateway",
    "gateway.networking.k8s.io",
    "tenant-00.cluster.example",
    "*.cluster.example",
    "*.example.com",
    "a.b.example.com",
    "example.com",
    "*.a.example.com",
    "xn--bcher-kva.example",
    "UPPER.Example.COM.",
    "198.19.0.1",
    "None",
];

#[derive(Arbitrary, Debug)]
enum Text {
    Pool(u8),
    Raw(String),
}

impl Text {
    fn value(&self) -> Value {
        match self {
            Self::Pool(i) => POOL[usize::from(*i) % POOL.len()].into(),
            Self::Raw(s) => s.clone().into(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Gen {
    ours: bool,
    gateways: Vec<(Text, Text, Vec<GenListener>)>,
    routes: Vec<GenRoute>,
    grants: Vec<(Text, Text, Text, Option<Text>)>,
    services: Vec<(Text, Text, Text, Vec<u16>)>,
    namespaces: Vec<(Text, Text, Text)>,
}

#[derive(Arbitrary, Debug)]
struct GenListener {
    name: Text,
    port: u16,
    protocol: Text,
    mode: Option<Text>,
    hostname: Option<Text>,
    from: Option<Text>,
    selector: Option<(Text, Text)>,
    kinds: Option<Vec<(Option<Text>, Text)>>,
}

#[derive(Arbitrary, Debug)]
struct GenRoute {
    namespace: Text,
    name: Text,
    created: u8,
    parents: Vec<(Text, Option<Text>, Option<Text>, Option<u16>)>,
    hostnames: Vec<Text>,
    backends: Vec<(Option<Text>, Text, Option<Text>, Option<u16>, Option<i32>)>,
}

impl Gen {
    fn to_json(&self) -> Value {
        let controller = if self.ours {
            CONTROLLER
        } else {
            "other.example/c"
        };
        let gateways: Vec<Value> = self
            .gateways
            .iter()
            .take(4)
            .map(|(ns, name, listeners)| {
                let listeners: Vec<Value> = listeners
                    .iter()
                    .take(6)
                    .map(|l| {
                        let mut v = json!({"name": l.name.value(), "port": l.port,
                                           "protocol": l.protocol.value()});
                        if let Some(mode) = &l.mode {
                            v["tls"] = json!({"mode": mode.value()});
                        }
                        if let Some(h) = &l.hostname {
                            v["hostname"] = h.value();
                        }
                        let mut allowed = json!({});
                        if let Some(from) = &l.from {
                            allowed["namespaces"] = json!({"from": from.value()});
                            if let Some((k, val)) = &l.selector {
                                allowed["namespaces"]["selector"] =
                                    json!({"matchLabels": {k.value().as_str().unwrap_or_default(): val.value()}});
                            }
                        }
                        if let Some(kinds) = &l.kinds {
                            allowed["kinds"] = kinds
                                .iter()
                                .take(3)
                                .map(|(g, k)| match g {
                                    Some(g) => json!({"group": g.value(), "kind": k.value()}),
                                    None => json!({"kind": k.value()}),
                                })
                                .collect();
                        }
                        v["allowedRoutes"] = allowed;
                        v
                    })
                    .collect();
                json!({"metadata": {"namespace": ns.value(), "name": name.value(), "generation": 1},
                       "spec": {"gatewayClassName": "c", "listeners": listeners}})
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .take(8)
            .map(|r| {
                let parents: Vec<Value> = r
                    .parents
                    .iter()
                    .take(3)
                    .map(|(name, ns, section, port)| {
                        let mut p = json!({"name": name.value()});
                        if let Some(ns) = ns {
                            p["namespace"] = ns.value();
                        }
                        if let Some(s) = section {
                            p["sectionName"] = s.value();
                        }
                        if let Some(port) = port {
                            p["port"] = (*port).into();
                        }
                        p
                    })
                    .collect();
                let backends: Vec<Value> = r
                    .backends
                    .iter()
                    .take(3)
                    .map(|(kind, name, ns, port, weight)| {
                        let mut b = json!({"name": name.value()});
                        if let Some(k) = kind {
                            b["kind"] = k.value();
                        }
                        if let Some(ns) = ns {
                            b["namespace"] = ns.value();
                        }
                        if let Some(p) = port {
                            b["port"] = (*p).into();
                        }
                        if let Some(w) = weight {
                            b["weight"] = (*w).into();
                        }
                        b
                    })
                    .collect();
                let hostnames: Vec<Value> = r.hostnames.iter().take(4).map(Text::value).collect();
                json!({"metadata": {"namespace": r.namespace.value(), "name": r.name.value(),
                                    "generation": 2,
                                    "creationTimestamp": format!("2026-12-01T00:00:{:02}Z", r.created % 60)},
                       "spec": {"parentRefs": parents, "hostnames": hostnames,
                                "rules": [{"backendRefs": backends}]}})
            })
            .collect();
        let grants: Vec<Value> = self
            .grants
            .iter()
            .take(4)
            .map(|(ns, from_ns, kind, name)| {
                let mut to = json!({"group": "", "kind": "Service"});
                if let Some(n) = name {
                    to["name"] = n.value();
                }
                json!({"metadata": {"namespace": ns.value(), "name": "g"},
                       "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": kind.value(),
                                          "namespace": from_ns.value()}], "to": [to]}})
            })
            .collect();
        let services: Vec<Value> = self
            .services
            .iter()
            .take(6)
            .map(|(ns, name, ip, ports)| {
                let ports: Vec<Value> = ports.iter().take(3).map(|p| json!({"port": p})).collect();
                json!({"metadata": {"namespace": ns.value(), "name": name.value()},
                       "spec": {"clusterIP": ip.value(), "ports": ports}})
            })
            .collect();
        let namespaces: Vec<Value> = self
            .namespaces
            .iter()
            .take(4)
            .map(|(name, k, v)| {
                let labels: BTreeMap<String, Value> =
                    [(k.value().as_str().unwrap_or_default().to_owned(), v.value())].into();
                json!({"metadata": {"name": name.value(), "labels": labels}})
            })
            .collect();
        json!({
            "classes": [{"metadata": {"name": "c", "generation": 1}, "spec": {"controllerName": controller}}],
            "gateways": gateways, "routes": routes, "grants": grants,
            "services": services, "namespaces": namespaces,
        })
    }
}
