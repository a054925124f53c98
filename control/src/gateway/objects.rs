//! The fields of the Gateway API objects (standard channel v1.6.1, `tests/crds/gateway-api/`)
//! that sniroute reads, as serde reads them.
//!
//! Hand-written, not kube-rs's `gateway-api` crate: its 0.22.0 (the newest) has TLSRoute v1
//! but is generated from Gateway API v1.5.1 and builds on kube 4 / k8s-openapi 0.28, while
//! sniroute is on kube 5 / k8s-openapi 0.29, so its types would implement the other kube's
//! `Resource` and need a second copy of both crates (and schemars, regex-lite) in the build.
//! Generated types (kopium) would carry every field of six CRDs for the dozen read here.
//!
//! As in [`crate::kube::objects`], every field is optional: a missing one is a decision for
//! the mapping (an unaccepted listener, an unresolved reference), never a parse failure, and
//! the fields of newer versions are ignored. Of `metadata`, name, namespace, generation,
//! resourceVersion, creationTimestamp, deletionTimestamp and labels are kept (labels matter
//! only for Namespaces, which `allowedRoutes.namespaces.selector` selects by).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::ClusterResourceScope;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;

use crate::kube::objects::resource;

/// A namespaced object's `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl Key {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The API group of every Gateway API kind.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// Reads what the Gateway mapping uses of `metadata`, skipping the rest (managedFields,
/// annotations) without keeping it.
fn gateway_metadata<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Slim {
        name: Option<String>,
        namespace: Option<String>,
        generation: Option<i64>,
        resource_version: Option<String>,
        creation_timestamp: Option<Time>,
        deletion_timestamp: Option<Time>,
        labels: Option<BTreeMap<String, String>>,
    }
    let slim = Option::<Slim>::deserialize(deserializer)?;
    Ok(slim.map_or_else(ObjectMeta::default, |slim| ObjectMeta {
        name: slim.name,
        namespace: slim.namespace,
        generation: slim.generation,
        resource_version: slim.resource_version,
        creation_timestamp: slim.creation_timestamp,
        deletion_timestamp: slim.deletion_timestamp,
        labels: slim.labels,
        ..ObjectMeta::default()
    }))
}

// === GatewayClass ===

/// A GatewayClass: which controller implements the Gateways of this class.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GatewayClass {
    /// Name, generation.
    #[serde(default, deserialize_with = "gateway_metadata")]
    pub metadata: ObjectMeta,
    /// What the mapping reads of the spec.
    #[serde(default)]
    pub spec: Option<GatewayClassSpec>,
    /// The status as last written (its conditions' transition times are kept).
    #[serde(default)]
    pub status: Option<ConditionsStatus>,
}

resource!(
    GatewayClass,
    "GatewayClass",
    "gateway.networking.k8s.io",
    "v1",
    "gatewayclasses",
    ClusterResourceScope
);

/// `spec` of a GatewayClass.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    /// `controllerName`: sniroute's is `kubernetes.gateway_api.controller_name`.
    pub controller_name: Option<String>,
}

/// A `status` that is a list of conditions (GatewayClass).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConditionsStatus {
    /// `conditions`.
    #[serde(default)]
    pub conditions: Option<Vec<StatusCondition>>,
}

/// One condition as written, read back for its `lastTransitionTime`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatusCondition {
    /// `type`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `True`, `False` or `Unknown`.
    pub status: Option<String>,
    /// `reason`.
    pub reason: Option<String>,
    /// `message`.
    pub message: Option<String>,
    /// `observedGeneration`.
    pub observed_generation: Option<i64>,
    /// `lastTransitionTime`.
    pub last_transition_time: Option<Time>,
}

// === Gateway ===

/// A Gateway: listeners (port, protocol, hostname) that routes attach to.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Gateway {
    /// Name, namespace, generation.
    #[serde(default, deserialize_with = "gateway_metadata")]
    pub metadata: ObjectMeta,
    /// What the mapping reads of the spec.
    #[serde(default)]
    pub spec: Option<GatewaySpec>,
    /// The status as last written.
    #[serde(default)]
    pub status: Option<GatewayStatusRead>,
}

resource!(
    Gateway,
    "Gateway",
    "gateway.networking.k8s.io",
    "v1",
    "gateways"
);

/// `spec` of a Gateway.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// `gatewayClassName`.
    pub gateway_class_name: Option<String>,
    /// `listeners`.
    pub listeners: Option<Vec<Listener>>,
    /// `addresses`: the addresses asked for.
    pub addresses: Option<Vec<GatewayAddress>>,
    /// `infrastructure`: the labels and annotations for what sniroute creates for the
    /// Gateway, and `parametersRef` (sniroute takes no parameters).
    pub infrastructure: Option<GatewayInfrastructure>,
}

