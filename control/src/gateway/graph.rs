//! From the Gateway API objects to the routes sniroute serves and the status every object
//! should have: one pure function, [`build`], in the shape of NGINX Gateway Fabric's
//! `internal/controller/state/graph` (classes, then Gateways and their listeners, then routes
//! attached to them with their references resolved).
//!
//! The rules, with where they come from (the Gateway API v1.6.1 reference, `apis/v1`, and the
//! GEPs named):
//!
//! 1. **GatewayClasses** whose `spec.controllerName` is ours are Accepted (GEP-1364) and report
//!    SupportedVersion True: sniroute reads the v1.6.1 standard channel. Other classes, and
//!    their Gateways, are left alone: no status is written for them.
//! 2. **Listeners.** Only `protocol: TLS` with `tls.mode: Passthrough` is served. Any other
//!    protocol is not accepted with reason `UnsupportedProtocol`, TLS with mode `Terminate`
//!    (the API's default) with `UnsupportedValue` (the `ListenerConditionAccepted` reason for
//!    an unsupported field value, as the conformance test TLSRouteListenerTerminateNotSupported
//!    requires), both Programmed `Invalid`; the Gateway's other listeners still work
//!    and the Gateway is Accepted with reason `ListenersNotValid` (False when no listener is
//!    valid). Listeners on one port with different protocols are Conflicted `ProtocolConflict`;
//!    with the same protocol and hostname, `HostnameConflict` (`ListenerConditionConflicted`);
//!    conflicted listeners are not accepted either. `allowedRoutes.kinds` other than TLSRoute
//!    are left out of `supportedKinds` and make ResolvedRefs False `InvalidRouteKinds`.
//! 3. **Gateway addresses.** With `kubernetes.gateway_api.listener_ports`, each accepted
//!    Gateway has its own Service ([`infra`], GEP-1762) and reports its address; until it has
//!    one the Gateway is not Programmed (`AddressNotAssigned`), a listener without a pod port
//!    yet `Pending`, and `spec.addresses` cannot be asked for (`UnsupportedAddress`). Each
//!    route is served only on the pod ports of the listeners it attached to
//!    (`RouteSpec::port`), so a route of one Gateway is never served on another's address.
//!    Without `listener_ports`, sniroute reports the addresses it is configured with
//!    (`kubernetes.gateway_api.addresses`, the shared Service in front of every replica);
//!    without any, the Gateway is not Programmed (`AddressNotAssigned`). A `spec.addresses`
//!    entry that is not one of them makes the Gateway not Accepted (`UnsupportedAddress`).
//!    sniroute has no parameters kind, so a Gateway with `spec.infrastructure.parametersRef`
//!    is not Accepted either (`InvalidParameters`: the `GatewayReasonInvalidParameters`
//!    reference, "not supported by the implementation"; conformance:
//!    GatewayInvalidParametersRef).
//! 4. **TLSRoute attachment** (GEP-2643, `CommonRouteSpec.parentRefs`): a parentRef to one of
//!    our Gateways selects its listeners by `sectionName` and `port` when given (none left:
//!    Accepted False `NoMatchingParent`); of those, the ones whose `allowedRoutes` admit the
//!    route's namespace (`Same` by default, `All`, or a namespace label `Selector`) and kind
//!    (none: `NotAllowedByListeners`); of those, the ones whose hostname intersects the
//!    route's (none: `NoMatchingListenerHostname`). A listener without a hostname takes the
//!    route's hostnames; an exact name matches itself or a wildcard covering it; `*.a.b`
//!    covers names of one or more labels under `a.b` (not `a.b` itself), as the listener
//!    `hostname` reference says and `proxy::HostPattern` matches; two wildcards intersect in
//!    the narrower. Route hostnames outside every attached listener are ignored.
//! 5. **Backends** (`BackendRef`, GEP-709 ReferenceGrant): a backendRef must be a core
//!    `Service` (else ResolvedRefs False `InvalidKind`); one in another namespace needs a
//!    ReferenceGrant there from `gateway.networking.k8s.io/TLSRoute` in the route's namespace
//!    to Services (all, or that name) (else `RefNotPermitted`); the Service must exist and
//!    have the port (else `BackendNotFound`). The first failing reference names the reason.
//!    Valid backends are resolved to their ready endpoints (the EndpointSlice balancing of the
//!    HyperShift source) or ClusterIP. `weight: 0` sends a backend nothing; other weights
//!    split the route's connections between its backendRefs (each reference's weight spread
//!    over its endpoints; the data plane balances by weighted least connections and its
//!    round robin walks the weights), and within a Service by least connections.
//! 6. **A route whose backends are all invalid** (or all weight 0) goes into the table with
//!    its hostnames and no backend ([`RouteSpec::refusing`]), so its connections are refused
//!    by the data plane as that route's: closed without a TLS alert (the conformance tests
//!    TLSRouteInvalidBackendRefNonexistent and TLSRouteInvalidBackendRefUnknownKind take
//!    only a reset or an EOF before any TLS answer), counted as `backend_unreachable` and
//!    logged with the TLSRoute's `namespace/name`, as the `backendRefs` reference requires
//!    ("the underlying implementation must actively reject request attempts to this
//!    backend, by rejecting the connection"). It is also reported in [`Graph::refused`] for
//!    the source to log once and count.
//! 7. **Conflicts.** Routes are handed to the table oldest first (creationTimestamp, then
//!    `namespace/name`), the Gateway API's conflict rule, so the publish step's "first claim
//!    wins" keeps a hostname with the oldest route. Each TLSRoute is one table route named
//!    `namespace/name`, its source (in `/routes` and `explain`) `tlsroute <namespace/name> on
//!    gateway <namespace/name>[, ...]`.
//!
//! Every condition carries the object's `metadata.generation` as `observedGeneration`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use proxy::{Backend, BackendFacts, HostPattern, RouteSpec};

