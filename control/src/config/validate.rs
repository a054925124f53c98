//! Validation: one function per section of the file, each checking its values, recording
//! every problem with its location (and route), and putting a default in place of a bad value
//! so the others can still be checked.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use proxy::canonical_net;
use proxy::{Backend, HostPattern, OutlierPolicy, RouteSpec, Settings};
use proxy::{ClientLimitPolicy as ClientPolicy, Rate};
use proxy::{ProxyExpect as Expect, ProxyVersion};
use serde_saphyr::{Location, Spanned};

use super::raw::{
    OneOrMany, RawClientLimits, RawConfig, RawGatewayApi, RawKubernetes, RawOutlier, RawRoute,
};
use super::{
    position, BackendsMode, Config, GatewayApiConfig, KubernetesConfig, LogFormat, DEFAULT_ADMIN,
    DEFAULT_CLIENT_BURST, DEFAULT_CLIENT_HELLO_MEMORY, DEFAULT_CLIENT_HELLO_TIMEOUT,
    DEFAULT_CLIENT_IPV6_PREFIX, DEFAULT_CLIENT_MAX_CONNECTIONS, DEFAULT_CLIENT_RATE,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEBOUNCE, DEFAULT_DEBUG, DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_GATEWAY_SERVICE_TYPE, DEFAULT_IDLE_TIMEOUT, DEFAULT_LISTEN_BACKLOG,
    DEFAULT_MAX_CLIENT_HELLO, DEFAULT_REVOKE_GRACE, DEFAULT_SHUTDOWN_DELAY, MAX_DEBOUNCE,
    MAX_MAX_CLIENT_HELLO, MIN_MAX_CLIENT_HELLO, ROUTE_SOURCE,
};
use crate::error::{Problem, RouteRef};

/// Collects problems as validation walks the document.
struct ProblemList<'a> {
    list: &'a mut Vec<Problem>,
}

impl ProblemList<'_> {
    fn at(&mut self, location: Location, route: Option<&RouteRef>, message: String) {
        let (line, column) = position(location);
        self.list.push(Problem {
            line,
            column,
            route: route.cloned(),
            message,
        });
    }

    fn nowhere(&mut self, message: String) {
        self.list.push(Problem {
            line: None,
            column: None,
            route: None,
            message,
        });
    }
}

/// Where the process listens.
struct Listeners {
    listen: Vec<SocketAddr>,
    admin: SocketAddr,
    debug: Option<SocketAddr>,
    cluster_id_listen: Option<SocketAddr>,
    listen_backlog: i32,
}

/// How the process logs.
struct Logging {
    log_format: LogFormat,
    log_level: String,
}

