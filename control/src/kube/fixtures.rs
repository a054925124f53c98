//! HostedCluster, Route and Service JSON shaped like what a HyperShift management cluster
//! serves (ARO HCP), for unit tests, the benchmark, the end-to-end tests' fake API server and
//! fuzzing. Not part of the routing logic.
#![doc(hidden)]

use super::objects::Guarded;
use serde_json::{json, Value};

use super::objects::{EndpointSlice, HostedCluster, OcpRoute, Service, HCP_ROUTE_LABEL};
use super::store::Object;

/// The DNS zone fixture hostnames live in.
pub const BASE_DOMAIN: &str = "hcp.example.test";

/// The served Routes of a fixture cluster: (route name, host prefix, Service name, port).
pub const ENDPOINTS: &[(&str, &str, &str, u16)] = &[
    ("kube-apiserver", "api", "kube-apiserver", 6443),
    ("oauth", "oauth", "oauth-openshift", 6443),
    (
        "konnectivity-server",
        "konnectivity",
        "konnectivity-server",
        8091,
    ),
    ("ignition-server", "ignition", "ignition-server-proxy", 443),
    ("metrics-proxy", "metrics-proxy", "metrics-proxy", 443),
];

/// The hostname fixture Route `prefix` of cluster `name` has.
pub fn host(prefix: &str, name: &str) -> String {
    format!("{prefix}.{name}.{BASE_DOMAIN}")
}

/// A public ARO HCP HostedCluster.
pub fn hosted_cluster(namespace: &str, name: &str, cluster_id: &str) -> Value {
    json!({
        "apiVersion": "hypershift.openshift.io/v1beta1",
        "kind": "HostedCluster",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": format!("9b0f7c1e-{:0>4}-4c1f-8f55-{:0>12}", name.len(), name.len()),
            "resourceVersion": "1",
            "generation": 3,
            "creationTimestamp": "2026-03-02T10:15:00Z",
            "finalizers": ["hypershift.openshift.io/finalizer"],
            "labels": {"api.openshift.com/id": cluster_id, "api.openshift.com/name": name},
            "annotations": {
                "hypershift.openshift.io/cluster": format!("{namespace}/{name}"),
                "hypershift.openshift.io/pod-security-admission-label-override": "baseline"
            },
            "managedFields": [{
                "apiVersion": "hypershift.openshift.io/v1beta1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:clusterID": {}, "f:platform": {}}},
                "manager": "clusters-service",
                "operation": "Apply",
                "time": "2026-03-02T10:15:00Z"
            }]
        },
        "spec": {
            "release": {"image": "quay.io/openshift-release-dev/ocp-release:4.19.7-multi"},
            "clusterID": cluster_id,
            "infraID": format!("{name}-x7k2p"),
            "channel": "stable-4.19",
            "platform": {
                "type": "Azure",
                "azure": {
                    "location": "eastus",
                    "resourceGroup": format!("{name}-rg"),
                    "vnetID": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vnet",
                    "subnetID": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/nodes",
                    "subscriptionID": "00000000-0000-0000-0000-000000000000",
                    "securityGroupID": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/net/providers/Microsoft.Network/networkSecurityGroups/nsg",
                    "tenantID": "11111111-1111-1111-1111-111111111111",
                    "topology": "Public",
                    "azureAuthenticationConfig": {
                        "azureAuthenticationConfigType": "ManagedIdentities",
                        "managedIdentities": {
                            "controlPlane": {
                                "managedIdentitiesKeyVault": {"name": "kv", "tenantID": "11111111-1111-1111-1111-111111111111"},
                                "cloudProvider": managed_identity("cloud-provider"),
                                "controlPlaneOperator": managed_identity("control-plane-operator"),
                                "disk": managed_identity("disk-csi"),
                                "file": managed_identity("file-csi"),
                                "ingress": managed_identity("ingress"),
                                "network": managed_identity("network"),
                                "nodePoolManagement": managed_identity("nodepool-mgmt")
                            },
                            "dataPlane": {
                                "diskMSIClientID": "22222222-0000-4000-8000-000000000001",
                                "fileMSIClientID": "22222222-0000-4000-8000-000000000002",
                                "imageRegistryMSIClientID": "22222222-0000-4000-8000-000000000003"
                            }
                        }
                    }
                }
            },
            "networking": {
                "clusterNetwork": [{"cidr": "10.128.0.0/14", "hostPrefix": 23}],
                "serviceNetwork": [{"cidr": "172.30.0.0/16"}],
                "machineNetwork": [{"cidr": "10.0.0.0/16"}],
                "networkType": "OVNKubernetes"
            },
            "services": [
                {"service": "APIServer", "servicePublishingStrategy": {"type": "Route", "route": {"hostname": host("api", name)}}},
                {"service": "OAuthServer", "servicePublishingStrategy": {"type": "Route", "route": {"hostname": host("oauth", name)}}},
                {"service": "Konnectivity", "servicePublishingStrategy": {"type": "Route", "route": {"hostname": host("konnectivity", name)}}},
                {"service": "Ignition", "servicePublishingStrategy": {"type": "Route", "route": {"hostname": host("ignition", name)}}}
            ],
            "dns": {"baseDomain": BASE_DOMAIN},
            "etcd": {"managementType": "Managed", "managed": {"storage": {"type": "PersistentVolume"}}},
            "pullSecret": {"name": "pull-secret"},
            "sshKey": {},
            "issuerURL": "https://oidc.example.test/",
            "controllerAvailabilityPolicy": "HighlyAvailable",
            "infrastructureAvailabilityPolicy": "HighlyAvailable"
        },
        "status": {
            "conditions": [{
                "type": "Available", "status": "True", "reason": "AsExpected",
                "message": "The hosted control plane is available",
                "lastTransitionTime": "2026-03-02T10:25:00Z", "observedGeneration": 3
            }],
            "version": {"desired": {"image": "quay.io/openshift-release-dev/ocp-release:4.19.7-multi"}}
        }
    })
}

