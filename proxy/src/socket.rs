//! Socket options and binding, shared by the listening side and the connecting side.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};

use crate::error::ListenError;

/// Pending connections the kernel may queue before accept; matches common somaxconn ceilings.
pub const DEFAULT_BACKLOG: i32 = 4096;

/// Idle time before the first keepalive probe: long-lived API watches sit idle for minutes
/// behind NATs and load balancers that forget flows after a few minutes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Binds a TCP listener on `addr` with SO_REUSEADDR, IPv6-only for IPv6 addresses (so
/// `0.0.0.0:p` and `[::]:p` can both be listed), and the given backlog. The listener gets the
/// options of [`tune`]: on Linux, accepted sockets inherit them (see [`tune_accepted`]).
pub fn bind(addr: SocketAddr, backlog: i32) -> Result<TcpListener, ListenError> {
    let fail = |source| ListenError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(fail)?;
    }
    set_options(&SockRef::from(&socket)).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(backlog).map_err(fail)?;
    TcpListener::from_std(socket.into()).map_err(fail)
}

/// Sets the options every proxied socket gets, on either side: no Nagle delay (TLS records
/// are already batched by the endpoints) and keepalive so dead peers are noticed.
pub(crate) fn tune(stream: &TcpStream) -> io::Result<()> {
    set_options(&SockRef::from(stream))
}

/// [`tune`] for a socket accepted from a listener made by [`bind`]. Linux copies TCP_NODELAY,
/// SO_KEEPALIVE and the keepalive times from the listener to every socket it accepts, so
/// there this is a no-op: four fewer syscalls per connection. Elsewhere it sets them.
pub(crate) fn tune_accepted(stream: &TcpStream) -> io::Result<()> {
    if cfg!(target_os = "linux") {
        Ok(())
    } else {
        tune(stream)
    }
}

fn set_options(socket: &SockRef<'_>) -> io::Result<()> {
    socket.set_tcp_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    socket.set_tcp_keepalive(&keepalive)
}

/// Sets TCP_DEFER_ACCEPT on an SNI listener: the kernel hands a connection over only once its
/// first bytes have arrived, so one that never sends costs no accept, no task and no wakeup
/// (measured in the compare harness: no loss in connection rate, CPU per connection a few per
/// cent lower). `limit` (client_hello_timeout) bounds how long the kernel holds a silent one
/// back, rounded up to its SYN-ACK retransmission schedule (1, 3, 7, 15 s, ...); then it is
/// handed over and the proxy's own timeout runs.
#[cfg(target_os = "linux")]
// The one syscall neither socket2 nor rustix wraps.
#[allow(unsafe_code)]
pub(crate) fn defer_accept(listener: &TcpListener, limit: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs = libc::c_int::try_from(limit.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: setsockopt reads `len` bytes (one c_int) from the pointer, which points at
    // `secs`, alive for the call; the fd is the listener's, open while it is borrowed.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&secs).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere there is no TCP_DEFER_ACCEPT: every connection is accepted at once.
#[cfg(not(target_os = "linux"))]
pub(crate) fn defer_accept(_listener: &TcpListener, _limit: Duration) -> io::Result<()> {
    Ok(())
}

/// The open-files limit (RLIMIT_NOFILE) in force, and what it was raised from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit: descriptors this process may hold (`None`: unlimited).
    pub soft: Option<u64>,
    /// The hard limit the soft one may be raised to.
    pub hard: Option<u64>,
    /// The soft limit found at start, when it was raised.
    pub raised_from: Option<u64>,
}

/// Raises the soft open-files limit to the hard one, as a server holding two sockets per
/// connection should (HAProxy does the same; the soft default of 1024 is for programs that
/// still use select(2)). Refused (a hard limit above the kernel's nr_open, say), the soft
/// limit stays and `Err` says why, with the limit in force.
pub fn raise_open_files_limit() -> Result<OpenFiles, (io::Error, OpenFiles)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let found = getrlimit(Resource::Nofile);
    let mut limit = OpenFiles {
        soft: found.current,
        hard: found.maximum,
        raised_from: None,
    };
    if found.current == found.maximum {
        return Ok(limit);
    }
    let raised = Rlimit {
        current: found.maximum,
        maximum: found.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            limit.raised_from = found.current;
            limit.soft = found.maximum;
            Ok(limit)
        }
        Err(error) => Err((error.into(), limit)),
    }
}