impl RawConfig {
    /// Checks every value; returns a config with defaults in the places of bad values, which
    /// is only meaningful when nothing was pushed to `problems`.
    pub(super) fn validate(self, origin: &str, problems: &mut Vec<Problem>) -> Config {
        let mut p = ProblemList { list: problems };
        let listeners = listeners(
            self.listen,
            self.admin,
            self.debug,
            self.cluster_id_listen,
            self.listen_backlog,
            &mut p,
        );
        let kubernetes = self.kubernetes.map(|k| kubernetes(k.value, &mut p));
        if let Some(ports) = kubernetes
            .as_ref()
            .and_then(|k| k.gateway_api.as_ref()?.listener_ports.clone())
        {
            overlapping_listener_ports(&ports, &listeners, &mut p);
        }
        let shutdown_delay = match self.shutdown_delay {
            // Zero is a real choice here (tests, or no load balancer in front).
            Some(v) if v.value.trim() == "0s" || v.value.trim() == "0" => Duration::ZERO,
            other => duration_or("shutdown_delay", other, DEFAULT_SHUTDOWN_DELAY, &mut p),
        };
        let drain_timeout = duration_or(
            "drain_timeout",
            self.drain_timeout,
            DEFAULT_DRAIN_TIMEOUT,
            &mut p,
        );
        let logging = logging(self.log_format, self.log_level, &mut p);
        let mut settings = Settings {
            client_hello_timeout: duration_or(
                "client_hello_timeout",
                self.client_hello_timeout,
                DEFAULT_CLIENT_HELLO_TIMEOUT,
                &mut p,
            ),
            connect_timeout: duration_or(
                "connect_timeout",
                self.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
                &mut p,
            ),
            idle_timeout: duration_or(
                "idle_timeout",
                self.idle_timeout,
                DEFAULT_IDLE_TIMEOUT,
                &mut p,
            ),
            max_client_hello: self
                .max_client_hello
                .and_then(|v| max_client_hello(&v, &mut p))
                .unwrap_or(DEFAULT_MAX_CLIENT_HELLO),
            max_connections: self
                .max_connections
                .and_then(|v| count::<usize>("max_connections", &v, 1, &mut p)),
            log_connections: self
                .log_connections
                .and_then(|v| boolean("log_connections", &v, &mut p))
                .unwrap_or(false),
            outlier_detection: self
                .outlier_detection
                .map(|o| outlier_detection(o.value, &mut p))
                .unwrap_or_default(),
            accept_proxy_protocol: None,
            trusted_proxies: Vec::new(),
            revoke_grace: revoke_grace(self.revoke_grace, &mut p),
            client_limits: self
                .client_limits
                .and_then(|limits| client_limits(limits.value, &mut p)),
            client_hello_memory: DEFAULT_CLIENT_HELLO_MEMORY,
        };
        if let Some(memory) = self.client_hello_memory {
            settings.client_hello_memory =
                client_hello_memory(&memory, settings.max_client_hello, &mut p)
                    .unwrap_or(DEFAULT_CLIENT_HELLO_MEMORY);
        }
        (settings.accept_proxy_protocol, settings.trusted_proxies) =
            proxy_protocol(self.accept_proxy_protocol, self.trusted_proxies, &mut p);
        let routes = routes(self.routes.unwrap_or_default(), &mut p);
        Config {
            listen: listeners.listen,
            admin: listeners.admin,
            debug: listeners.debug,
            routes,
            kubernetes,
            cluster_id_listen: listeners.cluster_id_listen,
            listen_backlog: listeners.listen_backlog,
            shutdown_delay,
            drain_timeout,
            log_format: logging.log_format,
            log_level: logging.log_level,
            proxy: settings,
            origin: origin.to_owned(),
        }
    }
}

// === listeners ===

fn listeners(
    listen: Option<Spanned<OneOrMany>>,
    admin: Option<Spanned<String>>,
    debug: Option<Spanned<String>>,
    cluster_id_listen: Option<Spanned<String>>,
    listen_backlog: Option<Spanned<String>>,
    p: &mut ProblemList<'_>,
) -> Listeners {
    let listen = validate_listen(listen, p);
    let admin = admin
        .and_then(|admin| socket_addr("admin", &admin, p))
        .unwrap_or(DEFAULT_ADMIN);
    // Port 0 asks for a free port: it cannot clash with another port-0 listener.
    let taken = |addr: SocketAddr, others: &[Option<SocketAddr>]| {
        addr.port() != 0 && (listen.contains(&addr) || others.contains(&Some(addr)))
    };
    let debug = match debug {
        None => Some(DEFAULT_DEBUG),
        Some(v) if v.value.trim() == "off" => None,
        Some(v) => socket_addr("debug", &v, p).inspect(|&addr| {
            if taken(addr, &[Some(admin)]) {
                let why = format!("debug: {addr} is already used by `listen` or `admin`");
                p.at(v.referenced, None, why);
            }
        }),
    };
    let cluster_id_listen = cluster_id_listen.and_then(|v| {
        let addr = socket_addr("cluster_id_listen", &v, p)?;
        if taken(addr, &[Some(admin), debug]) {
            p.at(
                v.referenced,
                None,
                format!(
                    "cluster_id_listen: {addr} is already used by `listen`, `admin` or `debug`"
                ),
            );
        }
        Some(addr)
    });
    let listen_backlog = listen_backlog
        .and_then(|v| count::<i32>("listen_backlog", &v, 1, p))
        .unwrap_or(DEFAULT_LISTEN_BACKLOG);
    Listeners {
        listen,
        admin,
        debug,
        cluster_id_listen,
        listen_backlog,
    }
}

