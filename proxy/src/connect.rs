//! Connecting to a route's backends, one after another until one answers.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use smallvec::SmallVec;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::balance::{pick, weight_of, Candidate, Standing};
use crate::error::ConnectError;
use crate::health::{LoadGuard, OutlierPolicy, Target};
use crate::route_state::Endpoints;
use crate::table::{Backend, Route};

/// Connects to the best backend that accepts, counting the connection against it.
///
/// Each attempt takes the first untried candidate of [`order`](crate::balance::order) (least
/// connections, same zone first, terminating pods and then ejected endpoints last), with the
/// open counts of that moment. Each address gets its own `connect_timeout`, so one
/// black-holed endpoint cannot use up the time of the ones after it. Names are resolved now,
/// so DNS changes are followed: all of a route's at once, each within `connect_timeout`, so a
/// slow resolver delays a connection by one timeout at most.
pub async fn connect(
    route: &Route,
    connect_timeout: Duration,
    policy: &OutlierPolicy,
) -> Result<(TcpStream, SocketAddr, LoadGuard), ConnectError> {
    let mut last = None;
    let spec = route.spec();
    // Inline for up to four addresses: no allocation for a usual route.
    let mut candidates: SmallVec<[Candidate<Target>; 4]> = SmallVec::new();
    let mut names = Vec::new();
    for (i, (backend, endpoints)) in spec.backends.iter().zip(route.endpoints()).enumerate() {
        let (standing, weight) = (Standing::of(spec, i), weight_of(spec, i));
        match (backend, endpoints) {
            (_, Endpoints::Addr(target)) => candidates.push(Candidate {
                ejected: target.endpoint.is_ejected(),
                at: target.clone(),
                standing,
                open: 0,
                weight,
            }),
            _ => names.push((backend, endpoints, standing, weight)),
        }
    }
    if !names.is_empty() {
        let lookups = names
            .iter()
            .map(|(backend, ..)| timeout(connect_timeout, resolve(backend)));
        let results = futures_util::future::join_all(lookups).await;
        for ((backend, endpoints, standing, weight), result) in names.into_iter().zip(results) {
            let result = result.unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "resolving timed out",
                ))
            });
            match result {
                Ok(addrs) => {
                    candidates.extend(endpoints.resolved(addrs).into_iter().map(|target| {
                        Candidate {
                            ejected: target.endpoint.is_ejected(),
                            at: target,
                            standing,
                            open: 0,
                            weight,
                        }
                    }))
                }
                Err(error) => {
                    tracing::debug!(route = route.name(), %backend, %error, "cannot resolve backend");
                    last = Some((backend.to_string(), error));
                }
            }
        }
    }
    let turn = route.next_turn();
    let mut tried: SmallVec<[bool; 16]> = smallvec::smallvec![false; candidates.len()];
    while let Some((index, guard)) = pick(&mut candidates, turn, |i| !tried[i]) {
        tried[index] = true;
        let target = &candidates[index].at;
        match attempt(route, target, connect_timeout, policy).await {
            Ok(stream) => return Ok((stream, target.addr, guard)),
            Err(error) => last = Some((target.addr.to_string(), error)),
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

async fn attempt(
    route: &Route,
    target: &Target,
    connect_timeout: Duration,
    policy: &OutlierPolicy,
) -> io::Result<TcpStream> {
    let addr = target.addr;
    let result = match timeout(connect_timeout, TcpStream::connect(addr)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    match &result {
        Ok(_) => target.endpoint.succeeded(addr),
        // Out of fds, buffers or ports here: that says nothing about the endpoint, and
        // ejecting it would move traffic (and raise alerts) for our own shortage.
        Err(error) if local_shortage(error) => {
            tracing::debug!(route = route.name(), %addr, %error, "backend connect failed here");
        }
        Err(error) => {
            tracing::debug!(route = route.name(), %addr, %error, "backend connect failed");
            target.endpoint.failed(policy, route.name(), addr);
        }
    }
    result
}

/// Whether a connect failed for lack of a local resource rather than because of the endpoint.
fn local_shortage(error: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(error),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM | Errno::ADDRNOTAVAIL)
    )
}

async fn resolve(backend: &Backend) -> io::Result<Vec<SocketAddr>> {
    match backend {
        Backend::Addr(addr) => Ok(vec![*addr]),
        Backend::Name { host, port } => {
            Ok(tokio::net::lookup_host((&**host, *port)).await?.collect())
        }
    }
}
