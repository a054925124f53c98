//! End to end: the PROXY protocol. Routes send v1/v2 headers naming the real client to their
//! backends; listeners take headers only from `trusted_proxies`, whose source then stands for
//! the client in allow lists; malformed headers are refused promptly; the ClusterID listener
//! routes a header's TLV 0x20 to the hosted cluster's kube-apiserver without reading SNI.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::common::apiserver::hypershift::create_cluster;
use crate::common::apiserver::{wait_ready, ApiServer};
use crate::common::*;
use ppp::v2;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsConnector;

/// The source a trusted load balancer claims, and one outside the allow lists.
const CLAIMED: &str = "192.0.2.10:4000";
const OUTSIDER: &str = "198.51.100.1:4000";
/// The TLV type carrying the HostedCluster's `spec.clusterID`.
const CLUSTER_ID_TLV: u8 = 0x20;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A captured ClientHello for `sni` (the fixture's own name is `api.example.test`).
fn hello(sni: &str) -> Vec<u8> {
    with_sni(&fixture("openssl-3.0.bin"), sni.as_bytes())
}

/// A v2 PROXY header `src -> dst`, with a ClusterID TLV if given.
pub(crate) fn v2_header(src: SocketAddr, dst: SocketAddr, cluster_id: Option<&str>) -> Vec<u8> {
    let mut builder = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (src, dst),
    );
    if let Some(id) = cluster_id {
        builder = builder.write_tlv(CLUSTER_ID_TLV, id.as_bytes()).unwrap();
    }
    builder.build().unwrap()
}

/// The v1 PROXY line `src -> dst` (same family).
fn v1_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// Connects to `to`, sends `bytes` and half-closes: the proxy then forwards EOF after them, so
/// a backend's record ends exactly where the proxy's sending ended.
async fn send_from(from: IpAddr, to: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut tcp = raw_connect_from(from, to).await;
    tcp.write_all(bytes).await.unwrap();
    tcp.shutdown().await.unwrap();
    tcp
}

async fn send(to: SocketAddr, bytes: &[u8]) -> TcpStream {
    send_from(to.ip(), to, bytes).await
}

/// Everything connection `index` of `backend` got, up to the EOF the client's half-close caused.
fn received_all(backend: &RawBackend, index: usize) -> Vec<u8> {
    let got = backend.wait_received(index, usize::MAX, STEP);
    assert!(backend.eof_seen(index), "no EOF at connection {index}");
    got
}

/// Splits a v2 header off `bytes`: (source, destination, the rest).
fn split_v2(bytes: &[u8]) -> (SocketAddr, SocketAddr, &[u8]) {
    let header = v2::Header::try_from(bytes)
        .unwrap_or_else(|e| panic!("backend did not get a v2 header ({e:?}): {bytes:02x?}"));
    assert_eq!(header.command, v2::Command::Proxy);
    assert_eq!(header.protocol, v2::Protocol::Stream);
    let (src, dst) = match header.addresses {
        v2::Addresses::IPv4(a) => (
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        ),
        v2::Addresses::IPv6(a) => (
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        ),
        other => panic!("v2 header with addresses {other:?}"),
    };
    (src, dst, &bytes[header.len()..])
}

/// Asserts `backend` got a v2 header `src -> dst` and then exactly `payload`.
fn assert_v2_then(
    backend: &RawBackend,
    index: usize,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) {
    let got = received_all(backend, index);
    let (got_src, got_dst, rest) = split_v2(&got);
    assert_eq!((got_src, got_dst), (src, dst), "v2 header addresses");
    assert!(
        rest == payload,
        "after the v2 header: not the ClientHello byte for byte"
    );
    assert_eq!(got, [v2_header(src, dst, None), payload.to_vec()].concat());
}

/// Asserts the proxy closes `tcp` (without forwarding anything) and logs `reason`.
async fn assert_refused(proxy: &Sniroute, mark: usize, mut tcp: TcpStream, reason: &str) -> String {
    let out = read_until_closed(&mut tcp, STEP).await;
    assert!(
        out.end.closed(),
        "still open after {STEP:?}, expected refusal {reason}"
    );
    proxy.wait_refusal_since(mark, reason, STEP)
}

/// Sends `header` then doc.example.test's hello to `listen` and asserts `doc` got (as its
/// connection `index`) a v2 header naming [`CLAIMED`], then the hello.
async fn claimed_reaches_doc(doc: &RawBackend, index: usize, listen: SocketAddr, header: Vec<u8>) {
    let doc_hello = hello("doc.example.test");
    send(listen, &[header, doc_hello.clone()].concat()).await;
    assert_v2_then(doc, index, addr(CLAIMED), listen, &doc_hello);
}

