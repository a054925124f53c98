//! The Kubernetes source: routes every hosted control plane of a HyperShift management
//! cluster, live.
//!
//! Four watches (kube-runtime watchers, each retrying with backoff that a probe of the
//! server's `/readyz` cuts short once it is ready again after an outage ([`retry`]), and
//! relisting after a 410 Gone) feed one loop:
//!
//! - HostedClusters (`hypershift.openshift.io/v1beta1`), all namespaces;
//! - Routes (`route.openshift.io/v1`) labelled `hypershift.openshift.io/hosted-control-plane`,
//!   all namespaces;
//! - Services (`v1`), all namespaces. One cluster-wide watch instead of one per control plane
//!   namespace: 5,000 hosted clusters would otherwise hold 5,000 watch connections open on the
//!   API server. Only name, ClusterIP and ports of each Service are kept;
//! - EndpointSlices (`discovery.k8s.io/v1`), all namespaces, with `kubernetes.backends:
//!   endpoints`: a Service's pods, their ports, conditions and zones ([`zone`] is this
//!   replica's).
//!
//! Each event marks the hosted clusters it concerns dirty ([`store`]); after a short debounce
//! the dirty clusters, and only those, are mapped again ([`mapping`], a pure function) and the
//! routes of all clusters are handed to the [`Publisher`](crate::Publisher), which merges them
//! with the file's (the file wins conflicts). Nothing is published until every kind has been
//! listed once; then the readiness signal turns true. A failing watch, a malformed object or a
//! Route whose Service is missing never empties the table: the failing part is logged and
//! skipped, everything else keeps its last good routes.
//!
//! Read-only RBAC suffices: `get`, `list`, `watch` on `hostedclusters`
//! (hypershift.openshift.io), `routes` (route.openshift.io), `services` (core) and
//! `endpointslices` (discovery.k8s.io), and `get` on `nodes` (core) for the zone.

mod failure;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod mapping;
pub mod objects;
mod retry;
pub mod source;
pub mod store;
pub mod zone;

pub use mapping::{map_cluster, Mapped, RejectReason, Rejection, Skip};
pub use source::{default_client, KubeSource};
pub use store::{Kind, Object, Store};
