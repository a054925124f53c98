//! The store: incremental rebuilds, relists, deletes and bad objects.

use serde_json::{json, Value};

use super::*;
use crate::kube::fixtures::{self, hc_object, host, route_object, service_object, with_rv};

/// A cluster's HostedCluster, Routes and Services.
type Objects = (Value, Vec<Value>, Vec<Value>);

/// A store holding `n` fixture clusters `c0..`, listed the way a watcher delivers them.
fn listed(n: usize) -> (Store, Vec<Objects>) {
    let clusters: Vec<_> = (0..n)
        .map(|i| fixtures::cluster("clusters", &format!("c{i}"), i))
        .collect();
    let mut store = Store::new();
    relist(&mut store, &clusters);
    (store, clusters)
}

fn relist(store: &mut Store, clusters: &[Objects]) {
    store.relist_begin(Kind::HostedCluster);
    store.relist_begin(Kind::Route);
    store.relist_begin(Kind::Service);
    for (hc, routes, services) in clusters {
        store.relist_apply(hc_object(hc.clone()));
        for r in routes {
            store.relist_apply(route_object(r.clone()));
        }
        for s in services {
            store.relist_apply(service_object(s.clone()));
        }
    }
    store.relist_done(Kind::HostedCluster);
    store.relist_done(Kind::Route);
    store.relist_done(Kind::Service);
}

fn backend_of(store: &Store, route: &str) -> Option<String> {
    store
        .routes()
        .into_iter()
        .find(|r| &*r.name == route)
        .map(|r| r.backends[0].to_string())
}

#[test]
fn a_full_list_builds_every_cluster_and_an_unchanged_relist_rebuilds_none() {
    let (mut store, clusters) = listed(3);
    assert_eq!(store.dirty(), 3);
    let rebuilt = store.rebuild();
    assert_eq!((rebuilt.clusters, rebuilt.changed), (3, true));
    let routes = store.routes();
    assert_eq!(routes.len(), 15);
    assert_eq!(&*routes[0].name, "clusters/c0/ignition-server");
    assert_eq!(&*routes[14].name, "clusters/c2/oauth");
    assert_eq!(store.problems(), ProblemCounts::default());

    relist(&mut store, &clusters);
    assert_eq!(
        store.dirty(),
        0,
        "same resourceVersions: nothing to rebuild"
    );
}

#[test]
fn a_service_port_change_rebuilds_only_its_cluster() {
    let (mut store, clusters) = listed(3);
    store.rebuild();
    let mut svc = clusters[1].2[0].clone();
    assert_eq!(svc["metadata"]["name"], "kube-apiserver");
    svc["spec"]["ports"][0]["port"] = json!(7443);
    store.apply(service_object(with_rv(svc, 2)));
    assert_eq!(store.dirty(), 1);
    let rebuilt = store.rebuild();
    assert_eq!((rebuilt.clusters, rebuilt.changed), (1, true));
    assert_eq!(
        backend_of(&store, "clusters/c1/kube-apiserver").as_deref(),
        Some("172.16.0.2:7443")
    );
}

#[test]
fn status_only_changes_publish_nothing() {
    let (mut store, clusters) = listed(2);
    store.rebuild();
    let mut hc = clusters[0].0.clone();
    hc["status"]["conditions"][0]["lastTransitionTime"] = json!("2026-03-03T00:00:00Z");
    store.apply(hc_object(with_rv(hc, 9)));
    let rebuilt = store.rebuild();
    assert_eq!((rebuilt.clusters, rebuilt.changed), (1, false));
}

#[test]
fn deletes_remove_routes_and_a_missing_service_rejects_only_its_route() {
    let (mut store, clusters) = listed(2);
    store.rebuild();
    store.delete(hc_object(clusters[0].0.clone()));
    assert!(store.rebuild().changed);
    assert_eq!(store.routes().len(), 5);
    assert!(store
        .routes()
        .iter()
        .all(|r| r.name.starts_with("clusters/c1/")));

    let oauth_svc = clusters[1].2[1].clone();
    assert_eq!(oauth_svc["metadata"]["name"], "oauth-openshift");
    store.delete(service_object(oauth_svc.clone()));
    store.rebuild();
    assert_eq!(store.routes().len(), 4);
    assert_eq!(store.problems().rejected, 1);
    // Nothing new to report on the next rebuild of the same state.
    store.apply(hc_object(with_rv(clusters[1].0.clone(), 5)));
    store.rebuild();
    assert_eq!(store.problems().rejected, 1);

    store.apply(service_object(with_rv(oauth_svc, 3)));
    store.rebuild();
    assert_eq!(store.routes().len(), 5);
}

#[test]
fn a_relist_drops_what_is_gone_and_applies_what_changed() {
    let (mut store, mut clusters) = listed(3);
    store.rebuild();
    // While the watch was down: c2 deleted, c0's oauth route moved to a new host.
    clusters.pop();
    clusters[0].1[1]["spec"]["host"] = json!("oauth.moved.example.test");
    clusters[0].1[1] = with_rv(clusters[0].1[1].clone(), 7);
    relist(&mut store, &clusters);
    assert_eq!(store.dirty(), 2, "c0 (route changed) and c2 (gone)");
    store.rebuild();
    let routes = store.routes();
    assert_eq!(routes.len(), 10);
    let oauth = routes
        .iter()
        .find(|r| &*r.name == "clusters/c0/oauth")
        .unwrap();
    assert_eq!(oauth.hostnames[0].to_string(), "oauth.moved.example.test");
}