/// Gateway listeners bind ports of `listener_ports` on the `listen` addresses' IPs as Gateways
/// come: a range holding a fixed listener's port would fail that bind at run time, long after
/// the config was accepted, so it is refused here.
fn overlapping_listener_ports(
    ports: &std::ops::RangeInclusive<u16>,
    listeners: &Listeners,
    p: &mut ProblemList<'_>,
) {
    let fixed = listeners
        .listen
        .iter()
        .map(|a| ("listen", a))
        .chain(std::iter::once(("admin", &listeners.admin)))
        .chain(listeners.debug.iter().map(|a| ("debug", a)))
        .chain(
            listeners
                .cluster_id_listen
                .iter()
                .map(|a| ("cluster_id_listen", a)),
        );
    for (key, addr) in fixed {
        if addr.port() != 0 && ports.contains(&addr.port()) {
            p.nowhere(format!(
                "kubernetes.gateway_api.listener_ports: {}-{} holds {key}'s port {} ({addr}); \
                 Gateway listeners need ports no other listener uses",
                ports.start(),
                ports.end(),
                addr.port()
            ));
        }
    }
}

fn validate_listen(listen: Option<Spanned<OneOrMany>>, p: &mut ProblemList<'_>) -> Vec<SocketAddr> {
    let Some(listen) = listen else {
        p.nowhere(
            "`listen` is required: the address(es) to accept TLS on, e.g. 0.0.0.0:8443".into(),
        );
        return Vec::new();
    };
    let items = match listen.value {
        OneOrMany::One(one) => vec![Spanned {
            value: one,
            referenced: listen.referenced,
            defined: listen.defined,
        }],
        OneOrMany::Many(many) => many,
    };
    if items.is_empty() {
        p.at(
            listen.referenced,
            None,
            "listen: give at least one address, e.g. 0.0.0.0:8443".into(),
        );
    }
    let mut seen = HashSet::new();
    let mut addrs = Vec::with_capacity(items.len());
    for item in &items {
        let Some(addr) = socket_addr("listen", item, p) else {
            continue;
        };
        // Port 0 asks the kernel for a fresh port each time, so it can be listed twice.
        if addr.port() != 0 && !seen.insert(addr) {
            p.at(
                item.referenced,
                None,
                format!("listen: {addr} is listed twice"),
            );
            continue;
        }
        addrs.push(addr);
    }
    addrs
}

// === sections ===

fn kubernetes(raw: RawKubernetes, p: &mut ProblemList<'_>) -> KubernetesConfig {
    let debounce = raw.debounce.and_then(|v| {
        let d = validate_duration("kubernetes.debounce", &v, p)?;
        if d > MAX_DEBOUNCE {
            p.at(
                v.referenced,
                None,
                format!(
                    "kubernetes.debounce: {} is above the maximum of {}",
                    humantime::format_duration(d),
                    humantime::format_duration(MAX_DEBOUNCE)
                ),
            );
            return None;
        }
        Some(d)
    });
    let backends = raw.backends.and_then(|v| match v.value.as_str() {
        "endpoints" => Some(BackendsMode::Endpoints),
        "service" => Some(BackendsMode::Service),
        other => {
            p.at(
                v.referenced,
                None,
                format!("kubernetes.backends: {other:?} is neither `endpoints` nor `service`"),
            );
            None
        }
    });
    let zone = raw.zone.and_then(|v| {
        let zone = v.value.trim();
        if zone.is_empty() {
            p.at(v.referenced, None, "kubernetes.zone: is empty".to_owned());
            return None;
        }
        Some(zone.to_owned())
    });
    let hypershift = match &raw.hypershift {
        None => true,
        Some(v) => match v.value.as_str() {
            "true" => true,
            "false" => false,
            other => {
                p.at(
                    v.referenced,
                    None,
                    format!("kubernetes.hypershift: {other:?} is neither `true` nor `false`"),
                );
                true
            }
        },
    };
    let nothing_at = raw.hypershift.as_ref().map(|v| v.referenced);
    let gateway_api = raw
        .gateway_api
        .and_then(|g| gateway_api(g.value, g.referenced, p));
    if let (false, None, Some(at)) = (hypershift, &gateway_api, nothing_at) {
        p.at(
            at,
            None,
            "kubernetes.hypershift: false with no kubernetes.gateway_api leaves nothing to watch"
                .to_owned(),
        );
    }
    KubernetesConfig {
        debounce: debounce.unwrap_or(DEFAULT_DEBOUNCE),
        backends: backends.unwrap_or_default(),
        zone,
        hypershift,
        gateway_api,
    }
}

