//! The Kubernetes source at management-cluster scale: 5,000 HostedClusters, each with the
//! five served Routes and seven Services (25,000 routes, 35,000 Services).
//!
//! - `decode_lists`: the three list responses parsed as the watcher parses them;
//! - `full_build`: those objects stored as a relist, every cluster mapped, the routes merged
//!   into a table and swapped in (what the first list, or a relist that changed everything,
//!   costs);
//! - `one_cluster_update`: one Service's port changes; its cluster is mapped again and the
//!   table rebuilt and swapped (what every ordinary event costs).
//!
//! `cargo bench --bench kube_build` (add `-- --quick` for a rough run).

use std::hint::black_box;
use std::sync::Arc;

use control::kube::fixtures;
use control::kube::{Kind, Object, Store};
use control::{Publisher, SourceKind};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::{json, Value};

const CLUSTERS: usize = 5_000;

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
            (Kind::HostedCluster, fixtures::list_body(Kind::HostedCluster, &hcs, 1)),
            (Kind::Route, fixtures::list_body(Kind::Route, &routes, 1)),
            (Kind::Service, fixtures::list_body(Kind::Service, &services, 1)),
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
        .update(SourceKind::Kubernetes, store.routes())
        .expect("a table");
    store
}

fn kube_build(c: &mut Criterion) {
    let world = world();
    let mut group = c.benchmark_group("kube_build");
    group.sample_size(10);

    group.bench_function("decode_lists/5000", |b| b.iter(|| black_box(decode(&world))));

    let publisher = Publisher::new(Arc::default());
    group.bench_function("full_build/5000", |b| {
        b.iter_batched(
            || decode(&world),
            |lists| black_box(build(lists, &publisher)),
            BatchSize::LargeInput,
        )
    });

    let publisher = Publisher::new(Arc::default());
    let mut store = build(decode(&world), &publisher);
    assert_eq!(publisher.shared().load().table.routes().len(), CLUSTERS * 5);
    let svc = world.services[7 * 1234].clone();
    assert_eq!(svc["metadata"]["name"], "kube-apiserver");
    let mut version = 10u64;
    group.bench_function("one_cluster_update/5000", |b| {
        b.iter(|| {
            version += 1;
            let mut svc = fixtures::with_rv(svc.clone(), version);
            svc["spec"]["ports"][0]["port"] = json!(7000 + version % 2);
            store.apply(fixtures::service_object(svc));
            let rebuilt = store.rebuild();
            assert_eq!(rebuilt.clusters, 1);
            publisher
                .update(SourceKind::Kubernetes, store.routes())
                .expect("a table")
        })
    });
    let routes = store.routes();
    group.bench_function("parts/routes_clone", |b| b.iter(|| black_box(store.routes())));
    group.bench_function("parts/merge", |b| b.iter(|| black_box(control::publish::merge([routes.as_slice()]).0.unwrap())));
    group.bench_function("parts/merge_table", |b| b.iter(|| black_box(proxy::Table::new(control::publish::merge([routes.as_slice()]).0.unwrap()).unwrap())));
    group.bench_function("parts/rebuild_one", |b| b.iter(|| { version += 1; let mut svc = fixtures::with_rv(svc.clone(), version); svc["spec"]["ports"][0]["port"] = json!(7000 + version % 2); store.apply(fixtures::service_object(svc)); black_box(store.rebuild()) }));
    group.finish();
}

criterion_group!(benches, kube_build);
criterion_main!(benches);
