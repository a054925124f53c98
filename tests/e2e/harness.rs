//! Checks of the test harness itself, without the proxy: if these fail, the end-to-end results
//! mean nothing.

use std::io::{Read, Write};

use crate::common::*;
use rustls::AlertDescription;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn tls_backend_identifies_itself_and_echoes() {
    let backend = TlsBackend::start("b1");
    let mut conn = tls_connect(backend.addr(), "api.example.test")
        .await
        .expect("direct connect");
    assert_eq!(conn.backend, "b1");
    assert_eq!(conn.sni, "api.example.test");
    conn.echo(b"hello").await;
    assert_eq!(backend.accepted(), 1);
    assert_eq!(backend.handshakes(), 1);
    assert_eq!(backend.snis(), vec![Some("api.example.test".to_owned())]);
}

#[tokio::test]
async fn small_fragments_still_handshake() {
    let backend = TlsBackend::start("frag");
    let opts = ClientOpts {
        max_fragment_size: Some(64),
        ..ClientOpts::sni("x.a.example.test")
    };
    let mut conn = tls_connect_with(backend.addr(), &opts)
        .await
        .expect("connect");
    assert_eq!(conn.sni, "x.a.example.test");
    conn.echo(&[7u8; 1000]).await;
}

#[tokio::test]
async fn a_client_hello_with_max_fragment_64_spans_several_records() {
    let raw = RawBackend::start();
    let opts = ClientOpts {
        max_fragment_size: Some(64),
        ..ClientOpts::sni("api.example.test")
    };
    let addr = raw.addr();
    let client = tokio::spawn(async move { tls_connect_with(addr, &opts).await.err() });
    let got = tokio::task::spawn_blocking(move || {
        let bytes = raw.wait_received(0, 200, STEP);
        drop(raw);
        bytes
    })
    .await
    .unwrap();
    let _ = client.await;
    // Count records from the start: every one is a handshake record of at most 64 - 5 bytes.
    let mut at = 0;
    let mut records = 0;
    while at + 5 <= got.len() {
        assert_eq!(got[at], 0x16, "record {records} is not a handshake record");
        let len = u16::from_be_bytes([got[at + 3], got[at + 4]]) as usize;
        assert!(len <= 64, "record {records} is {len} bytes");
        at += 5 + len;
        records += 1;
    }
    assert!(records >= 3, "only {records} records");
}

#[tokio::test]
async fn tls_backend_half_close_trailer() {
    let backend = TlsBackend::start_with(
        "hc",
        TlsBackendOpts {
            trailer: Some(b"TRAILER".to_vec()),
            ..Default::default()
        },
    );
    let mut conn = tls_connect(backend.addr(), "api.example.test")
        .await
        .unwrap();
    conn.stream.write_all(b"abc").await.unwrap();
    conn.stream.shutdown().await.unwrap();
    let out = read_until_closed(&mut conn.stream, STEP).await;
    assert_eq!(out.bytes, b"abcTRAILER");
    assert!(out.end.closed());
}

#[tokio::test]
async fn raw_backend_records_and_echoes_on_eof() {
    let raw = RawBackend::start_with(RawBackendOpts {
        trailer: Some(b"!".to_vec()),
        ..Default::default()
    });
    let mut tcp = raw_connect(raw.addr()).await;
    tcp.write_all(b"one two").await.unwrap();
    tcp.shutdown().await.unwrap();
    let out = read_until_closed(&mut tcp, STEP).await;
    assert_eq!(out.bytes, b"one two!");
    assert_eq!(out.end, End::Eof);
    assert_eq!(raw.received(0), b"one two");
    assert!(raw.eof_seen(0));
    assert_eq!(raw.accepted(), 1);
}

#[tokio::test]
async fn alert_from_server_is_recognised() {
    // A fake server that answers any hello with the unrecognized_name alert and closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = tcp.read(&mut buf).await;
        tcp.write_all(&UNRECOGNIZED_NAME_ALERT).await.unwrap();
    });
    let err = tls_connect(addr, "api.example.test")
        .await
        .err()
        .expect("must fail");
    assert_eq!(
        received_alert(&err),
        Some(AlertDescription::UnrecognisedName),
        "{err:?}"
    );
}

