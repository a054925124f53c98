//! Zero-copy forwarding on Linux: socket -> pipe -> socket with splice(2).
//!
//! A pipe is taken from a per-thread pool only while bytes are moving and goes back once
//! drained, so idle connections hold no pipe and busy ones don't create one per connection.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;

use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::forward::{shutdown_write, write_all, Activity, Direction};

/// Bytes asked of one splice; the default pipe capacity (16 pages), so a splice into an
/// empty pipe never blocks on the pipe, only on the socket.
const SPLICE_LEN: usize = 64 * 1024;

/// Clean pipes kept per thread: enough for the connections one thread moves at once.
const POOL_PER_THREAD: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn take() -> io::Result<Self> {
        if let Some(pipe) = POOL.with(|pool| pool.borrow_mut().pop()) {
            return Ok(pipe);
        }
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok(Self { read, write })
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

/// Moves bytes from `from` to `to` until EOF, then shuts down `to`'s write side.
pub(crate) async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity,
    counter: &Direction,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let pipe = match Pipe::take() {
            Ok(pipe) => pipe,
            // No pipe to be had (at the open-files limit with this thread's pool empty): move
            // this burst through a buffer rather than fail a connection that works.
            Err(_) => {
                if copy_burst(from, to, activity, counter).await? {
                    return shutdown_write(to);
                }
                continue;
            }
        };
        loop {
            let moved = from.try_io(Interest::READABLE, || {
                Ok(splice(
                    from,
                    None,
                    &pipe.write,
                    None,
                    SPLICE_LEN,
                    SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
                )?)
            });
            match moved {
                Ok(0) => {
                    pipe.give_back();
                    return shutdown_write(to);
                }
                // On an error mid-drain the pipe is dropped, bytes and all; the pair is over.
                Ok(n) => {
                    drain(&pipe, to, n).await?;
                    activity.record(counter, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        pipe.give_back();
    }
}

/// Bytes buffered at a time when no pipe can be had.
const FALLBACK_BUFFER: usize = 16 * 1024;

/// Copies what `from` has ready to `to` through a buffer; `Ok(true)` at EOF.
async fn copy_burst(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity,
    counter: &Direction,
) -> io::Result<bool> {
    let mut buf = vec![0u8; FALLBACK_BUFFER];
    loop {
        match from.try_read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                write_all(to, &buf[..n]).await?;
                activity.record(counter, n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// Writes the `pending` bytes held in `pipe` to `to`.
async fn drain(pipe: &Pipe, to: &TcpStream, mut pending: usize) -> io::Result<()> {
    while pending > 0 {
        to.writable().await?;
        let moved = to.try_io(Interest::WRITABLE, || {
            Ok(splice(
                &pipe.read,
                None,
                to,
                None,
                pending,
                SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
            )?)
        });
        match moved {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => pending -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
