//! End to end: routing to the kube-apiserver pods themselves, from EndpointSlices, against
//! the real etcd and kube-apiserver of `tests/e2e/kube.rs` (one server for this binary; each
//! test has hosted clusters of its own). No controller-manager runs there, so each test
//! writes the EndpointSlices itself, as the EndpointSlice controller would, and the
//! ClusterIPs have no listener unless a test gives one: a connection that reaches a backend
//! went to the pod the slice names.
//!
//! Pod addresses: the real server refuses EndpointSlice addresses in 127.0.0.0/8 and ::1
//! ("may not be in the loopback range"), IPv4-mapped forms included, so pods cannot listen
//! where the other tests do. They listen on /32s from the benchmarking range 198.18.0.0/15
//! (RFC 2544) that [`pod_addrs`] puts on `lo`: an address on `lo` is delivered by the local
//! stack and no packet to it leaves the host. That needs CAP_NET_ADMIN; without it the tests
//! print SKIPPED (or fail, with `SNIROUTE_REQUIRE_APISERVER=1`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::apiserver::hypershift::{as_written, create_cluster, Cluster};
use crate::common::apiserver::{wait_ready, Admin, ApiServer, REQUIRE_ENV};
use crate::common::*;
use control::kube::fixtures;
use serde_json::Value;
use tokio::time::Instant;

/// How long a slice change may take to reach `/routes` before a test fails.
const SWAP: Duration = Duration::from_secs(5);

/// `(zone, ready, serving, terminating)` of one endpoint, as the slice states it.
type Conditions = (&'static str, bool, bool, bool);
const READY: Conditions = ("zone-a", true, true, false);
const NOT_READY: Conditions = ("zone-a", false, false, false);
const TERMINATING: Conditions = ("zone-a", false, true, true);

/// Addresses `198.18.<test>.1..=n` on `lo` (added if missing; left there afterwards, since
/// removing them would race another run of this binary, and a /32 on `lo` routes nothing
/// off the host), or `None` after a SKIPPED line where they cannot be added.
fn pod_addrs(test: u8, n: u8) -> Option<Vec<IpAddr>> {
    let addrs: Vec<IpAddr> = (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(198, 18, test, i)))
        .collect();
    for addr in &addrs {
        let added = Command::new("ip")
            .args(["addr", "replace", &format!("{addr}/32"), "dev", "lo"])
            .output();
        let ok = added.as_ref().is_ok_and(|o| o.status.success());
        // Already there (another run added it) is as good as added.
        let local = std::net::TcpListener::bind((*addr, 0)).is_ok();
        if !ok && !local {
            let why = match added {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                !std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1"),
                "cannot put {addr} on lo: {why}"
            );
            eprintln!(
                "\n*** SKIPPED: the EndpointSlice tests put pod addresses from 198.18.0.0/15 on \
                 lo and need CAP_NET_ADMIN for it ({addr}: {why}) ***\n"
            );
            return None;
        }
    }
    Some(addrs)
}

/// One pod: a TLS backend identified by its name, on its own address.
struct Pod {
    name: String,
    backend: TlsBackend,
}

impl Pod {
    fn addr(&self) -> SocketAddr {
        self.backend.addr()
    }
}

/// A hosted cluster whose kube-apiserver pods listen on addresses of their own, all on one
/// port (the slice's), and the sniroute routing it.
struct Setup {
    admin: Admin,
    cluster: Cluster,
    ips: Vec<IpAddr>,
    port: u16,
    proxy: Sniroute,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// Test number `test` (its pod addresses), cluster `name`, sniroute with `kubernetes`
    /// on node `node` (`NODE_NAME`, as the Deployment sets it), and the pods `pods` on the
    /// first addresses; `None` where the server or the addresses cannot be had.
    async fn start(
        test: u8,
        name: &str,
        (kubernetes, node): (&str, Option<&str>),
        pods: &[&str],
    ) -> Option<(Self, Vec<Pod>)> {
        let ips = pod_addrs(test, 6)?;
        let server = ApiServer::shared().await?;
        let admin = server.admin().await;
        // Indexes 100 and up: the e2e crate's other modules share the server (kube.rs 1-99).
        let cluster = create_cluster(&admin, "eps", name, 100 + usize::from(test)).await;
        let port = std::net::TcpListener::bind((ips[0], 0))
            .and_then(|l| l.local_addr())
            .expect("a port on the first pod address")
            .port();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = server.sniroute_kubeconfig(dir.path(), &server.url()).await;
        let cfg = Cfg::new().set("kubernetes", kubernetes);
        let mut env = vec![
            ("KUBECONFIG".to_owned(), kubeconfig.display().to_string()),
            ("RUST_LOG".to_owned(), "info,control=debug".to_owned()),
        ];
        env.extend(node.map(|node| ("NODE_NAME".to_owned(), node.to_owned())));
        let opts = StartOpts {
            env,
            ready: false,
            ..StartOpts::default()
        };
        let proxy = Sniroute::start_opts(cfg.yaml(), &opts);
        wait_ready(&proxy).await;
        let setup = Self {
            admin,
            cluster,
            ips,
            port,
            proxy,
            _dir: dir,
        };
        let pods = pods
            .iter()
            .enumerate()
            .map(|(i, n)| setup.pod(n, i))
            .collect();
        Some((setup, pods))
    }

