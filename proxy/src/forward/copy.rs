//! The portable path: a buffer that exists only while data is flowing.

use std::io;
use std::task::{ready, Context, Poll};

use tokio::net::TcpStream;

use super::burst::{pass_eof, Activity, Buffered, Direction};

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
