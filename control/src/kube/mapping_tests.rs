//! The mapping, on objects shaped like a management cluster's: every rule and every skip.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::kube::fixtures::{self, host};

const NS: &str = "clusters";
const HCP: &str = "clusters-alpha";
const ID: &str = "4954e6da-fc87-4e74-9861-05895fe9549d";

fn parse<T: serde::de::DeserializeOwned>(value: Value) -> Watched<T> {
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    serde_json::from_value(value).map_err(|e| Invalid {
        name,
        error: e.to_string(),
    })
}

/// A cluster's objects, editable before mapping.
struct World {
    hc: Value,
    routes: Vec<Value>,
    services: Vec<Value>,
}

impl World {
    fn alpha() -> Self {
        let (mut hc, routes, services) = fixtures::cluster(NS, "alpha", 7);
        hc["spec"]["clusterID"] = json!(ID);
        Self {
            hc,
            routes,
            services,
        }
    }

    fn route(&mut self, name: &str) -> &mut Value {
        self.routes
            .iter_mut()
            .find(|r| r["metadata"]["name"] == name)
            .unwrap()
    }

    fn service(&mut self, name: &str) -> &mut Value {
        self.services
            .iter_mut()
            .find(|r| r["metadata"]["name"] == name)
            .unwrap()
    }

    fn map(&self) -> Mapped {
        let hc: HostedCluster = serde_json::from_value(self.hc.clone()).unwrap();
        let routes: Vec<Watched<OcpRoute>> = self.routes.iter().cloned().map(parse).collect();
        let services: HashMap<String, Watched<Service>> = self
            .services
            .iter()
            .cloned()
            .map(|s| (s["metadata"]["name"].as_str().unwrap().to_owned(), parse(s)))
            .collect();
        map_cluster(&hc, &routes, |name| services.get(name))
    }
}

/// (name, hostnames, backends, cluster id) of one route.
type Summary = (String, Vec<String>, Vec<String>, Option<String>);

/// Each route, summarised.
fn summary(mapped: &Mapped) -> Vec<Summary> {
    mapped
        .routes
        .iter()
        .map(|r| {
            (
                r.name.to_string(),
                r.hostnames.iter().map(ToString::to_string).collect(),
                r.backends.iter().map(ToString::to_string).collect(),
                r.cluster_id.as_deref().map(str::to_owned),
            )
        })
        .collect()
}

fn reasons(mapped: &Mapped) -> Vec<(&str, &str)> {
    mapped
        .rejections
        .iter()
        .map(|r| (r.object.as_str(), r.reason.as_str()))
        .collect()
}

fn s(v: &str) -> String {
    v.to_owned()
}

#[test]
fn a_public_aro_cluster_routes_its_five_endpoints() {
    let mapped = World::alpha().map();
    assert_eq!(mapped.skipped, None);
    assert_eq!(mapped.rejections, []);
    assert_eq!(
        summary(&mapped),
        [
            (
                s("clusters/alpha/ignition-server"),
                vec![host("ignition", "alpha")],
                vec![s("172.19.0.8:443")],
                None
            ),
            (
                s("clusters/alpha/konnectivity-server"),
                vec![host("konnectivity", "alpha")],
                vec![s("172.18.0.8:8091")],
                None
            ),
            (
                s("clusters/alpha/kube-apiserver"),
                vec![host("api", "alpha")],
                vec![s("172.16.0.8:6443")],
                Some(s(ID))
            ),
            (
                s("clusters/alpha/metrics-proxy"),
                vec![host("metrics-proxy", "alpha")],
                vec![s("172.20.0.8:443")],
                None
            ),
            (
                s("clusters/alpha/oauth"),
                vec![host("oauth", "alpha")],
                vec![s("172.17.0.8:6443")],
                None
            ),
        ]
    );
    for route in &mapped.routes {
        assert_eq!(&*route.source, "hostedcluster clusters/alpha");
        assert!(route.allowed_cidrs.is_empty(), "no allow list: open to all");
    }
}

#[test]
fn route_order_does_not_depend_on_watch_order() {
    let mut world = World::alpha();
    let first = world.map();
    world.routes.reverse();
    world.services.reverse();
    assert_eq!(world.map(), first);
}

