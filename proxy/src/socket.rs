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
