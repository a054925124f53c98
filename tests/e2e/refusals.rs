//! End to end: what the proxy refuses, how, and that refusals and timeouts leave other
//! connections alone.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use rustls::AlertDescription;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// Connects to `addr`, writes `bytes` and reads what comes back until the proxy closes.
async fn answer_to(addr: SocketAddr, bytes: &[u8]) -> ReadOutcome {
    let mut tcp = raw_connect(addr).await;
    tcp.write_all(bytes).await.unwrap();
    read_until_closed(&mut tcp, STEP).await
}

/// Asserts the proxy sent exactly the `unrecognized_name` alert, then closed.
fn assert_alert_then_close(out: &ReadOutcome) {
    assert_eq!(out.bytes, UNRECOGNIZED_NAME_ALERT, "bytes before close");
    assert!(
        out.end.closed(),
        "not closed after the alert: {:?}",
        out.end
    );
}

#[tokio::test]
async fn unknown_sni_gets_the_unrecognized_name_alert() {
    let b1 = TlsBackend::start("b1");
    let proxy = Sniroute::start(one_route(b1.addr()).yaml());
    for name in ["nope.other.test", "example.test", "www.example.test"] {
        let err = tls_connect(proxy.proxy_addr(), name)
            .await
            .err()
            .unwrap_or_else(|| panic!("{name} must be refused"));
        assert_eq!(
            received_alert(&err),
            Some(AlertDescription::UnrecognisedName),
            "{name}: expected the unrecognized_name alert, got {err:?}"
        );
    }
    assert_eq!(b1.accepted(), 0, "a refused name reached the backend");
    proxy.wait_refusal_since(0, "unknown_sni", STEP);
}

#[tokio::test]
async fn unknown_sni_alert_bytes_are_exact() {
    let raw = RawBackend::start();
    let proxy = Sniroute::start(one_route(raw.addr()).yaml());
    let hello = with_sni(&fixture("openssl-3.0.bin"), b"unknown.other.test");
    assert_alert_then_close(&answer_to(proxy.proxy_addr(), &hello).await);
    assert_eq!(raw.accepted(), 0);
}

#[tokio::test]
async fn no_sni_gets_the_same_alert() {
    let raw = RawBackend::start();
    let proxy = Sniroute::start(one_route(raw.addr()).yaml());
    let mark = proxy.log_mark();
    let hello = fixture("openssl-noservername.bin");
    assert_alert_then_close(&answer_to(proxy.proxy_addr(), &hello).await);
    assert_eq!(raw.accepted(), 0);
    proxy.wait_refusal_since(mark, "no_sni", STEP);
}

#[tokio::test]
async fn plaintext_is_closed_with_nothing_sent() {
    let raw = RawBackend::start();
    let proxy = Sniroute::start(one_route(raw.addr()).yaml());
    let plaintext = b"GET / HTTP/1.1\r\nHost: api.example.test\r\n\r\n";
    let out = answer_to(proxy.proxy_addr(), plaintext).await;
    assert!(out.end.closed(), "plaintext connection left open");
    assert_eq!(out.bytes, b"", "nothing may be sent to a non-TLS client");
    assert_eq!(raw.accepted(), 0);
    proxy.wait_refusal_since(0, "not_tls", STEP);
}

#[tokio::test]
async fn oversized_hello_is_closed_and_never_forwarded() {
    let raw = RawBackend::start();
    let proxy = Sniroute::start(
        one_route(raw.addr())
            .set("max_client_hello", "1024")
            .set("client_hello_timeout", "10s")
            .yaml(),
    );
    let hello = fixture("chromium-156-pq.bin");
    assert!(hello.len() > 1024);
    let mut tcp = raw_connect(proxy.proxy_addr()).await;
    let start = Instant::now();
    // The proxy may close (even reset) before taking it all.
    let _ = tcp.write_all(&hello).await;
    let out = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(out.end.closed(), "oversized hello left open");
    assert!(
        out.at - start < Duration::from_secs(3),
        "closed only after {:?}: the size limit should act before the 10s timeout",
        out.at - start
    );
    assert_eq!(raw.accepted(), 0, "an oversized hello reached the backend");
    // The limit is what refused it: a small hello through the same proxy is forwarded.
    let small = fixture("openssl-3.0.bin");
    let mut tcp = raw_connect(proxy.proxy_addr()).await;
    tcp.write_all(&small).await.unwrap();
    assert_eq!(raw.wait_received(0, small.len(), STEP), small);
}