/// Sends `bytes` to `to` and asserts the proxy refuses it for `reason`; the log line.
async fn refused(proxy: &Sniroute, to: SocketAddr, bytes: &[u8], reason: &str) -> String {
    let mark = proxy.log_mark();
    let tcp = send(to, bytes).await;
    assert_refused(proxy, mark, tcp, reason).await
}

// === Sending ===

#[tokio::test]
async fn routes_send_v2_and_v1_headers_naming_the_client_then_the_hello() {
    let (b2, b1) = (RawBackend::start(), RawBackend::start());
    let proxy = Sniroute::start(
        Cfg::new()
            .route("two", &["api.example.test"], &[b2.addr()])
            .route_key("proxy_protocol", "v2")
            .route("one", &["v1.example.test"], &[b1.addr()])
            .route_key("proxy_protocol", "v1")
            .yaml(),
    );
    let listen = proxy.proxy_addr();

    let hello2 = hello("api.example.test");
    let tcp = send(listen, &hello2).await;
    let client = tcp.local_addr().unwrap();
    assert_eq!(client.ip(), addr("127.0.0.1:0").ip());
    assert_v2_then(&b2, 0, client, listen, &hello2);

    let hello1 = hello("v1.example.test");
    let tcp = send(listen, &hello1).await;
    let client = tcp.local_addr().unwrap();
    let want = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
        client.port(),
        listen.port()
    );
    let got = received_all(&b1, 0);
    assert_eq!(
        String::from_utf8_lossy(&got[..want.len().min(got.len())]),
        want
    );
    assert!(
        got[want.len()..] == hello1[..],
        "v1: not the ClientHello after the header"
    );
    assert_eq!((b1.accepted(), b2.accepted()), (1, 1));
}

#[tokio::test]
async fn ipv6_clients_get_ipv6_headers() {
    let (b2, b1) = (RawBackend::start(), RawBackend::start());
    let proxy = Sniroute::start(
        Cfg::new()
            .listen(&["[::1]:0"])
            .route("two", &["api.example.test"], &[b2.addr()])
            .route_key("proxy_protocol", "v2")
            .route("one", &["v1.example.test"], &[b1.addr()])
            .route_key("proxy_protocol", "v1")
            .yaml(),
    );
    let listen = proxy.proxy_addr();
    assert!(listen.is_ipv6(), "{listen}");

    let hello2 = hello("api.example.test");
    let client = send(listen, &hello2).await.local_addr().unwrap();
    assert_eq!(client.ip(), addr("[::1]:0").ip());
    assert_v2_then(&b2, 0, client, listen, &hello2);

    let hello1 = hello("v1.example.test");
    let client = send(listen, &hello1).await.local_addr().unwrap();
    let want = [v1_header(client, listen), hello1].concat();
    assert!(want.starts_with(format!("PROXY TCP6 ::1 ::1 {} ", client.port()).as_bytes()));
    let got = received_all(&b1, 0);
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}

// === Accepting ===

/// A proxy taking `mode` headers from `trusted` in front of three raw backends: `open` (route
/// `api`, no allow list), `doc` (allowed from 192.0.2.0/24) and `lo` (from 127.0.0.0/8), each
/// route sending v2 headers. (open, doc, lo, the proxy.)
fn accepting(mode: &str, trusted: &str) -> (RawBackend, RawBackend, RawBackend, Sniroute) {
    let (open, doc, lo) = (
        RawBackend::start(),
        RawBackend::start(),
        RawBackend::start(),
    );
    let proxy = Sniroute::start(
        Cfg::new()
            .set("accept_proxy_protocol", mode)
            .set("trusted_proxies", &format!("[{}]", quote(trusted)))
            .route("api", &["api.example.test"], &[open.addr()])
            .route_key("proxy_protocol", "v2")
            .route("doc", &["doc.example.test"], &[doc.addr()])
            .route_key("allowed_cidrs", "[\"192.0.2.0/24\"]")
            .route_key("proxy_protocol", "v2")
            .route("lo", &["lo.example.test"], &[lo.addr()])
            .route_key("allowed_cidrs", "[\"127.0.0.0/8\"]")
            .route_key("proxy_protocol", "v2")
            .yaml(),
    );
    (open, doc, lo, proxy)
}

