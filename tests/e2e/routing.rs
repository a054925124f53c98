//! End to end: names reach the right backend, ClientHellos arrive untouched however they are
//! split, backends are tried in turn, half-close passes through.

use std::time::Duration;

use crate::common::*;
use tokio::io::AsyncWriteExt;

/// Routes for the name-matching tests: an exact name, a wildcard, a longer wildcard, and an
/// exact name under the longer wildcard.
struct Names {
    exact: TlsBackend,
    wild: TlsBackend,
    wild_a: TlsBackend,
    exact_a: TlsBackend,
    proxy: Sniroute,
}

fn names() -> Names {
    let exact = TlsBackend::start("exact");
    let wild = TlsBackend::start("wild");
    let wild_a = TlsBackend::start("wild-a");
    let exact_a = TlsBackend::start("exact-a");
    let proxy = Sniroute::start(
        Cfg::new()
            .route("exact", &["api.example.test"], &[exact.addr()])
            .route("wild", &["*.example.test"], &[wild.addr()])
            .route("wild-a", &["*.a.example.test"], &[wild_a.addr()])
            .route("exact-a", &["api.a.example.test"], &[exact_a.addr()])
            .yaml(),
    );
    Names {
        exact,
        wild,
        wild_a,
        exact_a,
        proxy,
    }
}

/// A raw backend (it records what it receives) behind the proxy's `one_route`.
fn raw_behind_proxy() -> (RawBackend, Sniroute) {
    let raw = RawBackend::start();
    let proxy = Sniroute::start(one_route(raw.addr()).yaml());
    (raw, proxy)
}

#[tokio::test]
async fn exact_name_reaches_its_backend() {
    let n = names();
    let mut conn = assert_routes(n.proxy.proxy_addr(), "api.example.test", "exact").await;
    assert_eq!(conn.sni, "api.example.test");
    conn.echo(b"exact hello").await;
    assert_eq!(n.exact.handshakes(), 1);
    assert_eq!(n.wild.accepted(), 0);
}

#[tokio::test]
async fn wildcard_matches_any_depth_and_longest_suffix_wins() {
    let n = names();
    let addr = n.proxy.proxy_addr();
    let conn = assert_routes(addr, "www.example.test", "wild").await;
    assert_eq!(conn.sni, "www.example.test");
    let conn = assert_routes(addr, "deep.er.example.test", "wild").await;
    assert_eq!(conn.sni, "deep.er.example.test");
    let conn = assert_routes(addr, "x.a.example.test", "wild-a").await;
    assert_eq!(conn.sni, "x.a.example.test");
    assert_eq!(n.wild.handshakes(), 2);
    assert_eq!(n.wild_a.handshakes(), 1);
}

#[tokio::test]
async fn exact_name_beats_wildcard() {
    let n = names();
    let addr = n.proxy.proxy_addr();
    assert_routes(addr, "api.a.example.test", "exact-a").await;
    assert_routes(addr, "api.example.test", "exact").await;
    assert_eq!(n.exact_a.handshakes(), 1);
    assert_eq!(n.wild_a.accepted(), 0);
    assert_eq!(n.wild.accepted(), 0);
}

#[tokio::test]
async fn uppercase_and_trailing_dot_names_match() {
    let n = names();
    // rustls sends the name as given minus the trailing dot; the backend reports it lowercased.
    let conn = assert_routes(n.proxy.proxy_addr(), "API.Example.TEST.", "exact").await;
    assert_eq!(conn.sni, "api.example.test");
    let conn = assert_routes(n.proxy.proxy_addr(), "X.A.Example.Test", "wild-a").await;
    assert_eq!(conn.sni, "x.a.example.test");
}

#[tokio::test]
async fn uppercase_trailing_dot_sni_bytes_route_and_arrive_untouched() {
    let raw = RawBackend::start();
    let other = RawBackend::start();
    let proxy = Sniroute::start(
        Cfg::new()
            .route("api", &["api.example.test"], &[raw.addr()])
            .route("other", &["*.other.test"], &[other.addr()])
            .yaml(),
    );
    // Exactly as a client would put it on the wire: uppercase and a trailing dot.
    let hello = with_sni(&fixture("openssl-3.0.bin"), b"API.EXAMPLE.TEST.");
    let mut tcp = raw_connect(proxy.proxy_addr()).await;
    tcp.write_all(&hello).await.unwrap();
    let got = raw.wait_received(0, hello.len(), STEP);
    assert_eq!(got, hello, "the hello must arrive byte for byte");
    assert_eq!(other.accepted(), 0);
}

