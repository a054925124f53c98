//! Case by case against the reasons of the Gateway API reference (v1.6.1).

use serde_json::{json, Value};

use super::*;

const CONTROLLER: &str = "sniroute.dev/gateway-controller";

fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

fn settings() -> Settings {
    Settings {
        controller_name: CONTROLLER.into(),
        addresses: vec![GatewayAddress {
            kind: Some("IPAddress".into()),
            value: Some("198.18.0.10".into()),
        }],
        zone: None,
        services: None,
    }
}

/// The Kamaji shape: a class of ours, a Gateway `kamaji-system/gateway` with the listener
/// `kube-apiserver` (6443, TLS Passthrough, routes from All namespaces, kind TLSRoute).
fn world() -> Objects {
    let mut objects = Objects::default();
    objects.classes.insert(
        "sniroute".into(),
        from(json!({"metadata": {"name": "sniroute", "generation": 1},
                    "spec": {"controllerName": CONTROLLER}})),
    );
    objects.classes.insert(
        "other".into(),
        from(json!({"metadata": {"name": "other", "generation": 1},
                    "spec": {"controllerName": "other.example/controller"}})),
    );
    add_gateway(
        &mut objects,
        "kamaji-system",
        "gateway",
        json!([{
            "name": "kube-apiserver", "port": 6443, "protocol": "TLS",
            "tls": {"mode": "Passthrough"},
            "allowedRoutes": {"namespaces": {"from": "All"},
                              "kinds": [{"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}]},
        }]),
    );
    add_service(
        &mut objects,
        "tenants",
        "tenant-00",
        "198.19.0.1",
        &[6443, 8132],
    );
    objects
}

fn add_gateway(objects: &mut Objects, ns: &str, name: &str, listeners: Value) {
    objects.gateways.insert(
        Key::new(ns, name),
        from(
            json!({"metadata": {"name": name, "namespace": ns, "generation": 3},
                    "spec": {"gatewayClassName": "sniroute", "listeners": listeners}}),
        ),
    );
}

fn add_service(objects: &mut Objects, ns: &str, name: &str, ip: &str, ports: &[u16]) {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({"name": format!("p{p}"), "port": p}))
        .collect();
    objects.services.insert(
        Key::new(ns, name),
        from(json!({"metadata": {"name": name, "namespace": ns},
                    "spec": {"clusterIP": ip, "ports": ports}})),
    );
}

fn route_json(ns: &str, name: &str, parent: Value, hostnames: &[&str], backends: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "generation": 5,
                     "creationTimestamp": "2026-12-01T00:00:00Z"},
        "spec": {"parentRefs": [parent], "hostnames": hostnames,
                 "rules": [{"backendRefs": backends}]},
    })
}

fn add_route(objects: &mut Objects, route: Value) -> Key {
    let route: TlsRoute = from(route);
    let key = Key::new(
        route.metadata.namespace.clone().unwrap(),
        route.metadata.name.clone().unwrap(),
    );
    objects.routes.insert(key.clone(), route);
    key
}

/// A route in `tenants` to the whole Kamaji Gateway (no sectionName or port).
fn to_gateway(name: &str, hostname: &str, backends: Value) -> Value {
    route_json(
        "tenants",
        name,
        json!({"name": "gateway", "namespace": "kamaji-system"}),
        &[hostname],
        backends,
    )
}

/// A Kamaji tenant route: parentRef name/namespace/sectionName/port, one hostname, one
/// Service backendRef with port.
fn tenant_route(name: &str, hostname: &str, port: u16) -> Value {
    route_json(
        "tenants",
        name,
        json!({"name": "gateway", "namespace": "kamaji-system",
               "sectionName": "kube-apiserver", "port": 6443}),
        &[hostname],
        json!([{"name": "tenant-00", "port": port}]),
    )
}

fn reasons(graph: &Graph, key: &Key) -> Vec<(&'static str, bool, &'static str)> {
    graph.routes_status[key]
        .iter()
        .flat_map(|p| p.conditions.iter().map(|c| (c.kind, c.status, c.reason)))
        .collect()
}

fn listener<'g>(graph: &'g Graph, gateway: (&str, &str), name: &str) -> &'g ListenerStatus {
    graph.gateways[&Key::new(gateway.0, gateway.1)]
        .listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap()
}

fn cond_of<'c>(conditions: &'c [Cond], kind: &str) -> &'c Cond {
    conditions.iter().find(|c| c.kind == kind).unwrap()
}

