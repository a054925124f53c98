//! From one HostedCluster, its Routes and its Services to the routes sniroute serves: a pure
//! function, mirroring HyperShift's shared-ingress config generator.
//!
//! The rules, in order:
//!
//! 1. A HostedCluster being deleted (`metadata.deletionTimestamp` set) is skipped.
//! 2. Only clusters that use the shared ingress are routed: ARO HCP clusters (platform
//!    `Azure` authenticating with `ManagedIdentities`; an Azure cluster without
//!    `spec.platform.azure` counts, as HyperShift's fallback does) whose API server is public
//!    (Azure `topology` unset, `Public` or `PublicAndPrivate`). Others are skipped.
//! 3. `spec.networking.apiServer.allowedCIDRBlocks`, when set, restricts every route of the
//!    cluster to those networks (empty entries are ignored). One entry that is not a CIDR
//!    skips the whole cluster: routing it with a shorter list could admit no-one, or with
//!    none, everyone.
//! 4. The hosted control plane namespace is `<namespace>-<name>`. Its Routes labelled
//!    `hypershift.openshift.io/hosted-control-plane` and named `kube-apiserver`, `oauth`,
//!    `konnectivity-server`, `ignition-server` or `metrics-proxy` are routed, in name order:
//!    `spec.host` goes to the ClusterIP of the Service named by `spec.to.name` in that
//!    namespace. The port is the one HyperShift's HAProxy uses for that endpoint (6443, 6443,
//!    8091, 443, 443) when the Service has it, else the Service's first port, so a Service
//!    port change re-routes. Routes with other names (internal routes) are not served.
//! 5. `spec.kubeAPIServerDNSName`, when set, is one more name for the `kube-apiserver`
//!    Service (joined to the `kube-apiserver` Route's route when that goes to it too).
//! 6. `spec.clusterID` is attached to the route to the `kube-apiserver` Service, for
//!    PROXY-v2 connections from the cluster's nodes, unless the API server is private
//!    (Azure `topology` `Private` or `PublicAndPrivate`, or Swift networking), where
//!    HyperShift serves no such backend either.
//!
//! 7. With EndpointSlices known ([`Endpoints`]), a Service's backends are its pods: the
//!    chosen Service port gives the port *name*, the EndpointSlice port of that name (or the
//!    unnamed one) the number; IPv4 and IPv6 slices both count. Ready endpoints take
//!    connections, serving-but-terminating ones only as a last resort, others none. A Service
//!    with no slice or no serving endpoint goes to its ClusterIP, reported as a [`Fallback`].
//!
//! A Route that cannot be routed (missing or malformed Service, no ClusterIP, no port, a bad
//! host) is left out and reported as a [`Rejection`]; the cluster's other routes still are.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use proxy::canonical_net;
use proxy::{Backend, BackendFacts, Condition, HostPattern};

use super::objects::{EndpointSlice, HostedCluster, OcpRoute, Service};
use proxy::RouteSpec;

/// The Service HyperShift's kube-apiserver listens behind, in every control plane namespace.
pub const KUBE_APISERVER_SERVICE: &str = "kube-apiserver";

/// The Routes the shared ingress serves, by name, with the Service port HyperShift's HAProxy
/// uses for each.
pub const SERVED_ROUTES: &[(&str, u16)] = &[
    ("kube-apiserver", 6443),
    ("oauth", 6443),
    ("konnectivity-server", 8091),
    ("ignition-server", 443),
    ("metrics-proxy", 443),
];

/// The HAProxy port for the kube-apiserver (its Route and `kubeAPIServerDNSName`).
const KUBE_APISERVER_PORT: u16 = 6443;

/// An object as the watch delivered it: parsed, or not (then with what is known of it).
pub type Watched<T> = Result<T, Invalid>;

/// An object that did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Its `metadata.name`, if that much parsed.
    pub name: String,
    /// What was wrong.
    pub error: String,
}

/// What one hosted cluster maps to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapped {
    /// Why the whole cluster is not routed, if it is not.
    pub skipped: Option<Skip>,
    /// Its routes, in a stable order.
    pub routes: Vec<RouteSpec>,
    /// Its Routes (or names) that could not be routed.
    pub rejections: Vec<Rejection>,
    /// Services routed to their ClusterIP although EndpointSlices are known.
    pub fallbacks: Vec<Fallback>,
}