    /// A pod named `name` listening on pod address `i` at the slice's port.
    fn pod(&self, name: &str, i: usize) -> Pod {
        let addr = SocketAddr::new(self.ips[i], self.port);
        Pod {
            name: name.to_owned(),
            backend: self.cluster.backend_at(name, addr),
        }
    }

    fn route(&self) -> String {
        format!(
            "{}/{}/kube-apiserver",
            self.cluster.namespace, self.cluster.name
        )
    }

    /// Writes the kube-apiserver Service's one EndpointSlice (port named as the Service's,
    /// `https`) with the pods at `endpoints` (address indices), then waits until `/routes`
    /// shows what it must: each serving pod, or the ClusterIP when none serves.
    async fn write_slice(&self, endpoints: &[(usize, Conditions)]) {
        let addrs: Vec<String> = endpoints
            .iter()
            .map(|(i, _)| self.ips[*i].to_string())
            .collect();
        let written: Vec<(&str, &str, bool, bool, bool)> = endpoints
            .iter()
            .zip(&addrs)
            .map(|((_, (zone, r, s, t)), addr)| (addr.as_str(), *zone, *r, *s, *t))
            .collect();
        let slice = fixtures::endpoint_slice(
            &self.cluster.hcp,
            "kube-apiserver-x1",
            "kube-apiserver",
            Some("https"),
            self.port,
            &written,
        );
        self.admin.apply(&as_written(slice)).await;
        let mut want: Vec<(SocketAddr, &str)> = endpoints
            .iter()
            .filter_map(|&(i, (_, ready, serving, terminating))| {
                let addr = SocketAddr::new(self.ips[i], self.port);
                match (ready && !terminating, serving && terminating) {
                    (true, _) => Some((addr, "ready")),
                    (false, true) => Some((addr, "terminating")),
                    (false, false) => None,
                }
            })
            .collect();
        if want.is_empty() {
            want.push((self.cluster.service("kube-apiserver"), "ready"));
        }
        self.wait_endpoints(&want).await;
    }