/// A control plane managed identity: its certificate in the key vault, as ARO HCP sets it.
fn managed_identity(name: &str) -> Value {
    json!({
        "clientID": "33333333-0000-4000-8000-000000000000",
        "credentialsSecretName": format!("{name}-cert"),
        "objectEncoding": "utf-8"
    })
}

/// A labelled Route in control plane namespace `hcp` sending `host` to Service `service`.
pub fn route(hcp: &str, name: &str, host: &str, service: &str) -> Value {
    json!({
        "apiVersion": "route.openshift.io/v1",
        "kind": "Route",
        "metadata": {
            "name": name,
            "namespace": hcp,
            "resourceVersion": "1",
            "labels": {HCP_ROUTE_LABEL: hcp},
            "annotations": {"openshift.io/host.generated": "false"},
            "ownerReferences": [{
                "apiVersion": "hypershift.openshift.io/v1beta1", "kind": "HostedControlPlane",
                "name": "hcp", "uid": "0f1e2d3c-0000-4000-8000-000000000000",
                "blockOwnerDeletion": true, "controller": true
            }]
        },
        "spec": {
            "host": host,
            "to": {"kind": "Service", "name": service, "weight": 100},
            "port": {"targetPort": "https"},
            "tls": {"termination": "passthrough", "insecureEdgeTerminationPolicy": "None"},
            "wildcardPolicy": "None"
        },
        "status": {"ingress": [{
            "host": host, "routerName": "router", "wildcardPolicy": "None",
            "conditions": [{"type": "Admitted", "status": "True", "lastTransitionTime": "2026-03-02T10:20:00Z"}]
        }]}
    })
}

/// A ClusterIP Service in `hcp` at `cluster_ip:port`.
pub fn service(hcp: &str, name: &str, cluster_ip: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": hcp,
            "resourceVersion": "1",
            "labels": {"app": name, "hypershift.openshift.io/control-plane-component": name},
            "creationTimestamp": "2026-03-02T10:16:00Z"
        },
        "spec": {
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{"name": "https", "port": port, "protocol": "TCP", "targetPort": port}],
            "selector": {"app": name},
            "sessionAffinity": "None",
            "type": "ClusterIP"
        },
        "status": {"loadBalancer": {}}
    })
}