use super::infra::{self, Allocation, GatewayService, ServiceSettings, Wanted};
pub use super::objects::Key;
use super::objects::{
    BackendRef, Gateway, GatewayAddress, GatewayClass, GatewayInfrastructure, Listener, ParentRef,
    ReferenceGrant, RouteGroupKind, TlsRoute, GROUP,
};
use crate::kube::mapping::{endpoints_of, Backends};
use crate::kube::objects::{EndpointSlice, Service};

/// The Gateway API release whose standard channel sniroute reads.
pub const BUNDLE_VERSION: &str = "v1.6.1";

/// The route kind sniroute's listeners accept.
pub const TLS_ROUTE: &str = "TLSRoute";

/// Every object the mapping reads, as the watches last delivered them.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    /// GatewayClasses by name.
    pub classes: BTreeMap<String, GatewayClass>,
    /// Gateways.
    pub gateways: BTreeMap<Key, Gateway>,
    /// TLSRoutes.
    pub routes: BTreeMap<Key, TlsRoute>,
    /// ReferenceGrants.
    pub grants: BTreeMap<Key, ReferenceGrant>,
    /// Namespace labels by namespace name.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Services.
    pub services: BTreeMap<Key, Service>,
    /// EndpointSlices by the Service they name (`namespace/service`), then slice name;
    /// `None` when Services go to their ClusterIP.
    pub slices: Option<BTreeMap<Key, BTreeMap<String, EndpointSlice>>>,
    /// Our Gateways' Services (in sniroute's namespace), by name: which listener port goes
    /// to which pod port, and each Gateway's address ([`infra`]).
    pub gateway_services: BTreeMap<String, GatewayService>,
}

/// What the mapping needs beyond the objects.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `kubernetes.gateway_api.controller_name`.
    pub controller_name: String,
    /// `kubernetes.gateway_api.addresses`: what every Gateway's `status.addresses` reports,
    /// without `services`.
    pub addresses: Vec<GatewayAddress>,
    /// With `kubernetes.gateway_api.listener_ports`: each Gateway its own Service, address
    /// and listener ports ([`infra`]); `None` serves every Gateway on the `listen` listeners.
    pub services: Option<ServiceSettings>,
    /// This replica's zone, whose endpoints are preferred.
    pub zone: Option<String>,
}

/// One condition as the mapping decides it; [`super::status`] adds the transition time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    /// `type`.
    pub kind: &'static str,
    /// `True` or `False`.
    pub status: bool,
    /// `reason`.
    pub reason: &'static str,
    /// `message`.
    pub message: String,
    /// `observedGeneration`.
    pub observed_generation: i64,
}

/// The status a GatewayClass of ours should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassStatus {
    /// `conditions`.
    pub conditions: Vec<Cond>,
}

/// The status a Gateway of ours should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayStatus {
    /// `addresses`.
    pub addresses: Vec<GatewayAddress>,
    /// `conditions`.
    pub conditions: Vec<Cond>,
    /// `listeners`, in spec order.
    pub listeners: Vec<ListenerStatus>,
}

/// One of a Gateway's `status.listeners`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerStatus {
    /// `name`.
    pub name: String,
    /// `supportedKinds`: TLSRoute, or nothing.
    pub supported_kinds: Vec<RouteGroupKind>,
    /// `attachedRoutes`.
    pub attached_routes: i32,
    /// `conditions`.
    pub conditions: Vec<Cond>,
}

/// One of a TLSRoute's `status.parents` that sniroute writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentStatus {
    /// `parentRef`, as the route wrote it.
    pub parent_ref: ParentRef,
    /// `conditions`: Accepted and ResolvedRefs.
    pub conditions: Vec<Cond>,
}

/// What the objects map to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graph {
    /// The routes for the table, oldest TLSRoute first.
    pub routes: Vec<RouteSpec>,
    /// Our GatewayClasses' status, by name.
    pub classes: BTreeMap<String, ClassStatus>,
    /// Our Gateways' status.
    pub gateways: BTreeMap<Key, GatewayStatus>,
    /// Our entries of each TLSRoute's `status.parents` (empty for a route that refers to
    /// none of our Gateways).
    pub routes_status: BTreeMap<Key, Vec<ParentStatus>>,
    /// Attached TLSRoutes with no valid backend: in `routes` as refusing routes, their
    /// connections refused.
    pub refused: Vec<Refused>,
    /// With `services`: what each accepted Gateway of ours wants of its Service.
    pub wanted_services: BTreeMap<Key, Wanted>,
    /// With `services`: the pod ports to bind, one per Gateway listener port that has one.
    pub listeners: BTreeSet<u16>,
}

/// A TLSRoute whose connections are refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The TLSRoute.
    pub route: Key,
    /// Why no backend takes its connections.
    pub why: String,
}

// Condition types and reasons, as `apis/v1` spells them.
const ACCEPTED: &str = "Accepted";
const PROGRAMMED: &str = "Programmed";
const RESOLVED_REFS: &str = "ResolvedRefs";
const CONFLICTED: &str = "Conflicted";
const SUPPORTED_VERSION: &str = "SupportedVersion";

