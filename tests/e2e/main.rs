//! The end-to-end tests: the real `sniroute` binary (and real API servers, Prometheus,
//! backends and clients) driven through real sockets, a module per area. One crate, so the
//! harness in `tests/common/` is compiled and linked once rather than once per file; run one
//! area with `cargo test --test e2e routing::`, one test by its name.
//!
//! Three suites stay crates of their own (`tests/robustness.rs`, `tests/cluster.rs`,
//! `tests/conformance.rs`): they load the machine (thousands of clients, a real node's
//! rollouts) and time what they measure, so they must not share it with this crate's tests
//! running beside them. Statics here are one
//! per process: the shared kube-apiserver ([`common::apiserver::ApiServer::shared`]) serves
//! every `kube*` module, each test writing objects of its own.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod client_limits;
mod config_files;
mod explain;
mod harness;
mod ip_literals;
mod kube;
mod kube_deploy;
mod kube_endpoints;
mod kube_fake;
mod kube_faults;
mod kube_gateway;
mod monitoring;
mod operations;
mod proxy_protocol;
mod refusals;
mod reload;
mod revocation;
mod routing;
mod timeouts;