#[test]
fn with_sni_is_identity_for_the_same_name_and_fixes_lengths() {
    let hello = fixture("openssl-3.0.bin");
    assert_eq!(with_sni(&hello, b"api.example.test"), hello);
    let longer = with_sni(&hello, b"API.EXAMPLE.TEST.");
    assert_eq!(longer.len(), hello.len() + 1);
    assert_eq!(
        u16::from_be_bytes([longer[3], longer[4]]) as usize + 5,
        longer.len()
    );
    assert!(longer.windows(17).any(|w| w == b"API.EXAMPLE.TEST."));
    // Patching back restores the original.
    assert_eq!(with_sni(&longer, b"api.example.test"), hello);
}

#[test]
fn fixtures_are_present() {
    for name in FIXTURES_WITH_SNI {
        let bytes = fixture(name);
        assert_eq!(bytes[0], 0x16, "{name}");
        assert!(
            bytes.windows(16).any(|w| w == b"api.example.test"),
            "{name} has no api.example.test"
        );
    }
    let none = fixture("openssl-noservername.bin");
    assert!(!none.windows(16).any(|w| w == b"api.example.test"));
}

#[test]
fn cfg_renders_yaml() {
    let y = Cfg::new()
        .set("client_hello_timeout", "500ms")
        .route(
            "r1",
            &["*.example.test", "api.example.test"],
            &["127.0.0.1:1".parse().unwrap()],
        )
        .route_raw(None, &["x.test"], &["127.0.0.1:2".into()])
        .yaml();
    assert_eq!(
        y,
        "listen: \"127.0.0.1:0\"\n\
         admin: \"127.0.0.1:0\"\n\
         debug: \"127.0.0.1:0\"\n\
         client_hello_timeout: 500ms\n\
         routes:\n\
         \x20 - name: \"r1\"\n\
         \x20   hostnames: [\"*.example.test\", \"api.example.test\"]\n\
         \x20   backends: [\"127.0.0.1:1\"]\n\
         \x20 - hostnames: [\"x.test\"]\n\
         \x20   backends: [\"127.0.0.1:2\"]\n"
    );
}

#[test]
fn listening_lines_parse() {
    let lines = vec![
        "2026-01-01T00:00:00Z  INFO sniroute: listening kind=proxy addr=127.0.0.1:4443".to_owned(),
        "2026-01-01T00:00:00Z  INFO sniroute: listening kind=admin addr=127.0.0.1:9000".to_owned(),
        "2026-01-01T00:00:00Z  INFO sniroute: listening kind=proxy addr=[::1]:4444".to_owned(),
    ];
    let (proxy, admin) = listening_addrs(&lines);
    assert_eq!(
        proxy,
        vec![
            "127.0.0.1:4443".parse().unwrap(),
            "[::1]:4444".parse().unwrap()
        ]
    );
    assert_eq!(admin, Some("127.0.0.1:9000".parse().unwrap()));
}

#[test]
fn http_get_reads_status_and_chunked_body() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).unwrap();
            req.extend_from_slice(&buf[..n]);
        }
        tcp.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n",
        )
        .unwrap();
        String::from_utf8(req).unwrap()
    });
    let (status, body) = http_get(addr, "/readyz").unwrap();
    assert_eq!(status, 503);
    assert_eq!(body, "not ready");
    assert!(server
        .join()
        .unwrap()
        .starts_with("GET /readyz HTTP/1.1\r\n"));
}

#[tokio::test]
async fn uppercase_trailing_dot_names_are_accepted_by_the_client() {
    let backend = TlsBackend::start("b1");
    let conn = tls_connect(backend.addr(), "API.Example.TEST.")
        .await
        .unwrap();
    assert_eq!(conn.sni, "api.example.test");
}

#[test]
fn openssl_s_client_helper_works_directly() {
    if !have_openssl() {
        eprintln!("skipped: no openssl on PATH");
        return;
    }
    let backend = TlsBackend::start("b1");
    let lines = openssl_s_client(backend.addr(), "API.example.test", 512, 60).unwrap();
    assert_eq!(
        lines,
        ["backend=b1 sni=api.example.test", "ping from openssl"]
    );
}
