//! The few fields of HostedCluster, Route and Service that routing needs, as serde reads them.
//!
//! Each type reads only what the mapping uses and ignores the rest, so objects from newer API
//! versions still parse. Every field is optional or defaulted: a missing field is a routing
//! decision for the mapping (skip, reject), never a parse failure. Objects whose fields have
//! the wrong type fail to parse one by one (the watch wraps them in `DeserializeGuard`).

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use serde::Deserialize;

/// The label HyperShift puts on the Routes the shared ingress serves.
pub const HCP_ROUTE_LABEL: &str = "hypershift.openshift.io/hosted-control-plane";

/// Implements [`kube::Resource`] for a namespaced type with a `metadata` field.
macro_rules! resource {
    ($ty:ty, $kind:literal, $group:literal, $version:literal, $plural:literal) => {
        impl ::kube::Resource for $ty {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }

            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($group)
            }

            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($version)
            }

            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }

            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

// === HostedCluster (hypershift.openshift.io/v1beta1) ===

/// A HyperShift HostedCluster: one hosted control plane.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HostedCluster {
    /// Name, namespace, deletion timestamp.
    #[serde(default)]
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
pub struct Route {
    /// Name, namespace, labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What routing reads of the spec.
    #[serde(default)]
    pub spec: Option<RouteSpec>,
}

resource!(Route, "Route", "route.openshift.io", "v1", "routes");

/// `spec` of a Route.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RouteSpec {
    /// `spec.host`: the SNI name.
    pub host: Option<String>,
    /// `spec.to`: the Service it points at.
    pub to: Option<RouteTarget>,
}

/// `spec.to` of a Route.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RouteTarget {
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
    #[serde(default)]
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

#[cfg(test)]
mod tests {
    use ::kube::core::DeserializeGuard;
    use ::kube::Resource;
    use serde_json::json;

    use super::*;

    #[test]
    fn resources_name_their_api() {
        assert_eq!(
            HostedCluster::url_path(&(), None),
            "/apis/hypershift.openshift.io/v1beta1/hostedclusters"
        );
        assert_eq!(
            Route::url_path(&(), Some("ns")),
            "/apis/route.openshift.io/v1/namespaces/ns/routes"
        );
        assert_eq!(Service::url_path(&(), None), "/api/v1/services");
    }

    #[test]
    fn a_bad_field_fails_only_its_object_and_keeps_its_name() {
        let bad: DeserializeGuard<HostedCluster> = serde_json::from_value(json!({
            "metadata": {"name": "x", "namespace": "clusters"},
            "spec": {"networking": {"apiServer": {"allowedCIDRBlocks": "10.0.0.0/8"}}},
        }))
        .unwrap();
        assert_eq!(bad.meta().name.as_deref(), Some("x"));
        assert!(bad.0.is_err());
        let good: DeserializeGuard<Service> = serde_json::from_value(json!({
            "metadata": {"name": "kube-apiserver", "namespace": "clusters-x"},
            "spec": {"clusterIP": "172.30.0.10", "ports": [{"name": "client", "port": 6443,
                     "targetPort": "client", "protocol": "TCP"}], "type": "ClusterIP"},
            "status": {"loadBalancer": {}},
        }))
        .unwrap();
        let svc = good.0.unwrap();
        assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, Some(6443));
    }
}