/// One listener as the mapping judged it.
struct JudgedListener<'g> {
    spec: &'g Listener,
    name: String,
    hostname: Option<HostPattern>,
    port: Option<i32>,
    /// Accepted, not conflicted, and TLSRoute among its kinds: routes may attach.
    usable: bool,
    /// With per-Gateway Services: the pod port its Gateway's Service sends its port to.
    target: Option<u16>,
    status: ListenerStatus,
}

/// Maps the objects to routes and status.
pub fn build(objects: &Objects, settings: &Settings) -> Graph {
    let mut graph = Graph::default();
    let ours: BTreeSet<&str> = objects
        .classes
        .iter()
        .filter(|(_, class)| {
            class
                .spec
                .as_ref()
                .and_then(|s| s.controller_name.as_deref())
                == Some(settings.controller_name.as_str())
        })
        .map(|(name, class)| {
            let generation = class.metadata.generation.unwrap_or_default();
            graph.classes.insert(
                name.clone(),
                ClassStatus {
                    conditions: vec![
                        cond(
                            ACCEPTED,
                            true,
                            "Accepted",
                            "sniroute serves this class",
                            generation,
                        ),
                        cond(
                            SUPPORTED_VERSION,
                            true,
                            "SupportedVersion",
                            format!("sniroute reads Gateway API {BUNDLE_VERSION}"),
                            generation,
                        ),
                    ],
                },
            );
            name.as_str()
        })
        .collect();

    let allocations = settings
        .services
        .as_ref()
        .map(|_| infra::allocations(&objects.gateway_services));
    let mut gateways: BTreeMap<&Key, Vec<JudgedListener<'_>>> = BTreeMap::new();
    for (key, gateway) in &objects.gateways {
        let class = gateway
            .spec
            .as_ref()
            .and_then(|s| s.gateway_class_name.as_deref())
            .unwrap_or_default();
        if ours.contains(class) {
            let mut listeners = judge_listeners(gateway);
            if let Some(allocations) = &allocations {
                let generation = gateway.metadata.generation.unwrap_or_default();
                let ports = allocations.get(key).map(|a| &a.ports);
                for listener in listeners.iter_mut().filter(|l| l.usable) {
                    listener.target = listener.port.and_then(|port| ports?.get(&port).copied());
                    if listener.target.is_none() {
                        // Routes attach (and are counted), and are served once the port is.
                        let programmed = cond(
                            PROGRAMMED,
                            false,
                            "Pending",
                            format!(
                                "waiting for a pod port on Service {}/{} for port {}",
                                settings
                                    .services
                                    .as_ref()
                                    .map_or("", |s| s.namespace.as_str()),
                                infra::service_name(key),
                                listener.port.unwrap_or_default()
                            ),
                            generation,
                        );
                        for c in &mut listener.status.conditions {
                            if c.kind == PROGRAMMED {
                                *c = programmed.clone();
                            }
                        }
                    }
                }
            }
            gateways.insert(key, listeners);
        }
    }

    // Oldest first: the Gateway API's conflict rule, which the table's first claim follows.
    let mut routes: Vec<(&Key, &TlsRoute)> = objects.routes.iter().collect();
    routes.sort_by(|(ka, a), (kb, b)| {
        let at = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let bt = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        at.cmp(&bt).then_with(|| ka.cmp(kb))
    });
    for (key, route) in routes {
        attach_route(objects, settings, key, route, &mut gateways, &mut graph);
    }

    for (key, listeners) in gateways {
        let gateway = &objects.gateways[key];
        let allocation = allocations.as_ref().and_then(|a| a.get(key));
        let wanted = Wanted {
            ports: listeners
                .iter()
                .filter(|l| l.usable)
                .filter_map(|l| l.port)
                .collect(),
            labels: infrastructure(gateway, |i| i.labels.as_ref()),
            annotations: infrastructure(gateway, |i| i.annotations.as_ref()),
        };
        let targets: Vec<u16> = listeners.iter().filter_map(|l| l.target).collect();
        let status = gateway_status(gateway, listeners, settings, allocation);
        let accepted = status
            .conditions
            .iter()
            .any(|c| c.kind == ACCEPTED && c.status);
        if settings.services.is_some() && accepted {
            graph.listeners.extend(targets);
            graph.wanted_services.insert(key.clone(), wanted);
        }
        graph.gateways.insert(key.clone(), status);
    }
    if settings.services.is_some() {
        // A Gateway no longer accepted keeps its Service until the Lease holder deletes it:
        // its ports are not bound, and nothing is served there meanwhile.
        let listeners = &graph.listeners;
        graph
            .routes
            .retain(|r| r.port.is_some_and(|port| listeners.contains(&port)));
    }
    graph
}

/// `spec.infrastructure.labels` or `annotations` of `gateway`.
fn infrastructure(
    gateway: &Gateway,
    field: impl Fn(&GatewayInfrastructure) -> Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    gateway
        .spec
        .as_ref()
        .and_then(|s| s.infrastructure.as_ref())
        .and_then(field)
        .cloned()
        .unwrap_or_default()
}

fn cond(
    kind: &'static str,
    status: bool,
    reason: &'static str,
    message: impl Into<String>,
    observed_generation: i64,
) -> Cond {
    Cond {
        kind,
        status,
        reason,
        message: message.into(),
        observed_generation,
    }
}