#[tokio::test]
async fn two_routes_two_backends() {
    let b1 = TlsBackend::start("b1");
    let b2 = TlsBackend::start("b2");
    let proxy = Sniroute::start(
        Cfg::new()
            .route("one", &["api.a.example.test"], &[b1.addr()])
            .route("two", &["api.b.example.test"], &[b2.addr()])
            .yaml(),
    );
    let addr = proxy.proxy_addr();
    for _ in 0..2 {
        let mut c1 = assert_routes(addr, "api.a.example.test", "b1").await;
        let mut c2 = assert_routes(addr, "api.b.example.test", "b2").await;
        c1.echo(b"to one").await;
        c2.echo(b"to two").await;
    }
    assert_eq!((b1.handshakes(), b2.handshakes()), (2, 2));
    assert_eq!(
        b1.snis(),
        vec![Some("api.a.example.test".to_owned()); 2],
        "b1 saw other names"
    );
}

#[tokio::test]
async fn every_listener_routes() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback");
        return;
    }
    let b1 = TlsBackend::start("b1");
    let proxy = Sniroute::start_expecting(
        Cfg::new()
            .listen(&["127.0.0.1:0", "[::1]:0"])
            .route("api", &["api.example.test"], &[b1.addr()])
            .yaml(),
        2,
    );
    assert_eq!(proxy.proxy_addrs().len(), 2);
    for &addr in proxy.proxy_addrs() {
        assert_routes(addr, "api.example.test", "b1")
            .await
            .echo(b"x")
            .await;
    }
}

