//! The Kubernetes source at management-cluster scale: 5,000 HostedClusters, each with the
//! five served Routes and seven Services (25,000 routes, 35,000 Services), each Service with
//! an EndpointSlice of three pods in three zones (35,000 slices, 105,000 endpoints), routed
//! to the pods (`kubernetes.backends: endpoints`, a zone set).
//!
//! - `decode_lists`: the four list responses parsed as the watcher parses them;
//! - `full_build`: those objects stored as a relist, every cluster mapped, the routes merged
//!   into a table and swapped in (what the first list, or a relist that changed everything,
//!   costs);
//! - `one_cluster_update`: one Service's port changes; its cluster is mapped again and the
//!   table rebuilt and swapped (what every ordinary event costs);
//! - `one_slice_update`: one pod of one kube-apiserver turns terminating (or ready again);
//!   the same steps (what every pod readiness change of a rollout costs);
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
use control::{Published, Publisher, SourceKind};
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
    bodies: [(Kind, Vec<u8>); 4],
    services: Vec<Value>,
    slices: Vec<Value>,
}

/// The EndpointSlice of `service` (a fixture Service) in cluster `i`: three pods, one per
/// zone, the middle one `middle` (`(ready, serving, terminating)`).
fn slice_of(service: &Value, i: usize, k: usize, middle: (bool, bool, bool)) -> Value {
    let hcp = service["metadata"]["namespace"]
        .as_str()
        .expect("namespace");
    let name = service["metadata"]["name"].as_str().expect("name");
    let port = service["spec"]["ports"][0]["port"].as_u64().expect("port") as u16;
    let pods: Vec<String> = (0..3)
        .map(|p| format!("10.{}.{}.{}", i / 250 + 1, i % 250, k * 3 + p + 1))
        .collect();
    let (r, s, t) = middle;
    let endpoints = [
        (pods[0].as_str(), "zone-a", true, true, false),
        (pods[1].as_str(), "zone-b", r, s, t),
        (pods[2].as_str(), "zone-c", true, true, false),
    ];
    let slice_name = format!("{name}-x7k2p");
    fixtures::endpoint_slice(hcp, &slice_name, name, Some("https"), port, &endpoints)
}

fn world() -> World {
    let (mut hcs, mut routes, mut services) = (Vec::new(), Vec::new(), Vec::new());
    let mut slices = Vec::new();
    for i in 0..CLUSTERS {
        let (hc, r, s) = fixtures::cluster("clusters", &format!("hc-{i:05}"), i);
        hcs.push(hc);
        routes.extend(r);
        for (k, service) in s.iter().enumerate() {
            slices.push(slice_of(service, i, k, (true, true, false)));
        }
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
            (
                Kind::EndpointSlice,
                fixtures::list_body(Kind::EndpointSlice, &slices, 1),
            ),
        ],
        services,
        slices,
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
    let mut store = Store::to_endpoints(Some("zone-a".to_owned()));
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

/// One event applied: its cluster mapped again, the table rebuilt and swapped.
fn update(store: &mut Store, publisher: &Publisher, event: Object) -> Published {
    store.apply(event);
    let rebuilt = store.rebuild();
    assert_eq!(rebuilt.clusters, 1);
    publisher
        .update_sets(SourceKind::Kubernetes, store.route_sets())
        .expect("a table")
}

fn kube_build(c: &mut Criterion) {
    let world = world();
    let bytes: usize = world.bodies.iter().map(|(_, body)| body.len()).sum();
    println!(
        "kube_build: the four list responses hold {} MB of JSON",
        bytes / 1_000_000
    );
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
    let routes = publisher.shared().load().table.routes().to_vec();
    assert_eq!(routes.len(), CLUSTERS * 5);
    assert!(
        routes.iter().all(|r| r.backends().len() == 3),
        "every route to its three pods"
    );
    drop(routes);
    let svc = world.services[7 * 1234].clone();
    assert_eq!(svc["metadata"]["name"], "kube-apiserver");
    // The update below rewrites this very slice.
    assert_eq!(
        slice_of(&svc, 1234, 0, (true, true, false)),
        world.slices[7 * 1234]
    );
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
                |event| update(&mut store, &publisher, event),
            )
        })
    });
    group.bench_function("one_slice_update/5000", |b| {
        b.iter_custom(|iters| {
            cpu(
                iters,
                || {
                    version += 1;
                    let rolling = version.is_multiple_of(2);
                    let middle = (!rolling, true, rolling);
                    let slice = slice_of(&svc, 1234, 0, middle);
                    fixtures::slice_object(fixtures::with_rv(slice, version))
                },
                |event| update(&mut store, &publisher, event),
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