/// `kubernetes.gateway_api`: a controller name as the Gateway API wants it
/// (`GatewayController`: a domain, `/`, a path) and the addresses to report.
fn gateway_api(
    raw: RawGatewayApi,
    at: Location,
    p: &mut ProblemList<'_>,
) -> Option<GatewayApiConfig> {
    let Some(name) = raw.controller_name else {
        p.at(
            at,
            None,
            "kubernetes.gateway_api: controller_name is required (e.g. sniroute.dev/gateway-controller)"
                .to_owned(),
        );
        return None;
    };
    let valid = name.value.split_once('/').is_some_and(|(domain, path)| {
        !path.is_empty()
            && name.value.len() <= 253
            && proxy::ServerName::parse(domain.as_bytes()).is_ok()
            && path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:/".contains(&b))
    });
    if !valid {
        p.at(
            name.referenced,
            None,
            format!(
                "kubernetes.gateway_api.controller_name: {:?} is not a domain followed by a \
                 path (e.g. sniroute.dev/gateway-controller)",
                name.value
            ),
        );
        return None;
    }
    let mut addresses = Vec::new();
    let first_address = raw
        .addresses
        .as_ref()
        .and_then(|a| a.first())
        .map(|a| a.referenced);
    for address in raw.addresses.unwrap_or_default() {
        let value = address.value.trim();
        if value.parse::<std::net::IpAddr>().is_err()
            && proxy::ServerName::parse(value.as_bytes()).is_err()
        {
            p.at(
                address.referenced,
                None,
                format!(
                    "kubernetes.gateway_api.addresses: {value:?} is neither an IP address \
                     nor a hostname"
                ),
            );
            continue;
        }
        addresses.push(value.to_owned());
    }
    let listener_ports = raw.listener_ports.and_then(|v| {
        let range = v.value.trim().split_once('-').and_then(|(low, high)| {
            let low: u16 = low.trim().parse().ok()?;
            let high: u16 = high.trim().parse().ok()?;
            (low >= 1 && low <= high).then_some(low..=high)
        });
        if range.is_none() {
            p.at(
                v.referenced,
                None,
                format!(
                    "kubernetes.gateway_api.listener_ports: {:?} is not a port range \
                     LOW-HIGH (1 <= LOW <= HIGH <= 65535, e.g. 20000-20999)",
                    v.value
                ),
            );
        }
        if let (Some(_), Some(first)) = (&range, first_address) {
            p.at(
                first,
                None,
                "kubernetes.gateway_api.addresses: not with listener_ports (each Gateway then \
                 reports its own Service's address)"
                    .to_owned(),
            );
        }
        range
    });
    let service_type = match raw.service_type {
        None => DEFAULT_GATEWAY_SERVICE_TYPE.to_owned(),
        Some(v) => match v.value.as_str() {
            "LoadBalancer" | "ClusterIP" => v.value,
            other => {
                p.at(
                    v.referenced,
                    None,
                    format!(
                        "kubernetes.gateway_api.service_type: {other:?} is neither \
                         `LoadBalancer` nor `ClusterIP`"
                    ),
                );
                DEFAULT_GATEWAY_SERVICE_TYPE.to_owned()
            }
        },
    };
    Some(GatewayApiConfig {
        controller_name: name.value,
        addresses,
        listener_ports,
        service_type,
    })
}

fn logging(
    log_format: Option<Spanned<String>>,
    log_level: Option<Spanned<String>>,
    p: &mut ProblemList<'_>,
) -> Logging {
    let log_format = match log_format {
        None => LogFormat::Text,
        Some(v) => match v.value.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                p.at(
                    v.referenced,
                    None,
                    format!("log_format: {other:?} is not `text` or `json`"),
                );
                LogFormat::Text
            }
        },
    };
    let log_level = match log_level {
        None => "info".to_owned(),
        Some(v) => match tracing_subscriber::EnvFilter::try_new(&v.value) {
            Ok(_) => v.value,
            Err(err) => {
                p.at(
                    v.referenced,
                    None,
                    format!("log_level: {:?}: {err}", v.value),
                );
                "info".to_owned()
            }
        },
    };
    Logging {
        log_format,
        log_level,
    }
}

