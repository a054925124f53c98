//! End to end: the admin endpoints, `sniroute check`, and refusing a bad config before binding.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::procfs::{limit_open_files, open_fds, raise_open_files_limit};
use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

/// The admin server's timer for a complete request head (src/admin.rs `HEADER_TIMEOUT`).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Slack on top of it for a loaded machine.
const SLACK: Duration = Duration::from_secs(3);

#[tokio::test]
async fn health_readiness_and_routes() {
    let b1 = TlsBackend::start("b1");
    let b2 = TlsBackend::start("b2");
    let proxy = Sniroute::start(
        Cfg::new()
            .route("api", &["api.example.test"], &[b1.addr(), b2.addr()])
            .route_key("allowed_cidrs", "[127.0.0.0/8]")
            .route_key("max_connections", "100")
            .route_raw(None, &["*.example.test"], &[b2.addr().to_string()])
            .yaml(),
    );
    assert_eq!(proxy.get("/healthz").unwrap().0, 200);
    assert_eq!(proxy.get("/readyz").unwrap().0, 200);

    let routes = proxy.routes();
    assert!(
        routes["generation"].as_u64().is_some_and(|g| g >= 1),
        "{routes}"
    );
    assert!(
        routes["loaded_at"].as_str().is_some_and(|s| !s.is_empty()),
        "{routes}"
    );
    let list = routes["routes"].as_array().expect("routes array");
    assert_eq!(list.len(), 2, "{routes}");
    let api = list
        .iter()
        .find(|r| r["name"] == "api")
        .unwrap_or_else(|| panic!("no route named api: {routes}"));
    assert_eq!(api["hostnames"], serde_json::json!(["api.example.test"]));
    assert_eq!(
        api["backends"],
        serde_json::json!([b1.addr().to_string(), b2.addr().to_string()])
    );
    assert_eq!(api["source"], "file");
    assert_eq!(api["allowed_cidrs"], serde_json::json!(["127.0.0.0/8"]));
    assert_eq!(api["max_connections"], 100);
    // One view of a route: what /routes says of it is what explain says.
    let (status, body) = http_get(
        proxy.listener_addr("debug"),
        "/explain?sni=api.example.test",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let explained: serde_json::Value = serde_json::from_str(&body).unwrap();
    for key in [
        "name",
        "source",
        "hostnames",
        "allowed_cidrs",
        "max_connections",
        "cluster_id",
        "no_backend",
        "listener_port",
    ] {
        assert!(api.get(key).is_some(), "/routes lacks {key}: {api}");
        assert_eq!(
            api[key], explained["route"][key],
            "{key}: {api} vs {explained}"
        );
    }
    let wild = list
        .iter()
        .find(|r| r["hostnames"] == serde_json::json!(["*.example.test"]))
        .unwrap_or_else(|| panic!("no wildcard route: {routes}"));
    assert!(
        wild["name"].as_str().is_some_and(|n| !n.is_empty()),
        "an unnamed route still gets a name: {routes}"
    );
    assert_eq!(wild["backends"], serde_json::json!([b2.addr().to_string()]));
    assert_eq!(wild["source"], "file");

    // The generation is stable while nothing changes.
    let generation = proxy.generation();
    assert_routes(proxy.proxy_addr(), "api.example.test", "b1").await;
    assert_eq!(proxy.generation(), generation);
}

#[test]
fn check_accepts_a_good_file() {
    let (_dir, path) = config_file(
        &Cfg::new()
            .set("client_hello_timeout", "5s")
            .set("connect_timeout", "10s")
            .set("idle_timeout", "1h")
            .set("max_client_hello", "16384")
            .route("api", &["api.example.test"], &[closed_port()])
            .route("wild", &["*.example.test"], &[closed_port()])
            .yaml(),
    );
    let run = run_binary(&["check".as_ref(), "--config".as_ref(), path.as_os_str()]);
    let status = run.exited.expect("check did not exit");
    assert!(status.success(), "check failed on a good file: {run:?}");
}

#[test]
fn check_lists_every_problem_with_the_file_name() {
    let (_dir, path) = config_file(
        &Cfg::new()
            .route("good", &["api.example.test"], &[closed_port()])
            .route_raw(
                Some("bad-backend"),
                &["b.example.test"],
                &["not a backend".to_owned()],
            )
            .route_raw(
                Some("bad-hostname"),
                &["bad name!.example.test"],
                &[closed_port().to_string()],
            )
            .yaml(),
    );
    let run = run_binary(&["check".as_ref(), "--config".as_ref(), path.as_os_str()]);
    let status = run.exited.expect("check did not exit");
    assert!(!status.success(), "check passed a bad file: {run:?}");
    let file_name = path.file_name().unwrap().to_str().unwrap();
    for needle in ["bad-backend", "bad-hostname", file_name] {
        assert!(
            run.stderr.contains(needle),
            "stderr does not mention {needle:?}:\n{}",
            run.stderr
        );
    }
    assert!(
        !run.stderr.contains("route \"good\"") && !run.stderr.contains("route `good`"),
        "the good route was blamed:\n{}",
        run.stderr
    );
}

#[test]
fn bad_config_exits_before_binding() {
    let port = closed_port();
    let yaml = Cfg::new()
        .listen(&[&port.to_string()])
        .route_raw(Some("broken"), &["api.example.test"], &[])
        .route_raw(Some("also-broken"), &["*."], &[closed_port().to_string()])
        .yaml();
    let (_dir, path) = config_file(&yaml);
    let run = run_binary(&["--config".as_ref(), path.as_os_str()]);
    let status = run
        .exited
        .expect("sniroute kept running on a bad config (killed at the deadline)");
    assert!(!status.success(), "exit status {status} on a bad config");
    assert!(
        !run.stderr.contains("listening"),
        "it bound listeners before rejecting the config:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("broken") && run.stderr.contains("also-broken"),
        "stderr does not name both bad routes:\n{}",
        run.stderr
    );
}

#[test]
fn missing_config_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.yaml");
    let run = run_binary(&["--config".as_ref(), path.as_os_str()]);
    let status = run.exited.expect("still running without a config file");
    assert!(!status.success());
    assert!(run.stderr.contains("absent.yaml"), "{}", run.stderr);
    assert!(!run.stderr.contains("listening"));
}

