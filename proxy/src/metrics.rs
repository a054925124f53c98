//! The data plane's Prometheus metrics.
//!
//! Labels stay bounded: outcomes and directions are fixed sets, routes are the table's route
//! names (never client addresses), endpoints only those that were ever ejected.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::outcome::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    route: String,
    endpoint: String,
}

/// The forwarded-byte counters, held directly so a batch costs one atomic add.
#[derive(Debug, Clone, Default)]
pub struct ByteCounters {
    /// Bytes from clients to backends.
    pub client_to_backend: Counter,
    /// Bytes from backends to clients.
    pub backend_to_client: Counter,
}

/// Counters, gauges and histograms the connection path updates.
#[derive(Debug)]
pub struct Metrics {
    /// One counter per outcome, indexed like [`Outcome::ALL`]: counting takes no lock.
    connections: [Counter; Outcome::ALL.len()],
    active: Gauge,
    route_active: Family<RouteLabels, Gauge>,
    pub(crate) bytes: ByteCounters,
    pub(crate) client_hello_seconds: Histogram,
    pub(crate) backend_connect_seconds: Histogram,
    endpoint_ejected: Family<EndpointLabels, Gauge>,
    route_unreachable: Family<RouteLabels, Counter>,
    pub(crate) revoked: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        // 1 ms to ~16 s: a ClientHello or a connect takes from sub-millisecond on a LAN to
        // the whole timeout for a slowloris or a black-holed backend.
        let latency = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let bytes = Family::<DirectionLabels, Counter>::default();
        // Every outcome exists from the start, so rate() and alerts see 0, not absence.
        let connections = Family::<OutcomeLabels, Counter>::default();
        let metrics = Self {
            connections: Outcome::ALL.map(|outcome| {
                connections.get_or_create_owned(&OutcomeLabels {
                    outcome: outcome.as_str(),
                })
            }),
            active: Gauge::default(),
            route_active: Family::default(),
            bytes: ByteCounters {
                client_to_backend: bytes.get_or_create_owned(&DirectionLabels {
                    direction: "client_to_backend",
                }),
                backend_to_client: bytes.get_or_create_owned(&DirectionLabels {
                    direction: "backend_to_client",
                }),
            },
            client_hello_seconds: latency(),
            backend_connect_seconds: latency(),
            endpoint_ejected: Family::default(),
            route_unreachable: Family::default(),
            revoked: Counter::default(),
        };
        registry.register(
            "sniroute_connections",
            "Accepted connections by how they ended up",
            connections,
        );
        registry.register(
            "sniroute_active_connections",
            "Connections open now (reading a ClientHello or forwarding)",
            metrics.active.clone(),
        );
        registry.register(
            "sniroute_route_active_connections",
            "Forwarded connections open now, by route",
            metrics.route_active.clone(),
        );
        registry.register("sniroute_bytes", "Bytes forwarded, by direction", bytes);
        registry.register(
            "sniroute_client_hello_seconds",
            "Time from accept to a complete ClientHello",
            metrics.client_hello_seconds.clone(),
        );
        registry.register(
            "sniroute_backend_connect_seconds",
            "Time to connect to a backend, failover included",
            metrics.backend_connect_seconds.clone(),
        );
        registry.register(
            "sniroute_endpoint_ejected",
            "1 while a backend endpoint is skipped after consecutive connect failures",
            metrics.endpoint_ejected.clone(),
        );
        registry.register(
            "sniroute_route_backend_unreachable",
            "Connections refused as backend_unreachable, by route: every backend address failed",
            metrics.route_unreachable.clone(),
        );
        registry.register(
            "sniroute_revoked_connections",
            "Established connections closed because a new table no longer admitted them",
            metrics.revoked.clone(),
        );
        Arc::new(metrics)
    }

    /// Registers the global `max_connections` as a gauge, so alerts can compare the active
    /// connections with it; unlimited proxies have no such series.
    pub fn register_connection_limit(registry: &mut Registry, limit: usize) {
        let gauge: Gauge = Gauge::default();
        gauge.set(i64::try_from(limit).unwrap_or(i64::MAX));
        registry.register(
            "sniroute_max_connections",
            "The global max_connections: connections open at once over all listeners",
            gauge,
        );
    }

    /// Counts one connection's outcome.
    pub(crate) fn count(&self, outcome: Outcome) {
        self.connections[outcome as usize].inc();
    }

    /// Marks a connection open until the guard drops.
    pub(crate) fn open(self: &Arc<Self>) -> ActiveGuard {
        self.active.inc();
        ActiveGuard(self.active.clone())
    }

    /// The open-connection gauge of `route`.
    pub(crate) fn route_gauge(&self, route: &str) -> Gauge {
        self.route_active.get_or_create_owned(&RouteLabels {
            route: route.to_owned(),
        })
    }

    /// Forwarded connections open through `route` now (no series is made for asking).
    pub(crate) fn route_open(&self, route: &str) -> i64 {
        let labels = RouteLabels {
            route: route.to_owned(),
        };
        self.route_active
            .get(&labels)
            .map_or(0, |gauge| gauge.get())
    }

    /// Counts a connection through `route` that no backend address of it accepted.
    pub(crate) fn count_unreachable(&self, route: &str) {
        self.route_unreachable
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .inc();
    }

    /// Sets whether `endpoint` of `route` is ejected; a healthy endpoint has no series, so
    /// endpoints that come and go leave none behind.
    pub(crate) fn set_ejected(&self, route: &str, endpoint: &str, ejected: bool) {
        let labels = EndpointLabels {
            route: route.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        if ejected {
            self.endpoint_ejected.get_or_create(&labels).set(1);
        } else {
            self.endpoint_ejected.remove(&labels);
        }
    }

    /// Drops the per-route series of `routes` (gone from the table) that carry no connection,
    /// so clusters that come and go over months do not grow the scrape. Returns the ones
    /// still carrying connections, to try again later.
    pub(crate) fn prune_routes(&self, routes: Vec<String>) -> Vec<String> {
        let mut busy = Vec::new();
        for route in routes {
            let labels = RouteLabels { route };
            // The read guard must be gone before remove() takes the write lock.
            let active = self.route_active.get(&labels).map(|gauge| gauge.get());
            match active {
                Some(n) if n > 0 => busy.push(labels.route),
                // A connect holds its route's gauge, so an idle route counts no more failures.
                _ => {
                    self.route_active.remove(&labels);
                    self.route_unreachable.remove(&labels);
                }
            }
        }
        busy
    }
}