/// The EndpointSlices naming a Service, by the Service's name.
pub type SlicesOf<'a> = dyn Fn(&str) -> Vec<&'a EndpointSlice> + 'a;

/// What a cluster's Services resolve to beyond their ClusterIP.
#[derive(Clone, Copy)]
pub struct Endpoints<'a> {
    /// The EndpointSlices of the control plane namespace that name a Service, or `None`
    /// when they are not known (`kubernetes.backends: service`, or not listable): then
    /// every Service goes to its ClusterIP.
    pub slices: Option<&'a SlicesOf<'a>>,
    /// This replica's zone: endpoints there are preferred.
    pub zone: Option<&'a str>,
}

impl Endpoints<'_> {
    /// Every Service to its ClusterIP.
    pub fn cluster_ip() -> Self {
        Self {
            slices: None,
            zone: None,
        }
    }
}

/// A Service routed to its ClusterIP while EndpointSlices are known, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// `<namespace>/<name>` of the Service.
    pub service: String,
    /// Why: `no EndpointSlice` or `no serving endpoint`.
    pub reason: &'static str,
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Service {} has {}; routing to its ClusterIP",
            self.service, self.reason
        )
    }
}

/// Why a whole hosted cluster is not routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// No `metadata.name` or `metadata.namespace`.
    Unnamed,
    /// `metadata.deletionTimestamp` is set.
    BeingDeleted,
    /// Not an ARO HCP cluster: it does not use the shared ingress.
    NotSharedIngress {
        /// `spec.platform.type`, and the Azure authentication type when it matters.
        platform: String,
    },
    /// The API server is not publicly exposed.
    NotPublic {
        /// The topology or endpoint access that says so.
        access: String,
    },
    /// An `allowedCIDRBlocks` entry is not a CIDR.
    BadAllowedCidr {
        /// The entry.
        cidr: String,
    },
}

impl Skip {
    /// A short, bounded name (for logs and metric labels).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unnamed => "unnamed",
            Self::BeingDeleted => "being_deleted",
            Self::NotSharedIngress { .. } => "not_shared_ingress",
            Self::NotPublic { .. } => "not_public",
            Self::BadAllowedCidr { .. } => "bad_allowed_cidr",
        }
    }

    /// Whether the cluster is wrong (worth a warning) rather than deliberately not routed.
    pub fn is_problem(&self) -> bool {
        matches!(self, Self::Unnamed | Self::BadAllowedCidr { .. })
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unnamed => f.write_str("no metadata.name or metadata.namespace"),
            Self::BeingDeleted => f.write_str("being deleted"),
            Self::NotSharedIngress { platform } => {
                write!(
                    f,
                    "not an ARO HCP cluster (platform {platform}): no shared ingress"
                )
            }
            Self::NotPublic { access } => write!(f, "API server not public ({access})"),
            Self::BadAllowedCidr { cidr } => write!(
                f,
                "spec.networking.apiServer.allowedCIDRBlocks: {cidr:?} is not a CIDR; \
                 the cluster is not routed until it is fixed"
            ),
        }
    }
}

/// One Route (or `kubeAPIServerDNSName`) of a routed cluster that is not routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The object, e.g. `route clusters-foo/oauth`.
    pub object: String,
    /// Why, as a bounded name.
    pub reason: RejectReason,
    /// Why, for people.
    pub detail: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.detail)
    }
}

/// Why one route was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The Route object did not parse.
    MalformedRoute,
    /// The Route has no `spec.host`.
    NoHost,
    /// `spec.host` (or `kubeAPIServerDNSName`) is not a hostname.
    BadHostname,
    /// `spec.to` is not a Service, or names none.
    NoService,
    /// The Service it names does not exist.
    MissingService,
    /// The Service did not parse.
    MalformedService,
    /// The Service has no usable ClusterIP (unset, `None`, not an address).
    NoClusterIp,
    /// The Service has no usable port.
    NoPort,
    /// Nothing routes to the kube-apiserver Service, so the ClusterID has no route.
    NoClusterIdRoute,
}

impl RejectReason {
    /// A short, bounded name (for logs and metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedRoute => "malformed_route",
            Self::NoHost => "no_host",
            Self::BadHostname => "bad_hostname",
            Self::NoService => "no_service",
            Self::MissingService => "missing_service",
            Self::MalformedService => "malformed_service",
            Self::NoClusterIp => "no_cluster_ip",
            Self::NoPort => "no_port",
            Self::NoClusterIdRoute => "no_cluster_id_route",
        }
    }
}

