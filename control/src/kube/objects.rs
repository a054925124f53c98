//! The few fields of HostedCluster, Route and Service that routing needs, as serde reads them.
//!
//! Each type reads only what the mapping uses and ignores the rest, so objects from newer API
//! versions still parse. Every field is optional or defaulted: a missing field is a routing
//! decision for the mapping (skip, reject), never a parse failure. Objects whose fields have
//! the wrong type fail to parse one by one: the watch wraps them in [`Guarded`].
//!
//! Of `metadata`, only name, namespace, resourceVersion and deletionTimestamp are read: on a
//! management cluster the rest (managed fields, annotations) is most of every object's bytes.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The label HyperShift puts on the Routes the shared ingress serves.
pub const HCP_ROUTE_LABEL: &str = "hypershift.openshift.io/hosted-control-plane";

/// An object that parsed, or the metadata and error of one that did not, so that one bad
/// object fails alone instead of failing the whole list or watch it came in.
///
/// It does what kube's `DeserializeGuard` does, five times faster (`cargo bench --bench
/// kube_build`): the object's JSON is kept as raw text and parsed once into `K` (and a second
/// time, for its metadata only, if that fails), instead of being buffered into a value tree,
/// copied and walked again.
///
/// Raw text needs serde_json's own deserializer underneath: list items and watch events as
/// the API server writes them (`{"type": ..., "object": ...}`, the order Go's encoder gives
/// `metav1.WatchEvent`). A watch event with `object` before `type` would be buffered by
/// serde first and fail to decode (the watch reports an error for that event).
#[derive(Debug, Clone)]
pub struct Guarded<K>(pub Result<K, InvalidObject>);

/// An object that did not parse.
#[derive(Debug, Clone)]
pub struct InvalidObject {
    /// What serde said.
    pub error: String,
    /// What routing reads of its metadata.
    pub metadata: ObjectMeta,
}

impl fmt::Display for InvalidObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Guarded<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct MetadataOnly {
            #[serde(default, deserialize_with = "slim_metadata")]
            metadata: ObjectMeta,
        }
        let raw: Box<RawValue> = Deserialize::deserialize(deserializer)?;
        match serde_json::from_str::<K>(raw.get()) {
            Ok(object) => Ok(Self(Ok(object))),
            Err(error) => {
                let MetadataOnly { metadata } =
                    serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
                Ok(Self(Err(InvalidObject {
                    error: error.to_string(),
                    metadata,
                })))
            }
        }
    }
}

impl<K: ::kube::Resource<DynamicType = ()>> ::kube::Resource for Guarded<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        self.0.as_ref().map_or_else(|e| &e.metadata, K::meta)
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0
            .as_mut()
            .map_or_else(|e| &mut e.metadata, K::meta_mut)
    }
}

/// Reads `metadata`'s name, namespace, resourceVersion, deletionTimestamp and the
/// `kubernetes.io/service-name` label (which only EndpointSlices carry), skipping the rest
/// without allocating for it.
fn slim_metadata<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Slim {
        name: Option<String>,
        namespace: Option<String>,
        resource_version: Option<String>,
        deletion_timestamp: Option<Time>,
        labels: Option<Labels>,
    }
    #[derive(Deserialize)]
    struct Labels {
        #[serde(rename = "kubernetes.io/service-name")]
        service_name: Option<String>,
    }
    let slim = Option::<Slim>::deserialize(deserializer)?;
    Ok(slim.map_or_else(ObjectMeta::default, |slim| ObjectMeta {
        name: slim.name,
        namespace: slim.namespace,
        resource_version: slim.resource_version,
        deletion_timestamp: slim.deletion_timestamp,
        labels: slim
            .labels
            .and_then(|l| l.service_name)
            .map(|name| [(SERVICE_NAME_LABEL.to_owned(), name)].into()),
        ..ObjectMeta::default()
    }))
}