#[test]
fn kube_apiserver_dns_name_joins_the_kube_apiserver_route() {
    let mut world = World::alpha();
    world.hc["spec"]["kubeAPIServerDNSName"] = json!("API.Custom.Example.Test.");
    let mapped = world.map();
    let kas = &summary(&mapped)[2];
    assert_eq!(
        kas.1,
        [host("api", "alpha"), s("api.custom.example.test")],
        "normalised"
    );
    assert_eq!(kas.3.as_deref(), Some(ID));

    // The same name twice is listed once.
    world.hc["spec"]["kubeAPIServerDNSName"] = json!(host("api", "alpha"));
    assert_eq!(summary(&world.map())[2].1, [host("api", "alpha")]);
}

#[test]
fn kube_apiserver_dns_name_without_the_route_gets_its_own_route_and_the_cluster_id() {
    let mut world = World::alpha();
    world
        .routes
        .retain(|r| r["metadata"]["name"] != "kube-apiserver");
    world.hc["spec"]["kubeAPIServerDNSName"] = json!("api.custom.example.test");
    let mapped = world.map();
    let custom = summary(&mapped)
        .into_iter()
        .find(|r| r.0 == "clusters/alpha/kube-apiserver-custom")
        .unwrap();
    assert_eq!(
        custom,
        (
            s("clusters/alpha/kube-apiserver-custom"),
            vec![s("api.custom.example.test")],
            vec![s("172.16.0.8:6443")],
            Some(s(ID))
        )
    );
}

#[test]
fn a_cluster_id_without_a_route_to_the_kube_apiserver_is_reported() {
    let mut world = World::alpha();
    world
        .routes
        .retain(|r| r["metadata"]["name"] != "kube-apiserver");
    let mapped = world.map();
    assert_eq!(mapped.routes.len(), 4);
    assert_eq!(
        reasons(&mapped),
        [(
            "hostedcluster clusters/alpha spec.clusterID",
            "no_cluster_id_route"
        )]
    );
    // No clusterID: nothing to report.
    world.hc["spec"]["clusterID"] = json!("");
    assert_eq!(world.map().rejections, []);
}

