//! Harness for the end-to-end tests: runs the real `sniroute` binary on port 0 against test
//! backends on loopback, with real TLS clients and captured ClientHellos.
//!
//! Pieces:
//! - [`pki`]: one test CA and a leaf it signed for every name the tests use (rcgen).
//! - [`TlsBackend`]: a rustls server that answers `backend=<id> sni=<sni>\n`, echoes until EOF,
//!   then writes an optional trailer and closes.
//! - [`RawBackend`]: a plain TCP server that records the bytes it receives (byte-exact checks)
//!   and, on EOF, sends them back followed by an optional trailer.
//! - [`tls_connect`] / [`ClientOpts`]: a rustls client trusting the test CA.
//! - [`Sniroute`]: the binary as a child process; parses its `listening` log lines, keeps every
//!   log line, rewrites its config file, talks to its admin port, kills it on drop.
//!
//! Every wait here is bounded; nothing sleeps for a fixed time in place of checking.
#![allow(dead_code)]

pub mod apiserver;
pub mod fake_kube;
pub mod hellos;
pub mod procfs;
pub mod prometheus;

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{AlertDescription, ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{timeout, Instant};
use tokio_rustls::{client, TlsAcceptor, TlsConnector};

/// Bound for any single network step in a test (connect, handshake, a read that must succeed).
pub const STEP: Duration = Duration::from_secs(5);
/// How long the binary gets to print its `listening` lines and become ready.
pub const STARTUP: Duration = Duration::from_secs(10);
/// How often polling loops look again.
pub const POLL: Duration = Duration::from_millis(10);

/// The TLS alert record a refusal must send: fatal (2) unrecognized_name (112).
pub const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Names the backends' leaf certificate is valid for. A wildcard SAN covers one label only,
/// so deeper names the tests connect to are listed one by one.
const LEAF_NAMES: &[&str] = &[
    "example.test",
    "*.example.test",
    "*.a.example.test",
    "*.b.example.test",
    "deep.er.example.test",
    "*.other.test",
    "localhost",
];

// === PKI ===

/// The test CA and one leaf signed by it, made once per test binary.
pub struct Pki {
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    leaf_chain: Vec<CertificateDer<'static>>,
    leaf_key: Vec<u8>,
}

/// The shared test PKI.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(Pki::generate)
}

impl Pki {
    fn generate() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sniroute test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let ca = params.self_signed(&key).expect("CA certificate");
        let issuer = Issuer::new(params, key);
        let mut pki = Self {
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            issuer,
            leaf_chain: Vec::new(),
            leaf_key: Vec::new(),
        };
        let (chain, key) = pki.leaf(LEAF_NAMES);
        pki.leaf_chain = chain;
        pki.leaf_key = key;
        pki
    }

    /// A new leaf for `names`, signed by the test CA: (chain, PKCS#8 key DER).
    pub fn leaf(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, Vec<u8>) {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "sniroute test backend");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        (vec![cert.der().clone()], key.serialize_der())
    }

    /// The CA certificate in PEM (for `openssl s_client -CAfile`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server config presenting the shared leaf.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config_for(self.leaf_chain.clone(), self.leaf_key.clone())
    }

    fn server_config_for(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: Vec<u8>,
    ) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server cert");
        Arc::new(config)
    }

    /// A client config trusting only the test CA.
    pub fn client_config(&self, max_fragment_size: Option<usize>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("CA into root store");
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.max_fragment_size = max_fragment_size;
        Arc::new(config)
    }
}

/// rustls is built with `ring` only: name the provider instead of relying on a process default.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === Backends ===

/// Runs `serve` on its own thread and current-thread runtime, so backends keep working while a
/// test blocks (e.g. polling the proxy's logs) and die with the value that owns them.
struct BackendThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl BackendThread {
    fn spawn<F, Fut>(name: &str, listener: std::net::TcpListener, serve: F) -> Self
    where
        F: FnOnce(TcpListener) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("backend runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("backend listener");
                    tokio::select! {
                        _ = stopped => {}
                        _ = serve(listener) => {}
                    }
                });
                // Dropping the runtime drops every connection task: their sockets close.
            })
            .expect("backend thread");
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for BackendThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bind_loopback() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// Options for [`TlsBackend::start_with`].
#[derive(Clone, Default)]
pub struct TlsBackendOpts {
    /// Written after the client's EOF, before closing.
    pub trailer: Option<Vec<u8>>,
    /// Names for a leaf of its own instead of the shared one.
    pub names: Option<Vec<String>>,
}

#[derive(Default)]
struct TlsStats {
    accepted: AtomicUsize,
    handshakes: AtomicUsize,
    active: AtomicUsize,
    snis: Mutex<Vec<Option<String>>>,
}

