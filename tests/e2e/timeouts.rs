//! The data plane's timeouts (`client_hello_timeout`, `idle_timeout`, `connect_timeout`) on
//! paused time: the proxy in the test's runtime ([`InProcess`]), real loopback sockets, and
//! a clock that moves only to the next timer. Each test takes milliseconds whatever the
//! timeout, asserts the instant a timeout fires to the millisecond (a wall-clock test could
//! only bound it loosely), and cannot be made late by a loaded machine: the steps that wait
//! for the kernel hold the clock ([`at_once`]), and the test lets it move only with
//! `sleep_until` the instant it expects the proxy's own timer to fire.
//!
//! What stays on the wall clock, with the real binary: the drain (`shutdown_delay`,
//! `drain_timeout`: signals and the process's exit, tests/e2e/operations.rs) and the
//! timeouts under a real load (tests/robustness.rs: thousands of slowloris clients, whose
//! sockets the process must give back).

use std::time::Duration;

use crate::common::in_process::*;
use crate::common::*;
use crate::proxy_protocol::v2_header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep_until, Instant};

/// The ClientHello the raw clients send (SNI `api.example.test`).
const HELLO: &str = "openssl-3.0.bin";

/// What the tests take as "just before" a timer: the timer wheel's resolution.
const TICK: Duration = Duration::from_millis(1);
/// Real time a check just before a deadline gives a timer that fired early to show.
const SETTLE: Duration = Duration::from_millis(20);

/// A slowloris client (the real hello a byte a second, never completed) is cut at
/// `client_hello_timeout` after its accept: however it trickles, and not a tick earlier.
#[tokio::test(start_paused = true)]
async fn a_hello_sent_a_byte_a_second_is_cut_at_client_hello_timeout() {
    let timeout = Duration::from_secs(10);
    let raw = RawBackend::start();
    let proxy = InProcess::start(
        &one_route(raw.addr())
            .set("client_hello_timeout", "10s")
            .yaml(),
    );
    let hello = fixture(HELLO);
    let mut tcp = connect_at_once(proxy.addr()).await;
    let start = Instant::now();
    tcp.write_all(&hello[..1]).await.unwrap();
    // Accepted at `start`: TCP_DEFER_ACCEPT handed it over once the first byte came.
    proxy.until_active(1).await;

    for (second, byte) in (1..10).zip(&hello[1..]) {
        sleep_until(start + Duration::from_millis(second * 1000 - 500)).await;
        tcp.write_all(&[*byte]).await.unwrap();
    }
    sleep_until(start + timeout - TICK).await;
    held(SETTLE).await;
    assert_eq!(proxy.outcome("client_hello_timeout"), 0.0, "cut early");
    assert_eq!(proxy.active(), 1.0, "closed before client_hello_timeout");

    sleep_until(start + timeout).await;
    let sent = closed_at_once(&mut tcp, "the cut at client_hello_timeout").await;
    assert_eq!(sent, b"", "the proxy answered a hello it never completed");
    assert_eq!(Instant::now() - start, timeout);
    assert_eq!(proxy.outcome("client_hello_timeout"), 1.0);
    until("the connection ended", || proxy.active() == 0.0).await;
    assert_eq!(raw.accepted(), 0, "an unfinished hello reached the backend");
}

/// One deadline for everything before routing: a PROXY header that never completes is cut at
/// `client_hello_timeout`, and so is a complete header whose hello then trickles (the header
/// buys no time).
#[tokio::test(start_paused = true)]
async fn a_proxy_header_does_not_extend_client_hello_timeout() {
    let timeout = Duration::from_secs(1);
    let open = RawBackend::start();
    let proxy = InProcess::start(
        &Cfg::new()
            .set("accept_proxy_protocol", "v2")
            .set("trusted_proxies", "[\"127.0.0.1/32\"]")
            .set("client_hello_timeout", "1s")
            .route("api", &["api.example.test"], &[open.addr()])
            .yaml(),
    );
    let header = v2_header("192.0.2.10:4000".parse().unwrap(), proxy.addr(), None);
    let hello = fixture(HELLO);
    let truncated = header[..header.len() - 5].to_vec();
    let mut slow_hello = header.clone();
    slow_hello.extend_from_slice(&hello[..hello.len() / 2]);
    for (n, first) in [truncated, slow_hello].into_iter().enumerate() {
        let mut tcp = connect_at_once(proxy.addr()).await;
        let start = Instant::now();
        tcp.write_all(&first).await.unwrap();
        proxy.until_active(1).await;
        sleep_until(start + timeout - TICK).await;
        held(SETTLE).await;
        held(SETTLE).await;
        assert_eq!(proxy.active(), 1.0, "connection {n} closed early");

        sleep_until(start + timeout).await;
        let sent = closed_at_once(&mut tcp, "the cut at client_hello_timeout").await;
        assert_eq!(sent, b"");
        assert_eq!(Instant::now() - start, timeout);
        assert_eq!(proxy.outcome("client_hello_timeout"), (n + 1) as f64);
        until("the connection ended", || proxy.active() == 0.0).await;
    }
    assert_eq!(open.accepted(), 0);
}