/// Each listener's conditions and supported kinds, before routes attach.
fn judge_listeners(gateway: &Gateway) -> Vec<JudgedListener<'_>> {
    let generation = gateway.metadata.generation.unwrap_or_default();
    // Names are unique (the CRD's `listeners` is a map list keyed by name); should two
    // share one anyway, the first is the listener and the other is ignored.
    let mut names = BTreeSet::new();
    let listeners: Vec<&Listener> = gateway
        .spec
        .as_ref()
        .and_then(|s| s.listeners.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|l| names.insert(l.name.clone().unwrap_or_default()))
        .collect();
    // Protocols and hostnames per port, for the conflict rules.
    let mut by_port: BTreeMap<Option<i32>, Vec<(String, Option<String>)>> = BTreeMap::new();
    for listener in &listeners {
        by_port.entry(listener.port).or_default().push((
            listener.protocol.clone().unwrap_or_default(),
            listener.hostname.clone(),
        ));
    }
    listeners
        .into_iter()
        .map(|listener| {
            let name = listener.name.clone().unwrap_or_default();
            let protocol = listener.protocol.as_deref().unwrap_or_default();
            let mode = listener
                .tls
                .as_ref()
                .and_then(|t| t.mode.as_deref())
                .unwrap_or("Terminate");
            let mut conditions = Vec::new();
            let same_port = &by_port[&listener.port];
            let protocol_conflict = same_port.iter().any(|(p, _)| p != protocol);
            let hostname_conflict = same_port
                .iter()
                .filter(|(p, h)| p == protocol && *h == listener.hostname)
                .count()
                > 1;
            let hostname = listener
                .hostname
                .as_deref()
                .map(HostPattern::parse)
                .transpose();
            let unsupported = if protocol != "TLS" {
                Some((
                    "UnsupportedProtocol",
                    format!(
                        "protocol {protocol:?} is not supported: sniroute serves TLS passthrough only"
                    ),
                ))
            } else if mode != "Passthrough" {
                Some((
                    "UnsupportedValue",
                    format!(
                        "TLS mode {mode:?} is not supported: sniroute passes TLS through, set \
                         tls.mode: Passthrough"
                    ),
                ))
            } else {
                None
            };
            let conflict = if protocol_conflict {
                Some((
                    "ProtocolConflict",
                    "another listener on this port has another protocol",
                ))
            } else if hostname_conflict {
                Some((
                    "HostnameConflict",
                    "another listener on this port has the same protocol and hostname",
                ))
            } else {
                None
            };
            match conflict {
                Some((reason, message)) => {
                    conditions.push(cond(CONFLICTED, true, reason, message, generation));
                }
                None => conditions.push(cond(
                    CONFLICTED,
                    false,
                    "NoConflicts",
                    "no conflict",
                    generation,
                )),
            }
            let accepted = match (&unsupported, conflict, &hostname) {
                (Some((reason, why)), _, _) => Err((*reason, why.clone())),
                (None, Some((reason, message)), _) => Err((reason, message.to_owned())),
                (None, None, Err(error)) => Err((
                    "UnsupportedValue",
                    format!("hostname is not a DNS name: {error}"),
                )),
                (None, None, Ok(_)) => Ok(()),
            };
            // supportedKinds: TLSRoute where the protocol is served and allowedRoutes names it
            // (or names no kind); others named are invalid kinds.
            let kinds = listener
                .allowed_routes
                .as_ref()
                .and_then(|a| a.kinds.as_deref());
            let tls_route = RouteGroupKind {
                group: Some(GROUP.to_owned()),
                kind: Some(TLS_ROUTE.to_owned()),
            };
            let is_tls_route = |k: &RouteGroupKind| {
                k.group.as_deref().unwrap_or(GROUP) == GROUP && k.kind.as_deref() == Some(TLS_ROUTE)
            };
            let (supported_kinds, invalid_kinds): (Vec<RouteGroupKind>, Vec<String>) = match kinds {
                None | Some([]) => (vec![tls_route], Vec::new()),
                Some(kinds) => {
                    let invalid = kinds
                        .iter()
                        .filter(|k| !is_tls_route(k))
                        .map(|k| {
                            format!(
                                "{}/{}",
                                k.group.as_deref().unwrap_or(GROUP),
                                k.kind.as_deref().unwrap_or_default()
                            )
                        })
                        .collect();
                    let supported = if kinds.iter().any(is_tls_route) {
                        vec![tls_route]
                    } else {
                        Vec::new()
                    };
                    (supported, invalid)
                }
            };
            let supported_kinds = if unsupported.is_some() {
                Vec::new()
            } else {
                supported_kinds
            };
            match &accepted {
                Ok(()) => conditions.push(cond(
                    ACCEPTED,
                    true,
                    "Accepted",
                    "listener accepted",
                    generation,
                )),
                Err((reason, message)) => {
                    conditions.push(cond(ACCEPTED, false, reason, message.clone(), generation));
                }
            }
            if invalid_kinds.is_empty() {
                conditions.push(cond(
                    RESOLVED_REFS,
                    true,
                    "ResolvedRefs",
                    "all references resolved",
                    generation,
                ));
            } else {
                conditions.push(cond(
                    RESOLVED_REFS,
                    false,
                    "InvalidRouteKinds",
                    format!(
                        "route kinds {} are not supported; sniroute supports {GROUP}/{TLS_ROUTE}",
                        invalid_kinds.join(", ")
                    ),
                    generation,
                ));
            }
            let usable = accepted.is_ok() && !supported_kinds.is_empty();
            if usable {
                conditions.push(cond(
                    PROGRAMMED,
                    true,
                    "Programmed",
                    "routes attached here are served",
                    generation,
                ));
            } else {
                conditions.push(cond(
                    PROGRAMMED,
                    false,
                    "Invalid",
                    "listener is not served",
                    generation,
                ));
            }
            JudgedListener {
                spec: listener,
                name: name.clone(),
                hostname: hostname.ok().flatten(),
                port: listener.port,
                usable,
                target: None,
                status: ListenerStatus {
                    name,
                    supported_kinds,
                    attached_routes: 0,
                    conditions,
                },
            }
        })
        .collect()
}

