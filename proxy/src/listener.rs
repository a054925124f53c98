//! Listening sockets and the accept loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{self, ConnectionSlot};
use crate::route::ListenerKind;
use crate::socket;
use crate::Proxy;

/// First and last pause after an accept error; doubling in between.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections until `shutdown` fires, spawning one task per connection on `tasks`.
pub async fn serve(
    listener: TcpListener,
    kind: ListenerKind,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    // The SNI listeners face the internet's scanners; the ClusterID listener's peers are the
    // platform's own load balancers.
    if kind == ListenerKind::Sni {
        let limit = proxy.settings.client_hello_timeout;
        if let Err(error) = socket::defer_accept(&listener, limit) {
            tracing::warn!(%error, "cannot set TCP_DEFER_ACCEPT; every connection is accepted at once");
        }
    }
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut in_burst = false;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                in_burst = false;
                // The permit is taken here, before a task exists: over the limit, a new
                // connection costs one close and a counter, nothing more.
                let permit = match &proxy.connection_limit {
                    Some(limit) => match limit.clone().try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => {
                            proxy.refuse_over_limit(peer);
                            continue;
                        }
                    },
                    None => None,
                };
                let slot = ConnectionSlot::new(proxy.metrics.open(), permit);
                tasks.spawn(connection::handle(proxy.clone(), stream, peer, kind, slot));
            }
            Err(error) => {
                // EMFILE/ENFILE/ENOBUFS/ENOMEM clear up as connections close; a per-connection
                // error (ECONNABORTED) does too. Either way: pause, never spin, never exit.
                if !in_burst {
                    tracing::warn!(%error, "accept failed; backing off");
                    in_burst = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}
