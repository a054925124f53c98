//! What sniroute creates for a Gateway: one Service, in sniroute's own namespace, selecting
//! the sniroute pods (issue 23 point 4; GEP-1762's in-cluster deployment, with one shared
//! Deployment instead of one per Gateway).
//!
//! Each of a Gateway's listener ports is a port of its Service whose `targetPort` is a pod
//! port of its own, from `kubernetes.gateway_api.listener_ports`: every replica binds the
//! target ports of every Gateway's Service and serves on each only the routes attached to that
//! Gateway's listeners on that port. So each Gateway has its own address (the Service's
//! ClusterIP, or its load balancer's), and a route is never served on another Gateway's.
//!
//! The Services are the allocation's source of truth: every replica reads them back
//! ([`allocations`]) and binds what they say, so replicas agree, and a restart or a new
//! leader keeps every Gateway's ports. Only the Lease holder writes them ([`plan`]): a port
//! the Service has keeps its target; a new one takes the lowest target no Service of ours
//! uses; a Gateway gone (or no longer sniroute's, or not accepted) has its Service deleted.
//! `spec.infrastructure.labels` and `annotations` (GEP-1867) go onto the Service, under
//! sniroute's own, which win a clash. The Service carries GEP-1762's
//! `gateway.networking.k8s.io/gateway-name` label (when the name fits a label value) and the
//! Gateway's `namespace/name` in the annotation [`GATEWAY_ANNOTATION`], which is what says
//! whose it is.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::{json, Value};

use super::objects::{GatewayAddress, Key};
use crate::kube::objects::resource;

/// The label every Service of ours carries, and the watch selects by.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "sniroute-gateway";
/// The label selector of the watch of our Services.
pub const SELECTOR: &str = "app.kubernetes.io/managed-by=sniroute-gateway";
/// The annotation naming the Gateway (`namespace/name`) a Service is for.
pub const GATEWAY_ANNOTATION: &str = "sniroute.dev/gateway";
/// A hash of what sniroute last applied, so an unchanged Service is not written again.
pub const APPLIED_ANNOTATION: &str = "sniroute.dev/applied";
/// GEP-1762's label naming the Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The label of the sniroute pods (deploy/base) that every Service selects.
pub const POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "sniroute");
/// The field manager the Services are applied with.
pub const FIELD_MANAGER: &str = "sniroute-gateway-services";

/// A Service of ours, as read back: who it is for, its ports and its addresses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GatewayService {
    /// Name, namespace, labels, annotations.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Its type, ClusterIP and ports.
    #[serde(default)]
    pub spec: Option<GatewayServiceSpec>,
    /// The load balancer's addresses, once it has some.
    #[serde(default)]
    pub status: Option<GatewayServiceStatus>,
}

resource!(GatewayService, "Service", "", "v1", "services");

/// `spec` of one of our Services.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayServiceSpec {
    /// `clusterIP`.
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// `ports`.
    pub ports: Option<Vec<GatewayServicePort>>,
}

/// One of `spec.ports`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayServicePort {
    /// The Gateway listener's port.
    pub port: Option<i32>,
    /// The pod port sniroute serves it on (always a number in ours).
    pub target_port: Option<Value>,
}

/// `status` of one of our Services.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayServiceStatus {
    /// `loadBalancer`.
    pub load_balancer: Option<LoadBalancerStatus>,
}

/// `status.loadBalancer`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LoadBalancerStatus {
    /// `ingress`.
    pub ingress: Option<Vec<LoadBalancerIngress>>,
}

/// One of `status.loadBalancer.ingress`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LoadBalancerIngress {
    /// `ip`.
    pub ip: Option<String>,
    /// `hostname`.
    pub hostname: Option<String>,
}

/// What one Gateway's Service gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    /// The Service's name (in sniroute's namespace).
    pub service: String,
    /// Each listener port's target port.
    pub ports: BTreeMap<i32, u16>,
    /// What the Gateway reports in `status.addresses`: the load balancer's ingress, else the
    /// ClusterIP; empty until the Service has one.
    pub addresses: Vec<GatewayAddress>,
}

/// What one Gateway wants of its Service (decided by [`super::graph::build`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// The ports of its listeners that are served.
    pub ports: BTreeSet<i32>,
    /// `spec.infrastructure.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.infrastructure.annotations`.
    pub annotations: BTreeMap<String, String>,
}