/// The hosted control plane namespace of `hc`: `<namespace>-<name>`.
pub fn hcp_namespace(namespace: &str, name: &str) -> String {
    format!("{namespace}-{name}")
}

/// The `source` of every route made from the HostedCluster `namespace/name`.
pub fn source_of(namespace: &str, name: &str) -> String {
    format!("hostedcluster {namespace}/{name}")
}

/// Maps one HostedCluster to its routes, every Service to its ClusterIP.
///
/// `routes` are the labelled Routes of its control plane namespace (any order; names not
/// served are ignored) and `service` finds a Service of that namespace by name.
pub fn map_cluster<'a>(
    hc: &HostedCluster,
    routes: impl IntoIterator<Item = &'a Watched<OcpRoute>>,
    service: impl Fn(&str) -> Option<&'a Watched<Service>>,
) -> Mapped {
    map_cluster_to(hc, routes, service, Endpoints::cluster_ip())
}

/// [`map_cluster`], each Service to its endpoints where `endpoints` knows them.
pub fn map_cluster_to<'a, 'e>(
    hc: &HostedCluster,
    routes: impl IntoIterator<Item = &'a Watched<OcpRoute>>,
    service: impl Fn(&str) -> Option<&'a Watched<Service>>,
    endpoints: Endpoints<'e>,
) -> Mapped {
    let gated = match gate(hc) {
        Ok(gated) => gated,
        Err(skip) => {
            return Mapped {
                skipped: Some(skip),
                ..Mapped::default()
            }
        }
    };
    let Gated {
        namespace,
        name,
        spec,
        allowed,
    } = gated;
    let hcp = hcp_namespace(namespace, name);
    let source: Arc<str> = source_of(namespace, name).into();
    let ctx = Ctx {
        hcp: &hcp,
        cluster: name,
        hc_namespace: namespace,
        source: &source,
        allowed: &allowed,
        endpoints,
    };
    let mut mapped = Mapped::default();

    // The index in `mapped.routes` of the route to the kube-apiserver Service.
    let mut kas: Option<usize> = None;
    for (route_name, port, route) in served(routes) {
        let object = format!("route {hcp}/{route_name}");
        match ctx.route(
            &object,
            route_name,
            port,
            route,
            &service,
            &mut mapped.fallbacks,
        ) {
            Ok((spec, to_kas)) => {
                if to_kas && kas.is_none() {
                    kas = Some(mapped.routes.len());
                }
                mapped.routes.push(spec);
            }
            Err(rejection) => mapped.rejections.push(rejection),
        }
    }
    if let Some(dns_name) = spec
        .and_then(|s| s.kube_api_server_dns_name.as_deref())
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        add_dns_name(&ctx, dns_name, &service, &mut kas, &mut mapped);
    }
    let cluster_id = spec
        .and_then(|s| s.cluster_id.as_deref())
        .map(str::trim)
        .unwrap_or_default();
    let private = spec
        .and_then(|s| s.platform.as_ref())
        .is_some_and(is_private);
    if !cluster_id.is_empty() && !private {
        attach_cluster_id(&ctx, cluster_id, kas, &mut mapped);
    }
    mapped.fallbacks.dedup();
    mapped
}

/// What a cluster that passes [`gate`] routes from.
struct Gated<'h> {
    namespace: &'h str,
    name: &'h str,
    spec: Option<&'h super::objects::HostedClusterSpec>,
    allowed: Vec<IpNet>,
}

/// Rules 1 to 3: whether the cluster is routed at all, and the networks its routes admit.
fn gate(hc: &HostedCluster) -> Result<Gated<'_>, Skip> {
    let (Some(namespace), Some(name)) = (
        hc.metadata.namespace.as_deref().filter(|s| !s.is_empty()),
        hc.metadata.name.as_deref().filter(|s| !s.is_empty()),
    ) else {
        return Err(Skip::Unnamed);
    };
    if hc.metadata.deletion_timestamp.is_some() {
        return Err(Skip::BeingDeleted);
    }
    let spec = hc.spec.as_ref();
    let unset = super::objects::PlatformSpec::default();
    let platform = spec.and_then(|s| s.platform.as_ref()).unwrap_or(&unset);
    if let Some(skip) = shared_ingress_skip(platform) {
        return Err(skip);
    }
    let blocks = spec
        .and_then(|s| s.networking.as_ref())
        .and_then(|n| n.api_server.as_ref())
        .and_then(|a| a.allowed_cidr_blocks.as_deref())
        .unwrap_or_default();
    let allowed = blocks
        .iter()
        .filter(|c| !c.trim().is_empty())
        .map(|cidr| {
            cidr.trim()
                .parse::<IpNet>()
                .map(canonical_net)
                .map_err(|_| Skip::BadAllowedCidr { cidr: cidr.clone() })
        })
        .collect::<Result<_, _>>()?;
    Ok(Gated {
        namespace,
        name,
        spec,
        allowed,
    })
}

