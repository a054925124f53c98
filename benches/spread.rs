//! How evenly long-lived connections land on a route's pods, and what choosing costs.
//!
//! - `spread`: the real data plane in process (listener, ClientHello, routing, connect) in
//!   front of three TCP backends on loopback; 300 clients connect from 300 tasks at once
//!   and hold their connections, then the backends count what they hold. Max/min per pod
//!   (ideal 1.00) over several rounds, beside uniform random placement, which is what
//!   kube-proxy does per connection (iptables and nftables modes), over many trials.
//! - `choose`: one connection's choice alone: three candidates ordered, the first counted,
//!   the count released when the connection ends.
//!
//! `cargo bench --bench spread` (plain `main`, prints its numbers).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use proxy::internals::client_hello::{self, Parsed};
use proxy::internals::pick;
use proxy::{Candidate, Standing};
use proxy::{Endpoint, Target};
use proxy::{ListenerKind, Metrics, Proxy, SharedTable};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const CURL: &[u8] = include_bytes!("../tests/fixtures/clienthellos/curl-7.88.bin");
const PODS: usize = 3;
const CONNECTIONS: usize = 300;
const ROUNDS: usize = 10;
const RANDOM_TRIALS: usize = 10_000;
const CHOICES: u32 = 1_000_000;

/// A backend that accepts and holds every connection until told to let go.
struct Pod {
    addr: SocketAddr,
    held: Arc<AtomicUsize>,
}