fn revoke_grace(value: Option<Spanned<String>>, p: &mut ProblemList<'_>) -> Option<Duration> {
    match value {
        None => Some(DEFAULT_REVOKE_GRACE),
        Some(v) if v.value.trim() == "off" => None,
        Some(v) => Some(validate_duration("revoke_grace", &v, p).unwrap_or_default()),
    }
}

/// `client_limits`: each key defaults to the documented value once the section is set.
/// `None` only after a problem is recorded (the config then fails).
fn client_limits(raw: RawClientLimits, p: &mut ProblemList<'_>) -> Option<ClientPolicy> {
    let connection_rate = match raw.connection_rate {
        None => Rate::parse(DEFAULT_CLIENT_RATE),
        Some(rate) => {
            let parsed = Rate::parse(&rate.value);
            if parsed.is_none() {
                p.at(
                    rate.referenced,
                    None,
                    format!(
                        "client_limits.connection_rate: {:?} is not N/s or N/m with N above 0",
                        rate.value
                    ),
                );
            }
            parsed
        }
    };
    let ipv6_prefix = raw
        .ipv6_prefix
        .and_then(|v| count::<u8>("client_limits.ipv6_prefix", &v, 1, p))
        .unwrap_or(DEFAULT_CLIENT_IPV6_PREFIX);
    if ipv6_prefix > 128 {
        p.nowhere(format!(
            "client_limits.ipv6_prefix: {ipv6_prefix} is longer than an IPv6 address (128)"
        ));
    }
    let exempt = raw
        .exempt
        .unwrap_or_default()
        .into_iter()
        .filter_map(|entry| {
            let net = parse_cidr(&entry.value);
            if net.is_none() {
                p.at(
                    entry.referenced,
                    None,
                    format!("client_limits.exempt: {:?} is not a CIDR", entry.value),
                );
            }
            net
        })
        .collect();
    // Every key is judged (and each problem reported) before a bad rate ends the section.
    let max_connections = raw
        .max_connections
        .and_then(|v| count::<u32>("client_limits.max_connections", &v, 1, p))
        .unwrap_or(DEFAULT_CLIENT_MAX_CONNECTIONS);
    let burst = raw
        .burst
        .and_then(|v| count::<u32>("client_limits.burst", &v, 1, p))
        .unwrap_or(DEFAULT_CLIENT_BURST);
    Some(ClientPolicy {
        max_connections,
        connection_rate: connection_rate?,
        burst,
        ipv6_prefix: ipv6_prefix.min(128),
        exempt,
    })
}

fn outlier_detection(raw: RawOutlier, p: &mut ProblemList<'_>) -> OutlierPolicy {
    let default = OutlierPolicy::default();
    let policy = OutlierPolicy {
        consecutive_failures: raw
            .consecutive_failures
            .and_then(|v| count::<u32>("outlier_detection.consecutive_failures", &v, 0, p))
            .unwrap_or(default.consecutive_failures),
        base_ejection: duration_or(
            "outlier_detection.base_ejection_time",
            raw.base_ejection_time,
            default.base_ejection,
            p,
        ),
        max_ejection: duration_or(
            "outlier_detection.max_ejection_time",
            raw.max_ejection_time,
            default.max_ejection,
            p,
        ),
    };
    if policy.max_ejection < policy.base_ejection {
        p.nowhere("outlier_detection: max_ejection_time is below base_ejection_time".into());
    }
    policy
}

/// `accept_proxy_protocol` and the `trusted_proxies` it needs.
fn proxy_protocol(
    accept: Option<Spanned<String>>,
    trusted: Option<Vec<Spanned<String>>>,
    p: &mut ProblemList<'_>,
) -> (Option<Expect>, Vec<IpNet>) {
    let accept = accept.and_then(|v| match v.value.trim() {
        "v1" => Some(Expect::Required(ProxyVersion::V1)),
        "v2" => Some(Expect::Required(ProxyVersion::V2)),
        "optional" => Some(Expect::Optional),
        other => {
            let why = format!("accept_proxy_protocol: {other:?} is not v1, v2 or optional");
            p.at(v.referenced, None, why);
            None
        }
    });
    let mut trusted_proxies = Vec::new();
    for cidr in trusted.unwrap_or_default() {
        match parse_cidr(&cidr.value) {
            Some(net) => trusted_proxies.push(net),
            None => {
                let why = format!(
                    "trusted_proxies: {:?} is not an IPv4 or IPv6 network",
                    cidr.value
                );
                p.at(cidr.referenced, None, why);
            }
        }
    }
    if accept.is_some() && trusted_proxies.is_empty() {
        p.nowhere(
            "accept_proxy_protocol needs trusted_proxies: headers from other peers are refused"
                .into(),
        );
    }
    (accept, trusted_proxies)
}

