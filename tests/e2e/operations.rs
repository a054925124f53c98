//! End to end, through the real binary: what an operator relies on. Metrics count every
//! outcome and byte exactly; SIGTERM drains without cutting anyone off; connection limits keep
//! one tenant from starving the others; failing endpoints are ejected and come back; logs are
//! JSON on request and rate limited under a flood; running out of file descriptors is survived.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const OUTCOMES: [&str; 8] = [
    "routed",
    "unknown_sni",
    "no_sni",
    "not_tls",
    "client_hello_timeout",
    "denied",
    "backend_unreachable",
    "limited",
];

// === Small helpers ===

/// Deterministic, non-repeating-looking payload bytes.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// The captured openssl hello with its SNI set to `name`.
fn hello_for(name: &str) -> Vec<u8> {
    with_sni(&fixture("openssl-3.0.bin"), name.as_bytes())
}

/// Connects, writes `bytes` (a refused connection may already be gone: write errors are
/// fine), and asserts the proxy closes it with nothing forwarded back beyond `allowed`.
async fn assert_closed_by_proxy(addr: SocketAddr, bytes: &[u8], allowed: &[u8], what: &str) {
    let mut tcp = raw_connect(addr).await;
    let _ = tcp.write_all(bytes).await;
    let out = read_until_closed(&mut tcp, STEP).await;
    assert!(out.end.closed(), "{what}: still open after {STEP:?}");
    assert!(
        out.bytes.is_empty() || out.bytes == allowed,
        "{what}: unexpected bytes before close: {:?}",
        out.bytes
    );
}

/// A routed raw stream: the hello is written and has reached the backend's connection `index`.
async fn open_raw_stream(
    proxy: &Sniroute,
    backend: &RawBackend,
    index: usize,
    sni: &str,
) -> TcpStream {
    let hello = hello_for(sni);
    let mut tcp = raw_connect(proxy.proxy_addr()).await;
    tcp.write_all(&hello).await.expect("write hello");
    let got = backend.wait_received(index, hello.len(), STEP);
    assert_eq!(
        got, hello,
        "{sni}: hello did not reach the backend byte for byte"
    );
    tcp
}

/// Ends a raw stream cleanly: EOF to the backend, then everything it sends back until it closes.
async fn finish_raw_stream(mut tcp: TcpStream) -> ReadOutcome {
    tcp.shutdown().await.expect("shutdown write");
    let out = read_until_closed(&mut tcp, STEP).await;
    assert_eq!(out.end, End::Eof, "stream did not end with EOF");
    out
}