/// A TLS echo server on 127.0.0.1:0 that says who it is and which SNI it saw.
pub struct TlsBackend {
    id: String,
    addr: SocketAddr,
    stats: Arc<TlsStats>,
    _thread: BackendThread,
}

impl TlsBackend {
    /// A backend identified as `id`, presenting the shared leaf.
    pub fn start(id: &str) -> Self {
        Self::start_with(id, TlsBackendOpts::default())
    }

    /// A backend with options.
    pub fn start_with(id: &str, opts: TlsBackendOpts) -> Self {
        let config = match &opts.names {
            Some(names) => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let (chain, key) = pki().leaf(&names);
                pki().server_config_for(chain, key)
            }
            None => pki().server_config(),
        };
        let acceptor = TlsAcceptor::from(config);
        let (listener, addr) = bind_loopback();
        let stats = Arc::new(TlsStats::default());
        let id_owned = id.to_owned();
        let stats2 = stats.clone();
        let thread = BackendThread::spawn(id, listener, move |listener| async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                stats2.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_tls(
                    tcp,
                    acceptor.clone(),
                    id_owned.clone(),
                    opts.trailer.clone(),
                    stats2.clone(),
                ));
            }
        });
        Self {
            id: id.to_owned(),
            addr,
            stats,
            _thread: thread,
        }
    }

    /// The backend's id, as it appears in its identity line.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.stats.handshakes.load(Ordering::SeqCst)
    }

    /// Connections (accepted, not yet ended) right now.
    pub fn active(&self) -> usize {
        self.stats.active.load(Ordering::SeqCst)
    }

    /// The SNI of every completed handshake, in order (lowercased by rustls).
    pub fn snis(&self) -> Vec<Option<String>> {
        self.stats.snis.lock().unwrap().clone()
    }
}

/// Decrements a gauge when the connection task ends, whichever way.
struct Active(Arc<TlsStats>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_tls(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    id: String,
    trailer: Option<Vec<u8>>,
    stats: Arc<TlsStats>,
) {
    stats.active.fetch_add(1, Ordering::SeqCst);
    let _active = Active(stats.clone());
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        return;
    };
    stats.handshakes.fetch_add(1, Ordering::SeqCst);
    let sni = tls.get_ref().1.server_name().map(str::to_owned);
    stats.snis.lock().unwrap().push(sni.clone());
    let line = format!("backend={id} sni={}\n", sni.as_deref().unwrap_or("-"));
    if tls.write_all(line.as_bytes()).await.is_err() || tls.flush().await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if tls.write_all(&buf[..n]).await.is_err() || tls.flush().await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    if let Some(trailer) = trailer {
        if tls.write_all(&trailer).await.is_err() {
            return;
        }
    }
    let _ = tls.shutdown().await;
}

/// Options for [`RawBackend::start_with`].
#[derive(Clone, Default)]
pub struct RawBackendOpts {
    /// Sent as soon as a connection is accepted.
    pub greeting: Option<Vec<u8>>,
    /// Written after the echo of everything received, once the client's EOF arrived.
    pub trailer: Option<Vec<u8>>,
}

#[derive(Default)]
struct RawConn {
    received: Vec<u8>,
    eof: bool,
}

/// A plain TCP backend on 127.0.0.1:0 that records every byte it receives, per connection.
/// On EOF it writes everything it received back, then the trailer, then closes.
pub struct RawBackend {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<RawConn>>>,
    _thread: BackendThread,
}

impl RawBackend {
    /// A raw backend without greeting or trailer.
    pub fn start() -> Self {
        Self::start_with(RawBackendOpts::default())
    }

    /// A raw backend with options.
    pub fn start_with(opts: RawBackendOpts) -> Self {
        let (listener, _) = bind_loopback();
        Self::serve_on(listener, opts)
    }