/// The name of `gateway`'s Service.
fn service_name_of(gateway: &Gateway) -> String {
    let meta = &gateway.metadata;
    infra::service_name(&Key::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    ))
}

/// The Gateway's own conditions and addresses, from its judged listeners.
fn gateway_status(
    gateway: &Gateway,
    listeners: Vec<JudgedListener<'_>>,
    settings: &Settings,
    allocation: Option<&Allocation>,
) -> GatewayStatus {
    let generation = gateway.metadata.generation.unwrap_or_default();
    let valid = listeners.iter().filter(|l| l.usable).count();
    let per_gateway = settings.services.is_some();
    // With per-Gateway Services the address is the Service's: none can be asked for.
    let unsupported_address = gateway
        .spec
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default()
        .iter()
        .find(|asked| {
            per_gateway
                || !settings.addresses.iter().any(|have| {
                    have.value == asked.value
                        && have.kind.as_deref().unwrap_or("IPAddress")
                            == asked.kind.as_deref().unwrap_or("IPAddress")
                })
        })
        .map(|asked| asked.value.clone().unwrap_or_default());
    let parameters = gateway
        .spec
        .as_ref()
        .and_then(|s| s.infrastructure.as_ref())
        .and_then(|i| i.parameters_ref.as_ref());
    let mut conditions = Vec::new();
    let accepted = if let Some(parameters) = parameters {
        conditions.push(cond(
            ACCEPTED,
            false,
            "InvalidParameters",
            format!(
                "sniroute takes no parameters: spec.infrastructure.parametersRef {}/{} {:?} is \
                 not supported",
                parameters.group.as_deref().unwrap_or_default(),
                parameters.kind.as_deref().unwrap_or_default(),
                parameters.name.as_deref().unwrap_or_default()
            ),
            generation,
        ));
        false
    } else if let Some(address) = unsupported_address {
        conditions.push(cond(
            ACCEPTED,
            false,
            "UnsupportedAddress",
            if per_gateway {
                format!(
                    "address {address:?} cannot be asked for: each Gateway has its own \
                     Service's address"
                )
            } else {
                format!(
                    "address {address:?} is not one of sniroute's (kubernetes.gateway_api.addresses)"
                )
            },
            generation,
        ));
        false
    } else if valid == 0 {
        conditions.push(cond(
            ACCEPTED,
            false,
            "ListenersNotValid",
            "no listener is valid: sniroute serves TLS listeners with tls.mode Passthrough",
            generation,
        ));
        false
    } else if valid < listeners.len() {
        conditions.push(cond(
            ACCEPTED,
            true,
            "ListenersNotValid",
            format!(
                "{} of {} listeners are not valid; the others are served",
                listeners.len() - valid,
                listeners.len()
            ),
            generation,
        ));
        true
    } else {
        conditions.push(cond(
            ACCEPTED,
            true,
            "Accepted",
            "gateway accepted",
            generation,
        ));
        true
    };
    let addresses = match (per_gateway, allocation) {
        (false, _) => settings.addresses.clone(),
        (true, Some(allocation)) => allocation.addresses.clone(),
        (true, None) => Vec::new(),
    };
    let unserved = listeners
        .iter()
        .filter(|l| per_gateway && l.usable && l.target.is_none())
        .count();
    if !accepted {
        conditions.push(cond(
            PROGRAMMED,
            false,
            "Invalid",
            "gateway not accepted",
            generation,
        ));
    } else if per_gateway && addresses.is_empty() {
        let service = settings.services.as_ref().map_or(String::new(), |s| {
            format!("{}/{}", s.namespace, service_name_of(gateway))
        });
        conditions.push(cond(
            PROGRAMMED,
            false,
            "AddressNotAssigned",
            format!("waiting for Service {service} and its address"),
            generation,
        ));
    } else if unserved > 0 {
        conditions.push(cond(
            PROGRAMMED,
            false,
            "Pending",
            format!("{unserved} listeners wait for a pod port"),
            generation,
        ));
    } else if addresses.is_empty() {
        conditions.push(cond(
            PROGRAMMED,
            false,
            "AddressNotAssigned",
            "sniroute has no address to report: set kubernetes.gateway_api.addresses",
            generation,
        ));
    } else {
        conditions.push(cond(
            PROGRAMMED,
            true,
            "Programmed",
            "served by every sniroute replica",
            generation,
        ));
    }
    GatewayStatus {
        addresses,
        conditions,
        listeners: listeners.into_iter().map(|l| l.status).collect(),
    }
}