#[tokio::test]
async fn v2_from_a_trusted_peer_names_the_client_for_allow_lists_and_backends() {
    let (open, doc, lo, proxy) = accepting("v2", "127.0.0.1/32");
    let listen = proxy.proxy_addr();
    let claimed = addr(CLAIMED);

    // Routed, and the header's source (not the peer) goes on to the backend.
    let api = hello("api.example.test");
    send(
        listen,
        &[v2_header(claimed, listen, None), api.clone()].concat(),
    )
    .await;
    assert_v2_then(&open, 0, claimed, listen, &api);

    // The claimed source is what the allow list admits: the peer 127.0.0.1 is not in it.
    let doc_hello = hello("doc.example.test");
    let mut tcp = raw_connect(listen).await;
    // Header and hello in separate writes: the proxy must read past the header's end.
    tcp.write_all(&v2_header(claimed, listen, None))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    tcp.write_all(&doc_hello).await.unwrap();
    tcp.shutdown().await.unwrap();
    assert_v2_then(&doc, 0, claimed, listen, &doc_hello);

    // A claimed source outside the list is denied, and logged under that source...
    let mark = proxy.log_mark();
    let header = v2_header(addr(OUTSIDER), listen, None);
    let tcp = send(listen, &[header.clone(), doc_hello.clone()].concat()).await;
    let line = assert_refused(&proxy, mark, tcp, "denied").await;
    assert!(line.contains("198.51.100.1"), "{line}");
    // ...even where the peer itself would be admitted.
    let then_hello = [header, hello("lo.example.test")].concat();
    refused(&proxy, listen, &then_hello, "denied").await;

    // v2 is required: a bare ClientHello, even from the trusted peer, is not TLS here.
    refused(&proxy, listen, &api, "not_tls").await;
    // So is a v1 header.
    refused(
        &proxy,
        listen,
        &[v1_header(claimed, listen), api].concat(),
        "not_tls",
    )
    .await;

    assert_eq!((open.accepted(), doc.accepted(), lo.accepted()), (1, 1, 0));
}

#[tokio::test]
async fn v1_from_a_trusted_peer_names_the_client() {
    let (open, doc, lo, proxy) = accepting("v1", "127.0.0.1/32");
    let listen = proxy.proxy_addr();
    let claimed = addr(CLAIMED);

    let doc_hello = hello("doc.example.test");
    claimed_reaches_doc(&doc, 0, listen, v1_header(claimed, listen)).await;

    refused(
        &proxy,
        listen,
        &[v1_header(addr(OUTSIDER), listen), doc_hello.clone()].concat(),
        "denied",
    )
    .await;

    // A v2 header is not what this listener takes.
    refused(
        &proxy,
        listen,
        &[v2_header(claimed, listen, None), doc_hello].concat(),
        "not_tls",
    )
    .await;
    assert_eq!((open.accepted(), doc.accepted(), lo.accepted()), (0, 1, 0));
}

#[tokio::test]
async fn optional_takes_a_header_or_a_bare_hello_from_a_trusted_peer() {
    let (open, doc, lo, proxy) = accepting("optional", "127.0.0.1/32");
    let listen = proxy.proxy_addr();
    let claimed = addr(CLAIMED);

    let doc_hello = hello("doc.example.test");
    claimed_reaches_doc(&doc, 0, listen, v2_header(claimed, listen, None)).await;
    claimed_reaches_doc(&doc, 1, listen, v1_header(claimed, listen)).await;

    // Without a header the peer is the client.
    let api = hello("api.example.test");
    let client = send(listen, &api).await.local_addr().unwrap();
    assert_v2_then(&open, 0, client, listen, &api);
    refused(&proxy, listen, &doc_hello, "denied").await;
    assert_eq!((open.accepted(), doc.accepted(), lo.accepted()), (1, 2, 0));
}

