//! HostedCluster, Route and Service objects into the pure mapping
//! (`control::kube::map_cluster`), the way the Kubernetes source feeds it: each object
//! deserialised from JSON (a bad one becomes `Invalid`), Routes and Services keyed by name.
//!
//! Two ways in, chosen by the first byte:
//! - `{`: the input is one JSON document `{"hostedCluster": …, "routes": […], "services": […]}`
//!   (the committed seeds are the fixtures in this form, so libFuzzer mutates real objects);
//! - anything else: `arbitrary` builds the objects field by field, each field drawn from
//!   values that matter to the rules (platforms, topologies, served Route names, CIDRs,
//!   addresses, ports) or arbitrary text, or an arbitrary JSON value of the wrong type.
//!
//! Checks: no panic; a skipped cluster has no routes; every route builds on its own into a
//! `Table` (exact hostnames, one address backend, the cluster's source and allow list); at most
//! one route carries the cluster ID; the routes merge into a table as the publisher does; and
//! the result does not depend on the order the watch delivered the Routes in.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use control::kube::mapping::{Invalid, Watched};
use control::kube::objects::{HostedCluster, OcpRoute, Service};
use control::kube::{map_cluster, Mapped};
use libfuzzer_sys::fuzz_target;
use proxy::{Backend, HostPattern, Route, Table};
use serde_json::{json, Map, Value};

fuzz_target!(|data: &[u8]| {
    let world = if data.first() == Some(&b'{') {
        match serde_json::from_slice::<Value>(data) {
            Ok(doc) => World::from_json(&doc),
            Err(_) => return,
        }
    } else {
        match Gen::arbitrary(&mut Unstructured::new(data)) {
            Ok(gen) => World::from_json(&gen.to_json()),
            Err(_) => return,
        }
    };
    if let Some(world) = world {
        world.check();
    }
});

/// The objects of one hosted cluster, as the store holds them.
struct World {
    hc: HostedCluster,
    routes: BTreeMap<String, Watched<OcpRoute>>,
    services: BTreeMap<String, Watched<Service>>,
}

fn parse<T: serde::de::DeserializeOwned>(value: &Value) -> (String, Watched<T>) {
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let parsed = serde_json::from_value(value.clone()).map_err(|e| Invalid {
        name: name.clone(),
        error: e.to_string(),
    });
    (name, parsed)
}

impl World {
    /// `None` when the HostedCluster itself does not parse: the store maps nothing then.
    fn from_json(doc: &Value) -> Option<Self> {
        let hc = serde_json::from_value(doc.get("hostedCluster")?.clone()).ok()?;
        let list = |key: &str| doc.get(key).and_then(Value::as_array).cloned();
        let mut routes = BTreeMap::new();
        for route in list("routes").unwrap_or_default().iter().take(16) {
            let (name, parsed) = parse::<OcpRoute>(route);
            routes.insert(name, parsed);
        }
        let mut services = BTreeMap::new();
        for service in list("services").unwrap_or_default().iter().take(16) {
            let (name, parsed) = parse::<Service>(service);
            services.insert(name, parsed);
        }
        Some(Self {
            hc,
            routes,
            services,
        })
    }