/// Rule 4's Routes: the served names among `routes`, with their HAProxy port, in name order
/// (the watch delivers them in any order).
fn served<'a>(
    routes: impl IntoIterator<Item = &'a Watched<OcpRoute>>,
) -> Vec<(&'static str, u16, &'a Watched<OcpRoute>)> {
    let mut served: Vec<_> = routes
        .into_iter()
        .filter_map(|route| {
            let route_name = match route {
                Ok(r) => r.metadata.name.as_deref().unwrap_or_default(),
                Err(invalid) => invalid.name.as_str(),
            };
            SERVED_ROUTES
                .iter()
                .find(|(served, _)| *served == route_name)
                .map(|&(served, port)| (served, port, route))
        })
        .collect();
    served.sort_by_key(|(name, _, _)| *name);
    served
}

/// Rule 5: `kubeAPIServerDNSName` joins the kube-apiserver route, or makes its own.
fn add_dns_name<'a>(
    ctx: &Ctx<'_, '_>,
    dns_name: &str,
    service: &impl Fn(&str) -> Option<&'a Watched<Service>>,
    kas: &mut Option<usize>,
    mapped: &mut Mapped,
) {
    let object = format!(
        "hostedcluster {}/{} spec.kubeAPIServerDNSName",
        ctx.hc_namespace, ctx.cluster
    );
    let pattern = match host(&object, dns_name) {
        Ok(pattern) => pattern,
        Err(rejection) => return mapped.rejections.push(rejection),
    };
    if let Some(i) = *kas {
        if !mapped.routes[i].hostnames.contains(&pattern) {
            mapped.routes[i].hostnames.push(pattern);
        }
        return;
    }
    let backend = ctx.backend(
        &object,
        KUBE_APISERVER_SERVICE,
        KUBE_APISERVER_PORT,
        service,
        &mut mapped.fallbacks,
    );
    match backend {
        Ok(backend) => {
            *kas = Some(mapped.routes.len());
            let spec = ctx.spec("kube-apiserver-custom", vec![pattern], backend);
            mapped.routes.push(spec);
        }
        Err(rejection) => mapped.rejections.push(rejection),
    }
}

/// Rule 6: the ClusterID goes on the kube-apiserver route, or is reported as unroutable.
fn attach_cluster_id(ctx: &Ctx<'_, '_>, cluster_id: &str, kas: Option<usize>, mapped: &mut Mapped) {
    match kas {
        Some(i) => mapped.routes[i].cluster_id = Some(cluster_id.into()),
        None => mapped.rejections.push(Rejection {
            object: format!(
                "hostedcluster {}/{} spec.clusterID",
                ctx.hc_namespace, ctx.cluster
            ),
            reason: RejectReason::NoClusterIdRoute,
            detail: format!(
                "no Route or kubeAPIServerDNSName reaches Service {}/{KUBE_APISERVER_SERVICE}, \
                 so connections naming cluster ID {cluster_id} are refused",
                ctx.hcp
            ),
        }),
    }
}

/// What every route of one cluster shares.
struct Ctx<'c, 'e> {
    hcp: &'c str,
    cluster: &'c str,
    hc_namespace: &'c str,
    source: &'c Arc<str>,
    allowed: &'c [IpNet],
    endpoints: Endpoints<'e>,
}

/// A route's backends and what is known of each.
pub(crate) struct Backends {
    pub(crate) backends: Vec<Backend>,
    pub(crate) facts: Vec<BackendFacts>,
}

