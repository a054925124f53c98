//! Routing-table costs: one lookup at 10, 1k and 100k routes (exact and wildcard, hit and
//! miss, and through the shared table as a connection does it), and building and swapping a
//! 25k-route table as a source does after each change.
//!
//! `cargo bench --bench table` (add `-- --quick` for a rough run).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use proxy::{Backend, HostPattern, Route, RouteSpec, ServerName, SharedTable, Table};

/// A hosted cluster's routes as the Kubernetes source makes them: the API hostname exactly,
/// and a wildcard for its apps.
fn routes(n: usize) -> Vec<Route> {
    (0..n)
        .map(|i| {
            let hostnames = vec![
                HostPattern::parse(&format!("api.cluster-{i}.hosted.example.com")),
                HostPattern::parse(&format!("*.apps.cluster-{i}.hosted.example.com")),
            ]
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .expect("valid hostnames");
            let backend = Backend::parse(&format!(
                "10.{}.{}.{}:6443",
                i >> 16 & 255,
                i >> 8 & 255,
                i & 255
            ))
            .expect("valid backend");
            Route::new(RouteSpec::new(
                format!("cluster-{i}"),
                hostnames,
                vec![backend],
                "bench",
            ))
            .expect("valid route")
        })
        .collect()
}

fn name(s: &str) -> ServerName {
    ServerName::parse(s.as_bytes()).expect("valid name")
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("table_lookup");
    for n in [10, 1_000, 100_000] {
        let table = Table::new(routes(n)).expect("no conflicts");
        let mid = n / 2;
        let cases = [
            (
                "exact_hit",
                name(&format!("api.cluster-{mid}.hosted.example.com")),
                true,
            ),
            (
                "wildcard_hit",
                name(&format!("console.apps.cluster-{mid}.hosted.example.com")),
                true,
            ),
            ("miss", name("api.cluster-x.hosted.example.com"), false),
            // Names arrive in any case; the parser lowercases them before lookup.
            (
                "exact_hit_mixed_case",
                name(&format!("API.Cluster-{mid}.hosted.EXAMPLE.com")),
                true,
            ),
        ];
        for (case, sni, hit) in cases {
            assert_eq!(table.lookup(&sni).is_some(), hit, "{case} at {n}");
            group.bench_with_input(BenchmarkId::new(case, n), &sni, |b, sni| {
                b.iter(|| table.lookup(black_box(sni)).is_some())
            });
        }
        // What a connection does: load the current snapshot, look up, keep the route.
        let shared = SharedTable::default();
        shared.publish(table);
        let sni = name(&format!("api.cluster-{mid}.hosted.example.com"));
        group.bench_with_input(BenchmarkId::new("shared_load_lookup", n), &sni, |b, sni| {
            b.iter(|| shared.load().table.lookup(black_box(sni)).cloned())
        });
    }
    group.finish();
}

fn build_and_swap(c: &mut Criterion) {
    const N: usize = 25_000;
    let mut group = c.benchmark_group("table_build");
    group.sample_size(20);
    group.bench_function(BenchmarkId::new("new", N), |b| {
        b.iter_batched(|| routes(N), Table::new, BatchSize::LargeInput)
    });
    // The swap as a source does it: the old table is freed here, its last reader being gone.
    let shared = Arc::new(SharedTable::default());
    group.bench_function(BenchmarkId::new("swap_and_free_old", N), |b| {
        b.iter_batched(
            || Table::new(routes(N)).expect("no conflicts"),
            |table| shared.publish(table).generation,
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, lookup, build_and_swap);
criterion_main!(benches);