#[tokio::test]
async fn headers_from_untrusted_peers_are_refused_and_allow_lists_use_the_peer() {
    let (open, doc, lo, proxy) = accepting("optional", "127.0.0.2/32");
    let listen = proxy.proxy_addr();
    let claimed = addr(CLAIMED);
    let untrusted: IpAddr = "127.0.0.1".parse().unwrap();
    let trusted: IpAddr = "127.0.0.2".parse().unwrap();

    // A header from 127.0.0.1 is refused outright, whatever it claims and wherever it goes.
    for sni in ["api.example.test", "doc.example.test", "lo.example.test"] {
        let mark = proxy.log_mark();
        let bytes = [v2_header(claimed, listen, None), hello(sni)].concat();
        let tcp = send_from(untrusted, listen, &bytes).await;
        let peer = tcp.local_addr().unwrap();
        let line = assert_refused(&proxy, mark, tcp, "denied").await;
        assert!(line.contains(&format!("peer={peer}")), "{sni}: {line}");
        assert!(line.contains("trusted_proxies"), "{sni}: {line}");
    }
    assert_eq!((open.accepted(), doc.accepted(), lo.accepted()), (0, 0, 0));

    // Without a header, allow lists see the peer: 127.0.0.1 is loopback, not 192.0.2.0/24.
    let lo_hello = hello("lo.example.test");
    let peer = send_from(untrusted, listen, &lo_hello)
        .await
        .local_addr()
        .unwrap();
    assert_v2_then(&lo, 0, peer, listen, &lo_hello);
    let mark = proxy.log_mark();
    let tcp = send_from(untrusted, listen, &hello("doc.example.test")).await;
    assert_refused(&proxy, mark, tcp, "denied").await;

    // The same header from the trusted 127.0.0.2 is taken.
    let doc_hello = hello("doc.example.test");
    let bytes = [v2_header(claimed, listen, None), doc_hello.clone()].concat();
    send_from(trusted, listen, &bytes).await;
    assert_v2_then(&doc, 0, claimed, listen, &doc_hello);
    assert_eq!((open.accepted(), doc.accepted(), lo.accepted()), (0, 1, 1));
}

// === Malformed headers ===

#[tokio::test]
async fn garbage_after_the_v2_signature_is_closed_at_once() {
    let open = RawBackend::start();
    let proxy = Sniroute::start(
        Cfg::new()
            .set("accept_proxy_protocol", "v2")
            .set("trusted_proxies", "[\"127.0.0.1/32\"]")
            .set("client_hello_timeout", "5s")
            .route("api", &["api.example.test"], &[open.addr()])
            .yaml(),
    );
    let listen = proxy.proxy_addr();
    let mut garbage = v2_header(addr(CLAIMED), listen, None)[..12].to_vec();
    garbage.extend_from_slice(&[0xff; 40]);
    let mut tcp = raw_connect(listen).await;
    let start = Instant::now();
    tcp.write_all(&garbage).await.unwrap();
    let out = read_until_closed(&mut tcp, STEP).await;
    let took = out.at - start;
    assert!(out.end.closed(), "still open after {STEP:?}");
    assert!(took < Duration::from_secs(1), "closed only after {took:?}");
    assert_eq!(out.bytes, b"");
    proxy.wait_refusal_since(0, "not_tls", STEP);
    assert_eq!(open.accepted(), 0);
}

// === The ClusterID listener ===