/// `spec.infrastructure` of a Gateway (GEP-1867).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayInfrastructure {
    /// `labels`: for every object created for this Gateway (its Service).
    pub labels: Option<BTreeMap<String, String>>,
    /// `annotations`: likewise (a cloud load balancer's settings, say).
    pub annotations: Option<BTreeMap<String, String>>,
    /// `parametersRef`: implementation-specific parameters for this Gateway.
    pub parameters_ref: Option<LocalParametersReference>,
}

/// `spec.infrastructure.parametersRef`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LocalParametersReference {
    /// `group`.
    pub group: Option<String>,
    /// `kind`.
    pub kind: Option<String>,
    /// `name`.
    pub name: Option<String>,
}

/// One of `spec.addresses` or `status.addresses`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct GatewayAddress {
    /// `IPAddress` (the default), `Hostname` or an implementation's own.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The address.
    pub value: Option<String>,
}

/// One of `spec.listeners` of a Gateway.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// `name`, unique in the Gateway.
    pub name: Option<String>,
    /// `hostname`: exact or `*.suffix`; unset matches every name.
    pub hostname: Option<String>,
    /// `port`.
    pub port: Option<i32>,
    /// `protocol`: `TLS` is the one sniroute serves.
    pub protocol: Option<String>,
    /// `tls`.
    pub tls: Option<ListenerTls>,
    /// `allowedRoutes`.
    pub allowed_routes: Option<AllowedRoutes>,
}

/// `tls` of a listener.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListenerTls {
    /// `Terminate` (the API's default) or `Passthrough`.
    pub mode: Option<String>,
}

/// `allowedRoutes` of a listener.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AllowedRoutes {
    /// `namespaces`.
    pub namespaces: Option<RouteNamespaces>,
    /// `kinds`: unset is every kind the listener's protocol supports.
    pub kinds: Option<Vec<RouteGroupKind>>,
}

/// `allowedRoutes.namespaces` of a listener.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RouteNamespaces {
    /// `Same` (the default), `All` or `Selector`.
    pub from: Option<String>,
    /// With `Selector`: the labels of the namespaces allowed.
    pub selector: Option<LabelSelector>,
}

/// One of `allowedRoutes.kinds`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct RouteGroupKind {
    /// `group`: unset is `gateway.networking.k8s.io`.
    pub group: Option<String>,
    /// `kind`.
    pub kind: Option<String>,
}

/// `status` of a Gateway as last written.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GatewayStatusRead {
    /// `addresses`.
    #[serde(default)]
    pub addresses: Option<Vec<GatewayAddress>>,
    /// `conditions`.
    #[serde(default)]
    pub conditions: Option<Vec<StatusCondition>>,
    /// `listeners`.
    #[serde(default)]
    pub listeners: Option<Vec<ListenerStatusRead>>,
}

/// One of `status.listeners` as last written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatusRead {
    /// `name`.
    pub name: Option<String>,
    /// `supportedKinds`.
    #[serde(default)]
    pub supported_kinds: Option<Vec<RouteGroupKind>>,
    /// `attachedRoutes`.
    pub attached_routes: Option<i32>,
    /// `conditions`.
    #[serde(default)]
    pub conditions: Option<Vec<StatusCondition>>,
}

// === TLSRoute ===

/// A TLSRoute (v1): SNI hostnames attached to Gateway listeners, forwarded to Services.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TlsRoute {
    /// Name, namespace, generation, creation time (the oldest wins a conflict).
    #[serde(default, deserialize_with = "gateway_metadata")]
    pub metadata: ObjectMeta,
    /// What the mapping reads of the spec.
    #[serde(default)]
    pub spec: Option<TlsRouteSpec>,
    /// The status as last written; entries of other controllers are written back as read.
    #[serde(default)]
    pub status: Option<TlsRouteStatusRead>,
}

resource!(
    TlsRoute,
    "TLSRoute",
    "gateway.networking.k8s.io",
    "v1",
    "tlsroutes"
);

/// `spec` of a TLSRoute.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRouteSpec {
    /// `parentRefs`.
    pub parent_refs: Option<Vec<ParentRef>>,
    /// `hostnames` (one to 1024 in v1).
    pub hostnames: Option<Vec<String>>,
    /// `rules` (exactly one in v1).
    pub rules: Option<Vec<TlsRouteRule>>,
}

/// One of `parentRefs`: a Gateway, or one listener of it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// `group`: unset is `gateway.networking.k8s.io`.
    pub group: Option<String>,
    /// `kind`: unset is `Gateway`.
    pub kind: Option<String>,
    /// `namespace`: unset is the route's.
    pub namespace: Option<String>,
    /// `name`.
    pub name: Option<String>,
    /// `sectionName`: a listener's name.
    pub section_name: Option<String>,
    /// `port`: a listener's port.
    pub port: Option<i32>,
}

/// One of `rules` of a TLSRoute.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRouteRule {
    /// `backendRefs`.
    pub backend_refs: Option<Vec<BackendRef>>,
}

