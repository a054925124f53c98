//! Many idle forwarded connections through one proxy (issue 21's scale figure): the proxy's
//! RSS growth per connection, and what a table swap and a revocation scan take while they are
//! all open.
//!
//! The proxy runs in this process on a runtime of its own (two worker threads, as in
//! production), so its RSS is this process's; the clients and backends are a child process
//! (this same binary, `IDLE_SCALE_ROLE=load`). Clients bind to 127.0.1.x (the first half) and
//! 127.0.2.x (the second half), 20,000 a source address, so ephemeral ports never run out;
//! each sends curl's captured ClientHello and stays open (after the hello the proxy holds the
//! same state for a handshake it only passes through), and eight backends hold what they
//! accept. Then, all open:
//!
//! 1. a swap that admits every connection (a route added): the publish and its revocation
//!    scan are timed, and after the grace none is cut;
//! 2. a swap that narrows the route's allow list to 127.0.1.0/24: the scan dooms the second
//!    half, which is revoked after the grace, and the first half stays open.
//!
//! `cargo bench --bench idle_scale` runs 100,000 connections, `-- --quick` (or
//! `IDLE_SCALE_QUICK=1`) 10,000. Each needs two descriptors in this process (and two in the
//! child): the open-files limit is raised to its hard limit, and if that is too low the run is
//! scaled down to what fits, and says so.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control::{Config, Publisher, SourceKind};
use prometheus_client::registry::Registry;
use proxy::{ListenerKind, Metrics, Proxy, SharedTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const CURL: &[u8] = include_bytes!("../tests/fixtures/clienthellos/curl-7.88.bin");
const BACKENDS: usize = 8;
const PER_SOURCE: usize = 20_000;
const GRACE: Duration = Duration::from_secs(2);
/// Descriptors kept for everything but the connections (stdio, the runtime, listeners).
const SPARE_FDS: u64 = 200;

fn main() {
    if std::env::var("IDLE_SCALE_ROLE").as_deref() == Ok("load") {
        load();
        return;
    }
    let quick =
        std::env::args().any(|a| a == "--quick") || std::env::var_os("IDLE_SCALE_QUICK").is_some();
    let wanted: usize = if quick { 10_000 } else { 100_000 };
    let limit = match proxy::raise_open_files_limit() {
        Ok(limit) | Err((_, limit)) => limit,
    };
    let soft = limit.soft.unwrap_or(u64::MAX);
    let fits = usize::try_from(soft.saturating_sub(SPARE_FDS) / 2).unwrap_or(usize::MAX);
    let n = wanted.min(fits) / 2 * 2;
    if n < wanted {
        println!(
            "SCALED DOWN: {n} connections, not {wanted}: the open-files limit is {soft} (hard \
             {:?}) and each connection takes two descriptors here",
            limit.hard
        );
    }
    run(n);
}

/// Lines the proxy logs, with when they were written.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<(Instant, String)>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf).into_owned();
        if let Ok(mut lines) = self.0.lock() {
            lines.push((Instant::now(), line));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Waits for the first line since `mark` that contains `what`: when it was written, and it.
    fn wait(&self, mark: usize, what: &str, within: Duration) -> (Instant, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(lines) = self.0.lock() {
                if let Some(found) = lines.iter().skip(mark).find(|(_, l)| l.contains(what)) {
                    return found.clone();
                }
            }
            assert!(Instant::now() < deadline, "no log line with {what:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn mark(&self) -> usize {
        self.0.lock().map(|l| l.len()).unwrap_or(0)
    }
}

/// A field of a log line, `name=value`.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or("?")
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A metric's value from the registry's text form (the first series of that name).
fn metric(registry: &Registry, name: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode the metrics");
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn yaml(listen: SocketAddr, backends: &[u16], allowed: &str, extra_route: bool) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    let mut yaml = format!(
        "listen: [\"{listen}\"]\nrevoke_grace: {}s\nidle_timeout: 1h\nroutes:\n  - name: api\n    \
         hostnames: [\"api.example.test\"]\n    backends: [{}]\n    allowed_cidrs: [\"{allowed}\"]\n",
        GRACE.as_secs(),
        list.join(", ")
    );
    if extra_route {
        yaml.push_str(&format!(
            "  - name: other\n    hostnames: [\"other.example.test\"]\n    backends: [{}]\n",
            list[0]
        ));
    }
    yaml
}

fn run(n: usize) {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        // Debug for the scan lines only: the per-connection debug lines would be counted as RSS.
        .with_env_filter("proxy=info,proxy::revoke=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let mut child = Command::new(std::env::current_exe().expect("this bench's path"))
        .env("IDLE_SCALE_ROLE", "load")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the load process");
    let mut to_load = child.stdin.take().expect("the load's stdin");
    let mut from_load = BufReader::new(child.stdout.take().expect("the load's stdout"));
    let mut line = String::new();
    from_load.read_line(&mut line).expect("the backends' ports");
    let backends: Vec<u16> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(backends.len(), BACKENDS, "{line}");

    let serving = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the proxy's runtime");
    let listener = serving
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind the proxy");
    let listen = listener.local_addr().expect("the proxy's address");
    let config = |allowed: &str, extra: bool| {
        Config::parse(&yaml(listen, &backends, allowed, extra), "idle_scale bench")
            .expect("a valid config")
    };
    let first = config("127.0.0.0/8", false);
    let table = Arc::new(SharedTable::default());
    let publisher = Publisher::new(table.clone());
    publisher
        .update(SourceKind::File, first.route_specs())
        .expect("the first table");
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let proxy = Arc::new(Proxy::new(first.proxy.clone(), table, metrics));
    let (shutdown, tasks) = (CancellationToken::new(), TaskTracker::new());
    serving.spawn(proxy::serve(
        listener,
        ListenerKind::Sni,
        proxy.clone(),
        shutdown.clone(),
        tasks.clone(),
    ));
    serving.spawn(
        proxy
            .clone()
            .follow_swaps(publisher.subscribe(), shutdown.clone()),
    );

    // In two halves: the first also pays for what grows once (the runtime's and the
    // allocator's pages, what the opening burst used and freed), the second only for the
    // connections.
    let open = || metric(&registry, "sniroute_active_connections") as usize;
    let mut open_half = |half: u8| {
        let started = Instant::now();
        writeln!(to_load, "open {listen} {} {half}", n / 2).expect("tell the load");
        line.clear();
        from_load.read_line(&mut line).expect("the load's report");
        assert!(line.starts_with("open"), "{line}");
        let want = n / 2 * half as usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        while open() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(open(), want, "forwarded connections open");
        std::thread::sleep(Duration::from_millis(500));
        (started.elapsed(), rss_kib())
    };
    let before = rss_kib();
    let (first_took, middle) = open_half(1);
    let (second_took, after) = open_half(2);
    println!(
        "{n} idle forwarded connections opened in {:.1} s; proxy RSS {before} -> {middle} -> \
         {after} KiB: {:.2} KiB per connection over all, {:.2} KiB per connection of the second \
         half",
        (first_took + second_took).as_secs_f64(),
        (after - before) as f64 / n as f64,
        (after - middle) as f64 / (n / 2) as f64
    );

    // Publishes the table allowing `allowed` (with a second route) and waits for the scan's
    // line: how long the publish took, how long after it the line came, the line, and where
    // the log stood before.
    let swap_to = |allowed: &str, line: &str| {
        let mark = logs.mark();
        let swap = Instant::now();
        publisher
            .update(SourceKind::File, config(allowed, true).route_specs())
            .expect("a new table");
        let swapped = swap.elapsed();
        let (at, found) = logs.wait(mark, line, Duration::from_secs(30));
        (swapped, at - swap, found, mark)
    };

    // 1. A swap that admits every connection.
    let (swapped, after_publish, scan, _) = swap_to("127.0.0.0/8", "revocation scan");
    println!(
        "swap admitting all: publish {:.2} ms; the scan judged {} in {}, done {:.1} ms after \
         the publish",
        swapped.as_secs_f64() * 1e3,
        field(&scan, "judged"),
        field(&scan, "scan"),
        after_publish.as_secs_f64() * 1e3
    );
    std::thread::sleep(GRACE + Duration::from_millis(500));
    let revoked = metric(&registry, "sniroute_revoked_connections_total");
    assert_eq!(
        (open(), revoked),
        (n, 0.0),
        "a connection the table admits was cut"
    );
    println!("  after the grace: {} open, {revoked} revoked", open());

    // 2. A swap that dooms the second half.
    let (swapped, after_publish, doomed, mark) = swap_to("127.0.1.0/24", "no longer admitted");
    println!(
        "swap dooming half: publish {:.2} ms; the scan judged {} and doomed {} in {}, done \
         {:.1} ms after the publish",
        swapped.as_secs_f64() * 1e3,
        field(&doomed, "judged"),
        field(&doomed, "connections"),
        field(&doomed, "scan"),
        after_publish.as_secs_f64() * 1e3
    );
    let (_, revoked_line) = logs.wait(mark, "connections revoked", GRACE * 10);
    let deadline = Instant::now() + Duration::from_secs(60);
    while open() > n / 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let revoked = metric(&registry, "sniroute_revoked_connections_total");
    println!(
        "  after the grace: {} revoked in {} (judged again against the table then), {} open",
        field(&revoked_line, "revoked"),
        field(&revoked_line, "took"),
        open()
    );
    assert_eq!((open(), revoked), (n / 2, (n / 2) as f64));

    drop(to_load);
    let _ = child.wait();
    shutdown.cancel();
}

/// The child: eight backends that hold what they accept, then `n` clients that send a hello
/// and stay open until stdin closes.
fn load() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the load's runtime");
    runtime.block_on(async {
        let accepted = Arc::new(AtomicUsize::new(0));
        let mut ports = Vec::new();
        for _ in 0..BACKENDS {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a backend");
            ports.push(listener.local_addr().expect("backend address").port());
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let held = Arc::new(Mutex::new(Vec::new()));
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (held, accepted) = (held.clone(), accepted.clone());
                    tokio::spawn(async move {
                        let mut hello = vec![0u8; CURL.len()];
                        if stream.read_exact(&mut hello).await.is_ok() {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            if let Ok(mut held) = held.lock() {
                                held.push(stream);
                            }
                        }
                    });
                }
            });
        }
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        println!("backends {}", ports.join(" "));

        let mut stdin = BufReader::new(std::io::stdin());
        let clients = Arc::new(Mutex::new(Vec::new()));
        let mut opened = 0;
        loop {
            let mut line = String::new();
            if stdin.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            // `open <proxy> <count> <half>`: clients of half 1 on 127.0.1.x, of half 2 on
            // 127.0.2.x, 20,000 a source address.
            let mut words = line.split_whitespace().skip(1);
            let proxy: SocketAddr = words
                .next()
                .and_then(|w| w.parse().ok())
                .expect("proxy address");
            let count: usize = words
                .next()
                .and_then(|w| w.parse().ok())
                .expect("connection count");
            let half: u8 = words.next().and_then(|w| w.parse().ok()).expect("half");
            let mut opening = tokio::task::JoinSet::new();
            for nth in 0..count {
                let source = Ipv4Addr::new(127, 0, half, 1 + (nth / PER_SOURCE) as u8);
                if opening.len() >= 256 {
                    opening.join_next().await;
                }
                let clients = clients.clone();
                opening.spawn(async move {
                    let stream = connect(source, proxy).await;
                    if let Ok(mut clients) = clients.lock() {
                        clients.push(stream);
                    }
                });
            }
            while opening.join_next().await.is_some() {}
            opened += count;
            while accepted.load(Ordering::SeqCst) < opened {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            println!("open {opened}");
        }
        drop(clients);
    });
}

async fn connect(source: Ipv4Addr, proxy: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind the client's source");
    let mut stream = socket.connect(proxy).await.expect("connect to the proxy");
    stream.write_all(CURL).await.expect("send the hello");
    stream
}
