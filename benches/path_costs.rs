//! What one routed connection costs the data plane in heap allocations, counted by a
//! counting global allocator (issue 21's "per routed connection" figure).
//!
//! The proxy runs in process on a runtime of its own (two worker threads, as in production);
//! the clients and the backend run on another. Only allocations made on the proxy's threads
//! are counted, so the figure is sniroute's alone. Each connection: connect, send a real
//! curl ClientHello, the backend reads it and closes, the client sees the close.
//!
//! `cargo bench --bench path_costs` prints allocations and bytes per routed connection, what
//! an idle forwarded connection keeps allocated (the proxy threads' allocations still live
//! with 1,000 connections open, by size), then (with `PATH_COSTS_SITES=1`) the call sites of
//! the allocations of one connection, by the first sniroute frame of each.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use proxy::{ListenerKind, Metrics, Proxy, SharedTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const CURL: &[u8] = include_bytes!("../tests/fixtures/clienthellos/curl-7.88.bin");
const WARMUP: usize = 200;
const CONNECTIONS: usize = 2_000;

/// Counts allocations made on threads that set [`COUNTED`].
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// While set, each counted allocation's backtrace is kept (one connection's worth).
static SITES: AtomicBool = AtomicBool::new(false);
static SITE_LOG: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
/// While set, counted allocations are kept by address until freed (on any thread).
static TRACK_LIVE: AtomicBool = AtomicBool::new(false);
static LIVE: Mutex<BTreeMap<usize, usize>> = Mutex::new(BTreeMap::new());
/// While set, the backend keeps its connections open instead of closing after the hello.
static HOLD: AtomicBool = AtomicBool::new(false);
const IDLE: usize = 1_000;

thread_local! {
    /// Set on the proxy runtime's threads.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
    /// Set while this thread is inside the allocator's own bookkeeping.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let ptr = unsafe { System.alloc(layout) };
        if note(layout.size()) {
            keep(ptr, layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        forget(ptr);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        forget(ptr);
        // SAFETY: forwarded unchanged to the system allocator.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if note(new_size) {
            keep(new, new_size);
        }
        new
    }
}

/// Runs `f` as the allocator's own bookkeeping (its allocations are not counted).
fn inside(f: impl FnOnce()) {
    if INSIDE
        .try_with(|inside| inside.replace(true))
        .unwrap_or(true)
    {
        return;
    }
    f();
    INSIDE.with(|inside| inside.set(false));
}

fn keep(ptr: *mut u8, size: usize) {
    if TRACK_LIVE.load(Ordering::Relaxed) {
        inside(|| {
            if let Ok(mut live) = LIVE.lock() {
                live.insert(ptr as usize, size);
            }
        });
    }
}

fn forget(ptr: *mut u8) {
    if TRACK_LIVE.load(Ordering::Relaxed) {
        inside(|| {
            if let Ok(mut live) = LIVE.lock() {
                live.remove(&(ptr as usize));
            }
        });
    }
}

/// Counts an allocation made on a counted thread; whether it was counted.
fn note(size: usize) -> bool {
    let counted = COUNTED.try_with(Cell::get).unwrap_or(false);
    if !counted || INSIDE.try_with(Cell::get).unwrap_or(true) {
        return false;
    }
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
    if SITES.load(Ordering::Relaxed) {
        INSIDE.with(|inside| inside.set(true));
        let trace = std::backtrace::Backtrace::force_capture().to_string();
        if let Ok(mut log) = SITE_LOG.lock() {
            log.push((size, trace));
        }
        INSIDE.with(|inside| inside.set(false));
    }
    true
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A backend that reads what it is sent until it has the whole hello, then closes.
async fn backend(listener: TcpListener) {
    let held = Arc::new(Mutex::new(Vec::new()));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let held = held.clone();
        tokio::spawn(async move {
            let mut got = vec![0u8; CURL.len()];
            let _ = stream.read_exact(&mut got).await;
            if HOLD.load(Ordering::SeqCst) {
                if let Ok(mut held) = held.lock() {
                    held.push(stream);
                }
            }
        });
    }
}