#[tokio::test]
async fn record_header_claiming_60000_bytes_is_closed_promptly() {
    let raw = RawBackend::start();
    let proxy = Sniroute::start(
        one_route(raw.addr())
            .set("client_hello_timeout", "10s")
            .yaml(),
    );
    let mut tcp = raw_connect(proxy.proxy_addr()).await;
    let start = Instant::now();
    // Handshake record of 60000 (0xEA60) bytes holding a ClientHello of 59996.
    tcp.write_all(&[
        0x16, 0x03, 0x01, 0xea, 0x60, 0x01, 0x00, 0xea, 0x5c, 0x03, 0x03,
    ])
    .await
    .unwrap();
    let out = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(
        out.end.closed(),
        "a 60000-byte record header left the connection open"
    );
    assert!(
        out.at - start < Duration::from_secs(3),
        "closed only after {:?}",
        out.at - start
    );
    assert_eq!(raw.accepted(), 0);
}

#[tokio::test]
async fn no_reachable_backend_closes_and_logs() {
    let proxy = Sniroute::start(
        Cfg::new()
            .route(
                "api",
                &["api.example.test"],
                &[closed_port(), closed_port()],
            )
            .yaml(),
    );
    let out = answer_to(proxy.proxy_addr(), &fixture("openssl-3.0.bin")).await;
    assert!(out.end.closed(), "left open with no reachable backend");
    proxy.wait_refusal_since(0, "backend_unreachable", STEP);
}

#[tokio::test]
async fn refusals_do_not_disturb_other_connections() {
    let b1 = TlsBackend::start("b1");
    let proxy = Sniroute::start(
        one_route(b1.addr())
            .set("client_hello_timeout", "1s")
            .yaml(),
    );
    let addr = proxy.proxy_addr();
    let mut good = assert_routes(addr, "api.example.test", "b1").await;
    let unknown = with_sni(&fixture("openssl-3.0.bin"), b"nope.other.test");
    let mut held = Vec::new();
    for round in 0..5 {
        // Plaintext, unknown name, no name, garbage, a hello cut short and left hanging.
        for junk in [
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            unknown.clone(),
            fixture("openssl-noservername.bin"),
            vec![0xff; 64],
            fixture("openssl-3.0.bin")[..40].to_vec(),
        ] {
            let mut tcp = raw_connect(addr).await;
            let _ = tcp.write_all(&junk).await;
            held.push(tcp);
        }
        // Some clients vanish abruptly.
        held.truncate(held.len() - 2);
        good.echo(format!("round {round}").as_bytes()).await;
    }
    // New good connections are still served, and the old one is still fine.
    let mut fresh = assert_routes(addr, "api.example.test", "b1").await;
    fresh.echo(b"fresh").await;
    good.echo(b"good survived").await;
    assert_eq!(b1.handshakes(), 2, "junk reached the backend");
}

#[tokio::test]
async fn refusals_after_a_hello_and_closing_summaries_carry_its_ja4() {
    let backend = TlsBackend::start("b");
    let proxy = Sniroute::start(
        Cfg::new()
            .set("log_connections", "true")
            .route("r", &["r.example.test"], &[backend.addr()])
            .yaml(),
    );
    // A browser's hello from FoxIO's test data, with the fingerprint the spec gives for it
    // (tests/fixtures/ja4/README.md), for a name without a route.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ja4/browsers-x509-0.bin"
    );
    let hello = std::fs::read(path).unwrap();
    let mark = proxy.log_mark();
    let mut tcp = raw_connect(proxy.proxy_addr()).await;
    tcp.write_all(&with_sni(&hello, b"nothing.example.test"))
        .await
        .unwrap();
    let line = proxy.wait_refusal_since(mark, "unknown_sni", STEP);
    assert!(
        line.contains("ja4=t13d1516h2_8daaf6152771_e5627efa2ab1"),
        "{line}"
    );

    // A refusal before any hello (not TLS) has none.
    let mark = proxy.log_mark();
    let mut tcp = raw_connect(proxy.proxy_addr()).await;
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let line = proxy.wait_refusal_since(mark, "not_tls", STEP);
    assert!(!line.contains("ja4="), "{line}");

    // A forwarded connection's closing line carries the fingerprint of its hello.
    let mark = proxy.log_mark();
    let conn = assert_routes(proxy.proxy_addr(), "r.example.test", "b").await;
    drop(conn);
    let line = proxy.wait_log_since(mark, &["connection closed"], STEP);
    assert!(line.contains("ja4=t13d"), "{line}");
}

