//! Zero-copy forwarding on Linux: socket -> pipe -> socket with splice(2).
//!
//! A pipe is taken from a per-thread pool only while bytes are moving and goes back once
//! drained, so idle connections hold no pipe and busy ones don't create one per connection.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{ready, Context, Poll};

use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::burst::{pass_eof, Activity, Buffered, Burst, Direction};

/// Capacity asked for a new pipe: the default `pipe-max-size`. A splice moves up to the pipe's
/// capacity at once; on loopback, 1 MiB pipes instead of the default 64 KiB carried one
/// stream 25% faster at 45% less proxy CPU per GB (see docs/performance.md).
const LARGE_PIPE: usize = 1024 * 1024;

/// Pipes enlarged to [`LARGE_PIPE`] at once, process-wide (16 MiB). Every pipe's capacity counts
/// against the user's `pipe-user-pages-soft` (16,384 pages by default), past which the kernel
/// gives each new pipe 2 pages only; this keeps three quarters of it for default-size pipes.
const MAX_LARGE_PIPES: usize = 16;
static LARGE_PIPES: AtomicUsize = AtomicUsize::new(0);

/// A pipe's capacity when it is not enlarged: the default (16 pages).
const DEFAULT_PIPE: usize = 64 * 1024;

/// Clean pipes kept per thread: enough for the connections one thread moves at once.
const POOL_PER_THREAD: usize = 64;

/// A burst starts copied through a buffer of this size; one that fills it is bulk, and moves
/// through a pipe from then on. Small bursts (TLS handshakes, API requests and responses) are
/// cheaper copied: a recv and a send, the recv's short count proving the socket drained,
/// where a pipe takes two splices and a third to find the socket empty.
const COPY_BUFFER: usize = 16 * 1024;

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes the pipe holds when full: what one splice into it asks for, so a splice into an
    /// empty pipe never blocks on the pipe, only on the socket. (u32s here and in `Pump`: a
    /// pipe holds at most `pipe-max-size`, and each pump sits in every connection's task.)
    capacity: u32,
}

impl Pipe {
    fn take() -> io::Result<Self> {
        if let Some(pipe) = POOL.with(|pool| pool.borrow_mut().pop()) {
            return Ok(pipe);
        }
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let mut capacity = DEFAULT_PIPE as u32;
        if LARGE_PIPES.fetch_add(1, Ordering::Relaxed) < MAX_LARGE_PIPES {
            match fcntl_setpipe_size(&write, LARGE_PIPE) {
                Ok(size) => capacity = u32::try_from(size).unwrap_or(DEFAULT_PIPE as u32),
                // Refused (a lower pipe-max-size, or over the soft limit): the default will do.
                Err(_) => {
                    LARGE_PIPES.fetch_sub(1, Ordering::Relaxed);
                }
            }
        } else {
            LARGE_PIPES.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(Self {
            read,
            write,
            capacity,
        })
    }

    /// Returns an empty pipe to this thread's pool (a full pool closes it).
    fn give_back(self) {
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOL_PER_THREAD {
                pool.push(self);
            }
        });
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if self.capacity as usize > DEFAULT_PIPE {
            LARGE_PIPES.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One direction of a pair: moves bytes from `from` to `to` until EOF, then shuts down `to`'s
/// write side.
///
/// A plain state, polled by [`crate::forward::forward`] (no future per direction): while idle
/// it holds no pipe and no buffer, only what a readiness wait needs (the waker is kept by the
/// socket's registration), which keeps an idle connection's task small.
#[derive(Default)]
pub(crate) struct Pump {
    /// The pipe while a burst is moving; given back once it is empty and `from` has no more.
    pipe: Option<Pipe>,
    /// Bytes in `pipe` not yet written to `to`.
    in_pipe: u32,
    /// The start of each small burst, the bytes read while routing, and bulk when no pipe
    /// can be had (at the open-files limit with this thread's pool empty) rather than fail
    /// the pair.
    buffered: Buffered,
    /// The last read filled [`COPY_BUFFER`]: the next burst starts in a pipe.
    bulk: bool,
    done: bool,
}

impl Pump {
    /// A pump whose first burst starts with `bytes` to write (through a buffer: they were read
    /// into one).
    pub(crate) fn with_pending(bytes: Vec<u8>) -> Self {
        Self {
            buffered: Buffered::pending(bytes),
            ..Self::default()
        }
    }

    /// Ready once EOF was passed on (and again on every later call), or on the first error.
    /// On an error mid-burst the pipe is dropped, bytes and all: the pair is over. `last`: the
    /// other direction is done, so the pair is closed as soon as this one is (see [`finish`]).
    ///
    /// [`finish`]: Self::finish
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
        loop {
            if self.in_pipe > 0 {
                let Some(pipe) = self.pipe.as_ref() else {
                    // Unreachable by construction; an error ends this pair, never the process.
                    return Poll::Ready(Err(io::Error::other("bytes pending without a pipe")));
                };
                ready!(to.poll_write_ready(cx))?;
                let moved = to.try_io(Interest::WRITABLE, || {
                    Ok(splice(
                        &pipe.read,
                        None,
                        to,
                        None,
                        self.in_pipe as usize,
                        SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
                    )?)
                });
                match moved {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        // At most `in_pipe`: what was asked for.
                        self.in_pipe -= n as u32;
                        activity.record(counter, n);
                    }
                    // Readiness is cleared: the next poll_write_ready waits for room.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            if self.buffered.active() {
                match ready!(self
                    .buffered
                    .poll_copy(cx, from, to, activity, counter, true))?
                {
                    Burst::Eof => return self.finish(to, last),
                    Burst::Full => self.bulk = true,
                }
                continue;
            }
            if from.poll_read_ready(cx)?.is_pending() {
                // Drained: an idle direction holds no pipe.
                self.give_back_pipe();
                return Poll::Pending;
            }
            if !self.bulk {
                self.give_back_pipe();
                self.buffered.start(COPY_BUFFER);
                continue;
            }
            let pipe = match &self.pipe {
                Some(pipe) => pipe,
                None => match Pipe::take() {
                    Ok(pipe) => self.pipe.insert(pipe),
                    Err(_) => {
                        // Copied then, a buffer at a time, trying for a pipe after each.
                        self.bulk = false;
                        continue;
                    }
                },
            };
            let moved = from.try_io(Interest::READABLE, || {
                Ok(splice(
                    from,
                    None,
                    &pipe.write,
                    None,
                    pipe.capacity as usize,
                    SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
                )?)
            });
            match moved {
                Ok(0) => return self.finish(to, last),
                Ok(n) => {
                    // At most the pipe's capacity: what was asked for.
                    self.in_pipe = n as u32;
                    self.bulk = n >= COPY_BUFFER;
                }
                // Readiness is cleared: the next poll_read_ready waits (and gives the pipe back).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Whether EOF was passed on.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// EOF from `from`: pass it on.
    fn finish(&mut self, to: &TcpStream, last: bool) -> Poll<io::Result<()>> {
        self.give_back_pipe();
        self.done = true;
        Poll::Ready(pass_eof(to, last))
    }

    /// Returns the (empty) pipe to the pool, if this direction holds one.
    fn give_back_pipe(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            pipe.give_back();
        }
    }
}