    /// A raw backend on a given loopback address (e.g. one a route already names).
    pub fn start_at(addr: SocketAddr, opts: RawBackendOpts) -> Self {
        let listener = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("raw backend: bind {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        Self::serve_on(listener, opts)
    }

    fn serve_on(listener: std::net::TcpListener, opts: RawBackendOpts) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let conns: Arc<Mutex<Vec<RawConn>>> = Arc::default();
        let conns2 = conns.clone();
        let thread = BackendThread::spawn("raw", listener, move |listener| async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let index = {
                    let mut conns = conns2.lock().unwrap();
                    conns.push(RawConn::default());
                    conns.len() - 1
                };
                tokio::spawn(serve_raw(tcp, index, opts.clone(), conns2.clone()));
            }
        });
        Self {
            addr,
            conns,
            _thread: thread,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// What connection `index` (in accept order) received so far.
    pub fn received(&self, index: usize) -> Vec<u8> {
        self.conns.lock().unwrap()[index].received.clone()
    }

    /// Whether connection `index` has seen EOF from its peer.
    pub fn eof_seen(&self, index: usize) -> bool {
        self.conns.lock().unwrap()[index].eof
    }

    /// Waits (bounded by `within`) until connection `index` exists and has received at least
    /// `len` bytes or hit EOF; returns what it received. Panics on timeout.
    pub fn wait_received(&self, index: usize, len: usize, within: Duration) -> Vec<u8> {
        let deadline = Instant::now() + within;
        loop {
            {
                let conns = self.conns.lock().unwrap();
                if let Some(conn) = conns.get(index) {
                    if conn.received.len() >= len || conn.eof {
                        return conn.received.clone();
                    }
                }
            }
            if Instant::now() >= deadline {
                let conns = self.conns.lock().unwrap();
                panic!(
                    "raw backend: connection {index} did not receive {len} bytes within {within:?} \
                     (connections: {}, received: {:?})",
                    conns.len(),
                    conns.get(index).map(|c| c.received.len())
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

async fn serve_raw(
    mut tcp: TcpStream,
    index: usize,
    opts: RawBackendOpts,
    conns: Arc<Mutex<Vec<RawConn>>>,
) {
    if let Some(greeting) = &opts.greeting {
        if tcp.write_all(greeting).await.is_err() {
            return;
        }
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => conns.lock().unwrap()[index]
                .received
                .extend_from_slice(&buf[..n]),
            Err(_) => return,
        }
    }
    let received = {
        let mut conns = conns.lock().unwrap();
        conns[index].eof = true;
        conns[index].received.clone()
    };
    let _ = tcp.write_all(&received).await;
    if let Some(trailer) = &opts.trailer {
        let _ = tcp.write_all(trailer).await;
    }
    let _ = tcp.shutdown().await;
}

/// An address on loopback where nothing listens (bound, then released).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

// === TLS client ===

/// How [`tls_connect_with`] connects.
#[derive(Clone, Debug)]
pub struct ClientOpts {
    /// The name sent as SNI (and verified against the backend's certificate).
    pub sni: String,
    /// rustls `max_fragment_size`: small values split the ClientHello over several records.
    pub max_fragment_size: Option<usize>,
}

impl ClientOpts {
    /// Default options for `sni`.
    pub fn sni(sni: &str) -> Self {
        Self {
            sni: sni.to_owned(),
            max_fragment_size: None,
        }
    }
}

/// A TLS client connection through the proxy to a [`TlsBackend`], after its identity line.
pub struct TlsConn {
    /// The stream, positioned after the identity line.
    pub stream: client::TlsStream<TcpStream>,
    /// The backend's id from its identity line.
    pub backend: String,
    /// The SNI the backend saw (`-` for none).
    pub sni: String,
}

impl TlsConn {
    /// Writes `data` and reads the same bytes back (bounded); panics otherwise.
    pub async fn echo(&mut self, data: &[u8]) {
        self.stream.write_all(data).await.expect("echo write");
        self.stream.flush().await.expect("echo flush");
        let mut back = vec![0u8; data.len()];
        timeout(STEP, self.stream.read_exact(&mut back))
            .await
            .expect("echo read timed out")
            .expect("echo read");
        assert_eq!(back, data, "echo through backend {}", self.backend);
    }
}

/// Connects with default options for `sni`.
pub async fn tls_connect(addr: SocketAddr, sni: &str) -> io::Result<TlsConn> {
    tls_connect_with(addr, &ClientOpts::sni(sni)).await
}

/// Connects, completes the handshake and reads the backend's identity line, all under [`STEP`].
pub async fn tls_connect_with(addr: SocketAddr, opts: &ClientOpts) -> io::Result<TlsConn> {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let connector = TlsConnector::from(pki().client_config(opts.max_fragment_size));
        let name = ServerName::try_from(opts.sni.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut stream = connector.connect(name, tcp).await?;
        let line = read_line(&mut stream).await?;
        let (backend, sni) = parse_identity(&line).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an identity line: {line:?}"),
            )
        })?;
        Ok(TlsConn {
            stream,
            backend,
            sni,
        })
    };
    timeout(STEP, attempt)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "tls_connect")))
}

/// Reads one `\n`-terminated line byte by byte (so nothing after it is consumed).
async fn read_line<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> io::Result<String> {
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            return String::from_utf8(line)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        }
        line.push(byte);
        if line.len() > 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
    }
}

/// `backend=<id> sni=<sni>` into (id, sni).
pub fn parse_identity(line: &str) -> Option<(String, String)> {
    let mut backend = None;
    let mut sni = None;
    for field in line.split_whitespace() {
        if let Some(v) = field.strip_prefix("backend=") {
            backend = Some(v.to_owned());
        } else if let Some(v) = field.strip_prefix("sni=") {
            sni = Some(v.to_owned());
        }
    }
    Some((backend?, sni?))
}