/// How the Services are made: `kubernetes.gateway_api` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSettings {
    /// sniroute's namespace, where the Services live (Services select pods of their own
    /// namespace only).
    pub namespace: String,
    /// `listener_ports`: the target ports to allocate from.
    pub ports: RangeInclusive<u16>,
    /// `service_type`: `LoadBalancer` or `ClusterIP`.
    pub service_type: String,
}

/// The Service's name for a Gateway: `sniroute-`, as much of the Gateway's name as fits, and
/// a hash of its `namespace/name` (two Gateways of one name in two namespaces, or names cut
/// short, still differ). A DNS-1035 label, as Service names must be.
pub fn service_name(gateway: &Key) -> String {
    let hash = fixed_hash(&gateway.to_string()) & 0xffff_ffff;
    let mut stem: String = gateway
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    while stem.ends_with('-') {
        stem.pop();
    }
    format!("sniroute-{stem}-{hash:08x}")
}

/// FNV-1a, 64 bits: written out so it is the same on every replica and every release (a
/// Service's name, hence its Gateway's address, must not move with a toolchain's hasher).
fn fixed_hash(value: &str) -> u64 {
    value.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Each Gateway's allocation, from our Services as they are: whose each is (the annotation),
/// its listener ports' targets and its addresses. A target claimed twice (never written so,
/// but a Service can be edited) stays with the Service first by name.
pub fn allocations(services: &BTreeMap<String, GatewayService>) -> BTreeMap<Key, Allocation> {
    let mut claimed = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (name, service) in services {
        let Some(gateway) = owner(service) else {
            continue;
        };
        // A Service not named for its Gateway is not ours to read (a copy, say).
        if *name != service_name(&gateway) {
            continue;
        }
        let spec = service.spec.clone().unwrap_or_default();
        let ports = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| {
                let target = p.target_port.as_ref()?.as_u64()?;
                Some((p.port?, u16::try_from(target).ok()?))
            })
            .filter(|(_, target)| claimed.insert(*target))
            .collect();
        let mut addresses: Vec<GatewayAddress> = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_deref())
            .unwrap_or_default()
            .iter()
            .filter_map(|ingress| match (&ingress.ip, &ingress.hostname) {
                (Some(ip), _) if !ip.is_empty() => Some(address("IPAddress", ip)),
                (_, Some(host)) if !host.is_empty() => Some(address("Hostname", host)),
                _ => None,
            })
            .collect();
        if addresses.is_empty() {
            addresses.extend(
                spec.cluster_ip
                    .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
                    .map(|ip| address("IPAddress", &ip)),
            );
        }
        out.insert(
            gateway,
            Allocation {
                service: name.clone(),
                ports,
                addresses,
            },
        );
    }
    out
}

fn address(kind: &str, value: &str) -> GatewayAddress {
    GatewayAddress {
        kind: Some(kind.to_owned()),
        value: Some(value.to_owned()),
    }
}

/// The Gateway a Service of ours is for.
fn owner(service: &GatewayService) -> Option<Key> {
    let annotations = service.metadata.annotations.as_ref()?;
    let (namespace, name) = annotations.get(GATEWAY_ANNOTATION)?.split_once('/')?;
    Some(Key::new(namespace, name))
}

/// What the Lease holder does to our Services.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Services to apply (server-side): name and body; only those that differ.
    pub apply: Vec<(String, Value)>,
    /// Services to delete, by name.
    pub delete: Vec<String>,
    /// Listener ports left without a target: the range is used up.
    pub exhausted: Vec<(Key, i32)>,
}