/// A forwarded pair is closed, both sides, `idle_timeout` after the last byte either way:
/// every byte puts the deadline off, and a backend that never answers cannot hold it open.
#[tokio::test(start_paused = true)]
async fn a_pair_is_closed_at_idle_timeout_after_its_last_byte() {
    let idle = Duration::from_secs(60);
    let silent = RawBackend::start();
    let proxy = InProcess::start(&one_route(silent.addr()).set("idle_timeout", "60s").yaml());
    let hello = fixture(HELLO);
    let mut tcp = connect_at_once(proxy.addr()).await;
    tcp.write_all(&hello).await.unwrap();
    let mut sent = hello.len();
    until("the hello forwarded", || {
        silent.accepted() == 1 && silent.received(0).len() == sent
    })
    .await;
    let mut last = Instant::now();

    // Client bytes put the deadline off, however close to it they come.
    for wait in [Duration::from_secs(30), idle - TICK] {
        sleep_until(last + wait).await;
        tcp.write_all(b"still here").await.unwrap();
        sent += b"still here".len();
        until("the bytes forwarded", || silent.received(0).len() == sent).await;
        last = Instant::now();
    }
    sleep_until(last + idle - TICK).await;
    held(SETTLE).await;
    assert_eq!(proxy.active(), 1.0, "closed before idle_timeout");

    sleep_until(last + idle).await;
    let echoed = closed_at_once(&mut tcp, "the close at idle_timeout").await;
    assert_eq!(echoed, b"", "a silent backend sent something");
    assert_eq!(Instant::now() - last, idle);
    until("the backend's side closed", || silent.eof_seen(0)).await;
    until("the connection ended", || proxy.active() == 0.0).await;
    assert_eq!(proxy.outcome("routed"), 1.0);
}

/// A backend whose connects hang costs a connection exactly one `connect_timeout`, then the
/// next backend is tried; a connection that starts at the good backend waits for nothing.
#[tokio::test(start_paused = true)]
async fn a_black_holed_backend_costs_one_connect_timeout_then_the_next_is_tried() {
    let connect_timeout = Duration::from_millis(500);
    let (hole, _listener, _queued) = black_hole();
    let next = RawBackend::start_with(RawBackendOpts {
        greeting: Some(b"N".to_vec()),
        ..Default::default()
    });
    let proxy = InProcess::start(
        &Cfg::new()
            .route("api", &["api.example.test"], &[hole, next.addr()])
            .set("connect_timeout", "500ms")
            // Every connect tries the hole in its turn (no ejection), so each is timed.
            .set("outlier_detection", "{consecutive_failures: 0}")
            .yaml(),
    );
    let hello = fixture(HELLO);
    // With nothing open, least connections is a tie every time, broken in turn: the first
    // connection starts at the hole, the second at the good one, ...
    for i in 0..4 {
        let mut tcp = connect_at_once(proxy.addr()).await;
        let start = Instant::now();
        tcp.write_all(&hello).await.unwrap();
        if i % 2 == 0 {
            // The hello read and its connect to the hole begun, the clock still at `start`.
            until("the hello read", || {
                proxy
                    .scrape()
                    .value("sniroute_client_hello_seconds_count", &[])
                    == (i + 1) as f64
            })
            .await;
            sleep_until(start + connect_timeout - TICK).await;
            held(SETTLE).await;
            assert_eq!(
                next.accepted(),
                i,
                "connection {i} left the hole before connect_timeout"
            );
            sleep_until(start + connect_timeout).await;
        }
        let greeting = at_once("the good backend's greeting", async {
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).await.map(|_| byte[0])
        })
        .await
        .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(greeting, b'N', "connection {i}");
        let took = Instant::now() - start;
        let expected = if i % 2 == 0 {
            connect_timeout
        } else {
            Duration::ZERO
        };
        assert_eq!(took, expected, "connection {i}");
        assert_eq!(next.accepted(), i + 1);
        drop(tcp);
        until("the connection closed", || proxy.active() == 0.0).await;
    }
    assert_eq!(proxy.outcome("routed"), 4.0);
}