/// The alert a rustls client received, if that is what `err` is.
pub fn received_alert(err: &io::Error) -> Option<AlertDescription> {
    match err.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// Connects through the proxy and asserts the connection reaches `backend` with `sni` seen.
pub async fn assert_routes(addr: SocketAddr, sni: &str, backend: &str) -> TlsConn {
    let conn = tls_connect(addr, sni)
        .await
        .unwrap_or_else(|e| panic!("{sni}: expected to reach backend {backend}, got error {e}"));
    assert_eq!(conn.backend, backend, "{sni} reached the wrong backend");
    conn
}

// === Raw client ===

/// How a raw read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Orderly EOF.
    Eof,
    /// The peer reset the connection (counts as closed).
    Reset,
    /// Still open when the time ran out.
    TimedOut,
}

impl End {
    /// Closed by the peer, one way or the other.
    pub fn closed(self) -> bool {
        self != End::TimedOut
    }
}

/// Everything read until the peer closed or `within` ran out.
#[derive(Debug)]
pub struct ReadOutcome {
    /// The bytes read.
    pub bytes: Vec<u8>,
    /// How it ended.
    pub end: End,
    /// When it ended.
    pub at: Instant,
}

/// Reads until EOF, reset or `within` (then [`End::TimedOut`]).
pub async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> ReadOutcome {
    let deadline = Instant::now() + within;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => {
                return ReadOutcome {
                    bytes,
                    end: End::TimedOut,
                    at: Instant::now(),
                }
            }
            Ok(Ok(0)) => {
                return ReadOutcome {
                    bytes,
                    end: End::Eof,
                    at: Instant::now(),
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => {
                return ReadOutcome {
                    bytes,
                    end: End::Reset,
                    at: Instant::now(),
                }
            }
        }
    }
}

/// A TCP connection to `addr` with TCP_NODELAY, bounded by [`STEP`].
pub async fn raw_connect(addr: SocketAddr) -> TcpStream {
    let tcp = timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp
}

// === Fixtures ===

/// A captured ClientHello from `tests/fixtures/clienthellos/` (SNI `api.example.test` unless
/// the name says otherwise).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clienthellos")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Every captured hello whose SNI is `api.example.test`.
pub const FIXTURES_WITH_SNI: &[&str] = &[
    "openssl-3.0.bin",
    "openssl-3.0-4-records.bin",
    "curl-7.88.bin",
    "python-3.11.bin",
    "node-20.bin",
    "kubectl-go.bin",
    "gnutls.bin",
    "java-17.bin",
    "chromium-156-pq.bin",
];

