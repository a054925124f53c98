//! Moving bytes both ways between a client and its backend until both sides are done.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant, Sleep};

use crate::metrics::ByteCounters;
use crate::revoke::Registration;

/// Bytes moved each way, and whether the pair was closed for being idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Bytes from the client to the backend, the ClientHello included.
    pub client_to_backend: u64,
    /// Bytes from the backend to the client.
    pub backend_to_client: u64,
    /// The pair was closed by `idle_timeout`.
    pub idle_timed_out: bool,
    /// The pair was closed because the routing table no longer admits it.
    pub revoked: bool,
}

/// What both directions of one connection share: byte counts and the time of the last
/// transfer, written once per batch (never per byte) and read by the idle watchdog.
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    client_to_backend: Direction,
    backend_to_client: Direction,
}

/// One direction's bytes: this connection's own count, and the process-wide counter.
pub(crate) struct Direction {
    bytes: AtomicU64,
    total: Counter,
}

impl Activity {
    pub(crate) fn record(&self, direction: &Direction, bytes: usize) {
        direction.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        direction.total.inc_by(bytes as u64);
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn totals(&self) -> Totals {
        Totals {
            client_to_backend: self.client_to_backend.bytes.load(Ordering::Relaxed),
            backend_to_client: self.backend_to_client.bytes.load(Ordering::Relaxed),
            ..Totals::default()
        }
    }
}

pin_project_lite::pin_project! {
    /// Moves bytes both ways between a client and its backend until each side has seen EOF:
    /// the future a forwarded connection's task spends its life in, so it holds only plain
    /// state (no future per direction, no buffer while idle).
    ///
    /// One side's EOF becomes a write shutdown on the other while the other direction keeps
    /// flowing. An error on either side ends both; so does `idle_timeout` without a byte
    /// moving either way, and so does a revocation.
    pub struct Forward {
        client: TcpStream,
        backend: TcpStream,
        up: Pump,
        down: Pump,
        activity: Activity,
        idle_timeout: Duration,
        // `None` when the limit is past the clock's range (`idle_timeout: 300000000000y`
        // validates): such a pair never times out, where `+` would panic its task.
        #[pin]
        idle: Option<Sleep>,
        revocation: Option<Registration>,
    }
}

/// Forwards between `client` and `backend`, sending `first` (the bytes read while routing) to
/// the backend before anything else. Bytes are added to `counters` as they move.
pub fn forward(
    client: TcpStream,
    backend: TcpStream,
    first: Vec<u8>,
    idle_timeout: Duration,
    counters: &ByteCounters,
) -> Forward {
    let start = Instant::now();
    let activity = Activity {
        start,
        last_ms: AtomicU64::new(0),
        client_to_backend: Direction {
            bytes: AtomicU64::new(0),
            total: counters.client_to_backend.clone(),
        },
        backend_to_client: Direction {
            bytes: AtomicU64::new(0),
            total: counters.backend_to_client.clone(),
        },
    };
    Forward {
        client,
        backend,
        // The first bytes leave through the client side's buffer, which is freed once they
        // (and whatever the client sent after them) are written: an idle pair holds none.
        up: Pump::with_pending(first),
        down: Pump::default(),
        activity,
        idle_timeout,
        idle: start.checked_add(idle_timeout).map(sleep_until),
        revocation: None,
    }
}

impl Forward {
    /// Ends the pair when `registration` is revoked.
    pub(crate) fn revocable(mut self, registration: Registration) -> Self {
        self.revocation = Some(registration);
        self
    }
}

impl Future for Forward {
    type Output = io::Result<Totals>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let activity = &*this.activity;
        let (c2b, b2c) = (&activity.client_to_backend, &activity.backend_to_client);
        let up = this.up.poll(
            cx,
            this.client,
            this.backend,
            activity,
            c2b,
            this.down.is_done(),
        )?;
        let down = this
            .down
            .poll(cx, this.backend, this.client, activity, b2c, up.is_ready())?;
        if up.is_ready() && down.is_ready() {
            return Poll::Ready(Ok(activity.totals()));
        }
        if this
            .revocation
            .as_ref()
            .is_some_and(|registration| registration.poll_revoked(cx).is_ready())
        {
            return Poll::Ready(Ok(Totals {
                revoked: true,
                ..activity.totals()
            }));
        }
        // Wakes once per `idle_timeout`, not per transfer: on waking, the deadline moves to
        // the last transfer's time plus the limit, and only a pair that has not moved since
        // is closed.
        while let Some(mut idle) = this.idle.as_mut().as_pin_mut() {
            if idle.as_mut().poll(cx).is_pending() {
                break;
            }
            match activity.last().checked_add(*this.idle_timeout) {
                Some(deadline) if Instant::now() < deadline => idle.reset(deadline),
                Some(_) => {
                    return Poll::Ready(Ok(Totals {
                        idle_timed_out: true,
                        ..activity.totals()
                    }))
                }
                None => this.idle.set(None),
            }
        }
        Poll::Pending
    }
}