/// Attaches one TLSRoute to the listeners of our Gateways its parentRefs select, and adds
/// its route and status.
fn attach_route(
    objects: &Objects,
    settings: &Settings,
    key: &Key,
    route: &TlsRoute,
    gateways: &mut BTreeMap<&Key, Vec<JudgedListener<'_>>>,
    graph: &mut Graph,
) {
    let generation = route.metadata.generation.unwrap_or_default();
    let unset = super::objects::TlsRouteSpec::default();
    let spec = route.spec.as_ref().unwrap_or(&unset);
    let route_names: Vec<HostPattern> = spec
        .hostnames
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|h| HostPattern::parse(h).ok())
        .collect();
    let mut parents = Vec::new();
    let mut hostnames: Vec<HostPattern> = Vec::new();
    // The Gateways it is attached to, for `/routes` and `explain`.
    let mut attached_to: Vec<String> = Vec::new();
    // With per-Gateway Services: each pod port it is served on, the Gateway listener that
    // port is (`namespace/name:port`) and the names served there.
    let mut on_ports: BTreeMap<u16, (String, Vec<HostPattern>)> = BTreeMap::new();
    // The API refuses a parentRef given twice; should one be, it counts once.
    let mut seen_parents = BTreeSet::new();
    for parent in spec.parent_refs.as_deref().unwrap_or_default() {
        if !seen_parents.insert(parent) {
            continue;
        }
        if parent.group.as_deref().unwrap_or(GROUP) != GROUP
            || parent.kind.as_deref().unwrap_or("Gateway") != "Gateway"
        {
            continue;
        }
        let gateway_key = Key::new(
            parent
                .namespace
                .clone()
                .unwrap_or_else(|| key.namespace.clone()),
            parent.name.clone().unwrap_or_default(),
        );
        let Some(listeners) = gateways.get_mut(&gateway_key) else {
            // Not one of ours (or not there): another controller's to report.
            continue;
        };
        let gateway_ns = gateway_key.namespace.as_str();
        let selected: Vec<&mut JudgedListener<'_>> = listeners
            .iter_mut()
            .filter(|l| parent.section_name.as_ref().is_none_or(|s| *s == l.name))
            .filter(|l| parent.port.is_none_or(|p| Some(p) == l.port))
            .collect();
        let accepted = if selected.is_empty() {
            Err((
                "NoMatchingParent",
                format!(
                    "Gateway {gateway_key} has no listener{}{}",
                    parent
                        .section_name
                        .as_ref()
                        .map(|s| format!(" named {s:?}"))
                        .unwrap_or_default(),
                    parent
                        .port
                        .map(|p| format!(" on port {p}"))
                        .unwrap_or_default()
                ),
            ))
        } else {
            let allowed: Vec<&mut JudgedListener<'_>> = selected
                .into_iter()
                .filter(|l| {
                    l.usable && allows_namespace(l.spec, gateway_ns, &key.namespace, objects)
                })
                .collect();
            if allowed.is_empty() {
                Err((
                    "NotAllowedByListeners",
                    format!(
                        "no listener of Gateway {gateway_key} selected by this parentRef \
                         allows TLSRoutes from namespace {}",
                        key.namespace
                    ),
                ))
            } else {
                let mut matched = false;
                for listener in allowed {
                    let names: Vec<HostPattern> = route_names
                        .iter()
                        .filter_map(|name| intersect(listener.hostname.as_ref(), name))
                        .collect();
                    if names.is_empty() {
                        continue;
                    }
                    matched = true;
                    listener.status.attached_routes += 1;
                    let mut served = match (settings.services.is_some(), listener.target) {
                        (false, _) => Some(&mut hostnames),
                        (true, Some(target)) => {
                            let at = format!("{gateway_key}:{}", listener.port.unwrap_or_default());
                            Some(&mut on_ports.entry(target).or_insert((at, Vec::new())).1)
                        }
                        // Attached, served once the Service gives the port a pod port.
                        (true, None) => None,
                    };
                    for name in names {
                        if let Some(served) = served.as_deref_mut() {
                            if !served.contains(&name) {
                                served.push(name);
                            }
                        }
                    }
                }
                if matched {
                    let gateway = gateway_key.to_string();
                    if !attached_to.contains(&gateway) {
                        attached_to.push(gateway);
                    }
                    Ok(())
                } else {
                    Err((
                        "NoMatchingListenerHostname",
                        format!(
                            "no hostname of the route matches a listener of Gateway {gateway_key}"
                        ),
                    ))
                }
            }
        };
        let accepted_cond = match accepted {
            Ok(()) => cond(ACCEPTED, true, "Accepted", "route accepted", generation),
            Err((reason, message)) => cond(ACCEPTED, false, reason, message, generation),
        };
        parents.push(ParentStatus {
            parent_ref: parent.clone(),
            conditions: vec![accepted_cond],
        });
    }
    if parents.is_empty() {
        return;
    }

    let resolved = resolve_backends(objects, key, spec);
    let refs_cond = match &resolved.problem {
        None => cond(
            RESOLVED_REFS,
            true,
            "ResolvedRefs",
            "all references resolved",
            generation,
        ),
        Some((reason, message)) => cond(RESOLVED_REFS, false, reason, message.clone(), generation),
    };
    for parent in &mut parents {
        parent.conditions.push(refs_cond.clone());
    }
    graph.routes_status.insert(key.clone(), parents);
    // Where it is served: the `listen` listeners, or each pod port of a Gateway listener.
    let served: Vec<(Option<u16>, String, Vec<HostPattern>)> = if settings.services.is_none() {
        if hostnames.is_empty() {
            return;
        }
        vec![(None, attached_to.join(", "), hostnames)]
    } else {
        on_ports
            .into_iter()
            .map(|(target, (at, names))| (Some(target), format!("{at} (pod port {target})"), names))
            .collect()
    };
    if served.is_empty() {
        return;
    }
    let no_backend = resolved.backends.backends.is_empty().then(|| {
        resolved
            .problem
            .map(|(_, message)| message)
            .unwrap_or_else(|| "no backend has a serving endpoint or a weight".into())
    });
    if let Some(why) = &no_backend {
        graph.refused.push(Refused {
            route: key.clone(),
            why: why.clone(),
        });
    }
    let one = served.len() == 1;
    for (port, at, names) in served {
        // One table route per listener port it is served on, named for the TLSRoute alone
        // when there is one (the usual case, and every route without per-Gateway Services).
        let name = match (one, port) {
            (true, _) | (false, None) => key.to_string(),
            (false, Some(_)) => format!("{key}@{}", at.split(' ').next().unwrap_or_default()),
        };
        let source = Arc::<str>::from(format!("tlsroute {key} on gateway {at}"));
        let mut route_spec = match &no_backend {
            // In the table, holding its hostnames, so its connections are refused as the
            // route's own (closed, no TLS alert), not as a name nobody routes.
            Some(why) => RouteSpec::refusing(name, names, why.as_str(), source),
            None => {
                let mut route_spec =
                    RouteSpec::new(name, names, resolved.backends.backends.clone(), source);
                if !resolved.backends.facts.is_empty() {
                    route_spec.facts = resolved.backends.facts.clone();
                    route_spec.zone = settings.zone.as_deref().map(Into::into);
                }
                route_spec
            }
        };
        route_spec.port = port;
        graph.routes.push(route_spec);
    }
}