/// Rewrites the server_name of a single-record ClientHello to `name` (any bytes), fixing every
/// enclosing length. Panics on anything else: this is for well-formed fixtures only.
pub fn with_sni(hello: &[u8], name: &[u8]) -> Vec<u8> {
    assert_eq!(hello[0], 0x16, "not a handshake record");
    let record_len = u16::from_be_bytes([hello[3], hello[4]]) as usize;
    assert_eq!(record_len + 5, hello.len(), "single-record hellos only");
    assert_eq!(hello[5], 0x01, "not a ClientHello");
    let body = &hello[9..];
    // version (2) + random (32), then session id, cipher suites, compression methods.
    let mut at = 34;
    at += 1 + body[at] as usize;
    at += 2 + u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    at += 1 + body[at] as usize;
    let ext_total = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    let prefix = &body[..at];
    let exts = &body[at + 2..at + 2 + ext_total];
    assert_eq!(
        at + 2 + ext_total,
        body.len(),
        "trailing bytes after extensions"
    );

    let mut new_exts = Vec::new();
    let mut i = 0;
    let mut replaced = false;
    while i < exts.len() {
        let ty = u16::from_be_bytes([exts[i], exts[i + 1]]);
        let len = u16::from_be_bytes([exts[i + 2], exts[i + 3]]) as usize;
        if ty == 0 {
            let mut data = Vec::new();
            data.extend_from_slice(&((3 + name.len()) as u16).to_be_bytes());
            data.push(0); // host_name
            data.extend_from_slice(&(name.len() as u16).to_be_bytes());
            data.extend_from_slice(name);
            new_exts.extend_from_slice(&0u16.to_be_bytes());
            new_exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
            new_exts.extend_from_slice(&data);
            replaced = true;
        } else {
            new_exts.extend_from_slice(&exts[i..i + 4 + len]);
        }
        i += 4 + len;
    }
    assert!(replaced, "hello has no server_name extension");

    let mut hs_body = prefix.to_vec();
    hs_body.extend_from_slice(&(new_exts.len() as u16).to_be_bytes());
    hs_body.extend_from_slice(&new_exts);
    let mut out = vec![0x16, hello[1], hello[2]];
    out.extend_from_slice(&((hs_body.len() + 4) as u16).to_be_bytes());
    out.push(0x01);
    out.extend_from_slice(&(hs_body.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&hs_body);
    out
}

// === Config ===

/// Builds a config YAML: `listen` and `admin` on 127.0.0.1:0 unless set otherwise.
#[derive(Clone)]
pub struct Cfg {
    listen: Vec<String>,
    settings: Vec<(String, String)>,
    routes: Vec<String>,
}

impl Default for Cfg {
    fn default() -> Self {
        Self::new()
    }
}

impl Cfg {
    /// One proxy listener, the admin and the debug listener, all on 127.0.0.1:0.
    pub fn new() -> Self {
        Self {
            listen: vec!["127.0.0.1:0".into()],
            settings: vec![
                ("admin".into(), quote("127.0.0.1:0")),
                ("debug".into(), quote("127.0.0.1:0")),
            ],
            routes: Vec::new(),
        }
    }

    /// `listen:` as this list.
    pub fn listen(mut self, addrs: &[&str]) -> Self {
        self.listen = addrs.iter().map(|a| a.to_string()).collect();
        self
    }

    /// A top-level `key: value` (value written as is).
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.settings.retain(|(k, _)| k != key);
        self.settings.push((key.into(), value.into()));
        self
    }

    /// A route with a name.
    pub fn route(self, name: &str, hostnames: &[&str], backends: &[SocketAddr]) -> Self {
        let backends: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
        self.route_raw(Some(name), hostnames, &backends)
    }

    /// A route with any (possibly invalid) hostnames and backends, the name optional.
    pub fn route_raw(
        mut self,
        name: Option<&str>,
        hostnames: &[&str],
        backends: &[String],
    ) -> Self {
        let mut r = String::new();
        let mut lead = "  - ";
        if let Some(name) = name {
            let _ = writeln!(r, "{lead}name: {}", quote(name));
            lead = "    ";
        }
        let _ = writeln!(r, "{lead}hostnames: {}", list(hostnames.iter().copied()));
        let _ = writeln!(
            r,
            "    backends: {}",
            list(backends.iter().map(String::as_str))
        );
        self.routes.push(r);
        self
    }

    /// A `key: value` (value written as is) on the route added last, e.g.
    /// `.route_key("max_connections", "1")`.
    pub fn route_key(mut self, key: &str, value: &str) -> Self {
        let route = self
            .routes
            .last_mut()
            .expect("route_key needs a route first");
        let _ = writeln!(route, "    {key}: {value}");
        self
    }

    /// The YAML text.
    pub fn yaml(&self) -> String {
        let mut y = String::new();
        if self.listen.len() == 1 {
            let _ = writeln!(y, "listen: {}", quote(&self.listen[0]));
        } else {
            let _ = writeln!(
                y,
                "listen: {}",
                list(self.listen.iter().map(String::as_str))
            );
        }
        for (k, v) in &self.settings {
            let _ = writeln!(y, "{k}: {v}");
        }
        y.push_str("routes:\n");
        for r in &self.routes {
            y.push_str(r);
        }
        y
    }
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.map(quote).collect();
    format!("[{}]", items.join(", "))
}

// === The binary ===

/// The `sniroute` binary under test: this package's build, or `SNIROUTE_BIN` if set (to run
/// the suite against a release build or an installed binary).
pub fn binary() -> PathBuf {
    std::env::var_os("SNIROUTE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sniroute")))
}

#[derive(Default)]
struct LogBuf {
    lines: Mutex<Vec<String>>,
    done: std::sync::atomic::AtomicBool,
}

/// How the config file sits on disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Layout {
    /// `conf/sniroute.yaml`, a regular file.
    Plain,
    /// Kubernetes ConfigMap volume style: `conf/sniroute.yaml -> ..data/sniroute.yaml`,
    /// `..data -> ..<version>/`; updates swap the `..data` link atomically.
    ConfigMap,
}

/// A running `sniroute --config FILE`, killed on drop.
pub struct Sniroute {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    layout: Layout,
    version: usize,
    logs: Arc<LogBuf>,
    proxy: Vec<SocketAddr>,
    admin: SocketAddr,
    reader: Option<JoinHandle<()>>,
}

const CONFIG_NAME: &str = "sniroute.yaml";

/// How [`Sniroute::start_opts`] runs the binary.
#[derive(Clone, Debug)]
pub struct StartOpts {
    /// Proxy listeners expected in the `listening` log lines.
    pub listeners: usize,
    /// Extra environment for the child, applied after the harness's `RUST_LOG=info` and
    /// `NO_COLOR=1` (so `("RUST_LOG", "debug")` overrides the level).
    pub env: Vec<(String, String)>,
    /// Run the binary through this command line: `wrapper[0] wrapper[1..] BINARY --config
    /// FILE`. The wrapper must `exec` it, so the child's pid stays the proxy's (e.g.
    /// `sh -c 'ulimit -n 64 && exec "$0" "$@"'`).
    pub wrapper: Vec<String>,
}