/// Implements [`kube::Resource`] for a type with a `metadata` field: namespaced, or of the
/// scope given last (the Gateway API's cluster-scoped kinds use it too).
macro_rules! resource {
    ($ty:ty, $kind:literal, $group:literal, $version:literal, $plural:literal) => {
        resource!(
            $ty,
            $kind,
            $group,
            $version,
            $plural,
            ::k8s_openapi::NamespaceResourceScope
        );
    };
    ($ty:ty, $kind:literal, $group:literal, $version:literal, $plural:literal, $scope:ty) => {
        impl ::kube::Resource for $ty {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> ::std::borrow::Cow<'_, str> {
                ::std::borrow::Cow::Borrowed($kind)
            }

            fn group(_: &()) -> ::std::borrow::Cow<'_, str> {
                ::std::borrow::Cow::Borrowed($group)
            }

            fn version(_: &()) -> ::std::borrow::Cow<'_, str> {
                ::std::borrow::Cow::Borrowed($version)
            }

            fn plural(_: &()) -> ::std::borrow::Cow<'_, str> {
                ::std::borrow::Cow::Borrowed($plural)
            }

            fn meta(&self) -> &::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.metadata
            }

            fn meta_mut(
                &mut self,
            ) -> &mut ::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
pub(crate) use resource;

// === HostedCluster (hypershift.openshift.io/v1beta1) ===

/// A HyperShift HostedCluster: one hosted control plane.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HostedCluster {
    /// Name, namespace, deletion timestamp.
    #[serde(default, deserialize_with = "slim_metadata")]
    pub metadata: ObjectMeta,
    /// What routing reads of the spec.
    #[serde(default)]
    pub spec: Option<HostedClusterSpec>,
}

resource!(
    HostedCluster,
    "HostedCluster",
    "hypershift.openshift.io",
    "v1beta1",
    "hostedclusters"
);

/// `spec` of a HostedCluster.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostedClusterSpec {
    /// `spec.clusterID`: names the cluster in the PROXY-v2 TLV its nodes send.
    #[serde(rename = "clusterID")]
    pub cluster_id: Option<String>,
    /// `spec.kubeAPIServerDNSName`: one more name for the kube-apiserver.
    #[serde(rename = "kubeAPIServerDNSName")]
    pub kube_api_server_dns_name: Option<String>,
    /// `spec.networking`.
    pub networking: Option<ClusterNetworking>,
    /// `spec.platform`.
    pub platform: Option<PlatformSpec>,
}

/// `spec.networking` of a HostedCluster.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworking {
    /// `spec.networking.apiServer`.
    pub api_server: Option<ApiServerNetworking>,
}

/// `spec.networking.apiServer` of a HostedCluster.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiServerNetworking {
    /// `allowedCIDRBlocks`: the client networks allowed to reach every endpoint.
    #[serde(rename = "allowedCIDRBlocks")]
    pub allowed_cidr_blocks: Option<Vec<String>>,
}

/// `spec.platform` of a HostedCluster: only what says whether the API is public.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlatformSpec {
    /// `AWS`, `Azure`, `GCP`, `KubeVirt`, `Agent`, `None`, ...
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `spec.platform.aws`.
    pub aws: Option<EndpointAccessSpec>,
    /// `spec.platform.gcp`.
    pub gcp: Option<EndpointAccessSpec>,
    /// `spec.platform.azure`.
    pub azure: Option<AzurePlatformSpec>,
}

/// `spec.platform.aws` / `spec.platform.gcp`: who can reach the API server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAccessSpec {
    /// `Public`, `PublicAndPrivate` or `Private`.
    pub endpoint_access: Option<String>,
}

/// `spec.platform.azure`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AzurePlatformSpec {
    /// `Public`, `PublicAndPrivate`, `Private`, or unset (public).
    pub topology: Option<String>,
    /// `azureAuthenticationConfig`: `ManagedIdentities` marks an ARO HCP cluster.
    pub azure_authentication_config: Option<AzureAuthenticationConfig>,
    /// `private`: how private connectivity is provided (`PrivateLink`, `Swift`).
    pub private: Option<AzurePrivateSpec>,
}

/// `spec.platform.azure.azureAuthenticationConfig`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AzureAuthenticationConfig {
    /// `ManagedIdentities` (ARO HCP) or `WorkloadIdentities` (self-managed).
    pub azure_authentication_config_type: Option<String>,
}

/// `spec.platform.azure.private`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AzurePrivateSpec {
    /// `PrivateLink` or `Swift`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

// === Route (route.openshift.io/v1) ===