/// A TLS client without SNI that still verifies the backend's certificate for `localhost`,
/// after `prefix` on the same connection; returns the backend's identity line.
async fn tls_after(
    to: SocketAddr,
    prefix: &[u8],
) -> std::io::Result<(String, tokio_rustls::client::TlsStream<TcpStream>)> {
    let attempt = async {
        let mut tcp = raw_connect(to).await;
        tcp.write_all(prefix).await?;
        let mut config = (*pki().client_config(None)).clone();
        config.enable_sni = false;
        let connector = TlsConnector::from(Arc::new(config));
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        let mut line = Vec::new();
        while !line.ends_with(b"\n") && line.len() < 1024 {
            line.push(tls.read_u8().await?);
        }
        tls.write_all(b"ping\n").await?;
        tls.flush().await?;
        let mut echo = [0u8; 5];
        tls.read_exact(&mut echo).await?;
        assert_eq!(&echo, b"ping\n");
        Ok((String::from_utf8_lossy(&line).trim_end().to_owned(), tls))
    };
    timeout(STEP, attempt)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// A HostedCluster created on the real server, and a TLS backend on the ClusterIP the server
/// allocated its kube-apiserver Service (with the shared leaf: the clients here send no SNI and
/// check the name "localhost"). Returns the cluster's ID.
async fn cluster_and_its_kas(
    server: &ApiServer,
    namespace: &str,
    name: &str,
    index: usize,
) -> (String, TlsBackend) {
    let admin = server.admin().await;
    let cluster = create_cluster(&admin, namespace, name, index).await;
    let kas = TlsBackend::start_at(
        "kas",
        cluster.service("kube-apiserver"),
        TlsBackendOpts::default(),
    );
    (cluster.cluster_id, kas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_id_listener_routes_by_the_tlv_without_sni() {
    // A real kube-apiserver with the HostedCluster CRD: the cluster ID sniroute routes by is
    // the one the schema stores (tests/common/apiserver.rs).
    let Some(server) = ApiServer::shared().await else {
        return;
    };
    // Index 201: unique on the shared server (see create_cluster).
    let (cluster_id, kas) = cluster_and_its_kas(server, "pp", "ppid1", 201).await;
    let cfg = Cfg::new().set("cluster_id_listen", &quote("127.0.0.1:0"));
    let (proxy, _dir) = server.start_sniroute(&server.url(), cfg).await;
    let listen = proxy.listener_addr("cluster_id");
    wait_ready(&proxy).await;
    let peer = addr("10.0.0.7:50000");

    // The cluster's ID reaches its kube-apiserver, though the ClientHello names nothing.
    let header = v2_header(peer, listen, Some(&cluster_id));
    let (line, _conn) = eventually(STEP, "routed by cluster ID", || async {
        tls_after(listen, &header).await.ok()
    })
    .await;
    assert_eq!(line, "backend=kas sni=-");
    assert_eq!(kas.snis().last(), Some(&None), "the backend saw an SNI");
    let accepted = kas.accepted();

    // An unknown ID, a header without the TLV, and no header at all are refused.
    let hello_bytes = hello("api.example.test");
    let cases = [
        (
            v2_header(peer, listen, Some("ffffffff-0000-4000-8000-000000000000")),
            "unknown_sni",
        ),
        (v2_header(peer, listen, None), "unknown_sni"),
        (Vec::new(), "not_tls"),
    ];
    for (prefix, reason) in cases {
        let mark = proxy.log_mark();
        let mut tcp = raw_connect(listen).await;
        tcp.write_all(&[prefix, hello_bytes.clone()].concat())
            .await
            .unwrap();
        let out = read_until_closed(&mut tcp, STEP).await;
        assert!(out.end.closed(), "{reason}: still open after {STEP:?}");
        proxy.wait_refusal_since(mark, reason, STEP);
    }
    assert_eq!(
        kas.accepted(),
        accepted,
        "a refused connection reached the backend"
    );
}

/// A v2 header with `command` and `protocol` (the LOCAL / DGRAM cases), `src -> dst`.
fn v2_raw(
    command: v2::Command,
    protocol: v2::Protocol,
    src: SocketAddr,
    dst: SocketAddr,
) -> Vec<u8> {
    v2::Builder::with_addresses(v2::Version::Two | command, protocol, (src, dst))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_local_header_is_a_health_check_and_routes_by_the_peer_when_a_hello_follows() {
    let (_open, doc, lo, proxy) = accepting("v2", "127.0.0.1/32");
    let listen = proxy.listener_addr("proxy");
    let local = v2_raw(
        v2::Command::Local,
        v2::Protocol::Unspecified,
        addr(CLAIMED),
        listen,
    );

    // The load balancer's probe: a LOCAL header, then close. Counted, never logged.
    let mark = proxy.log_mark();
    let before = Scrape::of(&proxy).outcome("health_check");
    let mut tcp = send(listen, &local).await;
    assert!(read_until_closed(&mut tcp, STEP).await.end.closed());
    eventually(STEP, "health_check counted", || async {
        (Scrape::of(&proxy).outcome("health_check") == before + 1.0).then_some(())
    })
    .await;
    assert_eq!(
        Scrape::of(&proxy).outcome("not_tls"),
        0.0,
        "a probe is not an error"
    );
    assert!(
        proxy.logs_since(mark, &["connection refused"]).is_empty(),
        "a health check was logged as a refusal"
    );

    // LOCAL then a ClientHello: routed, by the connection's own addresses (the header names
    // no client), so the allow list sees the peer and the backend's header carries it.
    let lo_hello = hello("lo.example.test");
    let tcp = send(listen, &[local.clone(), lo_hello.clone()].concat()).await;
    let got = received_all(&lo, 0);
    let (src, dst, rest) = split_v2(&got);
    assert_eq!(
        src,
        tcp.local_addr().unwrap(),
        "the real peer, not the LOCAL header's"
    );
    assert_eq!(dst, listen);
    assert_eq!(rest, &lo_hello[..]);
    let then_hello = [local, hello("doc.example.test")].concat();
    refused(&proxy, listen, &then_hello, "denied").await;
    assert_eq!(doc.accepted(), 0);
}

#[tokio::test]
async fn a_dgram_header_is_refused_and_a_huge_one_named_as_a_proxy_header() {
    let (open, doc, lo) = (
        RawBackend::start(),
        RawBackend::start(),
        RawBackend::start(),
    );
    let proxy = Sniroute::start(
        Cfg::new()
            .set("accept_proxy_protocol", "v2")
            .set("trusted_proxies", "[\"127.0.0.1/32\"]")
            .set("max_client_hello", "4096")
            .route("doc", &["doc.example.test"], &[doc.addr()])
            .route_key("allowed_cidrs", "[\"192.0.2.0/24\"]")
            .yaml(),
    );
    drop((open, lo));
    let listen = proxy.listener_addr("proxy");
    let doc_hello = hello("doc.example.test");

    // UDP over IPv4 claiming an allowed source: a TCP proxy's header cannot say that.
    let mark = proxy.log_mark();
    let dgram = v2_raw(
        v2::Command::Proxy,
        v2::Protocol::Datagram,
        addr(CLAIMED),
        listen,
    );
    let tcp = send(listen, &[dgram, doc_hello.clone()].concat()).await;
    let line = assert_refused(&proxy, mark, tcp, "not_tls").await;
    assert!(line.contains("DGRAM"), "{line}");
    assert_eq!(doc.accepted(), 0, "a DGRAM header's source was believed");

    // A header whose TLVs outgrow max_client_hello is refused as what it is.
    let mark = proxy.log_mark();
    let big = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (addr(CLAIMED), listen),
    )
    .write_tlv(0xe0, &[b'x'; 8000])
    .unwrap()
    .build()
    .unwrap();
    let tcp = send(listen, &big).await;
    let line = assert_refused(&proxy, mark, tcp, "not_tls").await;
    assert!(
        line.contains("PROXY header larger than max_client_hello"),
        "{line}"
    );
}

/// Sends `header` and a ClientHello to `listen` and returns the refusal line for `reason`.
async fn refusal(proxy: &Sniroute, listen: SocketAddr, header: Vec<u8>, reason: &str) -> String {
    let mark = proxy.log_mark();
    let mut tcp = raw_connect(listen).await;
    tcp.write_all(&[header, hello("api.example.test")].concat())
        .await
        .unwrap();
    assert!(read_until_closed(&mut tcp, STEP).await.end.closed());
    proxy.wait_refusal_since(mark, reason, STEP)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_id_listener_believes_addresses_from_trusted_proxies_only() {
    let Some(server) = ApiServer::shared().await else {
        return;
    };
    let (cluster_id, kas) = cluster_and_its_kas(server, "pt", "ptid1", 202).await;
    let start = |trusted: &'static str| async {
        let cfg = Cfg::new()
            .set("cluster_id_listen", &quote("127.0.0.1:0"))
            .set("trusted_proxies", trusted);
        let (proxy, dir) = server.start_sniroute(&server.url(), cfg).await;
        let listen = proxy.listener_addr("cluster_id");
        wait_ready(&proxy).await;
        (proxy, listen, dir)
    };
    let claimed = addr("10.0.0.7:50000");
    let unknown = "ffffffff-0000-4000-8000-000000000000";
    // No trusted proxy: the TLV still routes, but the claimed source is only a log field.
    let (proxy, listen, _dir) = start("[]").await;
    let routed = v2_header(claimed, listen, Some(&cluster_id));
    let (line, _conn) = eventually(STEP, "routed by cluster ID", || async {
        tls_after(listen, &routed).await.ok()
    })
    .await;
    assert_eq!(line, "backend=kas sni=-");
    let line = refusal(
        &proxy,
        listen,
        v2_header(claimed, listen, Some(unknown)),
        "unknown_sni",
    )
    .await;
    assert!(
        line.contains("peer=127.0.0.1:"),
        "logged under the claim: {line}"
    );
    assert!(line.contains("claimed=10.0.0.7:50000"), "{line}");
    let mut not_utf8 = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (claimed, listen),
    );
    not_utf8 = not_utf8
        .write_tlv(CLUSTER_ID_TLV, &[0xff, 0xfe, 0xfd])
        .unwrap();
    let line = refusal(&proxy, listen, not_utf8.build().unwrap(), "unknown_sni").await;
    assert!(line.contains("ClusterID TLV is not UTF-8"), "{line}");
    drop(proxy);

    // Trusted: the header's source is the client.
    let (proxy, listen, _dir) = start("[\"127.0.0.1/32\"]").await;
    let line = refusal(
        &proxy,
        listen,
        v2_header(claimed, listen, Some(unknown)),
        "unknown_sni",
    )
    .await;
    assert!(line.contains("peer=10.0.0.7:50000"), "{line}");
    assert!(!line.contains("claimed="), "{line}");
    assert_eq!(
        kas.accepted(),
        1,
        "only the routed connection reached the backend"
    );
}

// === What a client sends, in the logs ===

/// The refusal lines after `mark`, whatever the log format.
fn refusal_lines(proxy: &Sniroute, mark: usize) -> Vec<String> {
    proxy.logs_since(mark, &["connection refused"])
}

#[tokio::test]
async fn a_cluster_id_tlv_cannot_forge_a_log_line_or_make_a_long_one() {
    let forged = "x\nFAKE level=ERROR connection routed evil=1\r\n";
    let hidden = "\u{1b}[2J\u{7}\0admin\u{202e}txt.exe";
    let long = "a".repeat(15_000);
    for format in ["text", "json"] {
        let raw = RawBackend::start();
        let proxy = Sniroute::start(
            one_route(raw.addr())
                .set("cluster_id_listen", &quote("127.0.0.1:0"))
                .set("log_format", format)
                .yaml(),
        );
        let listen = proxy.listener_addr("cluster_id");
        let peer = addr(CLAIMED);
        for (id, what) in [(forged, "forged"), (hidden, "hidden"), (&long, "long")] {
            let mark = proxy.log_mark();
            let mut tcp = raw_connect(listen).await;
            let header = v2_header(peer, listen, Some(id));
            tcp.write_all(&[header, hello("api.example.test")].concat())
                .await
                .unwrap();
            assert!(read_until_closed(&mut tcp, STEP).await.end.closed());
            let line = eventually(STEP, "the refusal logged", || async {
                refusal_lines(&proxy, mark).pop()
            })
            .await;
            let since = proxy.logs_since(mark, &[]);
            // One line for the refusal, and the client's text inside it, never a line of its own.
            assert_eq!(
                refusal_lines(&proxy, mark).len(),
                1,
                "{format} {what}: {since:#?}"
            );
            for other in since.iter().filter(|l| !l.contains("connection refused")) {
                assert!(
                    !other.contains("FAKE")
                        && !other.contains("txt.exe")
                        && !other.contains("aaaa"),
                    "{format} {what}: a line of the client's own: {other:?}"
                );
            }
            for c in ['\u{1b}', '\u{7}', '\0', '\u{202e}', '\r'] {
                assert!(!line.contains(c), "{format} {what}: {c:?} raw in {line:?}");
            }
            match what {
                "forged" => assert!(line.contains("FAKE level=ERROR"), "{format}: {line}"),
                "hidden" => assert!(line.contains("202e"), "{format}: {line}"),
                _ => {
                    assert!(line.contains("…(15000 bytes)"), "{format}: {line}");
                    assert!(line.len() < 1024, "{format}: a {}-byte line", line.len());
                }
            }
        }
    }
}

// === Load-balancer health checks and client_limits ===

#[tokio::test]
async fn health_checks_are_neither_limited_nor_logged() {
    let lo = RawBackend::start();
    let proxy = Sniroute::start(
        Cfg::new()
            .set("accept_proxy_protocol", "optional")
            .set("trusted_proxies", "[\"127.0.0.1/32\"]")
            .set(
                "client_limits",
                "{max_connections: 100, connection_rate: 1/m, burst: 5}",
            )
            .route("lo", &["lo.example.test"], &[lo.addr()])
            .yaml(),
    );
    let listen = proxy.proxy_addr();
    let local = v2_raw(
        v2::Command::Local,
        v2::Protocol::Unspecified,
        addr(CLAIMED),
        listen,
    );
    let unspec = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Unspecified,
        v2::Addresses::Unspecified,
    )
    .build()
    .unwrap();
    let unknown = b"PROXY UNKNOWN\r\n".to_vec();

    // Eight probes of each kind, well past the load balancer's burst of 5.
    let mark = proxy.log_mark();
    for probe in [&local, &unspec, &unknown] {
        for _ in 0..8 {
            let mut tcp = send(listen, probe).await;
            assert!(read_until_closed(&mut tcp, STEP).await.end.closed());
        }
    }
    eventually(STEP, "24 health checks counted", || async {
        (Scrape::of(&proxy).outcome("health_check") == 24.0).then_some(())
    })
    .await;
    let scrape = Scrape::of(&proxy);
    assert_eq!(scrape.outcome("client_limited"), 0.0, "a probe was limited");
    assert_eq!(scrape.outcome("not_tls"), 0.0, "a probe was an error");
    assert!(
        proxy.logs_since(mark, &["connection refused"]).is_empty(),
        "a health check was logged: {:#?}",
        proxy.logs_since(mark, &["connection refused"])
    );

    // The load balancer's own traffic (a header naming no client, then a ClientHello) still
    // has its limit: its burst is whole after the probes, and then spent.
    let lo_hello = hello("lo.example.test");
    for i in 0..5 {
        send(listen, &[local.clone(), lo_hello.clone()].concat()).await;
        received_all(&lo, i);
    }
    let line = refused(
        &proxy,
        listen,
        &[local, lo_hello].concat(),
        "client_limited",
    )
    .await;
    assert!(
        line.contains("ja4="),
        "limited after its hello was read: {line}"
    );
    assert_eq!(lo.accepted(), 5);
}

// === CRC32C ===

/// `header` with a CRC32C TLV (type 0x03) holding its checksum, xor-ed with `flip`.
fn with_crc32c(builder: v2::Builder, flip: u32) -> Vec<u8> {
    const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let mut bytes = builder.write_tlv(0x03, &[0; 4]).unwrap().build().unwrap();
    let at = bytes.len() - 4;
    let sum = CRC32C.checksum(&bytes) ^ flip;
    bytes[at..].copy_from_slice(&sum.to_be_bytes());
    bytes
}

#[tokio::test]
async fn a_v2_header_with_a_wrong_crc32c_is_refused_and_a_right_one_routes() {
    let (_open, doc, _lo, proxy) = accepting("v2", "127.0.0.1/32");
    let listen = proxy.proxy_addr();
    let claimed = addr(CLAIMED);
    let builder = || {
        v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (claimed, listen),
        )
    };
    let doc_hello = hello("doc.example.test");

    let mark = proxy.log_mark();
    let wrong = with_crc32c(builder(), 1);
    let tcp = send(listen, &[wrong, doc_hello.clone()].concat()).await;
    let line = assert_refused(&proxy, mark, tcp, "not_tls").await;
    assert!(line.contains("CRC32C checksum does not match"), "{line}");
    assert_eq!(
        doc.accepted(),
        0,
        "a header with a wrong checksum was believed"
    );

    let right = with_crc32c(builder(), 0);
    send(listen, &[right, doc_hello.clone()].concat()).await;
    assert_v2_then(&doc, 0, claimed, listen, &doc_hello);
}

