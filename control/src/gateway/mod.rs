//! The Gateway API source: sniroute as a TLS-passthrough Gateway implementation.
//!
//! GatewayClasses naming `kubernetes.gateway_api.controller_name`, their Gateways' TLS
//! Passthrough listeners, the TLSRoutes (v1) attached to them, ReferenceGrants, Namespaces
//! (for listener selectors), Services and EndpointSlices go in; routes for the one table and
//! the status of every object come out ([`graph::build`], pure, in the shape of NGINX Gateway
//! Fabric's `state/graph`); [`status`] turns that status into server-side apply bodies, only
//! where the object says something else.

pub mod graph;
pub mod infra;
pub mod objects;
pub mod source;
pub mod status;

pub use graph::{build, Graph, Key, Objects, Settings};
pub use source::GatewaySource;