/// An OpenShift Route: a hostname for a Service.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OcpRoute {
    /// Name, namespace.
    #[serde(default, deserialize_with = "slim_metadata")]
    pub metadata: ObjectMeta,
    /// What routing reads of the spec.
    #[serde(default)]
    pub spec: Option<OcpRouteSpec>,
}

resource!(OcpRoute, "Route", "route.openshift.io", "v1", "routes");

/// `spec` of a Route.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OcpRouteSpec {
    /// `spec.host`: the SNI name.
    pub host: Option<String>,
    /// `spec.to`: the Service it points at.
    pub to: Option<OcpRouteTarget>,
}

/// `spec.to` of a Route.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OcpRouteTarget {
    /// `Service` (the default and the only kind routed).
    pub kind: Option<String>,
    /// The Service's name, in the Route's namespace.
    pub name: Option<String>,
}

// === Service (v1) ===

/// A Service: where a Route's traffic goes.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Service {
    /// Name, namespace.
    #[serde(default, deserialize_with = "slim_metadata")]
    pub metadata: ObjectMeta,
    /// What routing reads of the spec.
    #[serde(default)]
    pub spec: Option<ServiceSpec>,
}

resource!(Service, "Service", "", "v1", "services");

/// `spec` of a Service.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceSpec {
    /// `spec.clusterIP`: an address, `None` (headless) or unset.
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// `spec.ports`.
    pub ports: Option<Vec<ServicePort>>,
}

/// One of `spec.ports` of a Service.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServicePort {
    /// The port's name (optional when there is one port).
    pub name: Option<String>,
    /// The port the ClusterIP listens on.
    pub port: Option<i32>,
}

// === EndpointSlice (discovery.k8s.io/v1) ===

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An EndpointSlice: some of a Service's pods, with their ports and conditions.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EndpointSlice {
    /// Name, namespace, and the `kubernetes.io/service-name` label.
    #[serde(default, deserialize_with = "slim_metadata")]
    pub metadata: ObjectMeta,
    /// `addressType`: `IPv4`, `IPv6` or `FQDN` (not routed).
    #[serde(default, rename = "addressType")]
    pub address_type: Option<String>,
    /// `endpoints`.
    #[serde(default)]
    pub endpoints: Option<Vec<Endpoint>>,
    /// `ports`: the same for every endpoint of the slice.
    #[serde(default)]
    pub ports: Option<Vec<EndpointPort>>,
}

resource!(
    EndpointSlice,
    "EndpointSlice",
    "discovery.k8s.io",
    "v1",
    "endpointslices"
);

impl EndpointSlice {
    /// The Service it belongs to, by its `kubernetes.io/service-name` label.
    pub fn service_name(&self) -> Option<&str> {
        self.metadata
            .labels
            .as_ref()?
            .get(SERVICE_NAME_LABEL)
            .map(String::as_str)
    }
}

/// One of `endpoints` of an EndpointSlice: one pod.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Endpoint {
    /// `addresses`: the pod's IPs (consumers use the first).
    #[serde(default)]
    pub addresses: Option<Vec<String>>,
    /// `conditions`.
    #[serde(default)]
    pub conditions: Option<EndpointConditions>,
    /// `zone`.
    #[serde(default)]
    pub zone: Option<String>,
}

/// `conditions` of an endpoint; unset ones mean what the API documents (see the mapping).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EndpointConditions {
    /// `ready`.
    pub ready: Option<bool>,
    /// `serving`.
    pub serving: Option<bool>,
    /// `terminating`.
    pub terminating: Option<bool>,
}

/// One of `ports` of an EndpointSlice.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EndpointPort {
    /// The Service port's name it serves (empty or unset for an unnamed port).
    pub name: Option<String>,
    /// The pod's port.
    pub port: Option<i32>,
}

#[cfg(test)]
mod tests {
    use ::kube::{Resource, ResourceExt};
    use serde_json::json;

    use super::*;