// === routes ===

/// Who claimed each route name and hostname first, to name both routes in a clash.
#[derive(Default)]
struct Claims {
    names: HashMap<String, RouteRef>,
    hosts: HashMap<HostPattern, RouteRef>,
}

fn routes(raw: Vec<Spanned<RawRoute>>, p: &mut ProblemList<'_>) -> Vec<RouteSpec> {
    let mut claims = Claims::default();
    let source: Arc<str> = ROUTE_SOURCE.into();
    raw.into_iter()
        .enumerate()
        .filter_map(|(index, route)| validate_route(index, route, &source, &mut claims, p))
        .collect()
}

/// One route, or `None` if anything in it is wrong (each problem recorded).
fn validate_route(
    index: usize,
    route: Spanned<RawRoute>,
    source: &Arc<str>,
    claims: &mut Claims,
    p: &mut ProblemList<'_>,
) -> Option<RouteSpec> {
    let here = route.referenced;
    let RawRoute {
        name,
        hostnames,
        backends,
        max_connections,
        allowed_cidrs,
        proxy_protocol,
    } = route.value;
    let hostnames = hostnames.unwrap_or_default();
    let backends = backends.unwrap_or_default();
    let given = name.as_ref().map(|n| n.value.clone());
    let name_value = given
        .clone()
        .or_else(|| hostnames.first().map(|h| h.value.clone()));
    let this = RouteRef {
        index,
        name: name_value.clone().filter(|n| !n.is_empty()),
    };

    let named = route_name(name.as_ref(), given.is_some(), here, &this, claims, p);
    let patterns = route_hostnames(&hostnames, here, &this, claims, p);
    let parsed = route_backends(&backends, here, &this, p);
    let max_connections = route_max_connections(max_connections, &this, p);
    let cidrs = route_allowed_cidrs(allowed_cidrs.unwrap_or_default(), &this, p);
    let proxy_protocol = route_proxy_protocol(proxy_protocol, &this, p);
    // Every part was checked above, so all of a route's problems are reported at once.
    let (
        true,
        Some(hostnames),
        Some(backends),
        Ok(max_connections),
        Some(allowed_cidrs),
        Ok(proxy_protocol),
    ) = (
        named,
        patterns,
        parsed,
        max_connections,
        cidrs,
        proxy_protocol,
    )
    else {
        return None;
    };
    Some(RouteSpec {
        max_connections,
        allowed_cidrs,
        proxy_protocol,
        ..RouteSpec::new(
            name_value.unwrap_or_default(),
            hostnames,
            backends,
            source.clone(),
        )
    })
}

/// Checks the route's name (given, or its first hostname) and claims it; false if it is bad.
fn route_name(
    name: Option<&Spanned<String>>,
    given: bool,
    here: Location,
    this: &RouteRef,
    claims: &mut Claims,
    p: &mut ProblemList<'_>,
) -> bool {
    let mut ok = true;
    if let Some(name) = name {
        if name.value.trim().is_empty() {
            p.at(name.referenced, Some(this), "name is empty".into());
            ok = false;
        }
    }
    if let Some(name_value) = this.name.clone() {
        match claims.names.entry(name_value) {
            Entry::Occupied(first) => {
                let at = name.map_or(here, |n| n.referenced);
                let how = if given {
                    ""
                } else {
                    " (the default: its first hostname)"
                };
                p.at(
                    at,
                    Some(this),
                    format!("route name{how} is also used by {}", first.get()),
                );
                ok = false;
            }
            Entry::Vacant(slot) => {
                slot.insert(this.clone());
            }
        }
    }
    ok
}