/// What the proxy's threads keep allocated for `IDLE` forwarded connections left open: blocks
/// and bytes per connection, and the blocks by size.
async fn idle(proxy: SocketAddr) {
    HOLD.store(true, Ordering::SeqCst);
    // A first batch grows what grows once (the registry's slots, the runtime's pages).
    let mut clients = Vec::new();
    for _ in 0..IDLE {
        clients.push(open(proxy).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    TRACK_LIVE.store(true, Ordering::SeqCst);
    for _ in 0..IDLE {
        clients.push(open(proxy).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    TRACK_LIVE.store(false, Ordering::SeqCst);
    let live: Vec<usize> = LIVE
        .lock()
        .map(|l| l.values().copied().collect())
        .unwrap_or_default();
    let bytes: usize = live.iter().sum();
    println!(
        "per idle forwarded connection ({IDLE} open): {:.2} heap blocks, {:.0} bytes still \
         allocated (as asked of the allocator, before its own rounding and headers)",
        live.len() as f64 / IDLE as f64,
        bytes as f64 / IDLE as f64
    );
    let mut by_size: BTreeMap<usize, usize> = BTreeMap::new();
    for size in live {
        *by_size.entry(size).or_default() += 1;
    }
    for (size, count) in by_size.iter().rev() {
        println!(
            "  {:>6} B x {:.2} per connection",
            size,
            *count as f64 / IDLE as f64
        );
    }
    drop(clients);
    HOLD.store(false, Ordering::SeqCst);
}

/// A connection that sent its hello and stays open.
async fn open(proxy: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    stream.write_all(CURL).await.expect("send the hello");
    stream
}

async fn one(proxy: SocketAddr) {
    let mut stream = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    stream.write_all(CURL).await.expect("send the hello");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
}

/// The first frame of a backtrace that is sniroute's own code (or the outermost other one).
fn site(trace: &str) -> String {
    let frames: Vec<&str> = trace
        .lines()
        .map(str::trim)
        .filter(|l| l.contains(": "))
        .filter_map(|l| l.split_once(": ").map(|(_, f)| f))
        .collect();
    let skip = [
        "path_costs::",
        "std::",
        "alloc::",
        "core::",
        "<alloc::",
        "<core::",
        "__rust",
    ];
    let ours = frames.iter().find(|f| {
        (f.contains("proxy::") || f.contains("sniroute")) && !f.starts_with("path_costs")
    });
    let other = frames
        .iter()
        .find(|f| !skip.iter().any(|s| f.starts_with(s)));
    ours.or(other)
        .map_or_else(|| "?".into(), |f| (*f).to_owned())
}

fn main() {
    let yaml_for = |backend: SocketAddr| {
        format!(
            "listen: [\"127.0.0.1:0\"]\nroutes:\n  - hostnames: [\"api.example.test\"]\n    backends: [\"{backend}\"]\n"
        )
    };
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the clients' runtime");
    let serving = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(|| COUNTED.with(|c| c.set(true)))
        .enable_all()
        .build()
        .expect("the proxy's runtime");

    let backend_listener = load
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let backend_addr = backend_listener.local_addr().expect("backend address");
    load.spawn(backend(backend_listener));

    let config = control::Config::parse(&yaml_for(backend_addr), "path_costs bench")
        .expect("a valid config");
    let table = Arc::new(SharedTable::default());
    table.publish(config.table().expect("a table"));
    let metrics = Metrics::register(&mut Registry::default());
    let proxy = Arc::new(Proxy::new(config.proxy.clone(), table, metrics));
    let (shutdown, tasks) = (CancellationToken::new(), TaskTracker::new());
    let proxy_addr = serving.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        tokio::spawn(proxy::serve(
            listener,
            ListenerKind::Sni,
            proxy.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
        addr
    });

    load.block_on(async {
        for _ in 0..WARMUP {
            one(proxy_addr).await;
        }
        let (a0, b0) = (
            ALLOCATIONS.load(Ordering::SeqCst),
            BYTES.load(Ordering::SeqCst),
        );
        for _ in 0..CONNECTIONS {
            one(proxy_addr).await;
        }
        // The last connection's task may still be ending on the proxy's side.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let allocations = ALLOCATIONS.load(Ordering::SeqCst) - a0;
        let bytes = BYTES.load(Ordering::SeqCst) - b0;
        println!(
            "per routed connection ({CONNECTIONS} connections, curl's 517-byte hello): \
             {:.2} heap allocations, {:.0} bytes allocated",
            allocations as f64 / CONNECTIONS as f64,
            bytes as f64 / CONNECTIONS as f64
        );
        if std::env::var_os("PATH_COSTS_SITES").is_some() {
            SITES.store(true, Ordering::SeqCst);
            one(proxy_addr).await;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            SITES.store(false, Ordering::SeqCst);
            let log = SITE_LOG.lock().map(|l| l.clone()).unwrap_or_default();
            let mut by_site: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            for (size, trace) in &log {
                let entry = by_site.entry(site(trace)).or_default();
                entry.0 += 1;
                entry.1 += size;
            }
            println!(
                "one connection's allocations by site ({} in all):",
                log.len()
            );
            for (site, (count, bytes)) in by_site {
                println!("  {count:>3} x, {bytes:>6} B  {site}");
            }
        }
        // Last: the idle connections' closes would otherwise be counted as the sites' one.
        idle(proxy_addr).await;
    });
    shutdown.cancel();
}
