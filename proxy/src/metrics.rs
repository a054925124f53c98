//! The data plane's Prometheus metrics.
//!
//! Labels stay bounded: outcomes and directions are fixed sets, routes are the table's route
//! names (never client addresses), endpoints only those ejected now.
//!
//! The per-route and per-endpoint series are not kept here: [`RouteMetrics`] reads them at
//! scrape time from the state the table's routes carry, so the connection path updates only
//! atomics and a route's series go with it.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::outcome::Outcome;
use crate::table::SharedTable;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
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
    pub(crate) bytes: ByteCounters,
    pub(crate) client_hello_seconds: Histogram,
    pub(crate) backend_connect_seconds: Histogram,
    /// Bytes unfinished ClientHellos hold against `client_hello_memory`.
    pub(crate) client_hello_memory: Gauge,
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
            client_hello_memory: Gauge::default(),
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
            "sniroute_client_hello_memory_bytes",
            "Bytes held by connections still reading their ClientHello (of client_hello_memory)",
            metrics.client_hello_memory.clone(),
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
}

/// Decrements a gauge when dropped, whichever path ends the connection.
#[derive(Debug)]
pub(crate) struct ActiveGuard(Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The per-route series, read from the routes of the table in use (and of routes gone from it
/// that still carry connections) at each scrape.
#[derive(Debug)]
pub struct RouteMetrics(Arc<SharedTable>);

impl RouteMetrics {
    /// Registers the per-route and per-endpoint series of `table` in `registry`.
    pub fn register(registry: &mut Registry, table: Arc<SharedTable>) {
        registry.register_collector(Box::new(Self(table)));
    }
}

impl Collector for RouteMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snapshot = self.0.load();
        let routes = snapshot.table.routes();
        let retired = self.0.retired_busy();
        let states = || {
            routes
                .iter()
                .map(|route| route.state())
                .chain(retired.iter())
        };
        // A series from a route's first connection on, so idle routes make none.
        let mut active = encoder.encode_descriptor(
            "sniroute_route_active_connections",
            "Forwarded connections open now, by route",
            None,
            MetricType::Gauge,
        )?;
        for state in states().filter(|state| state.seen()) {
            let open = i64::try_from(state.open()).unwrap_or(i64::MAX);
            let labels = [("route", state.name())];
            ConstGauge::new(open).encode(active.encode_family(&labels)?)?;
        }
        let mut ejected = encoder.encode_descriptor(
            "sniroute_endpoint_ejected",
            "1 while a backend endpoint is skipped after consecutive connect failures",
            None,
            MetricType::Gauge,
        )?;
        for route in routes {
            for endpoints in route.endpoints() {
                for target in endpoints.known() {
                    if target.endpoint.is_ejected() {
                        let endpoint = target.addr.to_string();
                        let labels = [("route", route.name()), ("endpoint", &endpoint)];
                        ConstGauge::new(1i64).encode(ejected.encode_family(&labels)?)?;
                    }
                }
            }
        }
        let mut unreachable = encoder.encode_descriptor(
            "sniroute_route_backend_unreachable",
            "Connections refused as backend_unreachable, by route: every backend address failed",
            None,
            MetricType::Counter,
        )?;
        for state in states() {
            let count = state.unreachable();
            if count > 0 {
                let labels = [("route", state.name())];
                ConstCounter::new(count).encode(unreachable.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Backend, Route, RouteSpec, Table};
    use crate::HostPattern;

    fn route(name: &str, backend: &str) -> Route {
        let spec = RouteSpec::new(
            name,
            vec![HostPattern::parse(&format!("{name}.test")).unwrap()],
            vec![Backend::parse(backend).unwrap()],
            "test",
        );
        Route::new(spec).unwrap()
    }

    fn scrape(table: &Arc<SharedTable>) -> String {
        let mut registry = Registry::default();
        RouteMetrics::register(&mut registry, table.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn series_follow_the_routes_and_a_gone_route_counts_until_idle() {
        let table = Arc::new(SharedTable::default());
        let (idle, busy) = (route("idle", "127.0.0.1:1"), route("busy", "127.0.0.1:2"));
        let slot = busy.state().try_take(None);
        busy.state().count_unreachable();
        idle.state().count_unreachable();
        table.publish(Table::new(vec![idle, busy]).unwrap());
        assert_eq!(
            scrape(&table),
            "sniroute_route_active_connections{route=\"busy\"} 1\n\
             sniroute_route_backend_unreachable_total{route=\"idle\"} 1\n\
             sniroute_route_backend_unreachable_total{route=\"busy\"} 1",
            "the idle route has had no connection: no open-count series"
        );
        table.publish(Table::new(Vec::<Route>::new()).unwrap());
        assert_eq!(
            scrape(&table),
            "sniroute_route_active_connections{route=\"busy\"} 1\n\
             sniroute_route_backend_unreachable_total{route=\"busy\"} 1",
            "gone, the busy route still counts"
        );
        drop(slot);
        assert_eq!(scrape(&table), "", "idle, it is gone too");
    }

    #[tokio::test]
    async fn only_endpoints_ejected_now_have_a_series() {
        use crate::health::OutlierPolicy;
        let table = Arc::new(SharedTable::default());
        let r = route("r", "127.0.0.1:1");
        let crate::route_state::Endpoints::Addr(target) = &r.endpoints()[0] else {
            panic!("an address backend");
        };
        let endpoint = target.endpoint.clone();
        table.publish(Table::new(vec![r]).unwrap());
        assert_eq!(scrape(&table), "");
        let policy = OutlierPolicy {
            consecutive_failures: 1,
            ..OutlierPolicy::default()
        };
        let addr = "127.0.0.1:1".parse().unwrap();
        endpoint.failed(&policy, "r", addr);
        assert_eq!(
            scrape(&table),
            "sniroute_endpoint_ejected{route=\"r\",endpoint=\"127.0.0.1:1\"} 1"
        );
        endpoint.succeeded(addr);
        assert_eq!(scrape(&table), "");
    }
}
