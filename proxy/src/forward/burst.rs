//! What both pumps share: byte accounting, passing EOF on, and a buffered copy that holds
//! its buffer only while a burst is moving.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rustix::buffer::spare_capacity;
use rustix::net::{recv, RecvFlags};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::metrics::ByteCounters;

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
    pub(crate) client_to_backend: Direction,
    pub(crate) backend_to_client: Direction,
}

/// One direction's bytes: this connection's own count, and the process-wide counter.
pub(crate) struct Direction {
    bytes: AtomicU64,
    total: Counter,
}

impl Activity {
    /// Nothing moved yet, as of `start`; bytes are also added to `counters`.
    pub(crate) fn new(start: Instant, counters: &ByteCounters) -> Self {
        let direction = |total: &Counter| Direction {
            bytes: AtomicU64::new(0),
            total: total.clone(),
        };
        Self {
            start,
            last_ms: AtomicU64::new(0),
            client_to_backend: direction(&counters.client_to_backend),
            backend_to_client: direction(&counters.backend_to_client),
        }
    }

    pub(crate) fn record(&self, direction: &Direction, bytes: usize) {
        direction.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        direction.total.inc_by(bytes as u64);
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// When bytes last moved either way.
    pub(crate) fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// What moved so far.
    pub(crate) fn totals(&self) -> Totals {
        Totals {
            client_to_backend: self.client_to_backend.bytes.load(Ordering::Relaxed),
            backend_to_client: self.backend_to_client.bytes.load(Ordering::Relaxed),
            ..Totals::default()
        }
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
