//! The data plane in the test's own runtime, as mini-redis's `tests/server.rs` starts its
//! server: [`InProcess`] wires `proxy::Proxy` to a config's settings and table the way
//! `src/main.rs` does, and serves real loopback sockets. Under
//! `#[tokio::test(start_paused = true)]` the proxy's timers run on the test's paused clock,
//! which jumps to the next timer whenever every task waits: a test of a timeout takes
//! milliseconds however long the timeout is, and a loaded machine cannot make anything late.
//!
//! The one rule that keeps such a test from flaking: the clock may move only while the test
//! waits for a timer it means to fire. A step that waits for the kernel instead (a connect,
//! bytes on their way, a close reaching the peer) runs under [`at_once`], which keeps the
//! runtime busy so the clock cannot jump ahead while the kernel is still delivering; and what
//! the proxy has decided is read from its metrics ([`InProcess::scrape`]), which it updates
//! before it acts, rather than inferred from a socket that may not have heard yet.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use control::{Config, Publisher, SourceKind};
use prometheus_client::registry::Registry;
use proxy::{ListenerKind, Proxy, SharedTable};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Scrape;

/// Real time an [`at_once`] step may take before the test fails: the kernel's work on
/// loopback takes microseconds; this only ends a test whose step can never complete.
const KERNEL_STEP: Duration = Duration::from_secs(10);

/// The proxy serving one SNI listener on 127.0.0.1, in the runtime it was started in; stopped
/// on drop.
pub struct InProcess {
    addr: SocketAddr,
    registry: Registry,
    publisher: Arc<Publisher>,
    shutdown: CancellationToken,
}

impl InProcess {
    /// Starts the proxy on `yaml`'s settings and routes (its listen and admin addresses are
    /// not used: the one listener is on 127.0.0.1:0). Revocation follows published tables,
    /// as in the binary.
    pub fn start(yaml: &str) -> Self {
        let config = Config::parse(yaml, "in-process test").expect("a valid config");
        let mut registry = Registry::default();
        let metrics = proxy::Metrics::register(&mut registry);
        let table = Arc::new(SharedTable::default());
        proxy::RouteMetrics::register(&mut registry, table.clone());
        let publisher = Arc::new(Publisher::new(table.clone()));
        publisher
            .update(SourceKind::File, config.route_specs())
            .expect("the config's table");
        let proxy = Arc::new(Proxy::new(config.proxy.clone(), table, metrics));
        let listener = proxy::bind("127.0.0.1:0".parse().unwrap(), proxy::DEFAULT_BACKLOG)
            .expect("bind the proxy listener");
        let addr = listener.local_addr().expect("the listener's address");
        let (shutdown, tasks) = (CancellationToken::new(), TaskTracker::new());
        tasks.spawn(proxy::serve(
            listener,
            ListenerKind::Sni,
            proxy.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
        tasks.spawn(proxy.follow_swaps(publisher.subscribe(), shutdown.clone()));
        Self {
            addr,
            registry,
            publisher,
            shutdown,
        }
    }

    /// The SNI listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics now, as `/metrics` would serve them.
    pub fn scrape(&self) -> Scrape {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encode the metrics");
        Scrape::from_text(text)
    }

    /// Connections open now: reading a ClientHello or forwarding.
    pub fn active(&self) -> f64 {
        self.scrape().value("sniroute_active_connections", &[])
    }

    /// Connections that ended with `outcome` so far.
    pub fn outcome(&self, outcome: &str) -> f64 {
        self.scrape().outcome(outcome)
    }

    /// Established connections revoked so far.
    pub fn revoked(&self) -> f64 {
        self.scrape()
            .value("sniroute_revoked_connections_total", &[])
    }

    /// Waits, the clock held, until the proxy holds `n` connections open.
    pub async fn until_active(&self, n: usize) {
        until(&format!("{n} connections open"), || {
            self.active() == n as f64
        })
        .await;
    }

    /// Replaces the routes with `yaml`'s, as a reload of the file would.
    pub fn reload(&self, yaml: &str) {
        let config = Config::parse(yaml, "in-process test").expect("a valid config");
        self.publisher
            .update(SourceKind::File, config.route_specs())
            .expect("the config's table");
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Runs `step` to completion with the paused clock held where it is: the runtime is kept
/// busy (every other task still runs) so it cannot auto-advance while the kernel delivers
/// what the step waits for. Panics if the clock moved anyway, or after [`KERNEL_STEP`] of
/// real time (a step that waits for a timer can never complete here).
// The real clock, on purpose: it bounds a step that holds the paused one.
#[allow(clippy::disallowed_methods)]
pub async fn at_once<F: Future>(what: &str, step: F) -> F::Output {
    let clock = Instant::now();
    let real = std::time::Instant::now();
    let mut step = std::pin::pin!(step);
    loop {
        let polled = std::future::poll_fn(|cx| Poll::Ready(step.as_mut().poll(cx))).await;
        if let Poll::Ready(out) = polled {
            assert_eq!(Instant::now(), clock, "{what}: the paused clock moved");
            return out;
        }
        assert!(
            real.elapsed() < KERNEL_STEP,
            "{what}: not done after {KERNEL_STEP:?} of real time with the clock held (if a \
             timer should have done it, it has not fired by now)"
        );
        tokio::task::yield_now().await;
    }
}

/// Waits, the clock held (see [`at_once`]), until `check` holds.
pub async fn until(what: &str, mut check: impl FnMut() -> bool) {
    at_once(
        what,
        std::future::poll_fn(|_| {
            if check() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }),
    )
    .await;
}

/// Holds the clock for `real` (real time) while every task runs: whatever a timer due now
/// set off is done by the end (the proxy's own work at once; the kernel's and other
/// threads', such as the backends', within `real` on any machine that is not stalled). The
/// check before a deadline: a timer firing early has fired by then.
#[allow(clippy::disallowed_methods)] // the real clock, on purpose (as in `at_once`)
pub async fn held(real: Duration) {
    let until = std::time::Instant::now() + real;
    at_once("holding the clock", async {
        while std::time::Instant::now() < until {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// A connection to `addr`, the clock held.
pub async fn connect_at_once(addr: SocketAddr) -> TcpStream {
    let tcp = at_once("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("TCP_NODELAY");
    tcp
}

/// Reads, the clock held, until the peer closes (EOF or reset); what was read.
pub async fn closed_at_once(tcp: &mut TcpStream, what: &str) -> Vec<u8> {
    at_once(what, async {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            bytes.extend_from_slice(&buf[..n]);
        }
        bytes
    })
    .await
}