/// One of `backendRefs`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct BackendRef {
    /// `group`: unset or empty is the core group.
    pub group: Option<String>,
    /// `kind`: unset is `Service`.
    pub kind: Option<String>,
    /// `name`.
    pub name: Option<String>,
    /// `namespace`: unset is the route's; another needs a ReferenceGrant.
    pub namespace: Option<String>,
    /// `port`: the Service port (required for Services).
    pub port: Option<i32>,
    /// `weight`: unset is 1; 0 sends it nothing.
    pub weight: Option<i32>,
}

/// `status` of a TLSRoute as last written.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TlsRouteStatusRead {
    /// `parents`, raw: the list is atomic, so other controllers' entries go back unchanged.
    #[serde(default)]
    pub parents: Option<Vec<serde_json::Value>>,
}

// === ReferenceGrant (v1beta1) ===

/// A ReferenceGrant: lets objects of other namespaces refer to objects of its own.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReferenceGrant {
    /// Name, namespace (the namespace referred to).
    #[serde(default, deserialize_with = "gateway_metadata")]
    pub metadata: ObjectMeta,
    /// `spec`.
    #[serde(default)]
    pub spec: Option<ReferenceGrantSpec>,
}

resource!(
    ReferenceGrant,
    "ReferenceGrant",
    "gateway.networking.k8s.io",
    "v1beta1",
    "referencegrants"
);

/// `spec` of a ReferenceGrant.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReferenceGrantSpec {
    /// `from`: who may refer.
    #[serde(default)]
    pub from: Option<Vec<GrantFrom>>,
    /// `to`: what they may refer to.
    #[serde(default)]
    pub to: Option<Vec<GrantTo>>,
}

/// One of `from` of a ReferenceGrant.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GrantFrom {
    /// `group`.
    pub group: Option<String>,
    /// `kind`.
    pub kind: Option<String>,
    /// `namespace`.
    pub namespace: Option<String>,
}

/// One of `to` of a ReferenceGrant.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GrantTo {
    /// `group`: empty is the core group.
    pub group: Option<String>,
    /// `kind`.
    pub kind: Option<String>,
    /// `name`: unset is every object of the kind.
    pub name: Option<String>,
}

// === Namespace ===

/// A Namespace: only its labels, which listener selectors match.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Namespace {
    /// Name and labels.
    #[serde(default, deserialize_with = "gateway_metadata")]
    pub metadata: ObjectMeta,
}

resource!(
    Namespace,
    "Namespace",
    "",
    "v1",
    "namespaces",
    ClusterResourceScope
);

#[cfg(test)]
mod tests {
    use ::kube::Resource;
    use serde_json::json;

    use super::*;

    #[test]
    fn resources_name_their_api() {
        assert_eq!(
            GatewayClass::url_path(&(), None),
            "/apis/gateway.networking.k8s.io/v1/gatewayclasses"
        );
        assert_eq!(
            Gateway::url_path(&(), Some("ns")),
            "/apis/gateway.networking.k8s.io/v1/namespaces/ns/gateways"
        );
        assert_eq!(
            TlsRoute::url_path(&(), None),
            "/apis/gateway.networking.k8s.io/v1/tlsroutes"
        );
        assert_eq!(
            ReferenceGrant::url_path(&(), None),
            "/apis/gateway.networking.k8s.io/v1beta1/referencegrants"
        );
        assert_eq!(Namespace::url_path(&(), None), "/api/v1/namespaces");
    }

    #[test]
    fn a_kamaji_tls_route_reads_what_routing_needs() {
        let route: TlsRoute = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "TLSRoute",
            "metadata": {"name": "tenant-00", "namespace": "tenants", "generation": 2,
                         "creationTimestamp": "2026-12-01T00:00:00Z",
                         "managedFields": [{"manager": "kamaji"}]},
            "spec": {
                "parentRefs": [{"name": "gateway", "namespace": "kamaji-system",
                                "sectionName": "kube-apiserver", "port": 6443}],
                "hostnames": ["tenant-00.cluster.example"],
                "rules": [{"backendRefs": [{"name": "tenant-00", "port": 6443}]}],
            },
            "status": {"parents": [{"controllerName": "other.example/c", "parentRef": {"name": "g"},
                                    "conditions": []}]},
        }))
        .unwrap();
        assert_eq!(route.metadata.generation, Some(2));
        assert!(route.metadata.creation_timestamp.is_some());
        let spec = route.spec.unwrap();
        let parent = &spec.parent_refs.unwrap()[0];
        assert_eq!(parent.section_name.as_deref(), Some("kube-apiserver"));
        assert_eq!(parent.port, Some(6443));
        let backend = &spec.rules.unwrap()[0].backend_refs.clone().unwrap()[0];
        assert_eq!(
            (backend.name.as_deref(), backend.port),
            (Some("tenant-00"), Some(6443))
        );
        assert_eq!(route.status.unwrap().parents.unwrap().len(), 1);
    }
}
