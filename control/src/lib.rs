//! sniroute's control plane: where routing tables come from.
//!
//! Sources state the routes they want as [`RouteSpec`]s and hand them to the one
//! [`Publisher`], which keeps the latest set of every source, merges them into one
//! [`proxy::Table`] (the file wins conflicts), swaps it into the [`proxy::SharedTable`] that
//! connections read, and logs what changed. Three sources:
//!
//! - The YAML file. [`Config`] is its schema; [`Config::load`] reads and validates it,
//!   reporting every problem with file, line and route, and [`Config::table`] builds its
//!   routes. The binary does both before binding anything (`sniroute check` is exactly that).
//!   [`FileSource`] then watches the file and publishes each valid change; a bad change is
//!   logged and the last good routes stay.
//! - Kubernetes ([`kube::KubeSource`], on when the file has a `kubernetes:` key): watches
//!   HostedClusters, their Routes, Services and EndpointSlices, and publishes each hosted
//!   cluster's routes (to its pods, from the EndpointSlices).
//! - The Gateway API ([`gateway::GatewaySource`], with `kubernetes.gateway_api`): watches
//!   GatewayClasses, Gateways, TLSRoutes and ReferenceGrants (and the Services and
//!   EndpointSlices they name), publishes their routes and writes their status back.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod file;
pub mod gateway;
pub mod kube;
pub mod metrics;
pub mod publish;
pub mod source;

pub use config::{BackendsMode, Config, GatewayApiConfig, KubernetesConfig};
pub use error::{ConfigError, Problem, RouteRef};
pub use file::FileSource;
pub use proxy::RouteSpec;
pub use publish::{Conflict, ConflictKind, Published, Publisher};
pub use source::{Readiness, SourceKind};