    fn map<'a>(&'a self, routes: impl IntoIterator<Item = &'a Watched<OcpRoute>>) -> Mapped {
        map_cluster(&self.hc, routes, |name| self.services.get(name))
    }

    fn check(&self) {
        let mapped = self.map(self.routes.values());
        // The watch delivers Routes in any order; the result must not depend on it.
        assert_eq!(
            mapped,
            self.map(self.routes.values().rev()),
            "order matters"
        );

        if mapped.skipped.is_some() {
            assert!(mapped.routes.is_empty(), "skipped but routed: {mapped:?}");
            return;
        }
        let meta = &self.hc.metadata;
        let (ns, name) = (
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        );
        let source = format!("hostedcluster {ns}/{name}");
        let prefix = format!("{ns}/{name}/");
        let mut with_id = 0;
        let mut names = std::collections::HashSet::new();
        for spec in &mapped.routes {
            assert!(
                names.insert(spec.name.clone()),
                "route name twice: {spec:?}"
            );
            assert!(spec.name.starts_with(&prefix), "{spec:?}");
            assert_eq!(&*spec.source, source);
            assert!(!spec.hostnames.is_empty(), "{spec:?}");
            assert!(
                spec.hostnames
                    .iter()
                    .all(|h| matches!(h, HostPattern::Exact(_))),
                "a Route host became a wildcard: {spec:?}"
            );
            assert!(
                matches!(spec.backends.as_slice(), [Backend::Addr(a)] if a.port() != 0),
                "{spec:?}"
            );
            assert_eq!(
                spec.allowed_cidrs, mapped.routes[0].allowed_cidrs,
                "routes of one cluster with different allow lists"
            );
            if let Some(id) = &spec.cluster_id {
                with_id += 1;
                assert!(!id.trim().is_empty() && id.trim() == &**id, "{id:?}");
            }
            let route =
                Route::new(spec.clone()).unwrap_or_else(|e| panic!("{spec:?} does not build: {e}"));
            Table::new(vec![route])
                .unwrap_or_else(|e| panic!("{spec:?} does not make a table: {e}"));
        }
        assert!(with_id <= 1, "cluster ID on {with_id} routes");

        let (merged, _conflicts) = control::publish::merge([mapped.routes.as_slice()]);
        let merged = merged.unwrap_or_else(|e| panic!("merge failed: {e}"));
        Table::new(merged).unwrap_or_else(|e| panic!("merged routes make no table: {e}"));
    }
}

// === structured inputs ===

/// Text drawn from values the rules care about, or arbitrary.
#[derive(Arbitrary, Debug)]
enum Text {
    Pool(u8),
    Raw(String),
}

const POOL: &[&str] = &[
    "",
    " ",
    "clusters",
    "alpha",
    "Azure",
    "AWS",
    "ManagedIdentities",
    "WorkloadIdentities",
    "Public",
    "Private",
    "PublicAndPrivate",
    "Swift",
    "PrivateLink",
    "kube-apiserver",
    "oauth",
    "oauth-openshift",
    "konnectivity-server",
    "ignition-server",
    "ignition-server-proxy",
    "metrics-proxy",
    "Service",
    "api.alpha.hcp.example.test",
    "API.alpha.hcp.example.test.",
    "*.apps.alpha.hcp.example.test",
    "oauth.alpha.hcp.example.test",
    "172.30.0.10",
    "fd00::10",
    "None",
    "10.0.0.0/8",
    "192.0.2.7",
    "2001:db8::/32",
    " 10.1.0.0/16 ",
    "not-a-cidr",
    "4954e6da-fc87-4e74-9861-05895fe9549d",
];

impl Text {
    fn value(&self) -> String {
        match self {
            Self::Pool(i) => POOL[usize::from(*i) % POOL.len()].to_owned(),
            Self::Raw(s) => s.clone(),
        }
    }
}

/// A field: absent, a string as the schema wants, or a value of any type.
#[derive(Arbitrary, Debug)]
enum Field {
    Absent,
    Text(Text),
    Any(AnyJson),
}

impl Field {
    fn put(&self, map: &mut Map<String, Value>, key: &str) {
        match self {
            Self::Absent => {}
            Self::Text(t) => {
                map.insert(key.into(), Value::String(t.value()));
            }
            Self::Any(a) => {
                map.insert(key.into(), a.to_json(0));
            }
        }
    }
}

/// A small arbitrary JSON value.
#[derive(Arbitrary, Debug)]
enum AnyJson {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Text),
    Array(Vec<AnyJson>),
    Object(Vec<(Text, AnyJson)>),
}