    #[test]
    fn resources_name_their_api() {
        assert_eq!(
            HostedCluster::url_path(&(), None),
            "/apis/hypershift.openshift.io/v1beta1/hostedclusters"
        );
        assert_eq!(
            OcpRoute::url_path(&(), Some("ns")),
            "/apis/route.openshift.io/v1/namespaces/ns/routes"
        );
        assert_eq!(Service::url_path(&(), None), "/api/v1/services");
        assert_eq!(
            EndpointSlice::url_path(&(), None),
            "/apis/discovery.k8s.io/v1/endpointslices"
        );
    }

    #[test]
    fn an_endpoint_slice_keeps_only_what_routing_reads() {
        let slice: Guarded<EndpointSlice> = serde_json::from_str(
            &json!({
                "metadata": {"name": "kube-apiserver-x1", "namespace": "clusters-a",
                             "labels": {"kubernetes.io/service-name": "kube-apiserver",
                                        "endpointslice.kubernetes.io/managed-by": "c"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.0.0.1"], "zone": "z1",
                               "conditions": {"ready": true, "serving": true, "terminating": false},
                               "nodeName": "n1"}],
                "ports": [{"name": "client", "port": 6443, "protocol": "TCP"}],
            })
            .to_string(),
        )
        .unwrap();
        let slice = slice.0.unwrap();
        assert_eq!(slice.service_name(), Some("kube-apiserver"));
        assert_eq!(slice.metadata.labels.as_ref().unwrap().len(), 1);
        let endpoint = &slice.endpoints.unwrap()[0];
        assert_eq!(endpoint.zone.as_deref(), Some("z1"));
        assert_eq!(endpoint.conditions.as_ref().unwrap().ready, Some(true));
        assert_eq!(slice.ports.unwrap()[0].port, Some(6443));
    }

    #[test]
    fn watch_events_decode_as_the_api_server_writes_them() {
        use ::kube::api::WatchEvent;
        let line = r#"{"type":"MODIFIED","object":{"kind":"Route","apiVersion":"route.openshift.io/v1","metadata":{"name":"oauth","namespace":"clusters-a","resourceVersion":"12"},"spec":{"host":"oauth.a.example.test","to":{"kind":"Service","name":"oauth-openshift"}}}}"#;
        let event: WatchEvent<Guarded<OcpRoute>> = serde_json::from_str(line).unwrap();
        let WatchEvent::Modified(route) = event else {
            panic!("not MODIFIED");
        };
        assert_eq!(route.resource_version().as_deref(), Some("12"));
        let spec = route.0.unwrap().spec.unwrap();
        assert_eq!(spec.host.as_deref(), Some("oauth.a.example.test"));
        let bad = r#"{"type":"ADDED","object":{"metadata":{"name":"x","namespace":"n","resourceVersion":"13"},"spec":{"host":7}}}"#;
        let event: WatchEvent<Guarded<OcpRoute>> = serde_json::from_str(bad).unwrap();
        let WatchEvent::Added(route) = event else {
            panic!("not ADDED");
        };
        assert!(route.0.is_err());
        assert_eq!(route.name_any(), "x");
    }

    #[test]
    fn a_bad_field_fails_only_its_object_and_keeps_its_name() {
        let bad: Guarded<HostedCluster> = serde_json::from_str(
            &json!({
                "metadata": {"name": "x", "namespace": "clusters", "resourceVersion": "7",
                             "managedFields": [{"manager": "m"}]},
                "spec": {"networking": {"apiServer": {"allowedCIDRBlocks": "10.0.0.0/8"}}},
            })
            .to_string(),
        )
        .unwrap();
        assert_eq!(bad.meta().resource_version.as_deref(), Some("7"));
        assert_eq!(bad.meta().name.as_deref(), Some("x"));
        assert!(bad.0.is_err());
        let good: Guarded<Service> = serde_json::from_str(
            &json!({
                "metadata": {"name": "kube-apiserver", "namespace": "clusters-x",
                             "deletionTimestamp": "2026-03-05T08:00:00Z"},
                "spec": {"clusterIP": "172.30.0.10", "ports": [{"name": "client", "port": 6443,
                         "targetPort": "client", "protocol": "TCP"}], "type": "ClusterIP"},
                "status": {"loadBalancer": {}},
            })
            .to_string(),
        )
        .unwrap();
        assert!(good.meta().deletion_timestamp.is_some());
        let svc = good.0.unwrap();
        assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, Some(6443));
    }
}