/// What to write so that every Gateway of `wanted` has its Service with a target for each
/// port, and no other Service of ours is left. Targets kept where the Service has them; new
/// ones the lowest free in the range (not one a Service being deleted still has: those are
/// free at the next change, once their listeners are unbound).
pub fn plan(
    wanted: &BTreeMap<Key, Wanted>,
    services: &BTreeMap<String, GatewayService>,
    settings: &ServiceSettings,
) -> Plan {
    let current = allocations(services);
    let mut plan = Plan::default();
    let mut used: BTreeSet<u16> = current
        .values()
        .flat_map(|a| a.ports.values().copied())
        .collect();
    let by_name: BTreeMap<String, &Key> = wanted.keys().map(|k| (service_name(k), k)).collect();
    for name in services.keys() {
        if !by_name.contains_key(name) {
            plan.delete.push(name.clone());
        }
    }
    // Kept targets first, over every Gateway, so no new port takes one a later Gateway keeps.
    let mut targets: BTreeMap<&Key, BTreeMap<i32, u16>> = BTreeMap::new();
    for (gateway, want) in wanted {
        let have = current.get(gateway);
        let kept = want
            .ports
            .iter()
            .filter_map(|port| {
                let target = *have?.ports.get(port)?;
                settings.ports.contains(&target).then_some((*port, target))
            })
            .collect();
        targets.insert(gateway, kept);
    }
    for (gateway, want) in wanted {
        let ports = targets.entry(gateway).or_default();
        for port in &want.ports {
            if ports.contains_key(port) {
                continue;
            }
            match settings.ports.clone().find(|t| !used.contains(t)) {
                Some(target) => {
                    used.insert(target);
                    ports.insert(*port, target);
                }
                None => plan.exhausted.push((gateway.clone(), *port)),
            }
        }
    }
    for (gateway, want) in wanted {
        let name = service_name(gateway);
        let mut body = body(gateway, &name, want, &targets[gateway], settings);
        let applied = format!("{:016x}", fixed_hash(&body.to_string()));
        body["metadata"]["annotations"][APPLIED_ANNOTATION] = json!(applied);
        let same = services
            .get(&name)
            .and_then(|s| s.metadata.annotations.as_ref())
            .and_then(|a| a.get(APPLIED_ANNOTATION))
            .is_some_and(|have| *have == applied);
        if !same {
            plan.apply.push((name, body));
        }
    }
    plan
}