#[test]
fn kamaji_tenant_routes_to_its_service_and_is_accepted_with_resolved_refs() {
    let mut objects = world();
    let kas = add_route(
        &mut objects,
        tenant_route("tenant-00", "tenant-00.cluster.example", 6443),
    );
    let konnectivity = add_route(
        &mut objects,
        tenant_route(
            "tenant-00-konnectivity",
            "konnectivity.tenant-00.cluster.example",
            8132,
        ),
    );
    let graph = build(&objects, &settings());
    for key in [&kas, &konnectivity] {
        assert_eq!(
            reasons(&graph, key),
            [
                ("Accepted", true, "Accepted"),
                ("ResolvedRefs", true, "ResolvedRefs")
            ]
        );
        assert!(graph.routes_status[key][0]
            .conditions
            .iter()
            .all(|c| c.observed_generation == 5));
    }
    let routes: Vec<(String, String, String)> = graph
        .routes
        .iter()
        .map(|r| {
            (
                r.name.to_string(),
                r.hostnames[0].to_string(),
                r.backends[0].to_string(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            (
                "tenants/tenant-00".into(),
                "tenant-00.cluster.example".into(),
                "198.19.0.1:6443".into()
            ),
            (
                "tenants/tenant-00-konnectivity".into(),
                "konnectivity.tenant-00.cluster.example".into(),
                "198.19.0.1:8132".into()
            ),
        ]
    );
    assert_eq!(
        &*graph.routes[0].source,
        "tlsroute tenants/tenant-00 on gateway kamaji-system/gateway"
    );
    let l = listener(&graph, ("kamaji-system", "gateway"), "kube-apiserver");
    assert_eq!(l.attached_routes, 2);
    assert_eq!(l.supported_kinds.len(), 1);
    for kind in ["Accepted", "Programmed", "ResolvedRefs"] {
        let c = cond_of(&l.conditions, kind);
        assert!(c.status, "{kind}");
        assert_eq!(c.observed_generation, 3);
    }
    assert!(!cond_of(&l.conditions, "Conflicted").status);
    let gw = &graph.gateways[&Key::new("kamaji-system", "gateway")];
    assert_eq!(
        gw.conditions
            .iter()
            .map(|c| (c.kind, c.status, c.reason))
            .collect::<Vec<_>>(),
        [
            ("Accepted", true, "Accepted"),
            ("Programmed", true, "Programmed")
        ]
    );
    assert_eq!(gw.addresses[0].value.as_deref(), Some("198.18.0.10"));
    // Our class is accepted at a supported version; the other controller's is left alone.
    let class = &graph.classes["sniroute"];
    assert_eq!(
        class
            .conditions
            .iter()
            .map(|c| (c.kind, c.status, c.reason))
            .collect::<Vec<_>>(),
        [
            ("Accepted", true, "Accepted"),
            ("SupportedVersion", true, "SupportedVersion")
        ]
    );
    assert!(!graph.classes.contains_key("other"));
    assert!(graph.refused.is_empty());
}

#[test]
fn gateways_of_other_classes_and_routes_to_them_get_no_status_from_us() {
    let mut objects = world();
    let mut gateway = objects.gateways[&Key::new("kamaji-system", "gateway")].clone();
    gateway.spec.as_mut().unwrap().gateway_class_name = Some("other".into());
    objects
        .gateways
        .insert(Key::new("infra", "theirs"), gateway);
    let key = add_route(
        &mut objects,
        route_json(
            "tenants",
            "r",
            json!({"name": "theirs", "namespace": "infra"}),
            &["a.example"],
            json!([{"name": "tenant-00", "port": 6443}]),
        ),
    );
    let graph = build(&objects, &settings());
    assert!(!graph.gateways.contains_key(&Key::new("infra", "theirs")));
    assert!(!graph.routes_status.contains_key(&key));
    assert!(graph.routes.is_empty());
}

#[test]
fn listeners_not_tls_passthrough_are_not_accepted_and_the_others_still_work() {
    let mut objects = world();
    add_gateway(
        &mut objects,
        "infra",
        "mixed",
        json!([
            {"name": "http", "port": 80, "protocol": "HTTP"},
            {"name": "terminate", "port": 8443, "protocol": "TLS", "tls": {"mode": "Terminate"}},
            {"name": "default-mode", "port": 9443, "protocol": "TLS"},
            {"name": "pass", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
        ]),
    );
    let for_section = |section: &str| {
        route_json(
            "infra",
            &format!("to-{section}"),
            json!({"name": "mixed", "sectionName": section}),
            &["svc.example"],
            json!([{"name": "svc", "port": 443}]),
        )
    };
    add_service(&mut objects, "infra", "svc", "198.19.0.2", &[443]);
    let pass = add_route(&mut objects, for_section("pass"));
    let http = add_route(&mut objects, for_section("http"));
    let graph = build(&objects, &settings());
    // An unsupported protocol is UnsupportedProtocol; TLS in a mode other than Passthrough is
    // an unsupported value of tls.mode (conformance: TLSRouteListenerTerminateNotSupported).
    for (name, reason) in [
        ("http", "UnsupportedProtocol"),
        ("terminate", "UnsupportedValue"),
        ("default-mode", "UnsupportedValue"),
    ] {
        let l = listener(&graph, ("infra", "mixed"), name);
        let accepted = cond_of(&l.conditions, "Accepted");
        assert_eq!(
            (accepted.status, accepted.reason),
            (false, reason),
            "{name}"
        );
        let programmed = cond_of(&l.conditions, "Programmed");
        assert_eq!((programmed.status, programmed.reason), (false, "Invalid"));
        assert_eq!(l.attached_routes, 0);
    }
    assert!(listener(&graph, ("infra", "mixed"), "http")
        .supported_kinds
        .is_empty());
    let gw = &graph.gateways[&Key::new("infra", "mixed")];
    let accepted = cond_of(&gw.conditions, "Accepted");
    assert_eq!(
        (accepted.status, accepted.reason),
        (true, "ListenersNotValid")
    );
    assert_eq!(
        listener(&graph, ("infra", "mixed"), "pass").attached_routes,
        1
    );
    assert_eq!(reasons(&graph, &pass)[0], ("Accepted", true, "Accepted"));
    assert_eq!(
        reasons(&graph, &http)[0],
        ("Accepted", false, "NotAllowedByListeners")
    );
    assert_eq!(graph.routes.len(), 1);
}

#[test]
fn a_gateway_without_a_valid_listener_or_address_is_not_accepted_or_programmed() {
    let mut objects = world();
    add_gateway(
        &mut objects,
        "infra",
        "http-only",
        json!([{"name": "http", "port": 80, "protocol": "HTTP"}]),
    );
    let graph = build(&objects, &settings());
    let gw = &graph.gateways[&Key::new("infra", "http-only")];
    let reasons: Vec<_> = gw
        .conditions
        .iter()
        .map(|c| (c.kind, c.status, c.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            ("Accepted", false, "ListenersNotValid"),
            ("Programmed", false, "Invalid")
        ]
    );
    let unaddressed = build(
        &world(),
        &Settings {
            addresses: Vec::new(),
            ..settings()
        },
    );
    let gw = &unaddressed.gateways[&Key::new("kamaji-system", "gateway")];
    let programmed = cond_of(&gw.conditions, "Programmed");
    assert_eq!(
        (programmed.status, programmed.reason),
        (false, "AddressNotAssigned")
    );

    let mut asked = world();
    asked
        .gateways
        .get_mut(&Key::new("kamaji-system", "gateway"))
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .addresses = Some(vec![GatewayAddress {
        kind: None,
        value: Some("198.18.9.9".into()),
    }]);
    let graph = build(&asked, &settings());
    let gw = &graph.gateways[&Key::new("kamaji-system", "gateway")];
    let accepted = cond_of(&gw.conditions, "Accepted");
    assert_eq!(
        (accepted.status, accepted.reason),
        (false, "UnsupportedAddress")
    );
}

#[test]
fn a_gateway_with_infrastructure_parameters_is_not_accepted() {
    // sniroute has no parameters kind: any parametersRef is invalid (GatewayReasonInvalidParameters;
    // conformance: GatewayInvalidParametersRef), ahead of its listeners' validity.
    let mut objects = world();
    objects.gateways.insert(
        Key::new("infra", "with-parameters"),
        from(json!({
            "metadata": {"name": "with-parameters", "namespace": "infra", "generation": 2},
            "spec": {
                "gatewayClassName": "sniroute",
                "listeners": [{"name": "pass", "port": 443, "protocol": "TLS",
                               "tls": {"mode": "Passthrough"}}],
                "infrastructure": {"parametersRef":
                    {"group": "invalid.io", "kind": "InvalidParameters", "name": "invalid"}}
            }
        })),
    );
    let graph = build(&objects, &settings());
    let gw = &graph.gateways[&Key::new("infra", "with-parameters")];
    let accepted = cond_of(&gw.conditions, "Accepted");
    assert_eq!(
        (
            accepted.status,
            accepted.reason,
            accepted.observed_generation
        ),
        (false, "InvalidParameters", 2)
    );
    assert!(
        accepted.message.contains("invalid.io/InvalidParameters"),
        "{}",
        accepted.message
    );
    let programmed = cond_of(&gw.conditions, "Programmed");
    assert_eq!((programmed.status, programmed.reason), (false, "Invalid"));
}

#[test]
fn listeners_sharing_a_port_conflict_by_protocol_or_hostname() {
    let mut objects = world();
    add_gateway(
        &mut objects,
        "infra",
        "conflicts",
        json!([
            {"name": "tls-a", "port": 443, "protocol": "TLS", "hostname": "a.example",
             "tls": {"mode": "Passthrough"}},
            {"name": "tls-a-again", "port": 443, "protocol": "TLS", "hostname": "a.example",
             "tls": {"mode": "Passthrough"}},
            {"name": "tls-b", "port": 443, "protocol": "TLS", "hostname": "b.example",
             "tls": {"mode": "Passthrough"}},
            {"name": "tls-8443", "port": 8443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
            {"name": "tcp-8443", "port": 8443, "protocol": "TCP"},
        ]),
    );
    let graph = build(&objects, &settings());
    let conflicted = |name: &str| {
        let l = listener(&graph, ("infra", "conflicts"), name);
        let c = cond_of(&l.conditions, "Conflicted");
        (
            c.status,
            c.reason,
            cond_of(&l.conditions, "Accepted").status,
        )
    };
    assert_eq!(conflicted("tls-a"), (true, "HostnameConflict", false));
    assert_eq!(conflicted("tls-a-again"), (true, "HostnameConflict", false));
    assert_eq!(conflicted("tls-b"), (false, "NoConflicts", true));
    assert_eq!(conflicted("tls-8443"), (true, "ProtocolConflict", false));
    assert_eq!(conflicted("tcp-8443"), (true, "ProtocolConflict", false));
}

#[test]
fn route_kinds_other_than_tls_route_are_invalid_and_left_out_of_supported_kinds() {
    let mut objects = world();
    add_gateway(
        &mut objects,
        "infra",
        "kinds",
        json!([
            {"name": "both", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"},
             "allowedRoutes": {"kinds": [{"kind": "TLSRoute"}, {"kind": "HTTPRoute"}]}},
            {"name": "http-only", "port": 444, "protocol": "TLS", "tls": {"mode": "Passthrough"},
             "allowedRoutes": {"kinds": [{"kind": "HTTPRoute"}]}},
        ]),
    );
    let graph = build(&objects, &settings());
    let both = listener(&graph, ("infra", "kinds"), "both");
    assert_eq!(both.supported_kinds[0].kind.as_deref(), Some("TLSRoute"));
    assert_eq!(both.supported_kinds.len(), 1);
    let refs = cond_of(&both.conditions, "ResolvedRefs");
    assert_eq!((refs.status, refs.reason), (false, "InvalidRouteKinds"));
    assert!(cond_of(&both.conditions, "Programmed").status);
    let none = listener(&graph, ("infra", "kinds"), "http-only");
    assert!(none.supported_kinds.is_empty());
    assert!(!cond_of(&none.conditions, "Programmed").status);
}

#[test]
fn a_parent_ref_matching_no_listener_is_no_matching_parent() {
    let mut objects = world();
    let by_section = add_route(
        &mut objects,
        route_json(
            "tenants",
            "wrong-section",
            json!({"name": "gateway", "namespace": "kamaji-system", "sectionName": "nope"}),
            &["a.example"],
            json!([{"name": "tenant-00", "port": 6443}]),
        ),
    );
    let by_port = add_route(
        &mut objects,
        route_json(
            "tenants",
            "wrong-port",
            json!({"name": "gateway", "namespace": "kamaji-system", "port": 443}),
            &["b.example"],
            json!([{"name": "tenant-00", "port": 6443}]),
        ),
    );
    let graph = build(&objects, &settings());
    for key in [&by_section, &by_port] {
        assert_eq!(
            reasons(&graph, key)[0],
            ("Accepted", false, "NoMatchingParent")
        );
    }
    assert!(graph.routes.is_empty());
    assert_eq!(
        listener(&graph, ("kamaji-system", "gateway"), "kube-apiserver").attached_routes,
        0
    );
}

#[test]
fn allowed_routes_namespaces_same_all_and_selector() {
    let mut objects = world();
    add_gateway(
        &mut objects,
        "infra",
        "ns",
        json!([
            {"name": "same", "port": 1443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
            {"name": "selector", "port": 2443, "protocol": "TLS", "tls": {"mode": "Passthrough"},
             "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {
                 "matchLabels": {"team": "a"},
                 "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}}}},
        ]),
    );
    objects.namespaces.insert(
        "team-a".into(),
        [("team".to_owned(), "a".to_owned())].into(),
    );
    objects.namespaces.insert(
        "team-a-prod".into(),
        [("team", "a"), ("env", "prod")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
    );
    let route = |ns: &str, section: &str| {
        route_json(
            ns,
            &format!("to-{section}"),
            json!({"name": "ns", "namespace": "infra", "sectionName": section}),
            &[&format!("{ns}.{section}.example")],
            json!([{"name": "svc", "port": 443}]),
        )
    };
    for ns in ["infra", "team-a", "team-a-prod"] {
        add_service(&mut objects, ns, "svc", "198.19.0.3", &[443]);
    }
    let same_ok = add_route(&mut objects, route("infra", "same"));
    let same_no = add_route(&mut objects, route("team-a", "same"));
    let selected = add_route(&mut objects, route("team-a", "selector"));
    let not_selected = add_route(&mut objects, route("team-a-prod", "selector"));
    let graph = build(&objects, &settings());
    assert_eq!(reasons(&graph, &same_ok)[0].2, "Accepted");
    assert_eq!(
        reasons(&graph, &same_no)[0],
        ("Accepted", false, "NotAllowedByListeners")
    );
    assert_eq!(reasons(&graph, &selected)[0].2, "Accepted");
    assert_eq!(
        reasons(&graph, &not_selected)[0],
        ("Accepted", false, "NotAllowedByListeners")
    );
    // Kamaji's listener allows All.
    let mut kamaji = world();
    add_service(&mut kamaji, "elsewhere", "svc", "198.19.0.4", &[6443]);
    let anywhere = add_route(
        &mut kamaji,
        route_json(
            "elsewhere",
            "r",
            json!({"name": "gateway", "namespace": "kamaji-system"}),
            &["x.example"],
            json!([{"name": "svc", "port": 6443}]),
        ),
    );
    assert_eq!(
        reasons(&build(&kamaji, &settings()), &anywhere)[0].2,
        "Accepted"
    );
}

#[test]
fn hostnames_are_intersected_with_the_listener_and_the_rest_ignored() {
    let mut objects = world();
    add_gateway(
        &mut objects,
        "infra",
        "hosts",
        json!([
            {"name": "wild", "port": 443, "protocol": "TLS", "hostname": "*.example.com",
             "tls": {"mode": "Passthrough"}},
        ]),
    );
    add_service(&mut objects, "infra", "svc", "198.19.0.5", &[443]);
    let partly = add_route(
        &mut objects,
        route_json(
            "infra",
            "partly",
            json!({"name": "hosts"}),
            &[
                "a.b.example.com",
                "test.example.net",
                "example.com",
                "*.x.example.com",
            ],
            json!([{"name": "svc", "port": 443}]),
        ),
    );
    let none = add_route(
        &mut objects,
        route_json(
            "infra",
            "none",
            json!({"name": "hosts"}),
            &["example.com", "other.example"],
            json!([{"name": "svc", "port": 443}]),
        ),
    );
    let graph = build(&objects, &settings());
    assert_eq!(reasons(&graph, &partly)[0].2, "Accepted");
    assert_eq!(
        reasons(&graph, &none)[0],
        ("Accepted", false, "NoMatchingListenerHostname")
    );
    let route = graph
        .routes
        .iter()
        .find(|r| &*r.name == "infra/partly")
        .unwrap();
    let names: Vec<String> = route.hostnames.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["a.b.example.com", "*.x.example.com"]);
    assert_eq!(
        listener(&graph, ("infra", "hosts"), "wild").attached_routes,
        1
    );
}

#[test]
fn hostname_intersection_follows_the_listener_hostname_reference() {
    let p = |s: &str| HostPattern::parse(s).unwrap();
    let meet =
        |l: Option<&str>, r: &str| intersect(l.map(p).as_ref(), &p(r)).map(|h| h.to_string());
    // (listener hostname, route hostname, what the route serves on that listener)
    let cases = [
        (None, "*.a.example", Some("*.a.example")),
        (
            Some("test.example.com"),
            "test.example.com",
            Some("test.example.com"),
        ),
        (
            Some("test.example.com"),
            "*.example.com",
            Some("test.example.com"),
        ),
        (Some("test.example.com"), "*.test.example.com", None),
        (
            Some("*.example.com"),
            "a.b.example.com",
            Some("a.b.example.com"),
        ),
        (Some("*.example.com"), "example.com", None),
        (Some("*.example.com"), "xexample.com", None),
        (
            Some("*.example.com"),
            "*.example.com",
            Some("*.example.com"),
        ),
        (
            Some("*.example.com"),
            "*.a.example.com",
            Some("*.a.example.com"),
        ),
        (
            Some("*.a.example.com"),
            "*.example.com",
            Some("*.a.example.com"),
        ),
        (Some("*.example.com"), "*.example.net", None),
    ];
    for (listener, route, serves) in cases {
        assert_eq!(
            meet(listener, route).as_deref(),
            serves,
            "{listener:?} ∩ {route}"
        );
    }
}

#[test]
fn backend_refs_not_resolved_name_their_reason_and_refuse_the_route() {
    let cases = [
        (
            json!([{"name": "missing", "port": 6443}]),
            "BackendNotFound",
        ),
        (
            json!([{"name": "tenant-00", "port": 7777}]),
            "BackendNotFound",
        ),
        (
            json!([{"group": "example.com", "kind": "Thing", "name": "tenant-00", "port": 6443}]),
            "InvalidKind",
        ),
        (
            json!([{"kind": "ConfigMap", "name": "tenant-00"}]),
            "InvalidKind",
        ),
        (
            json!([{"name": "svc", "namespace": "backends", "port": 443}]),
            "RefNotPermitted",
        ),
    ];
    for (backends, reason) in cases {
        let mut objects = world();
        add_service(&mut objects, "backends", "svc", "198.19.0.6", &[443]);
        let key = add_route(&mut objects, to_gateway("r", "r.example", backends.clone()));
        let graph = build(&objects, &settings());
        assert_eq!(
            reasons(&graph, &key),
            [
                ("Accepted", true, "Accepted"),
                ("ResolvedRefs", false, reason)
            ],
            "{backends}"
        );
        // In the table with its hostname and no backend, saying why: refused as its own.
        assert_eq!(graph.routes.len(), 1, "{backends}");
        let refusing = &graph.routes[0];
        assert_eq!(&*refusing.name, "tenants/r");
        assert_eq!(refusing.hostnames[0].to_string(), "r.example");
        assert!(refusing.backends.is_empty(), "{backends}");
        let why = refusing.no_backend.as_deref().unwrap_or_default();
        assert!(!why.is_empty(), "{backends}");
        assert_eq!(graph.refused.len(), 1);
        assert_eq!(graph.refused[0].why, why);
        assert_eq!(graph.refused[0].route, key);
        // Still attached: the listener counts it.
        assert_eq!(
            listener(&graph, ("kamaji-system", "gateway"), "kube-apiserver").attached_routes,
            1
        );
    }
}

#[test]
fn a_valid_backend_beside_an_invalid_one_still_routes_and_weight_zero_takes_nothing() {
    let mut objects = world();
    add_service(&mut objects, "tenants", "zero", "198.19.0.7", &[6443]);
    let key = add_route(
        &mut objects,
        to_gateway(
            "r",
            "r.example",
            json!([{"name": "missing", "port": 6443},
                   {"name": "zero", "port": 6443, "weight": 0},
                   {"name": "tenant-00", "port": 6443, "weight": 3}]),
        ),
    );
    let graph = build(&objects, &settings());
    assert_eq!(
        reasons(&graph, &key)[1],
        ("ResolvedRefs", false, "BackendNotFound")
    );
    let backends: Vec<String> = graph.routes[0]
        .backends
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(backends, ["198.19.0.1:6443"]);
}

#[test]
fn weights_are_spread_over_each_service_s_endpoints() {
    let mut objects = world();
    add_service(&mut objects, "tenants", "heavy", "198.19.0.7", &[6443]);
    add_service(&mut objects, "tenants", "light", "198.19.0.8", &[6443]);
    let key = add_route(
        &mut objects,
        to_gateway(
            "r",
            "r.example",
            json!([{"name": "heavy", "port": 6443, "weight": 3},
                   {"name": "light", "port": 6443}]),
        ),
    );
    let graph = build(&objects, &settings());
    assert_eq!(
        reasons(&graph, &key)[1],
        ("ResolvedRefs", true, "ResolvedRefs")
    );
    let shares = |graph: &Graph| -> Vec<(String, u32)> {
        let route = &graph.routes[0];
        let weights = route.facts.iter().map(|f| f.weight);
        route
            .backends
            .iter()
            .map(ToString::to_string)
            .zip(weights)
            .collect()
    };
    assert_eq!(
        shares(&graph),
        [("198.19.0.7:6443".into(), 3), ("198.19.0.8:6443".into(), 1)]
    );

    // light gets two pods: its weight of 1 is split between them, heavy's 3 stays whole.
    let slice: EndpointSlice = from(json!({
        "metadata": {"name": "light-x", "namespace": "tenants",
                     "labels": {"kubernetes.io/service-name": "light"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["198.18.1.5"], "conditions": {"ready": true}},
                      {"addresses": ["198.18.1.6"], "conditions": {"ready": true}}],
        "ports": [{"name": "p6443", "port": 6443}],
    }));
    objects.slices = Some(
        [(
            Key::new("tenants", "light"),
            [("light-x".to_owned(), slice)].into(),
        )]
        .into(),
    );
    let graph = build(&objects, &settings());
    assert_eq!(
        shares(&graph),
        [
            ("198.19.0.7:6443".into(), 6),
            ("198.18.1.5:6443".into(), 1),
            ("198.18.1.6:6443".into(), 1)
        ]
    );

    // Equal weights say nothing: no facts, as before weights were honoured.
    let mut equal = world();
    add_route(&mut equal, tenant_route("tenant-00", "t.example", 6443));
    assert!(build(&equal, &settings()).routes[0].facts.is_empty());
}

#[test]
fn a_reference_grant_permits_exactly_what_it_names() {
    let grant = |from_ns: &str, kind: &str, name: Option<&str>| -> ReferenceGrant {
        let mut to = json!({"group": "", "kind": "Service"});
        if let Some(name) = name {
            to["name"] = name.into();
        }
        from(json!({"metadata": {"name": "g", "namespace": "backends"},
                    "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": kind,
                                       "namespace": from_ns}],
                             "to": [to]}}))
    };
    let cases = [
        (grant("tenants", "TLSRoute", None), true),
        (grant("tenants", "TLSRoute", Some("svc")), true),
        (grant("tenants", "TLSRoute", Some("other")), false),
        (grant("elsewhere", "TLSRoute", None), false),
        (grant("tenants", "HTTPRoute", None), false),
    ];
    for (g, permitted) in cases {
        let mut objects = world();
        add_service(&mut objects, "backends", "svc", "198.19.0.8", &[443]);
        objects.grants.insert(Key::new("backends", "g"), g.clone());
        let key = add_route(
            &mut objects,
            to_gateway(
                "r",
                "r.example",
                json!([{"name": "svc", "namespace": "backends", "port": 443}]),
            ),
        );
        let graph = build(&objects, &settings());
        let refs = reasons(&graph, &key)[1];
        if permitted {
            assert_eq!(refs, ("ResolvedRefs", true, "ResolvedRefs"), "{g:?}");
            assert_eq!(graph.routes[0].backends[0].to_string(), "198.19.0.8:443");
        } else {
            assert_eq!(refs, ("ResolvedRefs", false, "RefNotPermitted"), "{g:?}");
        }
    }
}

#[test]
fn the_oldest_route_comes_first_so_it_keeps_a_contested_hostname() {
    let mut objects = world();
    let mut young = tenant_route("a-young", "same.example", 6443);
    young["metadata"]["creationTimestamp"] = "2026-12-02T00:00:00Z".into();
    let mut old = tenant_route("z-old", "same.example", 6443);
    old["metadata"]["creationTimestamp"] = "2026-11-01T00:00:00Z".into();
    add_route(&mut objects, young);
    add_route(&mut objects, old);
    let mut tie = tenant_route("b-tie", "same.example", 6443);
    tie["metadata"]["creationTimestamp"] = "2026-11-01T00:00:00Z".into();
    add_route(&mut objects, tie);
    let graph = build(&objects, &settings());
    let order: Vec<&str> = graph.routes.iter().map(|r| &*r.name).collect();
    assert_eq!(order, ["tenants/b-tie", "tenants/z-old", "tenants/a-young"]);
}

#[test]
fn endpoint_slices_give_the_pods_when_known() {
    let mut objects = world();
    let slice: EndpointSlice = from(json!({
        "metadata": {"name": "tenant-00-x", "namespace": "tenants",
                     "labels": {"kubernetes.io/service-name": "tenant-00"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["198.18.1.5"], "zone": "z1",
                       "conditions": {"ready": true}}],
        "ports": [{"name": "p6443", "port": 16443}],
    }));
    objects.slices = Some(
        [(
            Key::new("tenants", "tenant-00"),
            [("tenant-00-x".to_owned(), slice)].into(),
        )]
        .into(),
    );
    add_route(
        &mut objects,
        tenant_route("tenant-00", "tenant-00.cluster.example", 6443),
    );
    let graph = build(
        &objects,
        &Settings {
            zone: Some("z1".into()),
            ..settings()
        },
    );
    let route = &graph.routes[0];
    assert_eq!(route.backends[0].to_string(), "198.18.1.5:16443");
    assert_eq!(route.facts[0].zone.as_deref(), Some("z1"));
    assert_eq!(route.zone.as_deref(), Some("z1"));
}

#[test]
fn five_thousand_kamaji_tenants_build_into_one_table() {
    let mut objects = world();
    for i in 0..5_000 {
        let name = format!("tenant-{i:04}");
        add_service(
            &mut objects,
            "tenants",
            &name,
            &format!("198.19.{}.{}", i / 250, i % 250 + 1),
            &[6443],
        );
        let mut route = tenant_route(&name, &format!("{name}.cluster.example"), 6443);
        route["spec"]["rules"][0]["backendRefs"][0]["name"] = name.clone().into();
        add_route(&mut objects, route);
    }
    let started = tokio::time::Instant::now();
    let graph = build(&objects, &settings());
    let took = started.elapsed();
    assert_eq!(graph.routes.len(), 5_000);
    assert_eq!(
        listener(&graph, ("kamaji-system", "gateway"), "kube-apiserver").attached_routes,
        5_000
    );
    let (merged, conflicts) = crate::publish::merge([graph.routes.as_slice()]);
    assert!(conflicts.is_empty());
    let table = proxy::Table::new(merged.unwrap()).unwrap();
    let name = proxy::ServerName::parse(b"tenant-4321.cluster.example").unwrap();
    let route = table.lookup(&name).unwrap();
    assert_eq!(route.name(), "tenants/tenant-4321");
    assert_eq!(route.backends()[0].to_string(), "198.19.17.72:6443");
    eprintln!("5,000 TLSRoutes mapped in {took:?} (debug build)");
}

// === per-Gateway Services (kubernetes.gateway_api.listener_ports) ===

fn per_gateway() -> Settings {
    Settings {
        addresses: Vec::new(),
        services: Some(ServiceSettings {
            namespace: "sniroute".into(),
            ports: 20000..=20099,
            service_type: "ClusterIP".into(),
        }),
        ..settings()
    }
}

/// Two Gateways of one listener on 443 (`infra/a`, `infra/b`, routes from All), and a
/// route on each for `shared.example` to its own Service.
fn two_gateways() -> Objects {
    let mut objects = world();
    let listener = json!([{"name": "tls", "port": 443, "protocol": "TLS",
                           "tls": {"mode": "Passthrough"},
                           "allowedRoutes": {"namespaces": {"from": "All"}}}]);
    add_gateway(&mut objects, "infra", "a", listener.clone());
    add_gateway(&mut objects, "infra", "b", listener);
    add_service(&mut objects, "tenants", "svc-a", "198.19.0.21", &[443]);
    add_service(&mut objects, "tenants", "svc-b", "198.19.0.22", &[443]);
    for (route, gateway, service) in [("on-a", "a", "svc-a"), ("on-b", "b", "svc-b")] {
        add_route(
            &mut objects,
            route_json(
                "tenants",
                route,
                json!({"name": gateway, "namespace": "infra"}),
                &["shared.example"],
                json!([{"name": service, "port": 443}]),
            ),
        );
    }
    objects
}

/// Applies what the Lease holder would write, as the API server would store it.
fn provision(objects: &mut Objects, graph: &Graph, ip_of: impl Fn(&Key) -> &'static str) {
    let settings = per_gateway();
    let plan = infra::plan(
        &graph.wanted_services,
        &objects.gateway_services,
        settings.services.as_ref().unwrap(),
    );
    for (name, mut body) in plan.apply {
        let gateway = body["metadata"]["annotations"][infra::GATEWAY_ANNOTATION]
            .as_str()
            .unwrap()
            .split_once('/')
            .map(|(ns, n)| Key::new(ns, n))
            .unwrap();
        body["spec"]["clusterIP"] = json!(ip_of(&gateway));
        objects.gateway_services.insert(name, from(body));
    }
    for name in plan.delete {
        objects.gateway_services.remove(&name);
    }
}

#[test]
fn each_gateway_gets_its_service_address_and_its_routes_are_served_on_its_port_only() {
    let mut objects = two_gateways();
    let settings = per_gateway();
    // Before the Services exist: wanted, attached, served nowhere, not Programmed.
    let before = build(&objects, &settings);
    assert!(before.routes.is_empty(), "{:?}", before.routes);
    assert!(before.listeners.is_empty());
    let a = Key::new("infra", "a");
    assert_eq!(before.wanted_services[&a].ports, [443].into());
    let programmed = |graph: &Graph, key: &Key| {
        graph.gateways[key]
            .conditions
            .iter()
            .find(|c| c.kind == "Programmed")
            .map(|c| (c.status, c.reason))
            .unwrap()
    };
    assert_eq!(programmed(&before, &a), (false, "AddressNotAssigned"));
    assert_eq!(
        listener(&before, ("infra", "a"), "tls")
            .conditions
            .iter()
            .find(|c| c.kind == "Programmed")
            .map(|c| (c.status, c.reason)),
        Some((false, "Pending"))
    );

    provision(&mut objects, &before, |gateway| {
        match gateway.name.as_str() {
            "a" => "198.19.1.1",
            "b" => "198.19.1.2",
            _ => "198.19.1.3",
        }
    });
    let graph = build(&objects, &settings);
    for (gateway, ip) in [("a", "198.19.1.1"), ("b", "198.19.1.2")] {
        let key = Key::new("infra", gateway);
        assert_eq!(programmed(&graph, &key), (true, "Programmed"), "{gateway}");
        assert_eq!(
            graph.gateways[&key].addresses,
            [GatewayAddress {
                kind: Some("IPAddress".into()),
                value: Some(ip.into())
            }]
        );
    }
    // Each route on its Gateway's pod port, the same name to two backends.
    let ports = infra::allocations(&objects.gateway_services);
    let port_of = |gateway: &str| ports[&Key::new("infra", gateway)].ports[&443];
    assert_ne!(port_of("a"), port_of("b"));
    let served: BTreeMap<&str, (Option<u16>, String, String)> = graph
        .routes
        .iter()
        .filter(|r| r.name.starts_with("tenants/on-"))
        .map(|r| {
            (
                &*r.name,
                (r.port, r.backends[0].to_string(), r.source.to_string()),
            )
        })
        .collect();
    assert_eq!(
        served["tenants/on-a"],
        (
            Some(port_of("a")),
            "198.19.0.21:443".into(),
            format!(
                "tlsroute tenants/on-a on gateway infra/a:443 (pod port {})",
                port_of("a")
            )
        )
    );
    assert_eq!(served["tenants/on-b"].0, Some(port_of("b")));
    assert_eq!(served["tenants/on-b"].1, "198.19.0.22:443");
    assert!(graph.listeners.contains(&port_of("a")) && graph.listeners.contains(&port_of("b")));
    // Into one table without a conflict: one name, two listeners.
    let (merged, conflicts) = crate::publish::merge([graph.routes.as_slice()]);
    assert!(conflicts.is_empty(), "{conflicts:?}");
    let table = proxy::Table::new(merged.unwrap()).unwrap();
    let name = proxy::ServerName::parse(b"shared.example").unwrap();
    let on = |port| {
        table
            .matching_on(Some(port), &name)
            .map(|(r, _)| r.name().to_owned())
    };
    assert_eq!(on(port_of("a")).as_deref(), Some("tenants/on-a"));
    assert_eq!(on(port_of("b")).as_deref(), Some("tenants/on-b"));
    assert!(table.lookup(&name).is_none(), "not on the listen listeners");

    // Gateway b goes: its Service is deleted, its port unbound; a's stay as they were.
    objects.gateways.remove(&Key::new("infra", "b"));
    let without_b = build(&objects, &settings);
    assert!(!without_b.listeners.contains(&port_of("b")));
    assert!(without_b.listeners.contains(&port_of("a")));
    let plan = infra::plan(
        &without_b.wanted_services,
        &objects.gateway_services,
        settings.services.as_ref().unwrap(),
    );
    assert_eq!(plan.delete, [infra::service_name(&Key::new("infra", "b"))]);
    assert!(
        plan.apply.is_empty(),
        "a's Service is not rewritten: {:?}",
        plan.apply
    );
}

#[test]
fn a_route_on_two_gateway_listeners_is_one_table_route_per_port() {
    let mut objects = two_gateways();
    add_route(
        &mut objects,
        json!({
            "metadata": {"name": "both", "namespace": "tenants", "generation": 1,
                         "creationTimestamp": "2026-12-02T00:00:00Z"},
            "spec": {"parentRefs": [{"name": "a", "namespace": "infra"},
                                    {"name": "b", "namespace": "infra"}],
                     "hostnames": ["both.example"],
                     "rules": [{"backendRefs": [{"name": "svc-a", "port": 443}]}]},
        }),
    );
    let settings = per_gateway();
    let before = build(&objects, &settings);
    provision(&mut objects, &before, |_| "198.19.1.9");
    let graph = build(&objects, &settings);
    let mut both: Vec<&str> = graph
        .routes
        .iter()
        .filter(|r| r.name.starts_with("tenants/both"))
        .map(|r| &*r.name)
        .collect();
    both.sort_unstable();
    assert_eq!(
        both,
        ["tenants/both@infra/a:443", "tenants/both@infra/b:443"]
    );
}

#[test]
fn infrastructure_labels_and_annotations_are_wanted_on_the_service_and_spec_addresses_refused() {
    let mut objects = two_gateways();
    let key = Key::new("infra", "a");
    objects.gateways.insert(
        key.clone(),
        from(
            json!({"metadata": {"name": "a", "namespace": "infra", "generation": 2},
                    "spec": {"gatewayClassName": "sniroute",
                             "infrastructure": {"labels": {"team": "edge"},
                                                "annotations": {"lb.example/internal": "true"}},
                             "listeners": [{"name": "tls", "port": 443, "protocol": "TLS",
                                            "tls": {"mode": "Passthrough"}}]}}),
        ),
    );
    let graph = build(&objects, &per_gateway());
    let wanted = &graph.wanted_services[&key];
    assert_eq!(wanted.labels["team"], "edge");
    assert_eq!(wanted.annotations["lb.example/internal"], "true");
    let b = Key::new("infra", "b");
    let asking: Gateway = from(json!({
        "metadata": {"name": "b", "namespace": "infra", "generation": 1},
        "spec": {"gatewayClassName": "sniroute",
                 "addresses": [{"type": "IPAddress", "value": "198.18.9.9"}],
                 "listeners": [{"name": "tls", "port": 443, "protocol": "TLS",
                                "tls": {"mode": "Passthrough"}}]}}));
    objects.gateways.insert(b.clone(), asking);
    let graph = build(&objects, &per_gateway());
    let accepted = graph.gateways[&b]
        .conditions
        .iter()
        .find(|c| c.kind == "Accepted")
        .unwrap();
    assert_eq!(
        (accepted.status, accepted.reason),
        (false, "UnsupportedAddress")
    );
    assert!(
        !graph.wanted_services.contains_key(&b),
        "not accepted: no Service"
    );
}