#[test]
fn a_relist_in_progress_keeps_serving_the_old_objects() {
    let (mut store, clusters) = listed(2);
    store.rebuild();
    store.relist_begin(Kind::Service);
    store.relist_apply(service_object(clusters[0].2[0].clone()));
    // An event of another kind during the relist rebuilds with the stored Services.
    store.apply(hc_object(with_rv(clusters[1].0.clone(), 4)));
    store.rebuild();
    assert_eq!(store.routes().len(), 10);
}

#[test]
fn a_malformed_update_keeps_the_last_good_cluster() {
    let (mut store, clusters) = listed(1);
    store.rebuild();
    let mut bad = clusters[0].0.clone();
    bad["spec"]["clusterID"] = json!({"not": "a string"});
    store.apply(hc_object(with_rv(bad.clone(), 2)));
    let rebuilt = store.rebuild();
    assert!(
        !rebuilt.changed,
        "the last good version still maps the same"
    );
    assert_eq!(store.routes().len(), 5);
    assert_eq!(store.problems().malformed, 1);

    // A cluster that never parsed is not routed, and the rest are.
    let (mut hc, routes, services) = fixtures::cluster("clusters", "fresh", 9);
    hc["spec"]["platform"] = json!("Azure");
    store.apply(hc_object(hc));
    for r in routes {
        store.apply(route_object(r));
    }
    for s in services {
        store.apply(service_object(s));
    }
    store.rebuild();
    assert_eq!(store.routes().len(), 5);
    assert_eq!(store.problems().malformed, 2);
}

#[test]
fn objects_of_clusters_not_yet_seen_are_used_when_the_cluster_arrives() {
    let (hc, routes, services) = fixtures::cluster("clusters", "late", 3);
    let mut store = Store::new();
    for r in routes {
        store.apply(route_object(r));
    }
    for s in services {
        store.apply(service_object(s));
    }
    assert_eq!(store.dirty(), 0);
    store.apply(hc_object(hc));
    store.rebuild();
    assert_eq!(store.routes().len(), 5);
    assert_eq!(
        store.routes()[2].hostnames[0].to_string(),
        host("api", "late")
    );
}

#[test]
fn objects_without_a_name_are_ignored() {
    let mut store = Store::new();
    store.apply(service_object(json!({"metadata": {"namespace": "x"}})));
    assert_eq!(store.problems().malformed, 1);
    assert_eq!(store.dirty(), 0);
}

#[test]
fn endpoint_slices_rebuild_only_their_cluster_and_unlistable_slices_fall_back() {
    let clusters: Vec<_> = (0..2)
        .map(|i| fixtures::cluster("clusters", &format!("c{i}"), i))
        .collect();
    let mut store = Store::to_endpoints(Some("z1".into()));
    relist(&mut store, &clusters);
    store.relist_begin(Kind::EndpointSlice);
    store.relist_done(Kind::EndpointSlice);
    store.rebuild();
    let kas = "clusters/c0/kube-apiserver";
    assert_eq!(backend_of(&store, kas).as_deref(), Some("172.16.0.1:6443"));

    let slice = |rv: u64, ready: bool| {
        fixtures::slice_object(with_rv(
            fixtures::endpoint_slice(
                "clusters-c0",
                "kube-apiserver-x",
                "kube-apiserver",
                Some("https"),
                6444,
                &[("10.128.0.1", "z1", ready, true, !ready)],
            ),
            rv,
        ))
    };
    store.apply(slice(2, true));
    assert_eq!(store.dirty(), 1, "only the slice's cluster");
    assert!(store.rebuild().changed);
    assert_eq!(backend_of(&store, kas).as_deref(), Some("10.128.0.1:6444"));
    let facts = |store: &Store| {
        store
            .routes()
            .into_iter()
            .find(|r| &*r.name == kas)
            .unwrap()
            .facts
    };
    assert_eq!(facts(&store)[0].condition, proxy::Condition::Ready);

    // A pod turning terminating changes the route (and so the table).
    store.apply(slice(3, false));
    assert!(store.rebuild().changed);
    assert_eq!(facts(&store)[0].condition, proxy::Condition::Terminating);

    // Slices no longer listable: every cluster back to its ClusterIP until they are.
    store.slices_unlistable();
    assert_eq!(store.dirty(), 2);
    store.rebuild();
    assert_eq!(backend_of(&store, kas).as_deref(), Some("172.16.0.1:6443"));
    store.relist_begin(Kind::EndpointSlice);
    store.relist_apply(slice(3, true));
    store.relist_done(Kind::EndpointSlice);
    store.rebuild();
    assert_eq!(backend_of(&store, kas).as_deref(), Some("10.128.0.1:6444"));

    store.delete(slice(4, true));
    store.rebuild();
    assert_eq!(backend_of(&store, kas).as_deref(), Some("172.16.0.1:6443"));
}
