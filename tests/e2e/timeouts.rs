//! The data plane's timeouts (`client_hello_timeout`, `idle_timeout`, `connect_timeout`,
//! `revoke_grace`) on paused time: the proxy in the test's runtime ([`InProcess`]), real loopback sockets, and
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

use std::net::IpAddr;
use std::time::Duration;

use crate::common::in_process::*;
use crate::common::*;
use crate::proxy_protocol::v2_header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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

// === revoke_grace ===

const A: &str = "a.example.test";
const B: &str = "b.example.test";

/// Routes `a` and `b` to raw backends, `revoke_grace` as given; with `a` and without.
struct Revocable {
    a: RawBackend,
    b: RawBackend,
    both: String,
    only_b: String,
    proxy: InProcess,
}

fn revocable(grace: &str) -> Revocable {
    let (a, b) = (RawBackend::start(), RawBackend::start());
    let only_b = Cfg::new()
        .set("revoke_grace", grace)
        .route("b", &[B], &[b.addr()]);
    let both = only_b.clone().route("a", &[A], &[a.addr()]);
    let proxy = InProcess::start(&both.yaml());
    Revocable {
        a,
        b,
        both: both.yaml(),
        only_b: only_b.yaml(),
        proxy,
    }
}

/// A stream through the proxy from `source` to `backend` (its connection `index`), for `sni`.
struct Stream<'b> {
    tcp: TcpStream,
    backend: &'b RawBackend,
    index: usize,
    sent: usize,
}

impl<'b> Stream<'b> {
    async fn open(
        proxy: &InProcess,
        source: IpAddr,
        sni: &str,
        backend: &'b RawBackend,
    ) -> Stream<'b> {
        let index = backend.accepted();
        let mut tcp = at_once("connect", raw_connect_from(source, proxy.addr())).await;
        let hello = with_sni(&fixture(HELLO), sni.as_bytes());
        tcp.write_all(&hello).await.unwrap();
        let mut stream = Self {
            tcp,
            backend,
            index,
            sent: hello.len(),
        };
        stream.arrived("the hello").await;
        stream
    }

    /// Waits, the clock held, until everything sent has reached the backend.
    async fn arrived(&mut self, what: &str) {
        let (backend, index, sent) = (self.backend, self.index, self.sent);
        until(what, || {
            backend.accepted() > index && backend.received(index).len() == sent
        })
        .await;
    }

    /// Sends `bytes` and waits until the backend has them: the stream still flows.
    async fn flows(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
        self.sent += bytes.len();
        self.arrived("bytes on an open stream").await;
    }
}

fn localhost(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A table without its route: the stream on it flows through the grace and is closed exactly
/// `revoke_grace` after the swap; the route that stayed is untouched. (The same through the
/// binary's file reload, logs included, is revocation.rs's first test.)
#[tokio::test(start_paused = true)]
async fn a_removed_route_loses_its_streams_exactly_revoke_grace_after_the_swap() {
    let grace = Duration::from_secs(30);
    let Revocable {
        a,
        b,
        only_b,
        proxy,
        ..
    } = revocable("30s");
    let mut on_a = Stream::open(&proxy, localhost(1), A, &a).await;
    let mut on_b = Stream::open(&proxy, localhost(1), B, &b).await;

    let swapped = Instant::now();
    proxy.reload(&only_b);
    sleep_until(swapped + grace - TICK).await;
    held(SETTLE).await;
    assert_eq!(proxy.revoked(), 0.0, "revoked before the end of the grace");
    on_a.flows(b"during the grace").await;

    sleep_until(swapped + grace).await;
    let sent = closed_at_once(&mut on_a.tcp, "the revocation").await;
    assert_eq!(sent, b"", "data after the revocation");
    assert_eq!(Instant::now() - swapped, grace);
    assert_eq!(proxy.revoked(), 1.0);
    until("backend a sees the revoked stream end", || a.eof_seen(0)).await;
    on_b.flows(b"after the revocation").await;
    assert_eq!(proxy.active(), 1.0);
}

/// A narrowed allow list revokes, at the end of the grace, the clients it no longer admits,
/// and only those.
#[tokio::test(start_paused = true)]
async fn a_narrowed_allow_list_revokes_only_the_clients_it_no_longer_admits() {
    let grace = Duration::from_secs(1);
    let a = RawBackend::start();
    let allowing = |cidr: &str| {
        Cfg::new()
            .set("revoke_grace", "1s")
            .route("a", &[A], &[a.addr()])
            .route_key("allowed_cidrs", &format!("[{}]", quote(cidr)))
            .yaml()
    };
    let proxy = InProcess::start(&allowing("127.0.0.0/8"));
    let mut from_1 = Stream::open(&proxy, localhost(1), A, &a).await;
    let mut from_2 = Stream::open(&proxy, localhost(2), A, &a).await;

    let swapped = Instant::now();
    proxy.reload(&allowing("127.0.0.2/32"));
    sleep_until(swapped + grace - TICK).await;
    held(SETTLE).await;
    assert_eq!(proxy.revoked(), 0.0, "revoked before the end of the grace");
    from_1.flows(b"during the grace").await;
    sleep_until(swapped + grace).await;
    closed_at_once(&mut from_1.tcp, "the revocation").await;
    assert_eq!(Instant::now() - swapped, grace);
    from_2.flows(b"still admitted").await;
    assert_eq!(proxy.revoked(), 1.0);
}

/// A route restored within the grace keeps its streams: the end of the grace is judged by
/// the table in force then. And with `revoke_grace: off` nothing is revoked, however long.
#[tokio::test(start_paused = true)]
async fn a_route_restored_within_the_grace_or_grace_off_keeps_its_streams() {
    for (grace, restored) in [("2s", true), ("off", false)] {
        let Revocable {
            a,
            both,
            only_b,
            proxy,
            ..
        } = revocable(grace);
        let mut on_a = Stream::open(&proxy, localhost(1), A, &a).await;
        let swapped = Instant::now();
        proxy.reload(&only_b);
        if restored {
            sleep_until(swapped + Duration::from_secs(1)).await;
            proxy.reload(&both);
        }
        // Long past the grace (and short of the default `idle_timeout`).
        sleep_until(swapped + Duration::from_secs(60)).await;
        on_a.flows(b"still here").await;
        let revoked = proxy.revoked();
        assert_eq!(revoked, 0.0, "revoke_grace {grace}");
    }
}