// === The destination sent on ===

#[tokio::test]
async fn the_header_sent_on_carries_the_trusted_headers_destination() {
    // HAProxy 2.6 with `accept-proxy` on the bind and `send-proxy` / `send-proxy-v2` on the
    // server sends on the incoming header's source and destination alike.
    let (b2, b1) = (RawBackend::start(), RawBackend::start());
    let proxy = Sniroute::start(
        Cfg::new()
            .set("accept_proxy_protocol", "optional")
            .set("trusted_proxies", "[\"127.0.0.1/32\"]")
            .route("two", &["api.example.test"], &[b2.addr()])
            .route_key("proxy_protocol", "v2")
            .route("one", &["v1.example.test"], &[b1.addr()])
            .route_key("proxy_protocol", "v1")
            .yaml(),
    );
    let listen = proxy.proxy_addr();
    let (client, frontend) = (addr(CLAIMED), addr("198.51.100.20:18443"));

    // IPv4, and IPv6 whatever the listener's own family.
    let api = hello("api.example.test");
    let ipv6 = (addr("[2001:db8::7]:4000"), addr("[2001:db8::1]:443"));
    for (i, (src, dst)) in [(client, frontend), ipv6].into_iter().enumerate() {
        send(listen, &[v2_header(src, dst, None), api.clone()].concat()).await;
        assert_v2_then(&b2, i, src, dst, &api);
    }
    let one = [v1_header(client, frontend), hello("v1.example.test")].concat();
    send(listen, &one).await;
    assert_eq!(
        String::from_utf8_lossy(&received_all(&b1, 0)),
        String::from_utf8_lossy(&one)
    );

    // No header: the client connected to our listener, as before.
    let direct = send(listen, &api).await.local_addr().unwrap();
    assert_v2_then(&b2, 2, direct, listen, &api);
}
