//! Connecting to a route's backends, one after another until one answers.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::error::ConnectError;
use crate::table::{Backend, Route};

/// Connects to the first backend that accepts, starting at the route's round-robin cursor.
/// Each address gets its own `connect_timeout`, so one black-holed endpoint cannot use up
/// the time of the ones after it. Names are resolved now, so DNS changes are followed.
pub async fn connect(
    route: &Route,
    connect_timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let mut last = None;
    for backend in route.backends_in_turn() {
        let addrs = match resolve(backend).await {
            Ok(addrs) => addrs,
            Err(error) => {
                tracing::debug!(route = route.name(), %backend, %error, "cannot resolve backend");
                last = Some((backend.to_string(), error));
                continue;
            }
        };
        for addr in addrs {
            match timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Ok((stream, addr)),
                Ok(Err(error)) => {
                    tracing::debug!(route = route.name(), %addr, %error, "backend connect failed");
                    last = Some((addr.to_string(), error));
                }
                Err(_) => {
                    tracing::debug!(route = route.name(), %addr, "backend connect timed out");
                    last = Some((
                        addr.to_string(),
                        io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                    ));
                }
            }
        }
    }
    let (backend, source) = last.unwrap_or_else(|| {
        let none = io::Error::new(io::ErrorKind::NotFound, "no backend addresses");
        (route.name().to_owned(), none)
    });
    Err(ConnectError {
        route: route.name().to_owned(),
        backend,
        source,
    })
}

async fn resolve(backend: &Backend) -> io::Result<Vec<SocketAddr>> {
    match backend {
        Backend::Addr(addr) => Ok(vec![*addr]),
        Backend::Name { host, port } => {
            Ok(tokio::net::lookup_host((&**host, *port)).await?.collect())
        }
    }
}
