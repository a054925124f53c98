//! Hosted clusters on the real API server, written the way HyperShift writes them: the
//! HostedCluster (with the operator's finalizer), the control plane namespace, its labelled
//! Routes and its Services, which get their ClusterIPs from the server (inside the server's
//! 127.0.0.0/8 service range, so test backends can listen on them).
//!
//! Objects come from `control::kube::fixtures` (the shapes the unit tests and the benchmark
//! use) with what only the server sets taken out: uid, resourceVersion, generation,
//! timestamps, managedFields, status, and the Services' ClusterIPs. They are applied with
//! strict field validation, so a field the CRD schema would prune fails the test.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use control::kube::fixtures;
use serde_json::{json, Value};

use super::Admin;
use crate::common::{TlsBackend, TlsBackendOpts};

/// `apiVersion` of HostedClusters.
pub const HC_API: &str = "hypershift.openshift.io/v1beta1";
/// `apiVersion` of Routes.
pub const ROUTE_API: &str = "route.openshift.io/v1";
/// HyperShift's finalizer on a HostedCluster.
pub const FINALIZER: &str = "hypershift.openshift.io/finalizer";

/// One hosted cluster on the server: names and the allocated Service addresses.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// The HostedCluster's namespace.
    pub namespace: String,
    /// The HostedCluster's name.
    pub name: String,
    /// The control plane namespace, `<namespace>-<name>`.
    pub hcp: String,
    /// Each Service's `ClusterIP:port`, by Service name.
    pub services: HashMap<String, SocketAddr>,
    /// `spec.clusterID`.
    pub cluster_id: String,
}

/// Takes out what the API server sets, so the object is what a client sends.
pub fn as_written(mut object: Value) -> Value {
    if let Some(meta) = object["metadata"].as_object_mut() {
        for key in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
        ] {
            meta.remove(key);
        }
    }
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
    }
    if object["kind"] == "Service" {
        if let Some(spec) = object["spec"].as_object_mut() {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
    }
    object
}

/// The namespace `name` (created if missing).
pub async fn namespace(admin: &Admin, name: &str) {
    admin
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        .await;
}

/// The allocated `ClusterIP:port` (first port) of a stored Service.
pub fn service_addr(service: &Value) -> SocketAddr {
    let ip: IpAddr = service["spec"]["clusterIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no ClusterIP in {service}"));
    let port = service["spec"]["ports"][0]["port"].as_u64().expect("port") as u16;
    SocketAddr::new(ip, port)
}

/// HostedCluster `namespace/name` with everything HyperShift makes for it: the control
/// plane namespace, the five labelled Routes and their Services (plus two no Route uses).
/// `index` makes its cluster ID unique on the server: the shared one serves every `kube*`
/// module of the e2e crate, so each takes its own range (kube.rs 1-99, kube_endpoints.rs
/// 100-199, proxy_protocol.rs 200-299); two clusters of one ID make it ambiguous.
pub async fn create_cluster(admin: &Admin, namespace: &str, name: &str, index: usize) -> Cluster {
    let (hc, routes, services) = fixtures::cluster(namespace, name, index);
    let hcp = format!("{namespace}-{name}");
    self::namespace(admin, namespace).await;
    self::namespace(admin, &hcp).await;
    let cluster_id = hc["spec"]["clusterID"].as_str().unwrap().to_owned();
    admin.apply(&as_written(hc)).await;
    let mut addrs = HashMap::new();
    for service in services {
        let stored = admin.apply(&as_written(service)).await;
        let name = stored["metadata"]["name"].as_str().unwrap().to_owned();
        addrs.insert(name, service_addr(&stored));
    }
    for route in routes {
        admin.apply(&as_written(route)).await;
    }
    Cluster {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        hcp,
        services: addrs,
        cluster_id,
    }
}

impl Cluster {
    /// `<prefix>.<name>.<base domain>`, the fixture hostname of one of its Routes.
    pub fn host(&self, prefix: &str) -> String {
        fixtures::host(prefix, &self.name)
    }

    /// The kube-apiserver Route's hostname.
    pub fn api(&self) -> String {
        self.host("api")
    }

    /// The oauth Route's hostname.
    pub fn oauth(&self) -> String {
        self.host("oauth")
    }

    /// The allocated address of Service `name`.
    pub fn service(&self, name: &str) -> SocketAddr {
        self.services[name]
    }

    /// A TLS backend identified as `id` on Service `service`'s ClusterIP and port, with a
    /// certificate for this cluster's names.
    pub fn backend(&self, id: &str, service: &str) -> TlsBackend {
        self.backend_at(id, self.service(service))
    }

    /// A TLS backend identified as `id` listening on `addr`, for this cluster's names.
    pub fn backend_at(&self, id: &str, addr: SocketAddr) -> TlsBackend {
        TlsBackend::start_at(
            id,
            addr,
            TlsBackendOpts {
                names: Some(vec![
                    format!("*.{}.{}", self.name, fixtures::BASE_DOMAIN),
                    "*.moved.example.test".to_owned(),
                    "*.custom.example.test".to_owned(),
                ]),
                ..TlsBackendOpts::default()
            },
        )
    }

    /// Merge-patches the HostedCluster; the stored object.
    pub async fn patch_hosted_cluster(&self, admin: &Admin, patch: Value) -> Value {
        admin
            .merge_patch(
                HC_API,
                "HostedCluster",
                Some(&self.namespace),
                &self.name,
                &patch,
            )
            .await
    }

    /// Merge-patches Service `name` in the control plane namespace; the stored object.
    pub async fn patch_service(&self, admin: &Admin, name: &str, patch: Value) -> Value {
        admin
            .merge_patch("v1", "Service", Some(&self.hcp), name, &patch)
            .await
    }

    /// Merge-patches Route `name` in the control plane namespace; the stored object.
    pub async fn patch_route(&self, admin: &Admin, name: &str, patch: Value) -> Value {
        admin
            .merge_patch(ROUTE_API, "Route", Some(&self.hcp), name, &patch)
            .await
    }

    /// Sets the first port of Service `name` (its only one in these fixtures).
    pub async fn set_service_port(&self, admin: &Admin, name: &str, port: u16) -> SocketAddr {
        let mut service = admin
            .get("v1", "Service", Some(&self.hcp), name)
            .await
            .expect("service");
        service["spec"]["ports"][0]["port"] = json!(port);
        // A merge patch replaces the whole list, as `kubectl edit` does.
        let stored = self
            .patch_service(
                admin,
                name,
                json!({"spec": {"ports": service["spec"]["ports"]}}),
            )
            .await;
        service_addr(&stored)
    }

    /// Deletes Service `name` in the control plane namespace.
    pub async fn delete_service(&self, admin: &Admin, name: &str) {
        assert!(admin.delete("v1", "Service", Some(&self.hcp), name).await);
    }

    /// Creates Service `name` again from the fixture; its newly allocated address.
    pub async fn recreate_service(
        &mut self,
        admin: &Admin,
        name: &str,
        index: usize,
    ) -> SocketAddr {
        let (_, _, services) = fixtures::cluster(&self.namespace, &self.name, index);
        let service = services
            .into_iter()
            .find(|s| s["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no fixture Service {name}"));
        let stored = admin.apply(&as_written(service)).await;
        let addr = service_addr(&stored);
        self.services.insert(name.to_owned(), addr);
        addr
    }
}
