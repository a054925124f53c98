//! A real etcd and kube-apiserver on loopback for the Kubernetes end-to-end tests (what
//! controller-runtime calls envtest): no kubelet, no controller-manager, the real CRDs from
//! `tests/crds/` installed, an admin client for the test, and a ServiceAccount identity
//! with a TokenRequest token and a kubeconfig for sniroute.
//!
//! - [`ApiServer::shared`]: one server per test binary, for tests that only read and write
//!   objects of their own (unique cluster names); started on first use.
//! - [`ApiServer::start`]: a server of the test's own, for faults (compaction, restarts).
//! - [`Admin`]: server-side apply, merge patches, deletes and reads of any kind, through
//!   discovery, with the response's `Warning` headers.
//! - [`Relay`]: a TCP relay in front of the API server whose connections a test can cut (what
//!   a network break does), so watches resume from their last resourceVersion.
//!
//! More kinds need nothing here: [`Admin`] writes any `apiVersion`/`kind` the server serves
//! (an EndpointSlice as the EndpointSlice controller would write it, say). The server's own
//! validation applies, though: EndpointSlice addresses in 127.0.0.0/8 are refused ("may not
//! be in the loopback range"), unlike Service ClusterIPs from its service range.
//!
//! The binaries are built from `tests/apiserver/` by its `build.sh` (once, cached). Without
//! Go, each test prints a line naming what to install and returns; with
//! `SNIROUTE_REQUIRE_APISERVER=1` (CI) it fails instead.
//!
//! A module per job: [`build`] (the binaries), [`process`] (spawning and killing them),
//! [`certs`] (the server's PKI, kubeconfigs), [`server`] (etcd and the kube-apiserver
//! running), [`admin`] (the test's client), [`manifests`] (YAML, `deploy/base`, the CRDs),
//! [`identity`] (sniroute's ServiceAccount), [`audit`] (the audit log), [`relay`], and
//! [`hypershift`] (hosted clusters written as HyperShift writes them).
//!
//! Processes: every child is spawned from one long-lived thread with `PR_SET_PDEATHSIG`
//! (the signal follows the spawning *thread*, so a test thread must not spawn), in its own
//! process group; dropping a server kills both groups, and the shared server is killed and
//! its directory removed at process exit. A panicking or killed test leaves nothing running.

use std::path::Path;
use std::time::Duration;

mod admin;
mod audit;
mod build;
mod certs;
pub mod hypershift;
mod identity;
mod manifests;
mod process;
mod relay;
mod server;

// Each test binary names a part of the harness: a re-export it leaves unused is no smell.
#[allow(unused_imports)]
pub use admin::{Admin, Refused, Reply};
#[allow(unused_imports)]
pub use audit::AuditEvent;
#[allow(unused_imports)]
pub(super) use build::run_build;
#[allow(unused_imports)]
pub use certs::pem;
#[allow(unused_imports)]
pub use manifests::{
    apply_crds, condition_true, install_crds, parse_manifests, read_manifests, render, render_base,
};
#[allow(unused_imports)]
pub(super) use process::Proc;
#[allow(unused_imports)]
pub use relay::Relay;
#[allow(unused_imports)]
pub use server::{wait_ready, ApiServer, Opts};

/// The namespace `deploy/base` installs sniroute in.
pub const NAMESPACE: &str = "hypershift-sharedingress";
/// Set to `1` (CI does) to make a missing Go or a failed build fail the tests.
pub const REQUIRE_ENV: &str = "SNIROUTE_REQUIRE_APISERVER";
/// The field manager the harness applies with.
const MANAGER: &str = "sniroute-tests";
/// How long etcd and the kube-apiserver get to become ready on a slow shared machine.
const READY_WITHIN: Duration = Duration::from_secs(120);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