/// Decrements a gauge when dropped, whichever path ends the connection.
#[derive(Debug)]
pub(crate) struct ActiveGuard(Gauge);

impl ActiveGuard {
    /// Takes one slot of `gauge` if it is below `limit`.
    pub(crate) fn try_take(gauge: Gauge, limit: Option<u32>) -> Option<Self> {
        let before = gauge.inc();
        if limit.is_some_and(|limit| before >= i64::from(limit)) {
            gauge.dec();
            return None;
        }
        Some(Self(gauge))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_drops_idle_series_of_gone_routes_and_keeps_busy_ones() {
        let metrics = Metrics::register(&mut Registry::default());
        let _idle = metrics.route_gauge("idle");
        metrics.count_unreachable("idle");
        let busy = ActiveGuard::try_take(metrics.route_gauge("busy"), None);
        metrics.count_unreachable("busy");
        let still_busy = metrics.prune_routes(vec!["idle".into(), "busy".into(), "never".into()]);
        assert_eq!(still_busy, ["busy"]);
        let series = |route: &str| {
            let labels = RouteLabels {
                route: route.into(),
            };
            let active = metrics.route_active.get(&labels).map(|gauge| gauge.get());
            let unreachable = metrics.route_unreachable.get(&labels).map(|c| c.get());
            (active, unreachable)
        };
        assert_eq!(series("idle"), (None, None));
        assert_eq!(series("busy"), (Some(1), Some(1)));
        drop(busy);
        assert!(metrics.prune_routes(still_busy).is_empty());
        assert_eq!(series("busy"), (None, None));
    }

    #[test]
    fn healthy_endpoints_have_no_series() {
        let metrics = Metrics::register(&mut Registry::default());
        let labels = EndpointLabels {
            route: "r".into(),
            endpoint: "127.0.0.1:1".into(),
        };
        metrics.set_ejected("r", "127.0.0.1:1", true);
        assert_eq!(
            metrics.endpoint_ejected.get(&labels).map(|g| g.get()),
            Some(1)
        );
        metrics.set_ejected("r", "127.0.0.1:1", false);
        assert!(metrics.endpoint_ejected.get(&labels).is_none());
    }
}