/// Passes an EOF on to `to`. When it is the `last` one (the other direction already ended),
/// the pair is closed right after, and close() sends the FIN after any unsent bytes (no RST:
/// `to` was read to its EOF), so the shutdown(2) is skipped: one syscall fewer per connection.
pub(crate) fn pass_eof(to: &TcpStream, last: bool) -> io::Result<()> {
    if last {
        Ok(())
    } else {
        shutdown_write(to)
    }
}

/// Passes the EOF on: the peer reads EOF once everything before it is delivered.
pub(crate) fn shutdown_write(to: &TcpStream) -> io::Result<()> {
    match SockRef::from(to).shutdown(Shutdown::Write) {
        // The peer is already gone; the other direction reports that if it matters.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

/// Bytes read but not yet written, in a buffer that exists only while a burst is moving.
#[derive(Default)]
pub(crate) struct Buffered {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buffered {
    /// Whether a burst is moving through the buffer.
    pub(crate) fn active(&self) -> bool {
        !self.buf.is_empty()
    }

    /// A burst that starts with `bytes` to write (none: no burst).
    pub(crate) fn pending(bytes: Vec<u8>) -> Self {
        let end = bytes.len();
        Self {
            buf: bytes,
            start: 0,
            end,
        }
    }

    /// Starts a burst with a buffer of `size` bytes.
    pub(crate) fn start(&mut self, size: usize) {
        self.buf = vec![0; size];
        (self.start, self.end) = (0, 0);
    }

    /// Copies from `from` to `to` until `from` has no more (the buffer is then freed and this
    /// is pending) or EOF (ready, buffer freed).
    pub(crate) fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        activity: &Activity,
        counter: &Direction,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.start < self.end {
                ready!(to.poll_write_ready(cx))?;
                match to.try_write(&self.buf[self.start..self.end]) {
                    Ok(n) => {
                        self.start += n;
                        activity.record(counter, n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            if from.poll_read_ready(cx)?.is_pending() {
                // Drained: give the buffer back so an idle connection holds none.
                self.buf = Vec::new();
                return Poll::Pending;
            }
            match from.try_read(&mut self.buf) {
                Ok(0) => {
                    self.buf = Vec::new();
                    return Poll::Ready(Ok(()));
                }
                Ok(n) => (self.start, self.end) = (0, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

#[cfg(target_os = "linux")]
use crate::splice::Pump;

#[cfg(not(target_os = "linux"))]
use copy::Pump;

/// The portable path: a buffer that exists only while data is flowing.
#[cfg(not(target_os = "linux"))]
mod copy {
    use super::*;

    /// Large enough for a full TLS record plus headers in one read.
    const COPY_BUFFER: usize = 32 * 1024;

    /// One direction of a pair: moves bytes from `from` to `to` until EOF, then shuts down
    /// `to`'s write side.
    #[derive(Default)]
    pub(crate) struct Pump {
        buffered: Buffered,
        done: bool,
    }

    impl Pump {
        /// A pump whose first burst starts with `bytes` to write.
        pub(crate) fn with_pending(bytes: Vec<u8>) -> Self {
            Self {
                buffered: Buffered::pending(bytes),
                done: false,
            }
        }

        /// Ready once EOF was passed on (and again on every later call), or on the first error.
        /// `last`: the other direction is done (see [`pass_eof`]).
        pub(crate) fn poll(
            &mut self,
            cx: &mut Context<'_>,
            from: &TcpStream,
            to: &TcpStream,
            activity: &Activity,
            counter: &Direction,
            last: bool,
        ) -> Poll<io::Result<()>> {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if !self.buffered.active() {
                ready!(from.poll_read_ready(cx))?;
                self.buffered.start(COPY_BUFFER);
            }
            ready!(self.buffered.poll_copy(cx, from, to, activity, counter))?;
            self.done = true;
            Poll::Ready(pass_eof(to, last))
        }

        /// Whether EOF was passed on.
        pub(crate) fn is_done(&self) -> bool {
            self.done
        }
    }
}
