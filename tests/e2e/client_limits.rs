//! End to end: `client_limits` through real sockets from several loopback source addresses.
//! One client over its open-connection limit or its rate is closed before its ClientHello is
//! read and counted `client_limited`; other clients, and exempt ones, are never affected.

use std::net::IpAddr;

use crate::common::*;
use tokio::io::AsyncWriteExt;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `sniroute_connections_total{outcome="client_limited"}` now.
fn client_limited(proxy: &Sniroute) -> u64 {
    Scrape::of(proxy).outcome("client_limited") as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_over_its_open_limit_is_closed_and_no_one_else_is() {
    let backend = TlsBackend::start("b");
    let proxy = Sniroute::start(
        Cfg::new()
            .set(
                "client_limits",
                "{max_connections: 2, connection_rate: 1000/s, burst: 1000, exempt: [127.0.0.4/32]}",
            )
            .route("r", &["r.example.test"], &[backend.addr()])
            .yaml(),
    );
    let addr = proxy.proxy_addr();
    let busy = ip("127.0.0.2");
    let held = [
        tls_connect_with(addr, &ClientOpts::sni("r.example.test").bound_to(busy))
            .await
            .unwrap(),
        tls_connect_with(addr, &ClientOpts::sni("r.example.test").bound_to(busy))
            .await
            .unwrap(),
    ];

    // The third from the same client: closed before any hello byte is read.
    let mark = proxy.log_mark();
    assert!(
        tls_connect_with(addr, &ClientOpts::sni("r.example.test").bound_to(busy))
            .await
            .is_err()
    );
    let line = proxy.wait_refusal_since(mark, "client_limited", STEP);
    assert!(line.contains("peer=127.0.0.2:"), "{line}");
    assert!(line.contains("max_connections"), "{line}");
    assert!(
        !line.contains("ja4="),
        "refused after reading the hello: {line}"
    );
    assert_eq!(client_limited(&proxy), 1);

    // Another client, and an exempt one past the limit, are routed all the while.
    for _ in 0..3 {
        let other = tls_connect_with(
            addr,
            &ClientOpts::sni("r.example.test").bound_to(ip("127.0.0.3")),
        )
        .await;
        assert_eq!(other.unwrap().backend, "b");
    }
    let mut exempt = Vec::new();
    for _ in 0..4 {
        exempt.push(
            tls_connect_with(
                addr,
                &ClientOpts::sni("r.example.test").bound_to(ip("127.0.0.4")),
            )
            .await
            .unwrap(),
        );
    }

    assert_eq!(client_limited(&proxy), 1, "only the one over its limit");

    // A closed connection gives its slot back (once the proxy has seen the close: retries
    // before that are refused, and counted, as they should be).
    drop(held);
    eventually(STEP, "a slot freed", || async {
        tls_connect_with(addr, &ClientOpts::sni("r.example.test").bound_to(busy))
            .await
            .ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_is_limited_after_its_burst() {
    let backend = TlsBackend::start("b");
    let proxy = Sniroute::start(
        Cfg::new()
            .set(
                "client_limits",
                "{max_connections: 100, connection_rate: 1/m, burst: 3}",
            )
            .route("r", &["r.example.test"], &[backend.addr()])
            .yaml(),
    );
    let addr = proxy.proxy_addr();
    let fast = ip("127.0.0.5");
    for i in 0..3 {
        let conn = tls_connect_with(addr, &ClientOpts::sni("r.example.test").bound_to(fast)).await;
        assert!(
            conn.is_ok(),
            "connection {i} of the burst: {:?}",
            conn.err()
        );
    }
    // Past the burst, a connection is closed as soon as it is handed over, on its first byte
    // (TCP_DEFER_ACCEPT: the listener hands over only connections that have sent something).
    let mark = proxy.log_mark();
    let mut raw = raw_connect_from(fast, addr).await;
    let _ = raw.write_all(b"x").await;
    let line = proxy.wait_refusal_since(mark, "client_limited", STEP);
    assert!(line.contains("connection_rate"), "{line}");
    assert!(read_until_closed(&mut raw, STEP).await.end.closed());
    // A client of its own is not held to another's rate.
    assert!(tls_connect_with(
        addr,
        &ClientOpts::sni("r.example.test").bound_to(ip("127.0.0.6"))
    )
    .await
    .is_ok());
}

/// A v2 PROXY header `src -> dst` (a trusted load balancer naming the client).
fn v2_header(src: std::net::SocketAddr, dst: std::net::SocketAddr) -> Vec<u8> {
    use ppp::v2;
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (src, dst),
    )
    .build()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_mapped_networks_hold_ipv4_clients_in_every_key() {
    let m = TlsBackend::start("m");
    let doc = RawBackend::start();
    let yaml = Cfg::new()
        .set("accept_proxy_protocol", "optional")
        .set("trusted_proxies", "[\"::ffff:127.0.0.1/128\"]")
        .set(
            "client_limits",
            "{max_connections: 100, connection_rate: 1/m, burst: 10, \
             exempt: [\"::ffff:127.0.0.6/128\"]}",
        )
        .route("m", &["m.example.test"], &[m.addr()])
        .route_key("allowed_cidrs", "[\"::ffff:127.0.0.0/104\"]")
        .route("doc", &["doc.example.test"], &[doc.addr()])
        .route_key("allowed_cidrs", "[\"::ffff:192.0.2.0/120\"]")
        .yaml();
    let (_dir, path) = config_file(&yaml);
    let run = run_binary(&["check".as_ref(), "--config".as_ref(), path.as_os_str()]);
    assert_eq!(run.exited.and_then(|s| s.code()), Some(0), "{run:?}");

    let proxy = Sniroute::start(&yaml);
    let addr = proxy.proxy_addr();

    // allowed_cidrs: an IPv4 client of 127.0.0.0/8 is admitted.
    let conn = tls_connect_with(
        addr,
        &ClientOpts::sni("m.example.test").bound_to(ip("127.0.0.1")),
    )
    .await;
    assert_eq!(conn.map(|c| c.backend).ok(), Some("m".to_owned()));

    // client_limits.exempt: 127.0.0.6 goes past the burst of 10.
    for i in 0..12 {
        let conn = tls_connect_with(
            addr,
            &ClientOpts::sni("m.example.test").bound_to(ip("127.0.0.6")),
        )
        .await;
        assert!(conn.is_ok(), "exempt connection {i}: {:?}", conn.err());
    }
    assert_eq!(client_limited(&proxy), 0);

    // trusted_proxies: 127.0.0.1's header is believed, its client judged by allowed_cidrs;
    // a client named as an IPv4-mapped IPv6 address is the IPv4 client it is.
    let doc_hello = with_sni(&fixture("openssl-3.0.bin"), b"doc.example.test");
    let mapped_listen = std::net::SocketAddr::new(
        match addr.ip() {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => v6,
        },
        addr.port(),
    );
    for (i, header) in [
        v2_header("192.0.2.10:4000".parse().unwrap(), addr),
        v2_header("[::ffff:192.0.2.11]:4000".parse().unwrap(), mapped_listen),
    ]
    .into_iter()
    .enumerate()
    {
        let mut tcp = raw_connect_from(ip("127.0.0.1"), addr).await;
        tcp.write_all(&[header, doc_hello.clone()].concat())
            .await
            .unwrap();
        tcp.shutdown().await.unwrap();
        let got = doc.wait_received(i, usize::MAX, STEP);
        assert!(got.ends_with(&doc_hello), "header {i}: not routed to doc");
    }
    assert_eq!(doc.accepted(), 2);

    // Read as the IPv4 networks they map, and shown so.
    let debug = proxy.listener_addr("debug");
    let (status, body) = http_get(debug, "/explain?sni=m.example.test&client=127.0.0.1").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("allowed_cidrs entry 127.0.0.0/8"), "{body}");
}