/// The `suppressed=N` of every summary line of the refusal log budget after `mark`.
fn suppressed_since(proxy: &Sniroute, mark: usize) -> u64 {
    proxy
        .logs_since(mark, &["log lines suppressed"])
        .iter()
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix("suppressed="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_flood_of_refusals_leaves_anothers_log_lines_and_is_summarised() {
    let raw = RawBackend::start();
    let proxy = Sniroute::start(
        one_route(raw.addr())
            .set(
                "client_limits",
                "{max_connections: 1000, connection_rate: 1/m, burst: 20}",
            )
            .yaml(),
    );
    let addr = proxy.proxy_addr();
    let (flooder, victim): (std::net::IpAddr, std::net::IpAddr) =
        ("127.0.0.7".parse().unwrap(), "127.0.0.8".parse().unwrap());
    let mark = proxy.log_mark();
    let started = Instant::now();
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Connections from 127.0.0.7, 50 at a time, refused as client_limited past its burst,
    // for as long as the victim is at it (bounded: 20,000 at most).
    let flood = tokio::spawn({
        let (flooding, opened) = (flooding.clone(), opened.clone());
        async move {
            while flooding.load(std::sync::atomic::Ordering::SeqCst)
                && opened.load(std::sync::atomic::Ordering::SeqCst) < 20_000
            {
                let wave: Vec<_> = (0..50)
                    .map(|_| {
                        tokio::spawn(async move {
                            let mut tcp = raw_connect_from(flooder, addr).await;
                            let _ = tcp.write_all(b"x").await;
                            read_until_closed(&mut tcp, STEP).await;
                        })
                    })
                    .collect();
                for task in wave {
                    task.await.unwrap();
                }
                opened.fetch_add(50, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    eventually(STEP, "the flood under way", || async {
        (opened.load(std::sync::atomic::Ordering::SeqCst) >= 500).then_some(())
    })
    .await;
    // Ten unknown names from another client while the flood goes on.
    let hello = with_sni(&fixture("openssl-3.0.bin"), b"nope.other.test");
    for _ in 0..10 {
        let mut tcp = raw_connect_from(victim, addr).await;
        tcp.write_all(&hello).await.unwrap();
        assert!(read_until_closed(&mut tcp, STEP).await.end.closed());
    }
    let during = opened.load(std::sync::atomic::Ordering::SeqCst);
    flooding.store(false, std::sync::atomic::Ordering::SeqCst);
    flood.await.unwrap();
    let took = started.elapsed();
    assert!(
        opened.load(std::sync::atomic::Ordering::SeqCst) > during,
        "the flood ended before the victim did"
    );

    let victims = eventually(STEP, "the victim's ten lines", || async {
        let lines = proxy.logs_since(mark, &["connection refused", "peer=127.0.0.8:"]);
        (lines.len() >= 10).then_some(lines)
    })
    .await;
    assert!(
        victims.iter().all(|l| l.contains("reason=unknown_sni")),
        "{victims:#?}"
    );
    // Every refusal is either a line or counted in a summary, and the summary comes on its
    // own, a second or so after the flood, with no later refusal to carry it.
    let opened = opened.load(std::sync::atomic::Ordering::SeqCst) as u64;
    let refused = (opened + 10) as f64;
    eventually(STEP, "every refusal counted", || async {
        let s = Scrape::of(&proxy);
        let counted = s.outcome("client_limited") + s.outcome("not_tls") + s.outcome("unknown_sni");
        (counted == refused).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "every held-back line summarised",
        || async {
            let logged = proxy.logs_since(mark, &["connection refused"]).len() as u64;
            (logged + suppressed_since(&proxy, mark) == opened + 10).then_some(())
        },
    )
    .await;
    // Ten lines a second at most for one client.
    let flooders = proxy.logs_since(mark, &["connection refused", "peer=127.0.0.7:"]);
    assert!(
        flooders.len() as u64 <= 10 * (took.as_secs() + 2),
        "{} lines for one client's flood of {opened} in {took:?}",
        flooders.len()
    );
}