/// Everything one routed cluster has: its HostedCluster, its five served Routes, their
/// Services (ClusterIPs `172.30.<i/250>.<i%250>` style, made from `index`) and two Services
/// no Route uses.
pub fn cluster(namespace: &str, name: &str, index: usize) -> (Value, Vec<Value>, Vec<Value>) {
    let hcp = format!("{namespace}-{name}");
    let hc = hosted_cluster(
        namespace,
        name,
        &format!("{index:08x}-5d0c-4d39-9b6e-0c7b3f1a2e4d"),
    );
    let mut routes = Vec::new();
    let mut services = Vec::new();
    for (i, (route_name, prefix, svc, port)) in ENDPOINTS.iter().enumerate() {
        routes.push(route(&hcp, route_name, &host(prefix, name), svc));
        let ip = format!("172.{}.{}.{}", 16 + i, (index / 250) % 250, index % 250 + 1);
        services.push(service(&hcp, svc, &ip, *port));
    }
    services.push(service(&hcp, "etcd-client", "172.29.0.1", 2379));
    services.push(service(&hcp, "openshift-apiserver", "172.29.0.2", 443));
    (hc, routes, services)
}

/// Sets `metadata.resourceVersion`.
pub fn with_rv(mut object: Value, rv: u64) -> Value {
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    object
}

/// A HostedCluster object, as a watch delivers it.
pub fn hc_object(value: Value) -> Object {
    Object::HostedCluster(guard::<HostedCluster>(value))
}

/// A Route object, as a watch delivers it.
pub fn route_object(value: Value) -> Object {
    Object::Route(guard::<OcpRoute>(value))
}

/// A Service object, as a watch delivers it.
pub fn service_object(value: Value) -> Object {
    Object::Service(guard::<Service>(value))
}

/// An EndpointSlice object, as a watch delivers it.
pub fn slice_object(value: Value) -> Object {
    Object::EndpointSlice(guard::<EndpointSlice>(value))
}

/// An EndpointSlice of Service `service` in `hcp`, as the EndpointSlice controller writes it:
/// one port named `port_name` (`None`: unnamed) at `port`, and `endpoints` of
/// `(address, zone, ready, serving, terminating)`.
pub fn endpoint_slice(
    hcp: &str,
    name: &str,
    service: &str,
    port_name: Option<&str>,
    port: u16,
    endpoints: &[(&str, &str, bool, bool, bool)],
) -> Value {
    let address_type = if endpoints.iter().any(|e| e.0.contains(':')) {
        "IPv6"
    } else {
        "IPv4"
    };
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|&(address, zone, ready, serving, terminating)| {
            json!({
                "addresses": [address],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                "nodeName": "node-1",
                "zone": zone,
                "targetRef": {"kind": "Pod", "namespace": hcp, "name": format!("{service}-{address}")}
            })
        })
        .collect();
    let mut port_json = json!({"port": port, "protocol": "TCP"});
    if let Some(port_name) = port_name {
        port_json["name"] = json!(port_name);
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": hcp,
            "resourceVersion": "1",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
            },
            "generateName": format!("{service}-"),
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [port_json]
    })
}

fn guard<K: ::kube::Resource + serde::de::DeserializeOwned>(value: Value) -> Guarded<K> {
    // Through text, as the watcher receives objects: the guard keeps the raw JSON.
    serde_json::from_str(&value.to_string()).expect("fixture objects have metadata")
}

/// A list response body for `kind` holding `items`, as the API server sends it.
pub fn list_body(kind: super::store::Kind, items: &[Value], resource_version: u64) -> Vec<u8> {
    let items: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut item = item.clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    serde_json::to_vec(&json!({
        "kind": format!("{}List", kind.as_str()),
        "apiVersion": "v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "items": items,
    }))
    .expect("JSON")
}

/// Decodes a list response body the way the watcher does (one bad item does not fail the
/// list), into the objects the store takes.
pub fn decode_list(kind: super::store::Kind, body: &[u8]) -> Vec<Object> {
    use super::store::Kind;
    use ::kube::core::ObjectList;
    fn items<K: Clone + serde::de::DeserializeOwned + ::kube::Resource>(
        body: &[u8],
    ) -> Vec<Guarded<K>> {
        serde_json::from_slice::<ObjectList<Guarded<K>>>(body)
            .expect("a list body")
            .items
    }
    match kind {
        Kind::HostedCluster => items::<HostedCluster>(body)
            .into_iter()
            .map(Object::HostedCluster)
            .collect(),
        Kind::Route => items::<OcpRoute>(body)
            .into_iter()
            .map(Object::Route)
            .collect(),
        Kind::Service => items::<Service>(body)
            .into_iter()
            .map(Object::Service)
            .collect(),
        Kind::EndpointSlice => items::<EndpointSlice>(body)
            .into_iter()
            .map(Object::EndpointSlice)
            .collect(),
    }
}
