//! Moving bytes both ways between a client and its backend until both sides are done.
//!
//! [`Forward`] is the pair's state; each direction is a `Pump`: `splice.rs` on Linux (small
//! bursts copied, bulk through pooled pipes), `copy.rs` elsewhere, both over `burst.rs`'s
//! buffered copy and byte accounting.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant, Sleep};

use crate::metrics::ByteCounters;

mod burst;
#[cfg(not(target_os = "linux"))]
mod copy;
#[cfg(target_os = "linux")]
mod splice;

use burst::Activity;
pub use burst::Totals;
#[cfg(not(target_os = "linux"))]
use copy::Pump;
#[cfg(target_os = "linux")]
use splice::Pump;

pin_project_lite::pin_project! {
    /// Moves bytes both ways between a client and its backend until each side has seen EOF:
    /// the future a forwarded connection's task spends its life in, so it holds only plain
    /// state (no future per direction, no buffer while idle).
    ///
    /// One side's EOF becomes a write shutdown on the other while the other direction keeps
    /// flowing. An error on either side ends both; so does `idle_timeout` without a byte
    /// moving either way, and the connection's task ends it on a revocation.
    pub struct Forward {
        client: TcpStream,
        backend: TcpStream,
        up: Pump,
        down: Pump,
        activity: Activity,
        // Nanoseconds (saturating: a limit past 584 years has no deadline anyway), 8 bytes
        // fewer than a `Duration` in every connection's task.
        idle_timeout_ns: u64,
        // `None` when the limit is past the clock's range (`idle_timeout: 300000000000y`
        // validates): such a pair never times out, where `+` would panic its task.
        #[pin]
        idle: Option<Sleep>,
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
    let activity = Activity::new(start, counters);
    Forward {
        client,
        backend,
        // The first bytes leave through the client side's buffer, which is freed once they
        // (and whatever the client sent after them) are written: an idle pair holds none.
        up: Pump::with_pending(first),
        down: Pump::default(),
        activity,
        idle_timeout_ns: u64::try_from(idle_timeout.as_nanos()).unwrap_or(u64::MAX),
        idle: start.checked_add(idle_timeout).map(sleep_until),
    }
}

impl Forward {
    /// What moved so far (for a pair ended from outside, by a revocation).
    pub(crate) fn totals(&self) -> Totals {
        self.activity.totals()
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
        // Wakes once per `idle_timeout`, not per transfer: on waking, the deadline moves to
        // the last transfer's time plus the limit, and only a pair that has not moved since
        // is closed.
        while let Some(mut idle) = this.idle.as_mut().as_pin_mut() {
            if idle.as_mut().poll(cx).is_pending() {
                break;
            }
            let limit = Duration::from_nanos(*this.idle_timeout_ns);
            match activity.last().checked_add(limit) {
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