/// Whether a new TCP connection to `addr` is refused (connect fails, or the socket is closed
/// at once without a byte), i.e. nothing accepts there any more.
async fn connect_refused(addr: SocketAddr) -> bool {
    match tokio::time::timeout(STEP, TcpStream::connect(addr)).await {
        Ok(Err(_)) => true,
        Ok(Ok(mut tcp)) => {
            // Accepted by the kernel just before the listener closed, then reset: refused too.
            let mut byte = [0u8; 1];
            matches!(
                tokio::time::timeout(Duration::from_millis(50), tcp.read(&mut byte)).await,
                Ok(Ok(0) | Err(_))
            )
        }
        Err(_) => panic!("connect to {addr} hung for {STEP:?}"),
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// === 1. Metrics ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_outcome_and_every_byte() {
    let raw = RawBackend::start_with(RawBackendOpts {
        trailer: Some(b"TRAILER".to_vec()),
        ..Default::default()
    });
    let proxy = Sniroute::start(
        Cfg::new()
            .set("client_hello_timeout", "300ms")
            .route("api", &["api.example.test"], &[raw.addr()])
            .route_key("max_connections", "1")
            .route("deny", &["deny.example.test"], &[raw.addr()])
            .route_key("allowed_cidrs", "[\"127.0.0.2/32\"]")
            .route("down", &["down.example.test"], &[closed_port()])
            .yaml(),
    );
    let addr = proxy.proxy_addr();

    // Before any traffic: every outcome is there, at zero.
    let before = Scrape::of(&proxy);
    for outcome in OUTCOMES {
        assert_eq!(before.outcome(outcome), 0.0, "{outcome} before traffic");
    }
    assert_eq!(before.value("sniroute_active_connections", &[]), 0.0);
    for direction in ["client_to_backend", "backend_to_client"] {
        assert_eq!(
            before.value("sniroute_bytes_total", &[("direction", direction)]),
            0.0
        );
    }
    assert_eq!(
        before.value("sniroute_client_hello_seconds_count", &[]),
        0.0
    );
    assert_eq!(
        before.value("sniroute_backend_connect_seconds_count", &[]),
        0.0
    );

    // One routed stream, held open.
    let hello = fixture("openssl-3.0.bin");
    let data = payload(10_000);
    let mut tcp = open_raw_stream(&proxy, &raw, 0, "api.example.test").await;
    tcp.write_all(&data).await.unwrap();
    raw.wait_received(0, hello.len() + data.len(), STEP);
    let open = Scrape::of(&proxy);
    assert_eq!(
        open.value("sniroute_route_active_connections", &[("route", "api")]),
        1.0,
        "route gauge while a stream is open"
    );
    assert_eq!(open.value("sniroute_active_connections", &[]), 1.0);

    // Route api allows one connection at a time: a second one is limited.
    assert_closed_by_proxy(addr, &hello, b"", "limited").await;
    assert_eq!(
        raw.accepted(),
        1,
        "a limited connection reached the backend"
    );

    let out = finish_raw_stream(tcp).await;
    let mut expected = hello.clone();
    expected.extend_from_slice(&data);
    let client_to_backend = expected.len();
    expected.extend_from_slice(b"TRAILER");
    assert_eq!(out.bytes, expected, "what came back");
    let backend_to_client = expected.len();

    // One of every refusal.
    let alert = UNRECOGNIZED_NAME_ALERT;
    assert_closed_by_proxy(addr, &hello_for("nobody.other.test"), &alert, "unknown_sni").await;
    assert_closed_by_proxy(addr, &fixture("openssl-noservername.bin"), &alert, "no_sni").await;
    assert_closed_by_proxy(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", "not_tls").await;
    assert_closed_by_proxy(addr, &[0x16, 0x03, 0x01], b"", "client_hello_timeout").await;
    assert_closed_by_proxy(
        addr,
        &hello_for("down.example.test"),
        b"",
        "backend_unreachable",
    )
    .await;
    assert_closed_by_proxy(addr, &hello_for("deny.example.test"), b"", "denied").await;
    assert_eq!(
        raw.accepted(),
        1,
        "a refused connection reached the backend"
    );

    let after = scrape_until(&proxy, STEP, "every connection closed", |s| {
        s.get("sniroute_active_connections", &[]) == Some(0.0)
    });
    for outcome in OUTCOMES {
        assert_eq!(after.outcome(outcome), 1.0, "{outcome} after one of each");
    }
    assert_eq!(
        after.value("sniroute_route_active_connections", &[("route", "api")]),
        0.0,
        "route gauge after the stream closed"
    );
    assert_eq!(
        after.value(
            "sniroute_bytes_total",
            &[("direction", "client_to_backend")]
        ),
        client_to_backend as f64
    );
    assert_eq!(
        after.value(
            "sniroute_bytes_total",
            &[("direction", "backend_to_client")]
        ),
        backend_to_client as f64
    );
    // A complete hello was read by: routed, limited, unknown_sni, no_sni, denied,
    // backend_unreachable. A backend connect was tried by: routed, backend_unreachable.
    for (histogram, count) in [
        ("sniroute_client_hello_seconds", 6.0),
        ("sniroute_backend_connect_seconds", 2.0),
    ] {
        assert_eq!(
            after.value(&format!("{histogram}_count"), &[]),
            count,
            "{histogram}"
        );
        assert_eq!(
            after.value(&format!("{histogram}_bucket"), &[("le", "+Inf")]),
            count,
            "{histogram} +Inf bucket"
        );
        assert!(
            after.value(&format!("{histogram}_sum"), &[]) > 0.0,
            "{histogram}_sum"
        );
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_metrics_follow_reloads_and_broken_files() {
    let b = closed_port();
    let two =
        Cfg::new()
            .route("a", &["a.example.test"], &[b])
            .route("b", &["b.example.test"], &[b]);
    let mut proxy = Sniroute::start(two.yaml());

    let start = Scrape::of(&proxy);
    let generation = proxy.generation() as f64;
    assert_eq!(start.value("sniroute_routes", &[]), 2.0);
    assert_eq!(start.value("sniroute_table_generation", &[]), generation);
    let swaps = start.value("sniroute_table_swaps_total", &[]);
    assert!(swaps >= 1.0, "the startup table was published");
    let errors = start.value("sniroute_source_errors_total", &[("source", "file")]);
    let last = start.value("sniroute_last_swap_timestamp_seconds", &[]);
    assert!(
        (unix_now() - last).abs() < 30.0,
        "last swap {last} vs now {}",
        unix_now()
    );

    // A valid reload: one more route, one more generation, one more swap.
    proxy.rename_config(two.clone().route("c", &["c.example.test"], &[b]).yaml());
    let reloaded = scrape_until(&proxy, STEP, "the reload published", |s| {
        s.get("sniroute_table_generation", &[]) == Some(generation + 1.0)
    });
    let reload_seen = unix_now();
    assert_eq!(reloaded.value("sniroute_routes", &[]), 3.0);
    assert_eq!(
        reloaded.value("sniroute_table_swaps_total", &[]),
        swaps + 1.0
    );
    assert_eq!(proxy.generation() as f64, generation + 1.0);
    let last = reloaded.value("sniroute_last_swap_timestamp_seconds", &[]);
    assert!(
        last <= reload_seen + 0.01 && reload_seen - last < 5.0,
        "last swap {last}, reload seen at {reload_seen}"
    );

    // A broken file: counted, and the table stays.
    let mark = proxy.log_mark();
    proxy.rename_config("listen: [\nroutes: {{{\n");
    proxy.wait_log_since(mark, &["config reload failed"], STEP);
    let broken = scrape_until(&proxy, STEP, "the source error counted", |s| {
        s.get("sniroute_source_errors_total", &[("source", "file")])
            .is_some_and(|v| v > errors)
    });
    assert_eq!(
        broken.value("sniroute_table_generation", &[]),
        generation + 1.0
    );
    assert_eq!(broken.value("sniroute_table_swaps_total", &[]), swaps + 1.0);
    assert_eq!(broken.value("sniroute_routes", &[]), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_the_same_routes_report_the_same_table_hash() {
    let (x, y) = (closed_port(), SocketAddr::from(([127, 0, 0, 2], 9)));
    let cfg = Cfg::new()
        .set("max_connections", "100")
        .route("a", &["a.example.test"], &[x])
        .route("b", &["b.example.test", "*.b.example.test"], &[x, y]);
    // The same routes listed in another order, as another replica's source may give them.
    let reordered = Cfg::new()
        .route("b", &["b.example.test", "*.b.example.test"], &[x, y])
        .route("a", &["a.example.test"], &[x]);
    let mut one = Sniroute::start(cfg.yaml());
    let two = Sniroute::start(reordered.yaml());
    let hash = |proxy: &Sniroute| Scrape::of(proxy).value("sniroute_table_hash", &[]);
    let first = hash(&one);
    assert!(first > 0.0 && first < 2f64.powi(53), "hash {first}");
    assert_eq!(first, hash(&two), "same routes, same hash");
    assert_eq!(
        Scrape::of(&one).value("sniroute_max_connections", &[]),
        100.0
    );
    // Not set: derived from the open-files limit, and reported all the same.
    let derived = Scrape::of(&two).value("sniroute_max_connections", &[]);
    assert!(derived >= 1.0, "derived max_connections {derived}");

    // One backend of one route changes: so does the hash, and only on that replica.
    let generation = one.generation() as f64;
    one.rename_config(
        Cfg::new()
            .set("max_connections", "100")
            .route("a", &["a.example.test"], &[y])
            .route("b", &["b.example.test", "*.b.example.test"], &[x, y])
            .yaml(),
    );
    let changed = scrape_until(&one, STEP, "the change published", |s| {
        s.get("sniroute_table_generation", &[]) == Some(generation + 1.0)
    });
    assert_ne!(changed.value("sniroute_table_hash", &[]), first);
    assert_eq!(hash(&two), first);
}

// === 2. Graceful drain ===

// On the wall clock, with the real binary: `shutdown_delay` and `drain_timeout` are the
// process's answer to SIGTERM (readiness, its listeners, its exit status), which only the
// process shows; the data plane's own timeouts are on paused time in timeouts.rs.

/// Bytes of the long stream, written in `CHUNKS` pieces over about `CHUNKS * CHUNK_GAP`.
const CHUNKS: usize = 48;
const CHUNK: usize = 64 * 1024;
const CHUNK_GAP: Duration = Duration::from_millis(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_long_stream_byte_exact_then_exits_zero() {
    let raw = RawBackend::start_with(RawBackendOpts {
        trailer: Some(b"TRAILER".to_vec()),
        ..Default::default()
    });
    let probe = TlsBackend::start("probe");
    let mut proxy = Sniroute::start(
        Cfg::new()
            .set("shutdown_delay", "1s")
            .set("drain_timeout", "10s")
            .route("api", &["api.example.test"], &[raw.addr()])
            .route("probe", &["probe.example.test"], &[probe.addr()])
            .yaml(),
    );
    let addr = proxy.proxy_addr();
    let admin = proxy.admin_addr();

    // The long stream: started before SIGTERM, about 3 s of slow writes, then EOF; the raw
    // backend echoes everything back after the EOF, then the trailer.
    let hello = fixture("openssl-3.0.bin");
    let data = payload(CHUNKS * CHUNK);
    let t0 = Instant::now();
    let tcp = open_raw_stream(&proxy, &raw, 0, "api.example.test").await;
    let stream = tokio::spawn({
        let data = data.clone();
        async move {
            let mut tcp = tcp;
            for chunk in data.chunks(CHUNK) {
                tcp.write_all(chunk).await.expect("stream write");
                tokio::time::sleep(CHUNK_GAP).await;
            }
            // Proof the process has not exited before the stream ended.
            let health = tokio::task::spawn_blocking(move || http_get(admin, "/healthz"))
                .await
                .unwrap();
            assert!(
                matches!(health, Ok((200, _))),
                "admin gone before the stream ended: {health:?}"
            );
            tcp.shutdown().await.expect("stream shutdown");
            let out = read_until_closed(&mut tcp, Duration::from_secs(15)).await;
            (Instant::now(), out)
        }
    });

    tokio::time::sleep(Duration::from_millis(200)).await; // let the stream get going
    let mark = proxy.log_mark();
    let t_sig = Instant::now();
    proxy.signal("TERM");

    // Readiness turns off at once.
    let not_ready = loop {
        if let Ok((503, _)) = proxy.get("/readyz") {
            break t_sig.elapsed();
        }
        assert!(
            t_sig.elapsed() < Duration::from_secs(2),
            "/readyz still not 503 2 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        not_ready <= Duration::from_millis(250),
        "/readyz turned 503 only {not_ready:?} after SIGTERM"
    );

    // During the delay a new connection is still accepted and routed.
    let mut conn = assert_routes(addr, "probe.example.test", "probe").await;
    conn.echo(b"routed during shutdown_delay").await;
    let probed = t_sig.elapsed();
    assert!(
        probed < Duration::from_secs(1),
        "the probe took until {probed:?}, past the 1 s shutdown_delay: inconclusive"
    );
    drop(conn);

    // After the delay, new connections are refused.
    let closed = loop {
        let attempt = t_sig.elapsed();
        if connect_refused(addr).await {
            break attempt;
        }
        assert!(
            t_sig.elapsed() < Duration::from_secs(3),
            "new connections still accepted 3 s after SIGTERM (shutdown_delay 1s)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        closed >= Duration::from_millis(990),
        "listeners closed {closed:?} after SIGTERM, before the 1 s shutdown_delay"
    );
    assert!(
        tls_connect(addr, "probe.example.test").await.is_err(),
        "a TLS connection routed after the listeners closed"
    );
    proxy.wait_log_since(mark, &["listeners closed"], STEP);
    assert!(
        !stream.is_finished(),
        "the long stream ended before the listeners closed: the drain was not exercised"
    );
    assert!(proxy.running(), "exited while a stream was still open");

    // The stream completes byte-exact.
    let (t_end, out) = stream.await.expect("stream task");
    let mut sent = hello.clone();
    sent.extend_from_slice(&data);
    let received = raw.received(0);
    assert_eq!(received.len(), sent.len(), "backend received");
    assert!(
        received == sent,
        "backend received other bytes than were sent"
    );
    assert_eq!(out.end, End::Eof, "stream ended with {:?}", out.end);
    let mut back = sent.clone();
    back.extend_from_slice(b"TRAILER");
    assert_eq!(out.bytes.len(), back.len(), "client received");
    assert!(
        out.bytes == back,
        "client received other bytes than the backend sent"
    );

    // Then the process exits 0.
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .expect("still running 5 s after its last connection ended");
    let t_exit = Instant::now();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        t_exit - t_end < Duration::from_millis(1500),
        "exited {:?} after the last connection ended",
        t_exit - t_end
    );
    proxy.wait_log_since(mark, &["drained"], STEP);
    eprintln!(
        "drain timings (ms after SIGTERM): stream started at -{}, /readyz 503 at {}, probe \
         routed by {}, listeners closed by {}, stream ended at {}, process exited by {} \
         ({} MB at ~{} MB/s)",
        ms(t_sig - t0),
        ms(not_ready),
        ms(probed),
        ms(closed),
        ms(t_end - t_sig),
        ms(t_exit - t_sig),
        sent.len() / 1_000_000,
        (sent.len() as f64 / (t_end - t0).as_secs_f64() / 1e6).round(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_cuts_a_stream_that_never_ends() {
    let raw = RawBackend::start();
    let mut proxy = Sniroute::start(
        Cfg::new()
            .set("shutdown_delay", "300ms")
            .set("drain_timeout", "1s")
            .route("api", &["api.example.test"], &[raw.addr()])
            .yaml(),
    );
    let addr = proxy.proxy_addr();
    let mut tcp = open_raw_stream(&proxy, &raw, 0, "api.example.test").await;
    let mark = proxy.log_mark();
    let t_sig = Instant::now();
    proxy.signal("TERM");
    let closed = loop {
        if connect_refused(addr).await {
            break t_sig.elapsed();
        }
        assert!(
            t_sig.elapsed() < Duration::from_secs(3),
            "listeners still open 3 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .expect("still running 5 s after SIGTERM with drain_timeout 1s");
    let exited = t_sig.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let after_close = exited - closed;
    assert!(
        after_close >= Duration::from_millis(900) && after_close <= Duration::from_secs(2),
        "exited {after_close:?} after the listeners closed (drain_timeout 1s)"
    );
    proxy.wait_log_since(mark, &["drain_timeout reached"], STEP);
    let out = read_until_closed(&mut tcp, STEP).await;
    assert!(
        out.end.closed(),
        "the endless stream was not closed at exit"
    );
    eprintln!(
        "drain_timeout timings (ms after SIGTERM): listeners closed by {}, exited by {}",
        ms(closed),
        ms(exited)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_during_the_delay_exits_at_once() {
    let mut proxy = Sniroute::start(
        Cfg::new()
            .set("shutdown_delay", "10s")
            .route("api", &["api.example.test"], &[closed_port()])
            .yaml(),
    );
    proxy.signal("TERM");
    let deadline = Instant::now() + STEP;
    while !matches!(proxy.get("/readyz"), Ok((503, _))) {
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        std::thread::sleep(POLL);
    }
    let t_second = Instant::now();
    proxy.signal("TERM");
    let status = proxy
        .wait_exit(Duration::from_secs(3))
        .expect("still running 3 s after the second SIGTERM");
    let took = t_second.elapsed();
    assert_eq!(status.code(), Some(1), "exit status {status}");
    assert!(
        took < Duration::from_secs(1),
        "exited {took:?} after the second SIGTERM"
    );
    eprintln!("second SIGTERM: exited {} ms after it", ms(took));
}

// === 3. Limits ===

/// The sockets `ss` lists for `filter` (established, with timers), one line each.
fn ss(args: &[&str], filter: &str) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(args)
        .arg(filter)
        .output()
        .expect("ss (iproute2) runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sockets_keep_alive_and_the_backlog_is_configured() {
    let raw = RawBackend::start();
    let proxy = Sniroute::start(
        Cfg::new()
            .set("listen_backlog", "77")
            .route("api", &["api.example.test"], &[raw.addr()])
            .yaml(),
    );
    let port = proxy.proxy_addr().port();
    // Listening sockets show their backlog as Send-Q.
    let listening = ss(&["-ltnH"], &format!("( sport = :{port} )"));
    assert_eq!(listening.len(), 1, "{listening:?}");
    let send_q: Vec<&str> = listening[0].split_whitespace().collect();
    assert_eq!(send_q[2], "77", "backlog: {listening:?}");

    let _stream = open_raw_stream(&proxy, &raw, 0, "api.example.test").await;
    let client_side = ss(
        &["-tnoH", "state", "established"],
        &format!("( sport = :{port} )"),
    );
    let backend_side = ss(
        &["-tnoH", "state", "established"],
        &format!("( dport = :{} )", raw.addr().port()),
    );
    for (side, lines) in [("client", &client_side), ("backend", &backend_side)] {
        assert!(
            lines.iter().any(|l| l.contains("timer:(keepalive")),
            "the proxy's {side} socket has no keepalive: {lines:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_max_connections_closes_the_extra_one_and_recovers() {
    let raw = RawBackend::start();
    let proxy = Sniroute::start(
        Cfg::new()
            .set("max_connections", "2")
            .route("api", &["api.example.test"], &[raw.addr()])
            .yaml(),
    );
    let addr = proxy.proxy_addr();
    let first = open_raw_stream(&proxy, &raw, 0, "api.example.test").await;
    let second = open_raw_stream(&proxy, &raw, 1, "api.example.test").await;

    let hello = hello_for("api.example.test");
    assert_closed_by_proxy(addr, &hello, b"", "third connection").await;
    assert_eq!(
        raw.accepted(),
        2,
        "the third connection reached the backend"
    );
    let scrape = Scrape::of(&proxy);
    assert_eq!(scrape.outcome("limited"), 1.0);
    assert_eq!(scrape.outcome("routed"), 2.0);

    let out = finish_raw_stream(first).await;
    assert_eq!(out.bytes, hello, "the first stream's echo");
    scrape_until(&proxy, STEP, "one connection left", |s| {
        s.get("sniroute_active_connections", &[]) == Some(1.0)
    });
    let third = open_raw_stream(&proxy, &raw, 2, "api.example.test").await;
    let scrape = Scrape::of(&proxy);
    assert_eq!(
        scrape.outcome("limited"),
        1.0,
        "refused again after a slot freed up"
    );
    assert_eq!(scrape.outcome("routed"), 3.0);
    drop((second, third));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_of_removed_routes_go_once_idle() {
    let a = RawBackend::start();
    let b = RawBackend::start();
    let both = Cfg::new()
        .route("a", &["a.example.test"], &[a.addr()])
        .route("b", &["b.example.test"], &[b.addr()]);
    let mut proxy = Sniroute::start(both.yaml());
    let held = open_raw_stream(&proxy, &a, 0, "a.example.test").await;
    drop(open_raw_stream(&proxy, &b, 0, "b.example.test").await);
    let series =
        |s: &Scrape, route: &str| s.get("sniroute_route_active_connections", &[("route", route)]);
    scrape_until(&proxy, STEP, "b's connection closed", |s| {
        series(s, "b") == Some(0.0)
    });

    // Both routes leave the table: b is idle and its series goes; a still carries a
    // connection (revoke_grace is off), so its series stays until that ends.
    let generation = proxy.generation();
    let c = RawBackend::start();
    proxy.rename_config(
        Cfg::new()
            .route("c", &["c.example.test"], &[c.addr()])
            .set("revoke_grace", "off")
            .yaml(),
    );
    scrape_until(&proxy, STEP, "the reload published", |s| {
        s.get("sniroute_table_generation", &[]) == Some(generation as f64 + 1.0)
    });
    let after = scrape_until(&proxy, STEP, "b's series pruned", |s| {
        series(s, "b").is_none()
    });
    assert_eq!(
        series(&after, "a"),
        Some(1.0),
        "a busy route's series must stay"
    );

    // Once a's connection ends its series goes, with no further swap: the series are read
    // from the routes at each scrape, and a gone route is counted only while busy.
    drop(held);
    scrape_until(&proxy, STEP, "a's series gone once idle", |s| {
        series(s, "a").is_none()
    });
    assert_eq!(proxy.generation(), generation + 1, "no swap took it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_max_connections_limits_one_tenant_only() {
    let busy = RawBackend::start();
    let other = RawBackend::start();
    let proxy = Sniroute::start(
        Cfg::new()
            .route("busy", &["busy.example.test"], &[busy.addr()])
            .route_key("max_connections", "1")
            .route("other", &["other.example.test"], &[other.addr()])
            .yaml(),
    );
    let addr = proxy.proxy_addr();
    let held = open_raw_stream(&proxy, &busy, 0, "busy.example.test").await;
    assert_closed_by_proxy(addr, &hello_for("busy.example.test"), b"", "second busy").await;
    assert_eq!(
        busy.accepted(),
        1,
        "the second busy connection reached the backend"
    );

    // The other tenant is not affected.
    let o1 = open_raw_stream(&proxy, &other, 0, "other.example.test").await;
    let o2 = open_raw_stream(&proxy, &other, 1, "other.example.test").await;
    let o3 = open_raw_stream(&proxy, &other, 2, "other.example.test").await;
    let scrape = Scrape::of(&proxy);
    assert_eq!(scrape.outcome("limited"), 1.0);
    assert_eq!(
        scrape.value("sniroute_route_active_connections", &[("route", "busy")]),
        1.0
    );
    assert_eq!(
        scrape.value("sniroute_route_active_connections", &[("route", "other")]),
        3.0
    );

    // Once the busy tenant's connection ends, it gets its slot back.
    finish_raw_stream(held).await;
    scrape_until(&proxy, STEP, "busy's slot freed", |s| {
        s.get("sniroute_route_active_connections", &[("route", "busy")]) == Some(0.0)
    });
    let again = open_raw_stream(&proxy, &busy, 1, "busy.example.test").await;
    assert_eq!(Scrape::of(&proxy).outcome("limited"), 1.0);
    drop((o1, o2, o3, again));
}

// === 4. Endpoint health ===

fn ejected(proxy: &Sniroute) -> Vec<serde_json::Value> {
    proxy.routes()["ejected_endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("/routes has no ejected_endpoints list"))
}

fn find_ejected(proxy: &Sniroute, endpoint: SocketAddr) -> Option<serde_json::Value> {
    ejected(proxy)
        .into_iter()
        .find(|e| e["endpoint"] == endpoint.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoints_are_ejected_skipped_and_come_back() {
    let good = TlsBackend::start("good");
    let dead = closed_port();
    let solo = closed_port();
    let proxy = Sniroute::start_opts(
        Cfg::new()
            .set(
                "outlier_detection",
                "{consecutive_failures: 2, base_ejection_time: 2s, max_ejection_time: 10s}",
            )
            .route("flaky", &["flaky.example.test"], &[dead, good.addr()])
            .route("solo", &["solo.example.test"], &[solo])
            .yaml(),
        // Failed connect attempts are logged at debug level: they show what was tried.
        &StartOpts {
            env: vec![("RUST_LOG".into(), "info,proxy=debug".into())],
            ..StartOpts::default()
        },
    );
    let addr = proxy.proxy_addr();
    let dead_s = dead.to_string();
    let tried_dead = |mark| {
        proxy
            .logs_since(mark, &["backend connect failed", dead_s.as_str()])
            .len()
    };

    // Round robin makes every other connection try the dead endpoint first; every client
    // still reaches the good one. Two failures eject it.
    let mut connections = 0;
    while find_ejected(&proxy, dead).is_none() {
        connections += 1;
        assert!(
            connections <= 3,
            "not ejected after 3 connections (2 failed connects)"
        );
        assert_routes(addr, "flaky.example.test", "good")
            .await
            .echo(b"x")
            .await;
    }
    assert_eq!(tried_dead(0), 2, "failed connects before the ejection");
    let entry = find_ejected(&proxy, dead).unwrap();
    assert_eq!(entry["failures"], 2, "{entry}");
    let remaining = entry["remaining_seconds"].as_f64().unwrap();
    assert!(remaining > 0.0 && remaining <= 2.0, "{entry}");
    let scrape = Scrape::of(&proxy);
    assert_eq!(
        scrape.value(
            "sniroute_endpoint_ejected",
            &[("route", "flaky"), ("endpoint", &dead_s)]
        ),
        1.0
    );

    // While ejected, it is not tried at all.
    let mark = proxy.log_mark();
    for _ in 0..4 {
        assert_routes(addr, "flaky.example.test", "good")
            .await
            .echo(b"y")
            .await;
    }
    assert!(
        find_ejected(&proxy, dead).is_some(),
        "the ejection ended during the check: inconclusive"
    );
    assert_eq!(tried_dead(mark), 0, "an ejected endpoint was tried");

    // A route whose only endpoint is ejected still tries it.
    let solo_hello = hello_for("solo.example.test");
    for _ in 0..2 {
        assert_closed_by_proxy(addr, &solo_hello, b"", "solo while down").await;
    }
    assert!(
        find_ejected(&proxy, solo).is_some(),
        "solo's endpoint not ejected"
    );
    let back = RawBackend::start_at(solo, RawBackendOpts::default());
    let mark = proxy.log_mark();
    let mut tcp = raw_connect(addr).await;
    tcp.write_all(&solo_hello).await.unwrap();
    assert_eq!(back.wait_received(0, solo_hello.len(), STEP), solo_hello);
    proxy.wait_log_since(mark, &["endpoint healthy again", &solo.to_string()], STEP);
    assert!(
        find_ejected(&proxy, solo).is_none(),
        "still ejected after a good connect"
    );
    // A healthy endpoint has no series: endpoints that come and go leave none behind.
    let scrape = Scrape::of(&proxy);
    assert_eq!(
        scrape.get(
            "sniroute_endpoint_ejected",
            &[("route", "solo"), ("endpoint", &solo.to_string())]
        ),
        None
    );
    drop(tcp);
}

// === 5. Logs ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_connection_summaries() {
    let raw = RawBackend::start_with(RawBackendOpts {
        trailer: Some(b"TRAILER".to_vec()),
        ..Default::default()
    });
    let mut proxy = Sniroute::start(
        Cfg::new()
            .set("log_format", "json")
            .set("log_connections", "true")
            .set("shutdown_delay", "0s")
            .route("api", &["api.example.test"], &[raw.addr()])
            .yaml(),
    );
    let addr = proxy.proxy_addr();

    let mut tcp = open_raw_stream(&proxy, &raw, 0, "api.example.test").await;
    tcp.write_all(b"some payload").await.unwrap();
    let out = finish_raw_stream(tcp).await;
    let client_to_backend = fixture("openssl-3.0.bin").len() + b"some payload".len();
    assert_eq!(out.bytes.len(), client_to_backend + b"TRAILER".len());
    assert_closed_by_proxy(addr, b"plain text, not TLS\r\n", b"", "not_tls").await;
    proxy.wait_log(&["connection closed"], STEP);
    proxy.wait_log(&["connection refused"], STEP);

    // Exit, so that every line the process will write is in.
    proxy.signal("TERM");
    let status = proxy.wait_exit(STEP).expect("did not exit");
    assert_eq!(status.code(), Some(0));

    let lines = proxy.logs();
    assert!(lines.len() >= 5, "too few log lines: {lines:?}");
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            assert!(v.is_object(), "not a JSON object: {line}");
            assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
            v
        })
        .collect();
    let with_message = |m: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["message"] == m).collect()
    };

    let refused = with_message("connection refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    let refused = refused[0];
    assert_eq!(refused["reason"], "not_tls", "{refused}");
    let peer: SocketAddr = refused["peer"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("peer is not an address: {refused}"));
    assert!(peer.ip().is_loopback(), "{refused}");
    assert!(refused["detail"].is_string(), "{refused}");

    let closed = with_message("connection closed");
    assert_eq!(
        closed.len(),
        1,
        "one summary per forwarded connection: {closed:?}"
    );
    let closed = closed[0];
    assert_eq!(closed["route"], "api", "{closed}");
    assert_eq!(closed["backend"], raw.addr().to_string(), "{closed}");
    assert_eq!(closed["client_to_backend"], client_to_backend, "{closed}");
    assert_eq!(closed["backend_to_client"], out.bytes.len(), "{closed}");
    assert!(
        closed["duration"].as_str().is_some_and(|d| !d.is_empty()),
        "{closed}"
    );
    assert!(closed["peer"].is_string(), "{closed}");
}

const FLOOD: usize = 500;
const FLOOD_WAVE: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_clients_is_rate_limited_in_the_logs_and_starves_no_one() {
    let good = TlsBackend::start("good");
    let proxy = Sniroute::start(
        Cfg::new()
            .route("api", &["api.example.test"], &[good.addr()])
            .yaml(),
    );
    let addr = proxy.proxy_addr();
    let mark = proxy.log_mark();

    // A good client keeps connecting while the flood runs.
    let flooding = Arc::new(AtomicBool::new(true));
    let good_client = tokio::spawn({
        let flooding = flooding.clone();
        async move {
            let mut routed = 0;
            while flooding.load(Ordering::SeqCst) || routed == 0 {
                let started = Instant::now();
                let mut conn = tls_connect(addr, "api.example.test")
                    .await
                    .unwrap_or_else(|e| panic!("good client refused during the flood: {e}"));
                conn.echo(b"still served").await;
                routed += 1;
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "good client starved"
                );
            }
            routed
        }
    });

    let t_flood = Instant::now();
    for _ in 0..FLOOD / FLOOD_WAVE {
        let wave: Vec<_> = (0..FLOOD_WAVE)
            .map(|_| {
                tokio::spawn(async move {
                    assert_closed_by_proxy(addr, b"GET / HTTP/1.0\r\n\r\n", b"", "flood").await;
                })
            })
            .collect();
        for task in wave {
            task.await.expect("flood client");
        }
    }
    let flood_took = t_flood.elapsed();
    flooding.store(false, Ordering::SeqCst);
    let routed = good_client.await.expect("good client");

    scrape_until(&proxy, STEP, "every flood connection counted", |s| {
        s.get("sniroute_connections_total", &[("outcome", "not_tls")]) == Some(FLOOD as f64)
    });
    // The limiter reports what it held back in one summary line.
    let summary = proxy.wait_log_since(mark, &["suppressed"], Duration::from_secs(3));
    let refused = proxy.logs_since(mark, &["connection refused"]).len();
    // 50 lines a second: a flood that spans N seconds may log 50 in each of them.
    let windows = flood_took.as_secs() as usize + 2;
    assert!(
        refused <= 50 * windows && refused < FLOOD / 2,
        "{refused} `connection refused` lines for {FLOOD} refusals in {flood_took:?}"
    );
    assert!(refused >= 1, "no refusal logged at all");
    assert!(
        proxy.logs_since(mark, &["connection closed"]).is_empty(),
        "summary lines without log_connections"
    );
    eprintln!(
        "flood: {FLOOD} refusals in {} ms, {refused} lines logged, good client routed {routed} \
         times meanwhile; summary: {summary}",
        ms(flood_took)
    );
}

// === 6. Accept errors ===

/// How many file descriptors the process may open: few enough that idle clients use them up.
const NOFILE: usize = 64;
/// Idle client connections opened against it.
const IDLE_CLIENTS: usize = 80;

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second: u64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100);
    Duration::from_millis(ticks * 1000 / per_second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_is_survived() {
    let good = TlsBackend::start("good");
    let mut proxy = Sniroute::start_opts(
        // max_connections set past what the limit serves (its default is derived from the
        // limit, which keeps accept from ever failing): this is the accept loop's own test.
        Cfg::new()
            .set("client_hello_timeout", "30s")
            .set("max_connections", "100000")
            .route("api", &["api.example.test"], &[good.addr()])
            .yaml(),
        &StartOpts {
            wrapper: vec![
                "sh".into(),
                "-c".into(),
                format!("ulimit -n {NOFILE} && exec \"$0\" \"$@\""),
            ],
            ..StartOpts::default()
        },
    );
    let addr = proxy.proxy_addr();
    let pid = proxy.pid();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count());
    assert_routes(addr, "api.example.test", "good")
        .await
        .echo(b"before")
        .await;
    let mark = proxy.log_mark();

    // Idle clients (each sends one byte of a hello, so the listener hands it over, then
    // stops) until accept fails with EMFILE; the kernel's backlog takes the ones the process
    // cannot accept.
    let mut idle = Vec::with_capacity(IDLE_CLIENTS);
    for _ in 0..IDLE_CLIENTS {
        let mut client = raw_connect(addr).await;
        client.write_all(&[0x16]).await.unwrap();
        idle.push(client);
    }
    let failed = proxy.wait_log_since(mark, &["accept failed"], STEP);
    // Keep the descriptors exhausted for a while: the loop backs off instead of spinning, and
    // logs once for the whole burst.
    let cpu_before = cpu_time(pid);
    let held = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    assert!(proxy.running(), "exited when out of file descriptors");
    let accept_failed = proxy.logs_since(mark, &["accept failed"]).len();
    assert!(
        (1..=3).contains(&accept_failed),
        "{accept_failed} `accept failed` lines in one burst"
    );
    assert!(
        cpu < Duration::from_millis(500),
        "used {cpu:?} of CPU in {:?} while out of descriptors: spinning?",
        held.elapsed()
    );

    // Once the clients go, the very same process routes again.
    drop(idle);
    let t_free = Instant::now();
    let mut conn = assert_routes(addr, "api.example.test", "good").await;
    conn.echo(b"after").await;
    let recovered = t_free.elapsed();
    assert!(proxy.running());
    assert_eq!(proxy.get("/healthz").expect("healthz").0, 200);
    eprintln!(
        "accept errors: {fds:?} fds at start (limit {NOFILE}); first: {failed}; \
         {accept_failed} line(s), {cpu:?} CPU while exhausted, routed again {} ms after \
         the clients closed",
        ms(recovered)
    );
}
