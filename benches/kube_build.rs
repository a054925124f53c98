//! The Kubernetes source at management-cluster scale: 5,000 HostedClusters, each with the
//! five served Routes and seven Services (25,000 routes, 35,000 Services).
//!
//! - `decode_lists`: the three list responses parsed as the watcher parses them;
//! - `full_build`: those objects stored as a relist, every cluster mapped, the routes merged
//!   into a table and swapped in (what the first list, or a relist that changed everything,
//!   costs);
//! - `one_cluster_update`: one Service's port changes; its cluster is mapped again and the
//!   table rebuilt and swapped (what every ordinary event costs);
//! - `parts/*`: that update's steps: mapping the one cluster, merging every source's routes,
//!   building the table.
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time: the
//! work is single-threaded, and CPU time is what the budget is about and stays meaningful on
//! a busy machine.
//!
//! `cargo bench --bench kube_build` (add `-- --quick` for a rough run).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use control::kube::fixtures;
use control::kube::{Kind, Object, Store};
use control::{Publisher, SourceKind};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};

const CLUSTERS: usize = 5_000;

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant libc defines.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `routine` `iters` times on inputs from `setup` (not timed); returns the CPU time of
/// the routine runs only.
fn cpu<I, O>(
    iters: u64,
    mut setup: impl FnMut() -> I,
    mut routine: impl FnMut(I) -> O,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let input = setup();
        let start = thread_cpu();
        let output = routine(input);
        total += thread_cpu() - start;
        drop(black_box(output));
    }
    total
}

struct World {
    bodies: [(Kind, Vec<u8>); 3],
    services: Vec<Value>,
}

fn world() -> World {
    let (mut hcs, mut routes, mut services) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..CLUSTERS {
        let (hc, r, s) = fixtures::cluster("clusters", &format!("hc-{i:05}"), i);
        hcs.push(hc);
        routes.extend(r);
        services.extend(s);
    }
    World {
        bodies: [
            (
                Kind::HostedCluster,
                fixtures::list_body(Kind::HostedCluster, &hcs, 1),
            ),
            (Kind::Route, fixtures::list_body(Kind::Route, &routes, 1)),
            (
                Kind::Service,
                fixtures::list_body(Kind::Service, &services, 1),
            ),
        ],
        services,
    }
}

fn decode(world: &World) -> Vec<(Kind, Vec<Object>)> {
    world
        .bodies
        .iter()
        .map(|(kind, body)| (*kind, fixtures::decode_list(*kind, body)))
        .collect()
}

/// Stores `lists` as a relist, maps every cluster, publishes; returns the store.
fn build(lists: Vec<(Kind, Vec<Object>)>, publisher: &Publisher) -> Store {
    let mut store = Store::new();
    for (kind, objects) in lists {
        store.relist_begin(kind);
        for object in objects {
            store.relist_apply(object);
        }
        store.relist_done(kind);
    }
    store.rebuild();
    publisher
        .update_sets(SourceKind::Kubernetes, store.route_sets())
        .expect("a table");
    store
}

fn kube_build(c: &mut Criterion) {
    let world = world();
    let mut group = c.benchmark_group("kube_build");
    group.sample_size(10);

    group.bench_function("decode_lists/5000", |b| {
        b.iter_custom(|iters| cpu(iters, || (), |()| decode(&world)))
    });

    let publisher = Publisher::new(Arc::default());
    group.bench_function("full_build/5000", |b| {
        b.iter_custom(|iters| cpu(iters, || decode(&world), |lists| build(lists, &publisher)))
    });

    let publisher = Publisher::new(Arc::default());
    let mut store = build(decode(&world), &publisher);
    assert_eq!(publisher.shared().load().table.routes().len(), CLUSTERS * 5);
    let svc = world.services[7 * 1234].clone();
    assert_eq!(svc["metadata"]["name"], "kube-apiserver");
    let mut version = 10u64;
    group.bench_function("one_cluster_update/5000", |b| {
        b.iter_custom(|iters| {
            cpu(
                iters,
                || {
                    version += 1;
                    let mut svc = fixtures::with_rv(svc.clone(), version);
                    svc["spec"]["ports"][0]["port"] = json!(7000 + version % 2);
                    fixtures::service_object(svc)
                },
                |event| {
                    store.apply(event);
                    let rebuilt = store.rebuild();
                    assert_eq!(rebuilt.clusters, 1);
                    publisher
                        .update_sets(SourceKind::Kubernetes, store.route_sets())
                        .expect("a table")
                },
            )
        })
    });
    // Where one update's time goes.
    let sets = store.route_sets();
    let merged = || {
        control::publish::merge(sets.iter().map(|set| &**set))
            .0
            .expect("routes")
    };
    group.bench_function("parts/rebuild_one_cluster", |b| {
        b.iter_custom(|iters| {
            cpu(
                iters,
                || {
                    version += 1;
                    let mut svc = fixtures::with_rv(svc.clone(), version);
                    svc["spec"]["ports"][0]["port"] = json!(7000 + version % 2);
                    fixtures::service_object(svc)
                },
                |event| {
                    store.apply(event);
                    store.rebuild()
                },
            )
        })
    });
    group.bench_function("parts/merge_25000", |b| {
        b.iter_custom(|iters| cpu(iters, || (), |()| merged()))
    });
    group.bench_function("parts/table_new_25000", |b| {
        b.iter_custom(|iters| {
            cpu(iters, merged, |routes| {
                proxy::Table::new(routes).expect("a table")
            })
        })
    });
    group.finish();
}

criterion_group!(benches, kube_build);
criterion_main!(benches);