fn pod(release: watch::Receiver<u64>) -> Pod {
    let std = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a pod");
    std.set_nonblocking(true).expect("nonblocking");
    let addr = std.local_addr().expect("pod address");
    let held = Arc::new(AtomicUsize::new(0));
    let count = held.clone();
    tokio::spawn(async move {
        let listener = TcpListener::from_std(std).expect("pod listener");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let (count, mut release) = (count.clone(), release.clone());
            // Held until the next release, not the ones before it.
            release.borrow_and_update();
            tokio::spawn(async move {
                let _ = release.changed().await;
                drop(stream);
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Pod { addr, held }
}

/// `max / min` of `counts` (infinite when a pod has none).
fn ratio(counts: &[usize]) -> f64 {
    let max = counts.iter().copied().max().unwrap_or(0) as f64;
    let min = counts.iter().copied().min().unwrap_or(0) as f64;
    max / min
}

/// The max/min of every round through the data plane, and the last round's counts.
async fn through_sniroute() -> (Vec<f64>, Vec<usize>) {
    let (release, released) = watch::channel(0u64);
    let pods: Vec<Pod> = (0..PODS).map(|_| pod(released.clone())).collect();
    let Parsed::Hello(hello) = client_hello::parse(CURL, 16_384) else {
        panic!("the curl fixture is a ClientHello");
    };
    let sni = hello.server_name.expect("the fixture has an SNI");
    let backends: Vec<String> = pods.iter().map(|p| format!("\"{}\"", p.addr)).collect();
    let yaml = format!(
        "listen: [\"127.0.0.1:0\"]\nroutes:\n  - hostnames: [\"{}\"]\n    backends: [{}]\n",
        sni.as_str(),
        backends.join(", ")
    );
    let config = control::Config::parse(&yaml, "spread bench").expect("a valid config");
    let table = Arc::new(SharedTable::default());
    let snapshot = table.publish(config.table().expect("a table"));
    let route = snapshot.table.routes()[0].clone();
    let metrics = Metrics::register(&mut Registry::default());
    let proxy = Arc::new(Proxy::new(config.proxy.clone(), table, metrics));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let proxy_addr = listener.local_addr().expect("proxy address");
    let (shutdown, tasks) = (CancellationToken::new(), TaskTracker::new());
    tokio::spawn(proxy::serve(
        listener,
        ListenerKind::Sni,
        proxy.clone(),
        shutdown.clone(),
        tasks.clone(),
    ));

    let mut ratios = Vec::new();
    let mut counts = Vec::new();
    for round in 0..ROUNDS {
        let clients: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                tokio::spawn(async move {
                    let mut stream = TcpStream::connect(proxy_addr).await.expect("connect");
                    stream.write_all(CURL).await.expect("send the hello");
                    stream
                })
            })
            .collect();
        let mut held = Vec::new();
        for client in clients {
            held.push(client.await.expect("a client"));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while pods
            .iter()
            .map(|p| p.held.load(Ordering::SeqCst))
            .sum::<usize>()
            < CONNECTIONS
        {
            assert!(
                Instant::now() < deadline,
                "round {round}: not all connected"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        counts = pods.iter().map(|p| p.held.load(Ordering::SeqCst)).collect();
        ratios.push(ratio(&counts));
        drop(held);
        release.send_modify(|n| *n += 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while route.state().open() > 0 {
            assert!(
                Instant::now() < deadline,
                "round {round}: connections stayed open"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    shutdown.cancel();
    (ratios, counts)
}

/// splitmix64: a fixed, dependency-free stream of uniform numbers.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Max/min of every trial of uniform random placement, sorted.
fn random_placement() -> Vec<f64> {
    let mut state = 14;
    let mut ratios: Vec<f64> = (0..RANDOM_TRIALS)
        .map(|_| {
            let mut counts = [0usize; PODS];
            for _ in 0..CONNECTIONS {
                counts[(next(&mut state) % PODS as u64) as usize] += 1;
            }
            ratio(&counts)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios
}

/// Nanoseconds one connection's choice takes: candidates built, ordered, the first counted
/// and released.
fn choose() -> f64 {
    let endpoints: Vec<Arc<Endpoint>> = (0..PODS).map(|_| Arc::default()).collect();
    let addrs: Vec<SocketAddr> = (1..=PODS as u16)
        .map(|p| SocketAddr::from(([198, 18, 0, 1], 6443 + p)))
        .collect();
    // Some connections held, as in service: the counts are looked up, not all zero.
    let _held: Vec<_> = (0..100)
        .filter_map(|i| pick(&mut candidates(&endpoints, &addrs), i, |_| true))
        .collect();
    let started = Instant::now();
    for turn in 0..CHOICES {
        let mut candidates = candidates(&endpoints, &addrs);
        let picked = pick(&mut candidates, turn as usize, |_| true);
        drop(black_box(picked));
    }
    started.elapsed().as_nanos() as f64 / f64::from(CHOICES)
}

fn candidates(endpoints: &[Arc<Endpoint>], addrs: &[SocketAddr]) -> Vec<Candidate<Target>> {
    endpoints
        .iter()
        .zip(addrs)
        .map(|(endpoint, &addr)| Candidate {
            ejected: endpoint.is_ejected(),
            at: Target {
                addr,
                endpoint: endpoint.clone(),
            },
            standing: Standing::Near,
            open: 0,
            weight: 1,
        })
        .collect()
}

fn main() {
    // Criterion's flags (`--bench`, `--quick`) mean nothing here.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (ratios, last) = runtime.block_on(through_sniroute());
    let worst = ratios.iter().copied().fold(0.0, f64::max);
    println!(
        "spread: {CONNECTIONS} long-lived connections over {PODS} pods, opened from \
         {CONNECTIONS} tasks at once"
    );
    println!(
        "  sniroute (least connections), {ROUNDS} rounds: max/min worst {worst:.2} \
         (last round {last:?})"
    );
    let random = random_placement();
    let at = |q: f64| random[((random.len() - 1) as f64 * q) as usize];
    let mean = random.iter().sum::<f64>() / random.len() as f64;
    println!(
        "  random placement (kube-proxy), {RANDOM_TRIALS} trials: max/min mean {mean:.2}, \
         median {:.2}, p90 {:.2}, p99 {:.2}, worst {:.2}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    println!(
        "choose: {PODS} candidates ordered, the first counted and released: {:.0} ns per \
         connection",
        choose()
    );
}