impl Ctx<'_, '_> {
    /// The route for one served Route, and whether it goes to the kube-apiserver Service.
    fn route<'a>(
        &self,
        object: &str,
        route_name: &str,
        port: u16,
        route: &Watched<OcpRoute>,
        service: &impl Fn(&str) -> Option<&'a Watched<Service>>,
        fallbacks: &mut Vec<Fallback>,
    ) -> Result<(RouteSpec, bool), Rejection> {
        let reject = |reason, detail: String| Rejection {
            object: object.to_owned(),
            reason,
            detail,
        };
        let route = route.as_ref().map_err(|invalid| {
            reject(
                RejectReason::MalformedRoute,
                format!("does not parse: {}", invalid.error),
            )
        })?;
        let spec = route.spec.as_ref();
        let raw_host = spec
            .and_then(|s| s.host.as_deref())
            .map(str::trim)
            .unwrap_or_default();
        if raw_host.is_empty() {
            return Err(reject(RejectReason::NoHost, "no spec.host".into()));
        }
        let pattern = host(object, raw_host)?;
        let to = spec.and_then(|s| s.to.as_ref());
        let kind = to.and_then(|t| t.kind.as_deref()).unwrap_or("Service");
        let target = to.and_then(|t| t.name.as_deref()).unwrap_or_default();
        if kind != "Service" || target.is_empty() {
            return Err(reject(
                RejectReason::NoService,
                format!("spec.to is {kind} {target:?}, not a Service"),
            ));
        }
        let backend = self.backend(object, target, port, service, fallbacks)?;
        let spec = self.spec(route_name, vec![pattern], backend);
        Ok((spec, target == KUBE_APISERVER_SERVICE))
    }

    /// The endpoints of Service `name` for the port preferred (`port`, else its first), or
    /// its ClusterIP:port when it has none.
    fn backend<'a>(
        &self,
        object: &str,
        name: &str,
        port: u16,
        service: &impl Fn(&str) -> Option<&'a Watched<Service>>,
        fallbacks: &mut Vec<Fallback>,
    ) -> Result<Backends, Rejection> {
        let hcp = self.hcp;
        let reject = |reason, detail: String| Rejection {
            object: object.to_owned(),
            reason,
            detail,
        };
        let svc = match service(name) {
            None => {
                return Err(reject(
                    RejectReason::MissingService,
                    format!("Service {hcp}/{name} does not exist"),
                ))
            }
            Some(Err(invalid)) => {
                return Err(reject(
                    RejectReason::MalformedService,
                    format!("Service {hcp}/{name} does not parse: {}", invalid.error),
                ))
            }
            Some(Ok(svc)) => svc,
        };
        let spec = svc.spec.as_ref();
        let raw_ip = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .unwrap_or_default();
        let ip: IpAddr = raw_ip.parse().map_err(|_| {
            reject(
                RejectReason::NoClusterIp,
                format!("Service {hcp}/{name} has no usable spec.clusterIP ({raw_ip:?})"),
            )
        })?;
        let ports: Vec<(Option<&str>, u16)> = spec
            .and_then(|s| s.ports.as_deref())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                let number = p.port.and_then(|n| u16::try_from(n).ok())?;
                Some((p.name.as_deref().filter(|n| !n.is_empty()), number))
            })
            .filter(|&(_, n)| n != 0)
            .collect();
        let (port_name, chosen) = match ports.iter().find(|(_, n)| *n == port) {
            Some(&found) => found,
            None => *ports.first().ok_or_else(|| {
                reject(
                    RejectReason::NoPort,
                    format!("Service {hcp}/{name} has no port from 1 to 65535"),
                )
            })?,
        };
        if let Some(slices) = self.endpoints.slices {
            match endpoints_of(&slices(name), port_name) {
                Ok(backends) => return Ok(backends),
                Err(reason) => fallbacks.push(Fallback {
                    service: format!("{hcp}/{name}"),
                    reason,
                }),
            }
        }
        Ok(Backends {
            backends: vec![Backend::Addr(SocketAddr::new(ip, chosen))],
            facts: Vec::new(),
        })
    }

    fn spec(&self, what: &str, hostnames: Vec<HostPattern>, backends: Backends) -> RouteSpec {
        let mut spec = RouteSpec::new(
            format!("{}/{}/{what}", self.hc_namespace, self.cluster),
            hostnames,
            backends.backends,
            self.source.clone(),
        );
        if !backends.facts.is_empty() {
            spec.facts = backends.facts;
            spec.zone = self.endpoints.zone.map(Into::into);
        }
        spec.allowed_cidrs = self.allowed.to_vec();
        spec
    }
}