#[tokio::test]
async fn hello_written_one_byte_at_a_time_arrives_byte_exact() {
    let (raw, proxy) = raw_behind_proxy();
    let hello = fixture("openssl-3.0.bin");
    let mut tcp = raw_connect(proxy.proxy_addr()).await;
    for byte in &hello {
        tcp.write_all(std::slice::from_ref(byte)).await.unwrap();
        // Let each byte leave as its own segment so the proxy sees many partial reads.
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let got = raw.wait_received(0, hello.len(), STEP);
    assert_eq!(got, hello);
    // Bytes after the hello follow it unchanged.
    tcp.write_all(b"after the hello").await.unwrap();
    let mut expected = hello.clone();
    expected.extend_from_slice(b"after the hello");
    assert_eq!(raw.wait_received(0, expected.len(), STEP), expected);
}

#[tokio::test]
async fn hello_over_several_records_completes_a_handshake() {
    let b1 = TlsBackend::start("b1");
    let proxy = Sniroute::start(one_route(b1.addr()).yaml());
    let opts = ClientOpts {
        max_fragment_size: Some(64),
        ..ClientOpts::sni("api.example.test")
    };
    let mut conn = tls_connect_with(proxy.proxy_addr(), &opts)
        .await
        .expect("handshake with a fragmented hello");
    assert_eq!(
        (conn.backend.as_str(), conn.sni.as_str()),
        ("b1", "api.example.test")
    );
    conn.echo(&[0x5a; 3000]).await;
}

#[tokio::test]
async fn every_captured_hello_routes_byte_exact() {
    let (raw, proxy) = raw_behind_proxy();
    for (i, name) in FIXTURES_WITH_SNI.iter().enumerate() {
        let hello = fixture(name);
        let mut tcp = raw_connect(proxy.proxy_addr()).await;
        tcp.write_all(&hello).await.unwrap();
        let got = raw.wait_received(i, hello.len(), STEP);
        assert_eq!(got, hello, "{name} did not arrive byte for byte");
    }
}

#[tokio::test]
async fn four_record_hello_arrives_byte_exact() {
    let (raw, proxy) = raw_behind_proxy();
    let hello = fixture("openssl-3.0-4-records.bin");
    let mut tcp = raw_connect(proxy.proxy_addr()).await;
    // Record by record, each its own write.
    let mut at = 0;
    while at < hello.len() {
        let len = u16::from_be_bytes([hello[at + 3], hello[at + 4]]) as usize;
        tcp.write_all(&hello[at..at + 5 + len]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        at += 5 + len;
    }
    assert_eq!(raw.wait_received(0, hello.len(), STEP), hello);
}

#[tokio::test]
async fn openssl_s_client_with_small_fragments() {
    if !have_openssl() {
        eprintln!("skipped: no openssl on PATH");
        return;
    }
    let b1 = TlsBackend::start("b1");
    let proxy = Sniroute::start(one_route(b1.addr()).yaml());
    // An uppercase name as openssl sends it (verbatim), over 4 records of at most 512 bytes.
    let lines = openssl_s_client(proxy.proxy_addr(), "API.example.test", 512, 60)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        lines,
        ["backend=b1 sni=api.example.test", "ping from openssl"]
    );
    assert_eq!(b1.handshakes(), 1);
}

#[tokio::test]
async fn unreachable_backend_falls_through_to_the_next_every_time() {
    let good = TlsBackend::start("good");
    let proxy = Sniroute::start(
        Cfg::new()
            .route("api", &["api.example.test"], &[closed_port(), good.addr()])
            .yaml(),
    );
    for i in 0..6 {
        let mut conn = tls_connect(proxy.proxy_addr(), "api.example.test")
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(conn.backend, "good", "connection {i}");
        conn.echo(b"still here").await;
    }
    assert_eq!(good.handshakes(), 6);
}

#[tokio::test]
async fn round_robin_spreads_connections() {
    let b1 = TlsBackend::start("b1");
    let b2 = TlsBackend::start("b2");
    let proxy = Sniroute::start(
        Cfg::new()
            .route("api", &["api.example.test"], &[b1.addr(), b2.addr()])
            .yaml(),
    );
    let mut seen = Vec::new();
    for _ in 0..6 {
        let conn = tls_connect(proxy.proxy_addr(), "api.example.test")
            .await
            .unwrap();
        seen.push(conn.backend);
    }
    assert_eq!(
        (b1.handshakes(), b2.handshakes()),
        (3, 3),
        "sequential connections should alternate: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] != w[1]),
        "not alternating: {seen:?}"
    );
}

#[tokio::test]
async fn half_close_passes_through_raw() {
    let raw = RawBackend::start_with(RawBackendOpts {
        trailer: Some(b"TRAILER".to_vec()),
        ..Default::default()
    });
    let proxy = Sniroute::start(one_route(raw.addr()).yaml());
    let hello = fixture("openssl-3.0.bin");
    let mut tcp = raw_connect(proxy.proxy_addr()).await;
    tcp.write_all(&hello).await.unwrap();
    tcp.write_all(b"payload").await.unwrap();
    tcp.shutdown().await.unwrap();
    // The backend only answers after it sees EOF: the client's FIN must get through.
    let out = read_until_closed(&mut tcp, STEP).await;
    let mut expected = hello.clone();
    expected.extend_from_slice(b"payload");
    assert!(raw.eof_seen(0), "backend never saw the client's EOF");
    expected.extend_from_slice(b"TRAILER");
    assert_eq!(out.end, End::Eof, "read ended with {:?}", out.end);
    assert_eq!(out.bytes.len(), expected.len());
    assert_eq!(out.bytes, expected);
}

#[tokio::test]
async fn half_close_passes_through_tls() {
    let b1 = TlsBackend::start_with(
        "b1",
        TlsBackendOpts {
            trailer: Some(b"bye after your EOF".to_vec()),
            ..Default::default()
        },
    );
    let proxy = Sniroute::start(one_route(b1.addr()).yaml());
    let mut conn = tls_connect(proxy.proxy_addr(), "api.example.test")
        .await
        .unwrap();
    conn.stream.write_all(b"last words").await.unwrap();
    conn.stream.shutdown().await.unwrap();
    let out = read_until_closed(&mut conn.stream, STEP).await;
    assert_eq!(
        String::from_utf8_lossy(&out.bytes),
        "last wordsbye after your EOF"
    );
    assert!(out.end.closed());
}