#[test]
fn allowed_cidr_blocks_restrict_every_route() {
    let mut world = World::alpha();
    world.hc["spec"]["networking"]["apiServer"] =
        json!({"allowedCIDRBlocks": ["127.0.0.1/32", "", "2001:db8::/32"]});
    let mapped = world.map();
    let expected: Vec<ipnet::IpNet> = vec![
        "127.0.0.1/32".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    assert_eq!(mapped.routes.len(), 5);
    for route in &mapped.routes {
        assert_eq!(route.allowed_cidrs, expected, "{}", route.name);
    }
    let custom = {
        world
            .routes
            .retain(|r| r["metadata"]["name"] != "kube-apiserver");
        world.hc["spec"]["kubeAPIServerDNSName"] = json!("api.custom.example.test");
        world.map()
    };
    assert!(custom.routes.iter().all(|r| r.allowed_cidrs == expected));
}

#[test]
fn skip_an_allow_list_entry_that_is_not_a_cidr() {
    let mut world = World::alpha();
    world.hc["spec"]["networking"]["apiServer"] =
        json!({"allowedCIDRBlocks": ["10.0.0.0/8", "10.0.0.300/32"]});
    let mapped = world.map();
    assert_eq!(
        mapped.skipped,
        Some(Skip::BadAllowedCidr {
            cidr: s("10.0.0.300/32")
        })
    );
    assert!(mapped.skipped.as_ref().unwrap().is_problem());
    assert!(mapped.routes.is_empty());
}

#[test]
fn skip_a_cluster_being_deleted() {
    let mut world = World::alpha();
    world.hc["metadata"]["deletionTimestamp"] = json!("2026-03-05T08:00:00Z");
    let mapped = world.map();
    assert_eq!(mapped.skipped, Some(Skip::BeingDeleted));
    assert_eq!(mapped.skipped.as_ref().unwrap().reason(), "being_deleted");
    assert!(mapped.routes.is_empty() && mapped.rejections.is_empty());
}

#[test]
fn skip_clusters_that_are_not_aro_hcp() {
    let mut world = World::alpha();
    world.hc["spec"]["platform"] = json!({"type": "AWS", "aws": {"region": "us-east-1",
        "endpointAccess": "Public"}});
    let mapped = world.map();
    assert_eq!(
        mapped.skipped,
        Some(Skip::NotSharedIngress { platform: s("AWS") })
    );
    assert!(!mapped.skipped.as_ref().unwrap().is_problem());

    world.hc["spec"]["platform"] = json!({"type": "Azure", "azure": {"topology": "Public",
        "azureAuthenticationConfig": {"azureAuthenticationConfigType": "WorkloadIdentities"}}});
    assert_eq!(world.map().skipped.unwrap().reason(), "not_shared_ingress");

    world.hc["spec"].as_object_mut().unwrap().remove("platform");
    assert_eq!(
        world.map().skipped.unwrap().to_string(),
        "not an ARO HCP cluster (platform unset): no shared ingress"
    );

    // Azure without an azure section: HyperShift's fallback counts it as ARO HCP, public.
    world.hc["spec"]["platform"] = json!({"type": "Azure"});
    assert_eq!(world.map().skipped, None);
}

#[test]
fn skip_clusters_whose_api_server_is_private() {
    let mut world = World::alpha();
    world.hc["spec"]["platform"]["azure"]["topology"] = json!("Private");
    world.hc["spec"]["platform"]["azure"]["private"] = json!({"type": "PrivateLink"});
    let mapped = world.map();
    assert_eq!(
        mapped.skipped,
        Some(Skip::NotPublic {
            access: s("Azure topology Private")
        })
    );
    assert_eq!(mapped.skipped.unwrap().reason(), "not_public");
}

#[test]
fn public_and_private_clusters_are_routed_without_a_cluster_id() {
    let mut world = World::alpha();
    world.hc["spec"]["platform"]["azure"]["topology"] = json!("PublicAndPrivate");
    let mapped = world.map();
    assert_eq!(mapped.skipped, None);
    assert_eq!(mapped.routes.len(), 5);
    assert!(mapped.routes.iter().all(|r| r.cluster_id.is_none()));
    assert_eq!(mapped.rejections, [], "deliberate, not a problem");

    // Swift networking with no topology (clusters not migrated yet) is private as well.
    world.hc["spec"]["platform"]["azure"]
        .as_object_mut()
        .unwrap()
        .remove("topology");
    world.hc["spec"]["platform"]["azure"]["private"] = json!({"type": "Swift", "swift": {}});
    let mapped = world.map();
    assert_eq!(mapped.routes.len(), 5);
    assert!(mapped.routes.iter().all(|r| r.cluster_id.is_none()));
}

#[test]
fn skip_an_unnamed_cluster() {
    let mut world = World::alpha();
    world.hc["metadata"]["namespace"] = json!("");
    assert_eq!(world.map().skipped, Some(Skip::Unnamed));
}

#[test]
fn a_route_to_a_missing_service_is_rejected_alone() {
    let mut world = World::alpha();
    world
        .services
        .retain(|s| s["metadata"]["name"] != "oauth-openshift");
    let mapped = world.map();
    assert_eq!(mapped.routes.len(), 4);
    assert_eq!(
        reasons(&mapped),
        [("route clusters-alpha/oauth", "missing_service")]
    );
    assert_eq!(
        mapped.rejections[0].to_string(),
        "route clusters-alpha/oauth: Service clusters-alpha/oauth-openshift does not exist"
    );
}

#[test]
fn malformed_routes_and_services_are_rejected_alone() {
    let mut world = World::alpha();
    world.route("oauth")["spec"]["host"] = json!(["not", "a", "string"]);
    world.service("konnectivity-server")["spec"]["ports"] = json!({"port": 8091});
    let mapped = world.map();
    assert_eq!(mapped.routes.len(), 3);
    assert_eq!(
        reasons(&mapped),
        [
            (
                "route clusters-alpha/konnectivity-server",
                "malformed_service"
            ),
            ("route clusters-alpha/oauth", "malformed_route"),
        ]
    );
}

#[test]
fn routes_without_a_usable_host_are_rejected() {
    let mut world = World::alpha();
    world.route("oauth")["spec"]
        .as_object_mut()
        .unwrap()
        .remove("host");
    world.route("ignition-server")["spec"]["host"] = json!("*.apps.alpha.example.test");
    world.route("metrics-proxy")["spec"]["host"] = json!("bad host.example.test");
    let mapped = world.map();
    assert_eq!(
        reasons(&mapped),
        [
            ("route clusters-alpha/ignition-server", "bad_hostname"),
            ("route clusters-alpha/metrics-proxy", "bad_hostname"),
            ("route clusters-alpha/oauth", "no_host"),
        ]
    );
    assert_eq!(mapped.routes.len(), 2);
}

#[test]
fn services_without_a_cluster_ip_or_port_and_non_service_targets_are_rejected() {
    let mut world = World::alpha();
    world.service("oauth-openshift")["spec"]["clusterIP"] = json!("None");
    world.service("konnectivity-server")["spec"]["ports"] = json!([]);
    world.route("metrics-proxy")["spec"]["to"] = json!({"kind": "Deployment", "name": "x"});
    let mapped = world.map();
    assert_eq!(
        reasons(&mapped),
        [
            ("route clusters-alpha/konnectivity-server", "no_port"),
            ("route clusters-alpha/metrics-proxy", "no_service"),
            ("route clusters-alpha/oauth", "no_cluster_ip"),
        ]
    );
}

#[test]
fn the_port_follows_the_service() {
    let mut world = World::alpha();
    // A Service with HAProxy's port among others uses it ...
    world.service("kube-apiserver")["spec"]["ports"] = json!([
        {"name": "metrics", "port": 9443, "protocol": "TCP"},
        {"name": "client", "port": 6443, "protocol": "TCP"},
    ]);
    // ... one without it uses its first port, so a port change re-routes.
    world.service("oauth-openshift")["spec"]["ports"] = json!([{"port": 7443}, {"port": 8443}]);
    world.service("konnectivity-server")["spec"]["clusterIP"] = json!("fd02::10");
    let mapped = summary(&world.map());
    assert_eq!(mapped[2].2, ["172.16.0.8:6443"]);
    assert_eq!(mapped[4].2, ["172.17.0.8:7443"]);
    assert_eq!(mapped[1].2, ["[fd02::10]:8091"]);
}

#[test]
fn only_the_shared_ingress_routes_are_served() {
    let mut world = World::alpha();
    world.routes.push(fixtures::route(
        HCP,
        "kube-apiserver-internal",
        "api.alpha.hypershift.local",
        "kube-apiserver",
    ));
    world.routes.push(fixtures::route(
        HCP,
        "oauth-internal",
        "oauth.alpha.hypershift.local",
        "oauth-openshift",
    ));
    let mapped = world.map();
    assert_eq!(mapped.routes.len(), 5);
    assert!(mapped.rejections.is_empty());
    assert!(!summary(&mapped)
        .iter()
        .any(|r| r.1.iter().any(|h| h.ends_with("hypershift.local"))));
}

#[test]
fn a_minimal_spec_still_maps() {
    let hc: HostedCluster = serde_json::from_value(json!({
        "metadata": {"name": "bare", "namespace": NS},
        "spec": {"platform": {"type": "Azure"}}
    }))
    .unwrap();
    let route: Watched<OcpRoute> = parse(json!({
        "metadata": {"name": "kube-apiserver", "namespace": "clusters-bare"},
        "spec": {"host": "api.bare.example.test", "to": {"name": "kube-apiserver"}}
    }));
    let svc: Watched<Service> = parse(json!({
        "metadata": {"name": "kube-apiserver", "namespace": "clusters-bare"},
        "spec": {"clusterIP": "10.1.2.3", "ports": [{"port": 6443}]}
    }));
    let mapped = map_cluster(&hc, [&route], |n| (n == "kube-apiserver").then_some(&svc));
    assert_eq!(
        summary(&mapped),
        [(
            s("clusters/bare/kube-apiserver"),
            vec![s("api.bare.example.test")],
            vec![s("10.1.2.3:6443")],
            None
        )]
    );
}

/// Maps `world` with `slices` (EndpointSlices of its control plane namespace) and `zone`.
fn map_to(world: &World, slices: &[Value], zone: Option<&str>) -> Mapped {
    let hc: HostedCluster = serde_json::from_value(world.hc.clone()).unwrap();
    let routes: Vec<Watched<OcpRoute>> = world.routes.iter().cloned().map(parse).collect();
    let services: HashMap<String, Watched<Service>> = world
        .services
        .iter()
        .cloned()
        .map(|s| (s["metadata"]["name"].as_str().unwrap().to_owned(), parse(s)))
        .collect();
    let slices: Vec<EndpointSlice> = slices
        .iter()
        .map(|s| serde_json::from_value(s.clone()).unwrap())
        .collect();
    let of = |service: &str| -> Vec<&EndpointSlice> {
        slices
            .iter()
            .filter(|s| s.service_name() == Some(service))
            .collect()
    };
    let endpoints = Endpoints {
        slices: Some(&of),
        zone,
    };
    map_cluster_to(&hc, &routes, |name| services.get(name), endpoints)
}

fn kas(mapped: &Mapped) -> &RouteSpec {
    mapped
        .routes
        .iter()
        .find(|r| r.name.ends_with("/kube-apiserver"))
        .unwrap()
}

#[test]
fn a_service_routes_to_its_serving_endpoints_on_the_named_port() {
    use crate::kube::fixtures::endpoint_slice;
    let mut world = World::alpha();
    world.service("kube-apiserver")["spec"]["ports"] = json!([
        {"name": "metrics", "port": 2040, "targetPort": 2040},
        {"name": "client", "port": 6443, "targetPort": "client"},
    ]);
    let v4 = endpoint_slice(
        HCP,
        "kube-apiserver-v4",
        "kube-apiserver",
        Some("client"),
        6444,
        &[
            ("10.128.0.3", "z2", true, true, false),
            ("10.128.0.1", "z1", true, true, false),
            ("10.128.0.2", "z1", false, true, true),
            ("10.128.0.4", "z1", false, false, false),
            ("10.128.0.5", "z1", false, false, true),
        ],
    );
    let mut metrics = endpoint_slice(
        HCP,
        "kube-apiserver-metrics",
        "kube-apiserver",
        Some("metrics"),
        2041,
        &[("10.128.0.9", "z1", true, true, false)],
    );
    metrics["metadata"]["resourceVersion"] = json!("2");
    let v6 = endpoint_slice(
        HCP,
        "kube-apiserver-v6",
        "kube-apiserver",
        Some("client"),
        6444,
        &[("fd00::1", "", true, true, false)],
    );
    let mapped = map_to(&world, &[v4, metrics, v6], Some("z1"));
    let route = kas(&mapped);
    let backends: Vec<String> = route.backends.iter().map(ToString::to_string).collect();
    // Not-ready and not-serving pods are left out; the metrics slice names another port.
    assert_eq!(
        backends,
        [
            "10.128.0.1:6444",
            "10.128.0.2:6444",
            "10.128.0.3:6444",
            "[fd00::1]:6444"
        ]
    );
    let facts: Vec<(Option<&str>, Condition)> = route
        .facts
        .iter()
        .map(|f| (f.zone.as_deref(), f.condition))
        .collect();
    assert_eq!(
        facts,
        [
            (Some("z1"), Condition::Ready),
            (Some("z1"), Condition::Terminating),
            (Some("z2"), Condition::Ready),
            (None, Condition::Ready),
        ]
    );
    assert_eq!(route.zone.as_deref(), Some("z1"));
    // The other Services have no slice: their ClusterIP, each reported once.
    assert_eq!(mapped.fallbacks.len(), 4, "{:?}", mapped.fallbacks);
    assert!(mapped
        .fallbacks
        .iter()
        .all(|f| f.reason == "no EndpointSlice" && f.service.starts_with(HCP)));
    let oauth = mapped
        .routes
        .iter()
        .find(|r| r.name.ends_with("/oauth"))
        .unwrap();
    assert!(oauth.facts.is_empty());
    assert_eq!(oauth.zone, None);
}

#[test]
fn an_unnamed_service_port_takes_the_unnamed_slice_port() {
    use crate::kube::fixtures::endpoint_slice;
    let mut world = World::alpha();
    world.service("kube-apiserver")["spec"]["ports"] = json!([{"port": 6443}]);
    let named = endpoint_slice(
        HCP,
        "a",
        "kube-apiserver",
        Some("client"),
        1111,
        &[("10.128.0.1", "z1", true, true, false)],
    );
    let unnamed = endpoint_slice(
        HCP,
        "b",
        "kube-apiserver",
        None,
        2222,
        &[("10.128.0.2", "z1", true, true, false)],
    );
    let mapped = map_to(&world, &[named, unnamed], None);
    let backends: Vec<String> = kas(&mapped)
        .backends
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(backends, ["10.128.0.2:2222"]);
}

#[test]
fn a_service_without_serving_endpoints_falls_back_to_its_cluster_ip() {
    use crate::kube::fixtures::endpoint_slice;
    let world = World::alpha();
    let clusterip = map_cluster_to_clusterip(&world);
    let none_serving = endpoint_slice(
        HCP,
        "a",
        "kube-apiserver",
        Some("https"),
        6444,
        &[("10.128.0.1", "z1", false, false, false)],
    );
    let mapped = map_to(&world, &[none_serving], None);
    assert_eq!(kas(&mapped), &clusterip);
    assert!(mapped.fallbacks.contains(&Fallback {
        service: format!("{HCP}/kube-apiserver"),
        reason: "no serving endpoint",
    }));
    let mapped = map_to(&world, &[], None);
    assert_eq!(kas(&mapped), &clusterip);
}

fn map_cluster_to_clusterip(world: &World) -> RouteSpec {
    kas(&world.map()).clone()
}