/// The backends of a route and the first reference that does not resolve.
struct Resolved {
    backends: Backends,
    problem: Option<(&'static str, String)>,
}

/// Resolves every backendRef of the route's rules. Each reference's weight is spread evenly
/// over its endpoints, so the route's connections split between its Services by weight and
/// within a Service by least connections.
fn resolve_backends(objects: &Objects, key: &Key, spec: &super::objects::TlsRouteSpec) -> Resolved {
    let mut groups: Vec<(u64, Backends)> = Vec::new();
    let mut problem = None;
    let refs = spec
        .rules
        .as_deref()
        .unwrap_or_default()
        .iter()
        .flat_map(|rule| rule.backend_refs.as_deref().unwrap_or_default());
    for backend_ref in refs {
        match resolve_one(objects, key, backend_ref) {
            Err(why) => {
                problem.get_or_insert(why);
            }
            Ok(None) => {}
            // The CRD bounds weights to 0..=1,000,000; unset is 1 and 0 sends nothing.
            Ok(Some(backends)) => match backend_ref.weight.map_or(Ok(1), u64::try_from) {
                Ok(0) | Err(_) => {}
                Ok(weight) => groups.push((weight, backends)),
            },
        }
    }
    Resolved {
        backends: spread_weights(groups),
        problem,
    }
}

/// One route's backends from its references' (weight, backends): each endpoint weighs its
/// reference's weight over the reference's endpoint count, scaled by the least common
/// multiple of those counts so the shares stay whole numbers. An address two references
/// share weighs both shares. Facts are left empty when they would say nothing (every
/// endpoint ready, in no zone, of one weight), so such routes hash as before weights existed.
fn spread_weights(groups: Vec<(u64, Backends)>) -> Backends {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    // Capped: past it shares are rounded (a route of hundreds of endpoints per reference).
    const MAX_SCALE: u64 = 1 << 20;
    let scale = groups
        .iter()
        .map(|(_, b)| b.backends.len().max(1) as u64)
        .fold(1, |l, n| (l / gcd(l, n)).saturating_mul(n).min(MAX_SCALE));
    let mut found: Vec<(Backend, BackendFacts)> = Vec::new();
    let mut any_facts = false;
    for (weight, backends) in groups {
        let n = backends.backends.len().max(1) as u64;
        let share = u32::try_from((weight.saturating_mul(scale) / n).max(1)).unwrap_or(u32::MAX);
        let facts = if backends.facts.is_empty() {
            vec![BackendFacts::default(); backends.backends.len()]
        } else {
            any_facts = true;
            backends.facts
        };
        for (backend, mut facts) in backends.backends.into_iter().zip(facts) {
            match found.iter_mut().find(|(b, _)| *b == backend) {
                Some((_, kept)) => kept.weight = kept.weight.saturating_add(share),
                None => {
                    facts.weight = share;
                    found.push((backend, facts));
                }
            }
        }
    }
    let first = found.first().map(|(_, f)| f.weight);
    if found.iter().all(|(_, f)| Some(f.weight) == first) {
        found.iter_mut().for_each(|(_, f)| f.weight = 1);
    } else {
        any_facts = true;
    }
    let (backends, facts): (Vec<Backend>, Vec<BackendFacts>) = found.into_iter().unzip();
    Backends {
        backends,
        facts: if any_facts { facts } else { Vec::new() },
    }
}

/// One backendRef: its backends, `None` if it resolves but has nowhere to send to, or the
/// ResolvedRefs reason it fails with.
fn resolve_one(
    objects: &Objects,
    key: &Key,
    backend_ref: &BackendRef,
) -> Result<Option<Backends>, (&'static str, String)> {
    let group = backend_ref.group.as_deref().unwrap_or_default();
    let kind = backend_ref.kind.as_deref().unwrap_or("Service");
    let name = backend_ref.name.clone().unwrap_or_default();
    if !group.is_empty() || kind != "Service" {
        return Err((
            "InvalidKind",
            format!("backendRef {group}/{kind} {name:?} is not a core Service"),
        ));
    }
    let namespace = backend_ref
        .namespace
        .clone()
        .unwrap_or_else(|| key.namespace.clone());
    let service_key = Key::new(namespace.clone(), name.clone());
    if namespace != key.namespace && !granted(objects, &key.namespace, &service_key) {
        return Err((
            "RefNotPermitted",
            format!(
                "backendRef to Service {service_key} is not permitted: no ReferenceGrant in \
                 namespace {namespace} allows TLSRoutes from namespace {}",
                key.namespace
            ),
        ));
    }
    let Some(service) = objects.services.get(&service_key) else {
        return Err((
            "BackendNotFound",
            format!("Service {service_key} does not exist"),
        ));
    };
    let port = backend_ref.port.and_then(|p| u16::try_from(p).ok());
    let unset = crate::kube::objects::ServiceSpec::default();
    let service_spec = service.spec.as_ref().unwrap_or(&unset);
    let service_port = service_spec
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|p| port.is_some() && p.port.and_then(|n| u16::try_from(n).ok()) == port);
    let (Some(port), Some(service_port)) = (port, service_port) else {
        return Err((
            "BackendNotFound",
            format!(
                "Service {service_key} has no port {}",
                backend_ref
                    .port
                    .map_or_else(|| "(backendRef names none)".to_owned(), |p| p.to_string())
            ),
        ));
    };
    let port_name = service_port.name.as_deref().filter(|n| !n.is_empty());
    if let Some(slices) = &objects.slices {
        let of_service: Vec<&EndpointSlice> = slices
            .get(&service_key)
            .into_iter()
            .flat_map(|m| m.values())
            .collect();
        if let Ok(backends) = endpoints_of(&of_service, port_name) {
            return Ok(Some(backends));
        }
    }
    let ip: Option<IpAddr> = service_spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse().ok());
    Ok(ip.map(|ip| Backends {
        backends: vec![Backend::Addr(SocketAddr::new(ip, port))],
        facts: Vec::new(),
    }))
}