impl Default for StartOpts {
    fn default() -> Self {
        Self {
            listeners: 1,
            env: Vec::new(),
            wrapper: Vec::new(),
        }
    }
}

impl Sniroute {
    /// Starts with a plain config file and waits until it is listening and ready.
    pub fn start(yaml: impl AsRef<str>) -> Self {
        Self::start_layout(yaml.as_ref(), Layout::Plain, &StartOpts::default())
    }

    /// Starts with `listeners` proxy listeners expected in the logs.
    pub fn start_expecting(yaml: impl AsRef<str>, listeners: usize) -> Self {
        let opts = StartOpts {
            listeners,
            ..StartOpts::default()
        };
        Self::start_layout(yaml.as_ref(), Layout::Plain, &opts)
    }

    /// Starts with a ConfigMap-style symlinked config.
    pub fn start_configmap(yaml: impl AsRef<str>) -> Self {
        Self::start_layout(yaml.as_ref(), Layout::ConfigMap, &StartOpts::default())
    }

    /// Starts with a plain config file, extra environment and/or a wrapper command.
    pub fn start_opts(yaml: impl AsRef<str>, opts: &StartOpts) -> Self {
        Self::start_layout(yaml.as_ref(), Layout::Plain, opts)
    }

    fn start_layout(yaml: &str, layout: Layout, opts: &StartOpts) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("conf");
        std::fs::create_dir(&conf).unwrap();
        std::fs::create_dir(dir.path().join("staging")).unwrap();
        let config = conf.join(CONFIG_NAME);
        match layout {
            Layout::Plain => std::fs::write(&config, yaml).unwrap(),
            Layout::ConfigMap => {
                let version = conf.join("..v0");
                std::fs::create_dir(&version).unwrap();
                std::fs::write(version.join(CONFIG_NAME), yaml).unwrap();
                std::os::unix::fs::symlink("..v0", conf.join("..data")).unwrap();
                std::os::unix::fs::symlink(format!("..data/{CONFIG_NAME}"), &config).unwrap();
            }
        }
        let mut command = match opts.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary());
                command
            }
            None => Command::new(binary()),
        };
        let mut child = command
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sniroute");
        let logs = Arc::new(LogBuf::default());
        let reader = spawn_log_reader(child.stderr.take().unwrap(), logs.clone());
        let mut me = Self {
            child,
            dir,
            config,
            layout,
            version: 0,
            logs,
            proxy: Vec::new(),
            admin: "0.0.0.0:0".parse().unwrap(),
            reader: Some(reader),
        };
        me.wait_listening(opts.listeners);
        me
    }

    fn wait_listening(&mut self, listeners: usize) {
        let deadline = Instant::now() + STARTUP;
        loop {
            let (proxy, admin) = listening_addrs(&self.logs());
            if let (true, Some(admin)) = (proxy.len() >= listeners, admin) {
                self.proxy = proxy;
                self.admin = admin;
                break;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_reader();
                panic!(
                    "sniroute exited with {status} before listening; logs:\n{}",
                    self.logs().join("\n")
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "sniroute did not print {listeners} proxy and one admin `listening` line \
                     within {STARTUP:?}; logs:\n{}",
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
        // Listening lines come right after bind; readiness also needs the table.
        let deadline = Instant::now() + STARTUP;
        loop {
            if matches!(self.get("/readyz"), Ok((200, _))) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "/readyz not 200 within {STARTUP:?}: {:?}; logs:\n{}",
                    self.get("/readyz"),
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn join_reader(&mut self) {
        // The child has exited, so stderr reaches EOF soon; don't wait forever regardless.
        let deadline = Instant::now() + STEP;
        while !self.logs.done.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
    }

    /// The first proxy listener.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy[0]
    }

    /// Every proxy listener, in log order.
    pub fn proxy_addrs(&self) -> &[SocketAddr] {
        &self.proxy
    }

    /// The admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The address of the `listening kind=<kind>` line (e.g. `cluster_id`), waiting (bounded
    /// by [`STARTUP`]) for it to be logged.
    pub fn listener_addr(&self, kind: &str) -> SocketAddr {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(addr) = listening_addr_of(&self.logs(), kind) {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no `listening kind={kind}` line within {STARTUP:?}; logs:\n{}",
                self.logs().join("\n")
            );
            std::thread::sleep(POLL);
        }
    }

    /// The config file path passed with `--config`.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lines.lock().unwrap().clone()
    }

    /// How many lines have been logged so far (a mark for [`Self::wait_log_since`]).
    pub fn log_mark(&self) -> usize {
        self.logs.lines.lock().unwrap().len()
    }

    /// Lines after `mark` containing every one of `parts`.
    pub fn logs_since(&self, mark: usize, parts: &[&str]) -> Vec<String> {
        let lines = self.logs.lines.lock().unwrap();
        lines
            .iter()
            .skip(mark)
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .cloned()
            .collect()
    }

    /// Waits (bounded) for a line after `mark` containing every one of `parts`.
    pub fn wait_log_since(&self, mark: usize, parts: &[&str], within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.logs_since(mark, parts).into_iter().next() {
                return line;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no log line containing {parts:?} within {within:?}; logs since mark:\n{}",
                    self.logs()[mark.min(self.log_mark())..].join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits (bounded) for a line after `mark` logging a refused connection with `reason`
    /// (`reason=x` or `reason="x"`, as tracing prints a string field) and a `peer=`.
    pub fn wait_refusal_since(&self, mark: usize, reason: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let bare = format!("reason={reason}");
        let quoted = format!("reason=\"{reason}\"");
        loop {
            let found = self
                .logs_since(mark, &["connection refused", "peer="])
                .into_iter()
                .find(|l| l.split_whitespace().any(|f| f == bare || f == quoted));
            if let Some(line) = found {
                return line;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no `connection refused` line with peer= and {bare} within {within:?}; \
                     logs since mark:\n{}",
                    self.logs()[mark.min(self.log_mark())..].join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits (bounded) for any log line containing every one of `parts`.
    pub fn wait_log(&self, parts: &[&str], within: Duration) -> String {
        self.wait_log_since(0, parts, within)
    }

    /// Rewrites the config file in place (truncate and write, as an editor might).
    pub fn write_config(&mut self, yaml: impl AsRef<str>) {
        assert_eq!(
            self.layout,
            Layout::Plain,
            "write_config needs a plain layout"
        );
        std::fs::write(&self.config, yaml.as_ref()).expect("write config");
    }

    /// Replaces the config atomically: written in a sibling directory, renamed over the file.
    /// (The staging file lives outside the watched directory so the watcher sees one event.)
    pub fn rename_config(&mut self, yaml: impl AsRef<str>) {
        assert_eq!(
            self.layout,
            Layout::Plain,
            "rename_config needs a plain layout"
        );
        self.version += 1;
        let staged = self
            .dir
            .path()
            .join("staging")
            .join(format!("{CONFIG_NAME}.{}", self.version));
        std::fs::write(&staged, yaml.as_ref()).expect("stage config");
        std::fs::rename(&staged, &self.config).expect("rename config over");
    }

    /// Swaps a ConfigMap-style config the way the kubelet does: new version directory, new
    /// `..data_tmp` link, renamed over `..data`, old version removed.
    pub fn swap_configmap(&mut self, yaml: impl AsRef<str>) {
        assert_eq!(self.layout, Layout::ConfigMap, "needs start_configmap");
        let conf = self.dir.path().join("conf");
        let old = format!("..v{}", self.version);
        self.version += 1;
        let new = format!("..v{}", self.version);
        std::fs::create_dir(conf.join(&new)).unwrap();
        std::fs::write(conf.join(&new).join(CONFIG_NAME), yaml.as_ref()).unwrap();
        std::os::unix::fs::symlink(&new, conf.join("..data_tmp")).unwrap();
        std::fs::rename(conf.join("..data_tmp"), conf.join("..data")).unwrap();
        std::fs::remove_dir_all(conf.join(old)).unwrap();
    }

    /// `GET path` on the admin listener.
    pub fn get(&self, path: &str) -> io::Result<(u16, String)> {
        http_get(self.admin, path)
    }

    /// `GET /routes` on the debug listener, as JSON (panics unless 200 and JSON).
    pub fn routes(&self) -> serde_json::Value {
        let (status, body) = http_get(self.listener_addr("debug"), "/routes").expect("GET /routes");
        assert_eq!(status, 200, "/routes status; body {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/routes not JSON ({e}): {body}"))
    }

    /// The table generation from `/routes`.
    pub fn generation(&self) -> u64 {
        let routes = self.routes();
        routes["generation"]
            .as_u64()
            .unwrap_or_else(|| panic!("/routes has no numeric generation: {routes}"))
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (a name `kill -s` takes: `TERM`, `INT`, `HUP`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -s {signal} {}: {status}",
            self.child.id()
        );
    }

    /// Waits (bounded by `within`) for the process to exit; then every log line it wrote is
    /// in [`Self::logs`]. `None` if it is still running at the deadline (it is not killed).
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.join_reader();
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Sniroute {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn spawn_log_reader(stderr: std::process::ChildStderr, logs: Arc<LogBuf>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let reader = BufReader::new(stderr);
        for line in reader.split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).into_owned();
            // Shown by the test runner for failing tests only (output capture is inherited).
            eprintln!("[sniroute] {line}");
            logs.lines.lock().unwrap().push(line);
        }
        logs.done.store(true, Ordering::SeqCst);
    })
}

/// The proxy and admin addresses from `listening kind=... addr=...` lines.
pub fn listening_addrs(lines: &[String]) -> (Vec<SocketAddr>, Option<SocketAddr>) {
    let mut proxy = Vec::new();
    let mut admin = None;
    for line in lines {
        if !line.contains("listening") {
            continue;
        }
        // `log_format: json`: one object per line, the event's fields at the top level.
        if line.starts_with('{') {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let (Some(kind), Some(addr)) = (v["kind"].as_str(), v["addr"].as_str()) else {
                continue;
            };
            match (kind, addr.parse::<SocketAddr>()) {
                ("proxy", Ok(addr)) => proxy.push(addr),
                ("admin", Ok(addr)) => admin = Some(addr),
                _ => {}
            }
            continue;
        }
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .map(|v| v.trim_matches('"').to_owned())
        };
        let (Some(kind), Some(addr)) = (field("kind="), field("addr=")) else {
            continue;
        };
        let Ok(addr) = addr.parse::<SocketAddr>() else {
            continue;
        };
        match kind.as_str() {
            "proxy" => proxy.push(addr),
            "admin" => admin = Some(addr),
            _ => {}
        }
    }
    (proxy, admin)
}

/// The address of the first `listening` line of `kind` (text or JSON logs).
pub fn listening_addr_of(lines: &[String], kind: &str) -> Option<SocketAddr> {
    lines
        .iter()
        .filter(|l| l.contains("listening"))
        .find_map(|line| {
            if line.starts_with('{') {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                return (v["kind"].as_str()? == kind)
                    .then(|| v["addr"].as_str()?.parse().ok())
                    .flatten();
            }
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(key))
                    .map(|v| v.trim_matches('"'))
            };
            (field("kind=")? == kind)
                .then(|| field("addr=")?.parse().ok())
                .flatten()
        })
}