/// The route's hostnames, each claimed; `None` if any is bad, repeated or claimed already.
fn route_hostnames(
    hostnames: &[Spanned<String>],
    here: Location,
    this: &RouteRef,
    claims: &mut Claims,
    p: &mut ProblemList<'_>,
) -> Option<Vec<HostPattern>> {
    let mut ok = true;
    if hostnames.is_empty() {
        p.at(here, Some(this), "no hostnames: give at least one".into());
        ok = false;
    }
    let mut patterns = Vec::with_capacity(hostnames.len());
    for host in hostnames {
        let pattern = match HostPattern::parse(&host.value) {
            Ok(pattern) => pattern,
            Err(err) => {
                p.at(
                    host.referenced,
                    Some(this),
                    format!("hostname {:?}: {err}", host.value),
                );
                ok = false;
                continue;
            }
        };
        match claims.hosts.entry(pattern.clone()) {
            Entry::Occupied(first) if first.get().index == this.index => {
                p.at(
                    host.referenced,
                    Some(this),
                    format!("hostname {pattern} is listed twice"),
                );
                ok = false;
            }
            Entry::Occupied(first) => {
                p.at(
                    host.referenced,
                    Some(this),
                    format!("hostname {pattern} is also claimed by {}", first.get()),
                );
                ok = false;
            }
            Entry::Vacant(slot) => {
                slot.insert(this.clone());
                patterns.push(pattern);
            }
        }
    }
    ok.then_some(patterns)
}

fn route_backends(
    backends: &[Spanned<String>],
    here: Location,
    this: &RouteRef,
    p: &mut ProblemList<'_>,
) -> Option<Vec<Backend>> {
    let mut ok = true;
    if backends.is_empty() {
        p.at(here, Some(this), "no backends: give at least one".into());
        ok = false;
    }
    let mut parsed = Vec::with_capacity(backends.len());
    for backend in backends {
        match Backend::parse(&backend.value) {
            Ok(b) => parsed.push(b),
            Err(err) => {
                p.at(backend.referenced, Some(this), err.to_string());
                ok = false;
            }
        }
    }
    ok.then_some(parsed)
}

/// The route's connection limit; `Err` if it is bad.
fn route_max_connections(
    value: Option<Spanned<String>>,
    this: &RouteRef,
    p: &mut ProblemList<'_>,
) -> Result<Option<u32>, ()> {
    let Some(v) = value else {
        return Ok(None);
    };
    match v.value.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => {
            let why = format!(
                "max_connections: {:?} is not a whole number of at least 1",
                v.value
            );
            p.at(v.referenced, Some(this), why);
            Err(())
        }
    }
}

fn route_allowed_cidrs(
    cidrs: Vec<Spanned<String>>,
    this: &RouteRef,
    p: &mut ProblemList<'_>,
) -> Option<Vec<IpNet>> {
    let mut ok = true;
    let mut nets = Vec::with_capacity(cidrs.len());
    for cidr in cidrs {
        match parse_cidr(&cidr.value) {
            Some(net) => nets.push(net),
            None => {
                let why = format!("allowed_cidrs: {:?} is not an IPv4 or IPv6 network (e.g. 10.0.0.0/8, 2001:db8::/32, 192.0.2.7)", cidr.value);
                p.at(cidr.referenced, Some(this), why);
                ok = false;
            }
        }
    }
    ok.then_some(nets)
}

/// The PROXY header the route sends; `Err` if it is bad.
fn route_proxy_protocol(
    value: Option<Spanned<String>>,
    this: &RouteRef,
    p: &mut ProblemList<'_>,
) -> Result<Option<ProxyVersion>, ()> {
    let Some(v) = value else {
        return Ok(None);
    };
    match v.value.trim() {
        "v1" => Ok(Some(ProxyVersion::V1)),
        "v2" => Ok(Some(ProxyVersion::V2)),
        other => {
            let why = format!("proxy_protocol: {other:?} is not v1 or v2");
            p.at(v.referenced, Some(this), why);
            Err(())
        }
    }
}

// === values ===

fn socket_addr(key: &str, value: &Spanned<String>, p: &mut ProblemList<'_>) -> Option<SocketAddr> {
    match value.value.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            p.at(
                value.referenced,
                None,
                format!(
                    "{key}: {:?} is not an IP address and port (e.g. 0.0.0.0:8443 or [::]:8443)",
                    value.value
                ),
            );
            None
        }
    }
}