/// Whether a ReferenceGrant in the Service's namespace lets TLSRoutes of `from` refer to it
/// (GEP-709: `from` group/kind/namespace, `to` group/kind and optional name).
fn granted(objects: &Objects, from: &str, service: &Key) -> bool {
    objects
        .grants
        .iter()
        .filter(|(grant_key, _)| grant_key.namespace == service.namespace)
        .filter_map(|(_, grant)| grant.spec.as_ref())
        .any(|grant| {
            let from_ok = grant.from.as_deref().unwrap_or_default().iter().any(|f| {
                f.group.as_deref() == Some(GROUP)
                    && f.kind.as_deref() == Some(TLS_ROUTE)
                    && f.namespace.as_deref() == Some(from)
            });
            let to_ok = grant.to.as_deref().unwrap_or_default().iter().any(|t| {
                t.group.as_deref().unwrap_or_default().is_empty()
                    && t.kind.as_deref() == Some("Service")
                    && t.name.as_ref().is_none_or(|n| *n == service.name)
            });
            from_ok && to_ok
        })
}

/// Whether `listener` admits routes from `route_ns` (`allowedRoutes.namespaces`).
fn allows_namespace(
    listener: &Listener,
    gateway_ns: &str,
    route_ns: &str,
    objects: &Objects,
) -> bool {
    let namespaces = listener
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
        "All" => true,
        "Same" => gateway_ns == route_ns,
        "Selector" => {
            let Some(selector) = namespaces.and_then(|n| n.selector.as_ref()) else {
                return false;
            };
            objects
                .namespaces
                .get(route_ns)
                .is_some_and(|labels| selects(selector, labels))
        }
        _ => false,
    }
}

/// Whether a label selector selects these labels (`matchLabels` and `matchExpressions`,
/// all of them; an unknown operator selects nothing).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let match_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    match_labels && expressions
}

/// The names a route hostname serves on a listener: the listener's hostname (none: every
/// name) intersected with the route's, or `None` when they do not meet.
pub fn intersect(listener: Option<&HostPattern>, route: &HostPattern) -> Option<HostPattern> {
    let Some(listener) = listener else {
        return Some(route.clone());
    };
    let under = |name: &str, suffix: &str| {
        name.len() > suffix.len() + 1
            && name.ends_with(suffix)
            && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
    };
    match (listener, route) {
        (HostPattern::Exact(l), HostPattern::Exact(r)) => (l == r).then(|| route.clone()),
        (HostPattern::Exact(l), HostPattern::Wildcard(s)) => {
            under(l.as_str(), s.as_str()).then(|| listener.clone())
        }
        (HostPattern::Wildcard(s), HostPattern::Exact(r)) => {
            under(r.as_str(), s.as_str()).then(|| route.clone())
        }
        (HostPattern::Wildcard(ls), HostPattern::Wildcard(rs)) => {
            if ls == rs || under(rs.as_str(), ls.as_str()) {
                Some(route.clone())
            } else if under(ls.as_str(), rs.as_str()) {
                Some(listener.clone())
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
#[path = "graph_tests.rs"]
mod tests;