/// Runs `sniroute <args>` to completion (bounded by [`STARTUP`]); kills it if it doesn't exit.
pub fn run_binary<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Finished {
    let args: Vec<std::ffi::OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    let mut child = Command::new(binary())
        .args(&args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sniroute");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + STARTUP;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(POLL);
    };
    let output = Output {
        status: status.unwrap_or_else(|| child.wait().expect("wait")),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    let finished = Finished {
        exited: status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!(
        "[sniroute {args:?}] exited {:?}\n--- stdout\n{}--- stderr\n{}",
        finished.exited, finished.stdout, finished.stderr
    );
    finished
}

/// A finished (or killed) run of the binary.
#[derive(Debug)]
pub struct Finished {
    /// The exit status; `None` if it was still running at the deadline (then killed).
    pub exited: Option<ExitStatus>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

/// A config file in a fresh temp dir: (dir guard, path).
pub fn config_file(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(CONFIG_NAME);
    std::fs::write(&path, yaml).unwrap();
    (dir, path)
}

// === Admin HTTP ===

/// A minimal HTTP/1.1 `GET` (Connection: close): (status, body). Handles chunked bodies.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, STEP)?;
    tcp.set_read_timeout(Some(STEP))?;
    tcp.set_write_timeout(Some(STEP))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)?;
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

// === Waiting ===

/// Polls `check` (async) until it returns `Some`, or panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether `openssl` is on PATH.
pub fn have_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs `openssl s_client` against `addr` with `servername`, `-max_send_frag` and `alpn_names`
/// made-up ALPN names (to make the hello big), verifying the test CA and `api.example.test`.
/// Returns the first two stdout lines: the identity line, then the echo of a line it sends.
pub fn openssl_s_client(
    addr: SocketAddr,
    servername: &str,
    max_send_frag: usize,
    alpn_names: usize,
) -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki().ca_pem()).unwrap();
    let alpn: Vec<String> = (0..alpn_names)
        .map(|i| format!("proto-{i:02}-xxxxxxxx"))
        .collect();
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-quiet", "-verify_return_error"])
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", servername])
        .args(["-max_send_frag", &max_send_frag.to_string()])
        .args(["-verify_hostname", "api.example.test"])
        .arg("-CAfile")
        .arg(&ca);
    if !alpn.is_empty() {
        command.arg("-alpn").arg(alpn.join(","));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn openssl: {e}"))?;
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    if let Ok(line) = rx.recv_timeout(STEP) {
        lines.push(line);
        let _ = stdin.write_all(b"ping from openssl\n");
        let _ = stdin.flush();
        if let Ok(line) = rx.recv_timeout(STEP) {
            lines.push(line);
        }
    }
    let _ = child.kill();
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if lines.len() == 2 {
        Ok(lines)
    } else {
        Err(format!(
            "openssl s_client gave {lines:?}; stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