    /// The route's `endpoints` from `/routes`, by address.
    fn endpoints(&self) -> BTreeMap<SocketAddr, Value> {
        let routes = self.proxy.routes();
        let route = self.route();
        routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == route.as_str())
            .and_then(|r| r["endpoints"].as_array())
            .map(|endpoints| {
                endpoints
                    .iter()
                    .map(|e| (e["backend"].as_str().unwrap().parse().unwrap(), e.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How `/routes` ranks each of `pods` (`near`, `far`, `terminating`).
    fn standings(&self, pods: &[Pod]) -> Vec<Value> {
        let shown = self.endpoints();
        pods.iter()
            .map(|p| shown[&p.addr()]["standing"].clone())
            .collect()
    }

    /// Waits until `/routes` lists exactly `want` (address, condition) for the route.
    async fn wait_endpoints(&self, want: &[(SocketAddr, &str)]) {
        let want: BTreeMap<SocketAddr, String> =
            want.iter().map(|(a, c)| (*a, (*c).to_owned())).collect();
        let started = Instant::now();
        loop {
            let got: BTreeMap<SocketAddr, String> = self
                .endpoints()
                .into_iter()
                .map(|(a, e)| (a, e["condition"].as_str().unwrap_or("?").to_owned()))
                .collect();
            if got == want {
                return;
            }
            assert!(
                started.elapsed() < SWAP,
                "/routes endpoints of {}: want {want:?}, got {got:?}",
                self.route()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// `n` connections to the route, opened all at once and held; how many each of `pods`
    /// took.
    async fn open(&self, n: usize, pods: &[Pod]) -> (Vec<TlsConn>, Vec<usize>) {
        let addr = self.proxy.proxy_addr();
        let host = self.cluster.api();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let host = host.clone();
                tokio::spawn(async move { tls_connect(addr, &host).await })
            })
            .collect();
        let mut conns = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            let conn = task.await.unwrap();
            conns.push(conn.unwrap_or_else(|e| panic!("connection {i}: {e}")));
        }
        let spread = pods
            .iter()
            .map(|p| conns.iter().filter(|c| c.backend == p.name).count())
            .collect();
        (conns, spread)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_connections_spread_evenly_and_the_least_loaded_pod_takes_the_next() {
    let Some((s, pods)) = Setup::start(1, "spread", ("{}", None), &["p1", "p2", "p3"]).await else {
        return;
    };
    s.write_slice(&[(0, READY), (1, READY), (2, READY)]).await;

    // 30 long-lived connections opened at once: kube-proxy's random pick would leave
    // pods apart by several; least connections keeps them within one.
    let (mut conns, spread) = s.open(30, &pods).await;
    let (max, min) = (spread.iter().max().unwrap(), spread.iter().min().unwrap());
    assert!(max - min <= 1, "held connections per pod: {spread:?}");
    let shown: Vec<u64> = s
        .endpoints()
        .values()
        .map(|e| e["open_connections"].as_u64().unwrap())
        .collect();
    assert_eq!(shown, [10, 10, 10], "/routes open_connections");

    // p1's connections end (a client restarted): the next ones all go to p1.
    conns.retain(|c| c.backend != "p1");
    eventually(SWAP, "p1's connections closed", || async {
        (s.endpoints()[&pods[0].addr()]["open_connections"] == 0).then_some(())
    })
    .await;
    // explain orders the backends as the next connection tries them: p1 first.
    let query = format!("/explain?sni={}", s.cluster.api());
    let (status, body) = http_get(s.proxy.listener_addr("debug"), &query).unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let first = &answer["route"]["backends"][0];
    assert_eq!(first["backend"], pods[0].addr().to_string(), "{answer}");
    assert_eq!(first["open_connections"], 0, "{answer}");
    assert_eq!(answer["route"]["backends"][1]["open_connections"], 10);
    let (mut more, spread) = s.open(10, &pods).await;
    assert_eq!(spread, [10, 0, 0], "the least loaded pod fills up");
    for conn in conns.iter_mut().chain(more.iter_mut()) {
        conn.echo(b"still flowing").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_pod_takes_no_new_connection_and_keeps_its_old_ones() {
    let Some((s, pods)) = Setup::start(2, "terminating", ("{}", None), &["p1", "p2", "p3"]).await
    else {
        return;
    };
    s.write_slice(&[(0, READY), (1, READY), (2, READY)]).await;
    let (mut old, spread) = s.open(3, &pods).await;
    assert_eq!(spread, [1, 1, 1]);

    // p1 is being rolled: serving, terminating, not ready.
    s.write_slice(&[(0, TERMINATING), (1, READY), (2, READY)])
        .await;
    let accepted = pods[0].backend.accepted();
    let (_new, spread) = s.open(6, &pods).await;
    assert_eq!(
        spread,
        [0, 3, 3],
        "no new connection to the terminating pod"
    );
    assert_eq!(pods[0].backend.accepted(), accepted);
    for conn in &mut old {
        conn.echo(b"old connections keep flowing").await;
    }
    assert_eq!(pods[0].backend.active(), 1, "its old connection is not cut");

    // Every pod terminating: the last resort is used, least loaded first.
    s.write_slice(&[(0, TERMINATING), (1, TERMINATING), (2, TERMINATING)])
        .await;
    let (_last, spread) = s.open(1, &pods).await;
    assert_eq!(
        spread,
        [1, 0, 0],
        "the terminating pod with the fewest open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_pods_are_skipped_and_none_serving_falls_back_to_the_cluster_ip() {
    let Some((s, pods)) = Setup::start(3, "notready", ("{}", None), &["p1", "p2", "p3"]).await
    else {
        return;
    };
    // No slice yet: the ClusterIP, which for this test has a listener.
    let service = s.cluster.backend("service", "kube-apiserver");
    let mark = s.proxy.log_mark();
    let conn = tls_connect(s.proxy.proxy_addr(), &s.cluster.api())
        .await
        .unwrap();
    assert_eq!(conn.backend, "service", "no EndpointSlice: the ClusterIP");
    s.wait_endpoints(&[(service.addr(), "ready")]).await;
    s.proxy.wait_log_since(
        mark,
        &["has no EndpointSlice; routing to its ClusterIP"],
        STEP,
    );

    s.write_slice(&[(0, NOT_READY), (1, READY), (2, READY)])
        .await;
    let (_conns, spread) = s.open(6, &pods).await;
    assert_eq!(spread, [0, 3, 3], "the not-ready pod is skipped");
    assert_eq!(pods[0].backend.accepted(), 0);

    // Nothing serving: the ClusterIP again, and the log says why.
    let mark = s.proxy.log_mark();
    s.write_slice(&[(0, NOT_READY), (1, NOT_READY), (2, NOT_READY)])
        .await;
    s.proxy.wait_log_since(
        mark,
        &["has no serving endpoint; routing to its ClusterIP"],
        STEP,
    );
    let conn = tls_connect(s.proxy.proxy_addr(), &s.cluster.api())
        .await
        .unwrap();
    assert_eq!(conn.backend, "service");
    let pod_accepts: usize = pods.iter().map(|p| p.backend.accepted()).sum();
    assert_eq!(
        pod_accepts, 6,
        "no pod took a connection after the fallback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_zone_is_preferred_and_other_zones_take_the_overflow() {
    // The node is in zone-b, but kubernetes.zone wins.
    let Some(node) = node_in("zone-b").await else {
        return;
    };
    let sniroute = ("{zone: zone-a}", Some(node.as_str()));
    let Some((s, pods)) = Setup::start(4, "zones", sniroute, &["a1", "b1", "b2"]).await else {
        return;
    };
    let in_b = |c: Conditions| ("zone-b", c.1, c.2, c.3);
    s.write_slice(&[(0, READY), (1, in_b(READY)), (2, in_b(READY))])
        .await;
    let shown = s.endpoints();
    assert_eq!(s.standings(&pods), ["near", "far", "far"]);
    assert_eq!(shown[&pods[1].addr()]["zone"], "zone-b");

    // Same zone first, however loaded.
    let (_near, spread) = s.open(4, &pods).await;
    assert_eq!(spread, [4, 0, 0], "zone-a's pod takes every connection");

    // zone-a's pod is rolled: zone-b takes the overflow, least loaded first.
    s.write_slice(&[(0, TERMINATING), (1, in_b(READY)), (2, in_b(READY))])
        .await;
    let (_overflow, spread) = s.open(4, &pods).await;
    assert_eq!(spread, [0, 2, 2], "another zone before a terminating pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_kubernetes_zone_the_zone_is_the_nodes() {
    let Some(node) = node_in("zone-b").await else {
        return;
    };
    let sniroute = ("{}", Some(node.as_str()));
    let Some((s, pods)) = Setup::start(6, "nodezone", sniroute, &["a1", "b1"]).await else {
        return;
    };
    s.proxy.wait_log(
        &[
            "preferring endpoints in the zone of this node",
            "zone-b",
            &node,
        ],
        STEP,
    );
    s.write_slice(&[(0, READY), (1, ("zone-b", true, true, false))])
        .await;
    assert_eq!(s.standings(&pods), ["far", "near"]);
    let (_conns, spread) = s.open(3, &pods).await;
    assert_eq!(spread, [0, 3], "the node's zone first");
}

/// A Node labelled with `zone` (as the kubelet labels its own), by its name.
async fn node_in(zone: &str) -> Option<String> {
    let admin = ApiServer::shared().await?.admin().await;
    let name = format!("node-{zone}");
    admin
        .apply(&serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}}
        }))
        .await;
    Some(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_replacing_every_pod_fails_no_connection() {
    let old = ["old1", "old2", "old3"];
    let Some((s, pods)) = Setup::start(5, "rollout", ("{}", None), &old).await else {
        return;
    };
    let mut pods: Vec<Option<Pod>> = pods.into_iter().map(Some).collect();
    let mut slice: Vec<(usize, Conditions)> = (0..3).map(|i| (i, READY)).collect();
    s.write_slice(&slice).await;

    // Clients that retry nothing: each connection must reach a pod and echo.
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, host) = (s.proxy.proxy_addr(), s.cluster.api());
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, host) = (stop.clone(), host.clone());
            tokio::spawn(async move {
                let mut reached = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut conn = tls_connect(addr, &host)
                        .await
                        .unwrap_or_else(|e| panic!("connection {}: {e}", reached.len()));
                    conn.echo(b"rollout").await;
                    reached.push(conn.backend);
                }
                reached
            })
        })
        .collect();

    // As a Deployment rolls: the new pod becomes ready, the old one terminates (and keeps
    // serving through its shutdown delay), leaves the slice, then stops listening.
    let new = ["new1", "new2", "new3"];
    for k in 0..3 {
        pods.push(Some(s.pod(new[k], 3 + k)));
        slice.push((3 + k, READY));
        s.write_slice(&slice).await;
        slice[0].1 = TERMINATING;
        s.write_slice(&slice).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        slice.remove(0);
        s.write_slice(&slice).await;
        let gone = pods[k].take().unwrap();
        eventually(SWAP, "the old pod's last connection ended", || async {
            (gone.backend.active() == 0).then_some(())
        })
        .await;
        drop(gone);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut reached = Vec::new();
    for client in clients {
        reached.extend(client.await.expect("a client failed a connection"));
    }
    for name in old.iter().chain(&new) {
        assert!(
            reached.iter().any(|r| r == name),
            "{name} took no connection in {} connections",
            reached.len()
        );
    }
}