/// The duration at `value`, or `default` when absent or bad (a bad one is a problem).
fn duration_or(
    key: &str,
    value: Option<Spanned<String>>,
    default: Duration,
    p: &mut ProblemList<'_>,
) -> Duration {
    value
        .and_then(|v| validate_duration(key, &v, p))
        .unwrap_or(default)
}

fn validate_duration(
    key: &str,
    value: &Spanned<String>,
    p: &mut ProblemList<'_>,
) -> Option<Duration> {
    match humantime::parse_duration(&value.value) {
        Ok(d) if d.is_zero() => {
            p.at(
                value.referenced,
                None,
                format!("{key}: must be more than zero"),
            );
            None
        }
        Ok(d) => Some(d),
        Err(err) => {
            p.at(
                value.referenced,
                None,
                format!(
                    "{key}: {:?} is not a duration ({err}); write e.g. 250ms, 5s, 1h30m",
                    value.value
                ),
            );
            None
        }
    }
}

/// A whole number of at least `min`.
fn count<N: std::str::FromStr + PartialOrd + From<u8> + fmt::Display>(
    key: &str,
    value: &Spanned<String>,
    min: u8,
    p: &mut ProblemList<'_>,
) -> Option<N> {
    match value.value.trim().parse::<N>() {
        Ok(n) if n >= N::from(min) => Some(n),
        _ => {
            p.at(
                value.referenced,
                None,
                format!(
                    "{key}: {:?} is not a whole number of at least {min}",
                    value.value
                ),
            );
            None
        }
    }
}

fn boolean(key: &str, value: &Spanned<String>, p: &mut ProblemList<'_>) -> Option<bool> {
    match value.value.trim() {
        "true" => Some(true),
        "false" => Some(false),
        other => {
            p.at(
                value.referenced,
                None,
                format!("{key}: {other:?} is not true or false"),
            );
            None
        }
    }
}

fn max_client_hello(value: &Spanned<String>, p: &mut ProblemList<'_>) -> Option<usize> {
    let why = match value.value.parse::<usize>() {
        Ok(n) if n < MIN_MAX_CLIENT_HELLO => {
            format!("{n} bytes is below the minimum of {MIN_MAX_CLIENT_HELLO}")
        }
        Ok(n) if n > MAX_MAX_CLIENT_HELLO => {
            format!("{n} bytes is above the maximum of {MAX_MAX_CLIENT_HELLO} (1 MiB)")
        }
        Ok(n) => return Some(n),
        Err(_) => format!("{:?} is not a whole number of bytes", value.value),
    };
    p.at(value.referenced, None, format!("max_client_hello: {why}"));
    None
}

/// `client_hello_memory`: a size, room for at least one hello of `max_client_hello`.
fn client_hello_memory(
    value: &Spanned<String>,
    max_client_hello: usize,
    p: &mut ProblemList<'_>,
) -> Option<usize> {
    let bytes = size("client_hello_memory", value, p)?;
    if bytes < max_client_hello {
        let why = format!(
            "client_hello_memory: {bytes} bytes is below max_client_hello ({max_client_hello}): \
             no ClientHello of that size could be read"
        );
        p.at(value.referenced, None, why);
        return None;
    }
    Some(bytes)
}

/// A size in bytes: a whole number, optionally with a binary unit (`512KiB`, `64MiB`, `1GiB`;
/// `B` for bytes).
fn size(key: &str, value: &Spanned<String>, p: &mut ProblemList<'_>) -> Option<usize> {
    let text = value.value.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let scale: Option<usize> = match unit.trim() {
        "" | "B" => Some(1),
        "KiB" => Some(1 << 10),
        "MiB" => Some(1 << 20),
        "GiB" => Some(1 << 30),
        _ => None,
    };
    let bytes = number
        .parse::<usize>()
        .ok()
        .zip(scale)
        .and_then(|(n, scale)| n.checked_mul(scale))
        .filter(|&bytes| bytes > 0);
    if bytes.is_none() {
        p.at(
            value.referenced,
            None,
            format!(
                "{key}: {:?} is not a size above zero (e.g. 65536, 512KiB, 64MiB, 1GiB)",
                value.value
            ),
        );
    }
    bytes
}

/// A network, or a lone address as the network of just that address; an IPv4-mapped IPv6
/// network is read as the IPv4 network it maps, the only way it can hold a client.
fn parse_cidr(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(canonical_net)
}
