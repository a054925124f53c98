//! Test backends on loopback, each on its own thread:
//! - [`TlsBackend`]: a rustls server that answers `backend=<id> sni=<sni>\n`, echoes until EOF,
//!   then writes an optional trailer and closes.
//! - [`RawBackend`]: a plain TCP server that records the bytes it receives (byte-exact checks)
//!   and, on EOF, sends them back followed by an optional trailer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::{pki, POLL};

/// Runs `serve` on its own thread and current-thread runtime, so backends keep working while a
/// test blocks (e.g. polling the proxy's logs) and die with the value that owns them.
pub struct BackendThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl BackendThread {
    /// Serves `listener` with `serve` until dropped.
    pub fn spawn<F, Fut>(name: &str, listener: std::net::TcpListener, serve: F) -> Self
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

/// A nonblocking listener on 127.0.0.1:0 and its address.
pub fn bind_loopback() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// A listener on `addr` with SO_REUSEADDR, so a port just closed by an earlier backend on the
/// same ClusterIP can be bound again at once.
fn bind_reusable(addr: SocketAddr) -> std::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(addr)
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let listener = socket.listen(1024).expect("listen");
    listener.into_std().expect("std listener")
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
        let (listener, _) = bind_loopback();
        Self::serve_on(id, listener, opts)
    }

    /// A backend like [`TlsBackend::start_with`], listening on `addr` (a ClusterIP the API
    /// server allocated, and the Service's port).
    pub fn start_at(id: &str, addr: SocketAddr, opts: TlsBackendOpts) -> Self {
        Self::serve_on(id, bind_reusable(addr), opts)
    }

    /// A backend with options on a listener of the caller's (bound, nonblocking), e.g. one on a
    /// Service's ClusterIP.
    pub fn serve_on(id: &str, listener: std::net::TcpListener, opts: TlsBackendOpts) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let config = match &opts.names {
            Some(names) => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let (chain, key) = pki().leaf(&names);
                pki().server_config_for(chain, key)
            }
            None => pki().server_config(),
        };
        let acceptor = TlsAcceptor::from(config);
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

/// A loopback address whose connects hang: a listener with a backlog of 1 whose accept queue
/// is full (and never drained), so the kernel drops further SYNs. Filled with blocking
/// connects on the real clock (so it serves tests on paused time too); in a runtime. Holds
/// the listener and the queued connections.
pub fn black_hole() -> (SocketAddr, TcpListener, Vec<std::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("local addr");
    let mut queued = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(tcp) => queued.push(tcp),
            // A connect that hangs: the hole is ready.
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return (addr, listener, queued),
            Err(e) => panic!("filling the black hole's queue: {e}"),
        }
    }
    panic!("connects to a listener with a full accept queue kept succeeding");
}