/// The Service for `gateway`, as applied.
fn body(
    gateway: &Key,
    name: &str,
    want: &Wanted,
    targets: &BTreeMap<i32, u16>,
    settings: &ServiceSettings,
) -> Value {
    let mut labels = want.labels.clone();
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
    // A label value is at most 63 characters: a longer name is in the annotation only.
    if gateway.name.len() <= 63 {
        labels.insert(GATEWAY_NAME_LABEL.to_owned(), gateway.name.clone());
    } else {
        labels.remove(GATEWAY_NAME_LABEL);
    }
    let mut annotations = want.annotations.clone();
    annotations.insert(GATEWAY_ANNOTATION.to_owned(), gateway.to_string());
    annotations.remove(APPLIED_ANNOTATION);
    let ports: Vec<Value> = targets
        .iter()
        .map(|(port, target)| {
            json!({"name": format!("tls-{port}"), "protocol": "TCP", "port": port,
                   "targetPort": target})
        })
        .collect();
    let mut spec = json!({
        "type": settings.service_type,
        "selector": {POD_LABEL.0: POD_LABEL.1},
        "ports": ports,
    });
    if settings.service_type == "LoadBalancer" {
        // As deploy/base's Service: the pods see the clients' own addresses.
        spec["externalTrafficPolicy"] = json!("Local");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ServiceSettings {
        ServiceSettings {
            namespace: "sniroute".into(),
            ports: 20000..=20002,
            service_type: "ClusterIP".into(),
        }
    }

    fn want(ports: &[i32]) -> Wanted {
        Wanted {
            ports: ports.iter().copied().collect(),
            ..Wanted::default()
        }
    }

    /// The Service `plan` would leave for `body`, as the API server gives it back.
    fn stored(body: &Value, cluster_ip: &str) -> GatewayService {
        let mut body = body.clone();
        body["spec"]["clusterIP"] = json!(cluster_ip);
        serde_json::from_value(body).unwrap()
    }

    fn apply(plan: &Plan, services: &mut BTreeMap<String, GatewayService>, ip: &str) {
        for (name, body) in &plan.apply {
            services.insert(name.clone(), stored(body, ip));
        }
        for name in &plan.delete {
            services.remove(name);
        }
    }

    #[test]
    fn names_are_dns_labels_that_tell_namespaces_apart() {
        // Fixed forever: a Gateway's Service (and address) must survive an upgrade.
        assert_eq!(fixed_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fixed_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            service_name(&Key::new("infra", "edge")),
            format!(
                "sniroute-edge-{:08x}",
                fixed_hash("infra/edge") & 0xffff_ffff
            )
        );
        let a = service_name(&Key::new("a", "gateway.example"));
        let b = service_name(&Key::new("b", "gateway.example"));
        assert!(a.starts_with("sniroute-gateway-example-"), "{a}");
        assert_ne!(a, b);
        let long = service_name(&Key::new("ns", "x".repeat(253)));
        assert!(long.len() <= 63, "{long}");
        assert!(long
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    }

    #[test]
    fn targets_are_allocated_once_kept_across_changes_and_freed_by_deletion() {
        let (g1, g2, g3) = (
            Key::new("n", "g1"),
            Key::new("n", "g2"),
            Key::new("n", "g3"),
        );
        let mut services = BTreeMap::new();
        let mut wanted =
            BTreeMap::from([(g1.clone(), want(&[443, 8443])), (g2.clone(), want(&[443]))]);
        let first = plan(&wanted, &services, &settings());
        assert_eq!(first.apply.len(), 2);
        apply(&first, &mut services, "198.19.0.1");
        let got = allocations(&services);
        assert_eq!(
            got[&g1].ports,
            BTreeMap::from([(443, 20000), (8443, 20001)])
        );
        assert_eq!(got[&g2].ports, BTreeMap::from([(443, 20002)]));
        assert_eq!(got[&g1].addresses, [address("IPAddress", "198.19.0.1")]);
        // Nothing changed: nothing written (a restart or a new leader reads the same).
        assert_eq!(plan(&wanted, &services, &settings()), Plan::default());
        // The range is used up: g3 waits, and nothing else moves.
        wanted.insert(g3.clone(), want(&[443]));
        let full = plan(&wanted, &services, &settings());
        assert_eq!(full.exhausted, [(g3.clone(), 443)]);
        apply(&full, &mut services, "198.19.0.3");
        assert!(allocations(&services)[&g3].ports.is_empty());
        // g1 goes: its Service is deleted; its targets go to g3 only at the next change.
        wanted.remove(&g1);
        let gone = plan(&wanted, &services, &settings());
        assert_eq!(gone.delete, [service_name(&g1)]);
        assert_eq!(gone.exhausted, [(g3.clone(), 443)]);
        apply(&gone, &mut services, "198.19.0.3");
        let next = plan(&wanted, &services, &settings());
        apply(&next, &mut services, "198.19.0.3");
        let got = allocations(&services);
        assert_eq!(got[&g3].ports, BTreeMap::from([(443, 20000)]));
        assert_eq!(got[&g2].ports, BTreeMap::from([(443, 20002)]), "untouched");
    }

    #[test]
    fn infrastructure_labels_and_annotations_go_onto_the_service_under_ours() {
        let gateway = Key::new("tenants", "edge");
        let wanted = BTreeMap::from([(
            gateway.clone(),
            Wanted {
                ports: [443].into(),
                labels: BTreeMap::from([
                    ("team".into(), "a".into()),
                    (MANAGED_BY_LABEL.into(), "someone".into()),
                ]),
                annotations: BTreeMap::from([(
                    "service.beta.kubernetes.io/azure-load-balancer-internal".into(),
                    "true".into(),
                )]),
            },
        )]);
        let plan = plan(&wanted, &BTreeMap::new(), &settings());
        let (name, body) = &plan.apply[0];
        assert_eq!(*name, service_name(&gateway));
        let meta = &body["metadata"];
        assert_eq!(meta["namespace"], "sniroute");
        assert_eq!(meta["labels"]["team"], "a");
        assert_eq!(meta["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(meta["labels"][GATEWAY_NAME_LABEL], "edge");
        assert_eq!(meta["annotations"][GATEWAY_ANNOTATION], "tenants/edge");
        assert_eq!(
            meta["annotations"]["service.beta.kubernetes.io/azure-load-balancer-internal"],
            "true"
        );
        assert_eq!(
            body["spec"]["ports"],
            json!([{"name": "tls-443", "protocol": "TCP", "port": 443, "targetPort": 20000}])
        );
        assert_eq!(
            body["spec"]["selector"],
            json!({"app.kubernetes.io/name": "sniroute"})
        );
    }

    #[test]
    fn load_balancer_ingress_is_the_address_when_there_is_one() {
        let gateway = Key::new("n", "g");
        let mut service: GatewayService = serde_json::from_value(json!({
            "metadata": {"name": service_name(&gateway),
                         "annotations": {GATEWAY_ANNOTATION: "n/g"}},
            "spec": {"clusterIP": "198.19.0.9", "ports": [{"port": 443, "targetPort": 20000}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.18.5.5"}, {"hostname": "lb.example"}]}},
        }))
        .unwrap();
        let services = BTreeMap::from([(service_name(&gateway), service.clone())]);
        assert_eq!(
            allocations(&services)[&gateway].addresses,
            [
                address("IPAddress", "198.18.5.5"),
                address("Hostname", "lb.example")
            ]
        );
        service.status = None;
        // Another Service claiming the Gateway under another name is not read.
        let services = BTreeMap::from([("copy".to_owned(), service)]);
        assert!(allocations(&services).is_empty());
    }
}
