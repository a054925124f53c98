//! Harness for the end-to-end tests: runs the real `sniroute` binary on port 0 against test
//! backends on loopback, with real TLS clients and captured ClientHellos. Tests `use
//! common::*;` and get every module's items re-exported here.
//!
//! Pieces, a module each:
//! - [`pki`]: one test CA and a leaf it signed for every name the tests use (rcgen).
//! - [`backends`]: [`TlsBackend`] (says who it is and which SNI it saw, then echoes) and
//!   [`RawBackend`] (records every byte it receives).
//! - [`client`]: a rustls client trusting the test CA ([`tls_connect`] / [`ClientOpts`]), raw
//!   TCP reads, `openssl s_client`, HTTP `GET`.
//! - [`config`]: config YAML built in code ([`Cfg`]).
//! - [`metrics`]: `/metrics` read into a [`Scrape`].
//! - [`sniroute`]: the binary as a child process ([`Sniroute`], [`run_binary`]);
//!   [`in_process`]: the data plane in the test's own runtime, for timeouts on paused time.
//! - [`fixtures`]: captured ClientHellos; [`hellos`]: hellos reshaped for framing tests.
//! - [`apiserver`], [`cluster`], [`fake_kube`], [`prometheus`], [`procfs`]: the real
//!   kube-apiserver, a real one-node cluster (kubelet, containerd, kube-proxy), a fake
//!   one, a real Prometheus, the proxy process as /proc shows it.
//!
//! Every wait here is bounded; nothing sleeps for a fixed time in place of checking.
#![allow(dead_code)]

pub mod apiserver;
pub mod backends;
pub mod client;
pub mod cluster;
pub mod config;
pub mod fake_kube;
pub mod fixtures;
pub mod hellos;
pub mod in_process;
pub mod metrics;
pub mod pki;
pub mod procfs;
pub mod prometheus;
pub mod sniroute;

use std::time::Duration;

use tokio::time::Instant;

// Each test binary uses a part of the harness: a re-export it leaves unused is no smell.
#[allow(unused_imports)]
pub use backends::*;
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use config::*;
#[allow(unused_imports)]
pub use fixtures::*;
#[allow(unused_imports)]
pub use metrics::*;
#[allow(unused_imports)]
pub use pki::*;
#[allow(unused_imports)]
pub use sniroute::*;

/// Bound for any single network step in a test (connect, handshake, a read that must succeed).
pub const STEP: Duration = Duration::from_secs(5);
/// How long the binary gets to print its `listening` lines and become ready.
pub const STARTUP: Duration = Duration::from_secs(10);
/// How often polling loops look again.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `check` (async) until it returns `Some`, or panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}
