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
//! - `gateway_build/5000`: the Gateway API source at the same scale, Kamaji's shape: one
//!   Gateway, 5,000 TLSRoutes each to its own Service with an EndpointSlice of three pods in
//!   three zones; the whole graph built (routes and every status: what each Gateway API event
//!   costs, since the mapping is one pure function of all the objects), and
//!   `gateway_publish/5000`: those routes merged into a table and swapped in.
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time: the
//! work is single-threaded, and CPU time is what the budget is about and stays meaningful on
//! a busy machine.
//!
//! `cargo bench --bench kube_build` (add `-- --quick` for a rough run).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use control::gateway::{self, Key, Objects};
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

/// Kamaji's shape at `CLUSTERS` tenants: a class of ours, the Gateway `kamaji-system/gateway`
/// (listener `kube-apiserver`, 6443, TLS Passthrough, routes from All), and per tenant a
/// TLSRoute to its Service, which has an EndpointSlice of three pods in three zones.
fn gateway_world() -> Objects {
    fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
        serde_json::from_value(value).expect("a valid object")
    }
    let mut objects = Objects::default();
    objects.classes.insert(
        "sniroute".into(),
        from(json!({"metadata": {"name": "sniroute", "generation": 1},
                    "spec": {"controllerName": "sniroute.dev/gateway-controller"}})),
    );
    objects.gateways.insert(
        Key::new("kamaji-system", "gateway"),
        from(json!({"metadata": {"name": "gateway", "namespace": "kamaji-system", "generation": 1},
                    "spec": {"gatewayClassName": "sniroute", "listeners": [{
                        "name": "kube-apiserver", "port": 6443, "protocol": "TLS",
                        "tls": {"mode": "Passthrough"},
                        "allowedRoutes": {"namespaces": {"from": "All"},
                            "kinds": [{"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}]}}]}})),
    );
    let mut slices = std::collections::BTreeMap::new();
    for i in 0..CLUSTERS {
        let name = format!("tenant-{i:04}");
        let key = Key::new("tenants", name.clone());
        let ip = |k: usize| format!("198.18.{}.{}", (3 * i + k) / 250, (3 * i + k) % 250 + 1);
        objects.services.insert(
            key.clone(),
            from(json!({"metadata": {"name": name, "namespace": "tenants"},
                        "spec": {"clusterIP": format!("198.19.{}.{}", i / 250, i % 250 + 1),
                                 "ports": [{"name": "https", "port": 6443}]}})),
        );
        let endpoints: Vec<Value> = (0..3)
            .map(|k| {
                json!({"addresses": [ip(k)], "zone": format!("zone-{k}"),
                            "conditions": {"ready": true}})
            })
            .collect();
        let slice = from(json!({
            "metadata": {"name": format!("{name}-x"), "namespace": "tenants",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "https", "port": 6443}],
        }));
        slices.insert(key.clone(), [(format!("{name}-x"), slice)].into());
        objects.routes.insert(
            key,
            from(json!({
                "metadata": {"name": name, "namespace": "tenants", "generation": 1,
                             "creationTimestamp": "2026-12-01T00:00:00Z"},
                "spec": {"parentRefs": [{"name": "gateway", "namespace": "kamaji-system",
                                         "sectionName": "kube-apiserver", "port": 6443}],
                         "hostnames": [format!("{name}.cluster.example")],
                         "rules": [{"backendRefs": [{"name": name, "port": 6443}]}]},
            })),
        );
    }
    objects.slices = Some(slices);
    objects
}

/// The Gateway API source at `CLUSTERS` TLSRoutes.
fn gateway_build(c: &mut Criterion) {
    let objects = gateway_world();
    let settings = gateway::Settings {
        controller_name: "sniroute.dev/gateway-controller".into(),
        addresses: Vec::new(),
        zone: Some("zone-1".into()),
        services: None,
    };
    let graph = gateway::build(&objects, &settings);
    assert_eq!(graph.routes.len(), CLUSTERS, "every TLSRoute routed");
    assert!(
        graph.routes.iter().all(|r| r.backends.len() == 3),
        "every route to its three pods"
    );
    let mut group = c.benchmark_group("kube_build");
    group.sample_size(10);
    group.bench_function("gateway_build/5000", |b| {
        b.iter_custom(|iters| cpu(iters, || (), |()| gateway::build(&objects, &settings)))
    });
    // Each publish differs from the last in one route's backends, as after one EndpointSlice
    // event: the merge rebuilds that route and keeps the other 4,999.
    let publisher = Publisher::new(Arc::default());
    let mut turn = 0u16;
    group.bench_function("gateway_publish/5000", |b| {
        b.iter_custom(|iters| {
            cpu(
                iters,
                || {
                    turn = turn.wrapping_add(1);
                    let mut routes = graph.routes.clone();
                    routes[1234].backends[0] =
                        proxy::Backend::Addr(([198, 18, 200, 1], 6000 + turn % 2).into());
                    routes
                },
                |routes| {
                    publisher
                        .update(SourceKind::GatewayApi, routes)
                        .expect("the routes publish")
                },
            )
        })
    });
    let table = &publisher.shared().load().table;
    assert_eq!(table.routes().len(), CLUSTERS, "all 5,000 in the table");
    let name = proxy::ServerName::parse(b"tenant-4321.cluster.example").expect("a name");
    let route = table.lookup(&name).expect("tenant-4321 routes");
    assert_eq!(route.name(), "tenants/tenant-4321");
    group.finish();
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

criterion_group!(benches, kube_build, gateway_build);
criterion_main!(benches);