impl AnyJson {
    fn to_json(&self, depth: usize) -> Value {
        if depth > 4 {
            return Value::Null;
        }
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => json!(b),
            Self::Int(i) => json!(i),
            Self::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Self::Str(t) => json!(t.value()),
            Self::Array(items) => items.iter().take(8).map(|i| i.to_json(depth + 1)).collect(),
            Self::Object(items) => Value::Object(
                items
                    .iter()
                    .take(8)
                    .map(|(k, v)| (k.value(), v.to_json(depth + 1)))
                    .collect(),
            ),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Gen {
    hc: GenCluster,
    routes: Vec<GenRoute>,
    services: Vec<GenService>,
}

#[derive(Arbitrary, Debug)]
struct GenCluster {
    namespace: Field,
    name: Field,
    deleting: bool,
    platform_type: Field,
    azure: Option<GenAzure>,
    allowed_cidrs: Option<Vec<Text>>,
    cluster_id: Field,
    dns_name: Field,
}

#[derive(Arbitrary, Debug)]
struct GenAzure {
    topology: Field,
    auth_type: Field,
    private_type: Field,
}

#[derive(Arbitrary, Debug)]
struct GenRoute {
    name: Field,
    host: Field,
    to_kind: Field,
    to_name: Field,
    spec: Option<AnyJson>,
}

#[derive(Arbitrary, Debug)]
struct GenService {
    name: Field,
    cluster_ip: Field,
    ports: Option<Vec<GenPort>>,
}

#[derive(Arbitrary, Debug)]
enum GenPort {
    Port(i64),
    Common(u8),
    NoPort,
    Any(AnyJson),
}

fn object(f: impl FnOnce(&mut Map<String, Value>)) -> Value {
    let mut map = Map::new();
    f(&mut map);
    Value::Object(map)
}

impl Gen {
    fn to_json(&self) -> Value {
        let hc = &self.hc;
        let hosted_cluster = object(|m| {
            m.insert(
                "metadata".into(),
                object(|meta| {
                    hc.namespace.put(meta, "namespace");
                    hc.name.put(meta, "name");
                    if hc.deleting {
                        meta.insert("deletionTimestamp".into(), json!("2026-03-02T10:15:00Z"));
                    }
                }),
            );
            m.insert(
                "spec".into(),
                object(|spec| {
                    hc.cluster_id.put(spec, "clusterID");
                    hc.dns_name.put(spec, "kubeAPIServerDNSName");
                    spec.insert(
                        "platform".into(),
                        object(|p| {
                            hc.platform_type.put(p, "type");
                            if let Some(azure) = &hc.azure {
                                p.insert(
                                    "azure".into(),
                                    object(|a| {
                                        azure.topology.put(a, "topology");
                                        a.insert(
                                            "azureAuthenticationConfig".into(),
                                            object(|c| {
                                                azure
                                                    .auth_type
                                                    .put(c, "azureAuthenticationConfigType")
                                            }),
                                        );
                                        a.insert(
                                            "private".into(),
                                            object(|pr| azure.private_type.put(pr, "type")),
                                        );
                                    }),
                                );
                            }
                        }),
                    );
                    if let Some(cidrs) = &hc.allowed_cidrs {
                        let cidrs: Vec<String> = cidrs.iter().take(8).map(Text::value).collect();
                        spec.insert(
                            "networking".into(),
                            json!({"apiServer": {"allowedCIDRBlocks": cidrs}}),
                        );
                    }
                }),
            );
        });
        let routes: Vec<Value> = self
            .routes
            .iter()
            .take(12)
            .map(|r| {
                object(|m| {
                    m.insert("metadata".into(), object(|meta| r.name.put(meta, "name")));
                    let spec = match &r.spec {
                        Some(any) => any.to_json(0),
                        None => object(|spec| {
                            r.host.put(spec, "host");
                            spec.insert(
                                "to".into(),
                                object(|to| {
                                    r.to_kind.put(to, "kind");
                                    r.to_name.put(to, "name");
                                }),
                            );
                        }),
                    };
                    m.insert("spec".into(), spec);
                })
            })
            .collect();
        let services: Vec<Value> = self
            .services
            .iter()
            .take(12)
            .map(|s| {
                object(|m| {
                    m.insert("metadata".into(), object(|meta| s.name.put(meta, "name")));
                    m.insert(
                        "spec".into(),
                        object(|spec| {
                            s.cluster_ip.put(spec, "clusterIP");
                            if let Some(ports) = &s.ports {
                                let ports: Vec<Value> = ports
                                    .iter()
                                    .take(6)
                                    .map(|p| match p {
                                        GenPort::Port(n) => json!({"port": n}),
                                        GenPort::Common(i) => {
                                            let common = [6443, 8091, 443, 0, 65535, 65536, -1];
                                            json!({"port": common[usize::from(*i) % common.len()]})
                                        }
                                        GenPort::NoPort => json!({"name": "https"}),
                                        GenPort::Any(a) => a.to_json(0),
                                    })
                                    .collect();
                                spec.insert("ports".into(), Value::Array(ports));
                            }
                        }),
                    );
                })
            })
            .collect();
        json!({"hostedCluster": hosted_cluster, "routes": routes, "services": services})
    }
}