/// Sends `request` raw on a new admin connection and returns the response head, lowercased.
async fn raw_head(proxy: &Sniroute, request: &[u8]) -> String {
    let mut tcp = raw_connect(proxy.admin_addr()).await;
    tcp.write_all(request).await.unwrap();
    let read = read_until_closed(&mut tcp, STEP).await;
    let text = String::from_utf8_lossy(&read.bytes).to_ascii_lowercase();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn method_not_allowed_says_what_is() {
    let proxy = Sniroute::start(Cfg::new().yaml());
    for method in ["POST", "PUT", "DELETE"] {
        let head = raw_head(
            &proxy,
            format!("{method} /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(head.starts_with("http/1.1 405"), "{method}: {head}");
        assert!(
            head.contains("\r\nallow: get, head"),
            "{method}: no Allow header: {head}"
        );
    }
}

/// Sends the request line and one header, then a byte of another header every second, until
/// the admin server closes the connection; returns how long that took.
async fn trickle(mut tcp: TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    if tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .is_err()
    {
        return Some(start.elapsed());
    }
    let mut buf = [0u8; 256];
    while start.elapsed() < within {
        tokio::select! {
            read = tcp.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(start.elapsed()),
                // Whatever it says (a 408, say), it must close next.
                Ok(_) => {}
            },
            () = sleep(Duration::from_secs(1)) => {
                if tcp.write_all(b"X").await.is_err() {
                    return Some(start.elapsed());
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_slowloris_at_a_low_open_files_limit_leaves_tls_routing_alone() {
    let backend = TlsBackend::start("b1");
    let proxy = Sniroute::start(
        Cfg::new()
            .route("api", &["api.example.test"], &[backend.addr()])
            .yaml(),
    );
    let pid = proxy.pid();
    limit_open_files(pid, 128);

    // Twice the open-files limit in slow admin clients: without a cap the admin side alone
    // would take every descriptor.
    let mut slow = Vec::new();
    for _ in 0..256 {
        let tcp = raw_connect(proxy.admin_addr()).await;
        slow.push(tokio::spawn(trickle(tcp, HEADER_TIMEOUT + SLACK)));
    }
    sleep(Duration::from_millis(500)).await;
    let held = open_fds(pid);
    assert!(held < 100, "the admin side holds {held} of 128 descriptors");
    for i in 0..20 {
        let mut conn = tls_connect(proxy.proxy_addr(), "api.example.test")
            .await
            .unwrap_or_else(|e| panic!("TLS client {i} during the admin slowloris: {e}"));
        conn.echo(b"still routed").await;
    }
    // Every slow client is closed, however much it keeps trickling: all but the last ones
    // at once, each when a newer one takes its slot, and those by the header timeout.
    let mut closed_at_once = 0;
    for task in slow {
        let took = task
            .await
            .unwrap()
            .expect("a trickling admin client was still open past the header timeout");
        // Well before the header timeout, with room for a loaded machine.
        if took < HEADER_TIMEOUT - Duration::from_secs(2) {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 256 - 32,
        "only {closed_at_once} closed at once"
    );
    assert_eq!(proxy.get("/healthz").unwrap().0, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_admin_connection_is_closed() {
    let proxy = Sniroute::start(Cfg::new().yaml());
    let mut tcp = raw_connect(proxy.admin_addr()).await;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let read = read_until_closed(&mut tcp, HEADER_TIMEOUT + SLACK).await;
    let text = String::from_utf8_lossy(&read.bytes);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("ok\n"),
        "{text}"
    );
    assert!(
        read.end.closed(),
        "an idle keep-alive connection was still open {:?} after its response",
        start.elapsed()
    );
    // Open for the whole timer, not closed right after the response.
    assert!(read.at - start >= HEADER_TIMEOUT - Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_accept_errors_back_off_and_log_once_per_interval() {
    let proxy = Sniroute::start(Cfg::new().set("client_hello_timeout", "60s").yaml());
    let pid = proxy.pid();
    limit_open_files(pid, 64);
    // Idle proxy connections take every descriptor left: each sends the first byte of a
    // hello (the listener hands over only connections that have sent something).
    let mut hogs = Vec::new();
    for _ in 0..96 {
        let mut hog = raw_connect(proxy.proxy_addr()).await;
        hog.write_all(&[0x16]).await.unwrap();
        hogs.push(hog);
    }
    let deadline = Instant::now() + STEP;
    while open_fds(pid) < 63 && Instant::now() < deadline {
        sleep(POLL).await;
    }
    assert!(
        open_fds(pid) >= 63,
        "the open-files limit was never reached"
    );
    let mark = proxy.log_mark();
    let waiting = raw_connect(proxy.admin_addr()).await;
    sleep(Duration::from_secs(3)).await;
    let failures = proxy.logs_since(mark, &["accept failed", "listener=\"admin\""]);
    assert!(
        !failures.is_empty() && failures.len() <= 2,
        "{} admin accept failures logged in 3s: {failures:?}",
        failures.len()
    );
    drop(hogs);
    drop(waiting);
    let deadline = Instant::now() + STEP;
    while !matches!(proxy.get("/healthz"), Ok((200, _))) {
        assert!(
            Instant::now() < deadline,
            "the admin server did not recover"
        );
        sleep(POLL).await;
    }
}

#[tokio::test]
async fn admin_serves_probes_and_metrics_and_debug_serves_the_routes() {
    let proxy = Sniroute::start(
        Cfg::new()
            .route("api", &["api.example.test"], &[closed_port()])
            .yaml(),
    );
    let (admin, debug) = (proxy.admin_addr(), proxy.listener_addr("debug"));
    assert!(debug.ip().is_loopback());
    for (path, status) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        ("/routes", 404),
    ] {
        assert_eq!(http_get(admin, path).unwrap().0, status, "admin {path}");
    }
    for (path, status) in [
        ("/routes", 200),
        ("/healthz", 404),
        ("/readyz", 404),
        ("/metrics", 404),
    ] {
        assert_eq!(http_get(debug, path).unwrap().0, status, "debug {path}");
    }
    let (_, body) = http_get(debug, "/routes").unwrap();
    assert!(body.contains("\"api.example.test\""), "{body}");
    // The same server code, the same hardening: a 405 says what is allowed.
    let mut tcp = raw_connect(debug).await;
    tcp.write_all(b"DELETE /routes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&read_until_closed(&mut tcp, STEP).await.bytes)
        .to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 405") && head.contains("\r\nallow: get, head"),
        "{head}"
    );
}

#[test]
fn debug_off_binds_no_debug_listener() {
    let proxy = Sniroute::start(Cfg::new().set("debug", "off").yaml());
    assert_eq!(proxy.get("/healthz").unwrap().0, 200);
    assert!(
        listening_addr_of(&proxy.logs(), "debug").is_none(),
        "a debug listener with `debug: off`: {:?}",
        proxy.logs()
    );
}

/// What an admin-port attacker does with each connection it opens.
#[derive(Debug, Clone, Copy)]
enum Attack {
    /// A request line, then a header line a second, never ending the head.
    Trickle,
    /// A complete request every 4 s on one keep-alive connection, reading the answers.
    KeepAlive,
    /// Nothing at all.
    Idle,
}

impl Attack {
    /// What it sends when it connects, then what it sends again and again, and how often.
    fn script(self) -> (&'static [u8], &'static [u8], Duration) {
        match self {
            Attack::Trickle => (
                b"GET /healthz HTTP/1.1\r\n",
                b"X-Slow: 1\r\n",
                Duration::from_secs(1),
            ),
            Attack::KeepAlive => (
                b"",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                Duration::from_secs(4),
            ),
            Attack::Idle => (b"", b"", Duration::from_secs(3600)),
        }
    }
}

/// Keeps one connection from `source` to `addr` busy as `attack` says until `stop`,
/// reconnecting a second after the server closes it; `connected` counts its first connection.
async fn attack(
    attack: Attack,
    source: IpAddr,
    addr: SocketAddr,
    connected: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let (first_bytes, again, every) = attack.script();
    let mut first = true;
    while !stop.is_cancelled() {
        let mut tcp = raw_connect_from(source, addr).await;
        if std::mem::take(&mut first) {
            connected.fetch_add(1, Ordering::Relaxed);
        }
        let mut buf = [0u8; 1024];
        let mut next = Instant::now();
        if tcp.write_all(first_bytes).await.is_ok() {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    read = tcp.read(&mut buf) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    },
                    () = tokio::time::sleep_until(next) => {
                        if tcp.write_all(again).await.is_err() {
                            break;
                        }
                        next += every;
                    }
                }
            }
        }
        // Back a second later (as the attacker: its 32 tricklers made about 6
        // connections a second); the 1,000 idle ones still make about 1,000 a second.
        sleep(Duration::from_secs(1)).await;
    }
}

/// One kubelet-style probe from `source`: a new connection, one `GET path` with
/// `Connection: close`, answered 200 within `within` or not.
async fn probe(source: IpAddr, addr: SocketAddr, path: &str, within: Duration) -> bool {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.34\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    let answered = tokio::time::timeout(within, async {
        let mut tcp = raw_connect_from(source, addr).await;
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await.ok()?;
        Some(response)
    })
    .await;
    matches!(answered, Ok(Some(response)) if response.starts_with(b"HTTP/1.1 200"))
}

/// Issue 24.1: 32 trickling connections, 40 keep-alive ones and 1,000 idle ones, each
/// reconnecting a second after it is closed, from three pods' addresses, while the kubelet probes from the
/// node's. Before, the cap of 32 was full and every new connection was closed at once: 0 of
/// 10 probes were answered (1 of 20 under the tricklers alone, 0 of 20 under each other
/// attack alone). The admin side must still never hold more than its cap of sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_answered_while_attackers_hold_the_admin_port() {
    const IDLE: usize = 1000;
    let nofile = raise_open_files_limit();
    assert!(
        nofile as usize > IDLE + 200,
        "the open-files limit ({nofile}) is too low for {IDLE} idle attackers"
    );
    let proxy = Sniroute::start(Cfg::new().yaml());
    let (pid, admin) = (proxy.pid(), proxy.admin_addr());
    let before = open_fds(pid);
    // The kubelet probes from the node's address; the attackers are pods on others.
    let node: IpAddr = "127.0.0.1".parse().unwrap();
    let stop = CancellationToken::new();
    let connected = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    for (kind, count, source) in [
        (Attack::Trickle, 32, "127.0.0.2"),
        (Attack::KeepAlive, 40, "127.0.0.3"),
        (Attack::Idle, IDLE, "127.0.0.4"),
    ] {
        for _ in 0..count {
            attackers.push(tokio::spawn(attack(
                kind,
                source.parse().unwrap(),
                admin,
                connected.clone(),
                stop.clone(),
            )));
        }
    }
    let all = attackers.len();
    eventually(STEP, "every attacker connected", || {
        let n = connected.load(Ordering::Relaxed);
        async move { (n == all).then_some(()) }
    })
    .await;

    // A probe a second, each with the kubelet's 2 s timeout; 90% must be answered. Ten rather
    // than the twenty: the code before answered none of ten.
    const PROBES: usize = 10;
    let mut probes = Vec::new();
    let mut held = 0;
    for _ in 0..PROBES {
        probes.push(tokio::spawn(probe(
            node,
            admin,
            "/healthz",
            Duration::from_secs(2),
        )));
        sleep(Duration::from_secs(1)).await;
        held = held.max(open_fds(pid).saturating_sub(before));
    }
    let mut answered = 0;
    for probe in probes {
        answered += usize::from(probe.await.unwrap());
    }
    stop.cancel();
    for attacker in attackers {
        attacker.await.unwrap();
    }
    assert!(
        answered * 10 >= PROBES * 9,
        "{answered} of {PROBES} probes answered under the attack"
    );
    // Never more than the cap of connections, plus the one just accepted.
    assert!(held <= 33, "the admin side held {held} sockets");
}
