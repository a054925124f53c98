//! Moving bytes both ways between a client and its backend until both sides are done.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rustix::buffer::spare_capacity;
use rustix::net::{recv, RecvFlags};
use socket2::SockRef;
use tokio::io::Interest;
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
    /// The bytes read (its length) and room for the next read (its capacity).
    buf: Vec<u8>,
    /// How many of them are written.
    written: usize,
}

/// How a buffered burst ended, besides `from` running dry (pending).
pub(crate) enum Burst {
    /// `from` sent EOF.
    Eof,
    /// A read filled the buffer (all of it now written): the burst is bulk, better spliced.
    Full,
}

impl Buffered {
    /// A burst that starts with `bytes` to write (none: no burst).
    pub(crate) fn pending(bytes: Vec<u8>) -> Self {
        Self {
            buf: bytes,
            written: 0,
        }
    }

    /// Whether a burst is moving through the buffer.
    pub(crate) fn active(&self) -> bool {
        self.buf.capacity() > 0
    }

    /// Starts a burst with room for `size` bytes.
    pub(crate) fn start(&mut self, size: usize) {
        self.buf = Vec::with_capacity(size);
        self.written = 0;
    }

    fn free(&mut self) {
        *self = Self::default();
    }

    /// Copies from `from` to `to` until `from` has no more (the buffer is then freed and this
    /// is pending), EOF, or, with `until_full`, a read that fills the buffer (ended either way:
    /// the buffer is freed).
    pub(crate) fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        activity: &Activity,
        counter: &Direction,
        until_full: bool,
    ) -> Poll<io::Result<Burst>> {
        loop {
            if self.written < self.buf.len() {
                ready!(to.poll_write_ready(cx))?;
                match to.try_write(&self.buf[self.written..]) {
                    Ok(n) => {
                        self.written += n;
                        activity.record(counter, n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            if until_full && self.buf.len() == self.buf.capacity() {
                self.free();
                return Poll::Ready(Ok(Burst::Full));
            }
            if from.poll_read_ready(cx)?.is_pending() {
                // Drained: give the buffer back so an idle connection holds none.
                self.free();
                return Poll::Pending;
            }
            self.buf.clear();
            self.written = 0;
            match read_some(from, &mut self.buf) {
                Ok(0) => {
                    self.free();
                    return Poll::Ready(Ok(Burst::Eof));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Reads what `from` has into `buf`'s spare capacity. A read that leaves room proves the
/// socket drained, and with edge-triggered epoll the next bytes bring a new event: readiness
/// is cleared then (as tokio's own `poll_read` does), so the next poll waits for that event
/// instead of spending a syscall to learn there is nothing.
fn read_some(from: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut got = 0;
    let read = from.try_io(Interest::READABLE, || {
        let (n, _) = recv(from, spare_capacity(buf), RecvFlags::empty())?;
        got = n;
        if n > 0 && n < room {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match read {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
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
            ready!(self
                .buffered
                .poll_copy(cx, from, to, activity, counter, false))?;
            self.done = true;
            Poll::Ready(pass_eof(to, last))
        }

        /// Whether EOF was passed on.
        pub(crate) fn is_done(&self) -> bool {
            self.done
        }
    }
}
