//! The control plane's Prometheus metrics, set by the one publish step.

use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::source::SourceKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

/// What the publish step and the sources report.
#[derive(Debug, Default)]
pub struct ControlMetrics {
    routes: Gauge,
    generation: Gauge,
    swaps: Counter,
    source_errors: Family<SourceLabels, Counter>,
    last_swap: Gauge<f64, AtomicU64>,
    table_hash: Gauge<f64, AtomicU64>,
}

impl ControlMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        for source in [
            SourceKind::File,
            SourceKind::Kubernetes,
            SourceKind::GatewayApi,
        ] {
            metrics.source_errors.get_or_create_owned(&SourceLabels {
                source: source.as_str(),
            });
        }
        registry.register(
            "sniroute_routes",
            "Routes in the current table",
            metrics.routes.clone(),
        );
        registry.register(
            "sniroute_table_generation",
            "Generation of the current table",
            metrics.generation.clone(),
        );
        registry.register(
            "sniroute_table_swaps",
            "Tables published",
            metrics.swaps.clone(),
        );
        registry.register(
            "sniroute_source_errors",
            "Source failures that left the last good table in place",
            metrics.source_errors.clone(),
        );
        registry.register(
            "sniroute_last_swap_timestamp_seconds",
            "Unix time of the last table publish",
            metrics.last_swap.clone(),
        );
        registry.register(
            "sniroute_table_hash",
            "Hash of what the current table routes (routes, hostnames, backends, allow lists, \
             limits, PROXY-out); equal on replicas serving the same table",
            metrics.table_hash.clone(),
        );
        metrics
    }

    pub(crate) fn published(&self, generation: u64, routes: usize, table_hash: u64) {
        // 53 bits (Table::fingerprint): the float holds it exactly.
        self.table_hash.set(table_hash as f64);
        self.routes.set(i64::try_from(routes).unwrap_or(i64::MAX));
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.swaps.inc();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_swap.set(now);
    }

    pub(crate) fn source_failed(&self, source: SourceKind, failures: u64) {
        self.source_errors
            .get_or_create(&SourceLabels {
                source: source.as_str(),
            })
            .inc_by(failures);
    }
}