/// The serving endpoints of a Service's `slices` on the port named `port_name` (`None`: the
/// unnamed port), in address order; or why there are none.
///
/// Unset conditions mean what the EndpointSlice API documents: `ready` true, `serving` as
/// `ready`, `terminating` false.
pub(crate) fn endpoints_of(
    slices: &[&EndpointSlice],
    port_name: Option<&str>,
) -> Result<Backends, &'static str> {
    if slices.is_empty() {
        return Err("no EndpointSlice");
    }
    let mut found: Vec<(SocketAddr, BackendFacts)> = Vec::new();
    for slice in slices {
        if !matches!(slice.address_type.as_deref(), Some("IPv4" | "IPv6")) {
            continue;
        }
        let number = slice
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find_map(|p| {
                let name = p.name.as_deref().filter(|n| !n.is_empty());
                (name == port_name)
                    .then(|| p.port.and_then(|n| u16::try_from(n).ok()))
                    .flatten()
                    .filter(|&n| n != 0)
            });
        let Some(number) = number else {
            continue;
        };
        for endpoint in slice.endpoints.as_deref().unwrap_or_default() {
            let Some(ip) = endpoint
                .addresses
                .as_deref()
                .and_then(<[String]>::first)
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let condition = if ready && !terminating {
                Condition::Ready
            } else if serving && terminating {
                Condition::Terminating
            } else {
                continue;
            };
            let facts = BackendFacts {
                zone: endpoint
                    .zone
                    .as_deref()
                    .filter(|z| !z.is_empty())
                    .map(Into::into),
                condition,
                ..BackendFacts::default()
            };
            found.push((SocketAddr::new(ip, number), facts));
        }
    }
    // Slices arrive in any order, and a pod moving between slices can briefly be in two:
    // one entry per address, its best condition, in a stable order.
    found.sort_by_key(|(addr, facts)| (*addr, facts.condition));
    found.dedup_by_key(|(addr, _)| *addr);
    if found.is_empty() {
        return Err("no serving endpoint");
    }
    let (backends, facts) = found
        .into_iter()
        .map(|(addr, facts)| (Backend::Addr(addr), facts))
        .unzip();
    Ok(Backends { backends, facts })
}

/// An exact hostname (a Route's host is never a pattern).
fn host(object: &str, raw: &str) -> Result<HostPattern, Rejection> {
    let reject = |detail: String| Rejection {
        object: object.to_owned(),
        reason: RejectReason::BadHostname,
        detail,
    };
    match HostPattern::parse(raw) {
        Ok(pattern @ HostPattern::Exact(_)) => Ok(pattern),
        Ok(HostPattern::Wildcard(_)) => Err(reject(format!(
            "host {raw:?} is a wildcard; only exact names are routed"
        ))),
        Err(err) => Err(reject(format!("host {raw:?}: {err}"))),
    }
}

/// Why a cluster with this platform does not use the shared ingress, if it does not.
fn shared_ingress_skip(platform: &super::objects::PlatformSpec) -> Option<Skip> {
    let kind = platform.kind.as_deref().unwrap_or_default();
    if kind != "Azure" {
        return Some(Skip::NotSharedIngress {
            platform: if kind.is_empty() { "unset" } else { kind }.to_owned(),
        });
    }
    if let Some(azure) = &platform.azure {
        let auth = azure
            .azure_authentication_config
            .as_ref()
            .and_then(|a| a.azure_authentication_config_type.as_deref())
            .unwrap_or_default();
        if auth != "ManagedIdentities" {
            return Some(Skip::NotSharedIngress {
                platform: format!("Azure with authentication {auth:?}"),
            });
        }
        let topology = azure.topology.as_deref().unwrap_or_default();
        if !matches!(topology, "" | "Public" | "PublicAndPrivate") {
            return Some(Skip::NotPublic {
                access: format!("Azure topology {topology}"),
            });
        }
    }
    None
}

/// Whether the API server also has a private endpoint, where HyperShift serves no
/// ClusterID backend for it.
fn is_private(platform: &super::objects::PlatformSpec) -> bool {
    let Some(azure) = &platform.azure else {
        return false;
    };
    match azure.topology.as_deref().unwrap_or_default() {
        "" => azure.private.as_ref().and_then(|p| p.kind.as_deref()) == Some("Swift"),
        topology => matches!(topology, "Private" | "PublicAndPrivate"),
    }
}

#[cfg(test)]
#[path = "mapping_tests.rs"]
mod tests;
