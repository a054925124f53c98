//! Rate limiting for per-connection log lines, so a flood of bad input cannot flood the logs,
//! and fair between clients, so one client's flood cannot hide everyone else's refusals.
//!
//! Each client (an IPv4 address, an IPv6 /64) gets a few lines a second from a fixed table of
//! counters it is hashed into (a per-process random hash: a client cannot aim at another's
//! counter); all clients together get a global budget, except that each client's first line of
//! a second comes from a budget of its own, so a crowd of flooding clients still leaves every
//! other client's refusals visible. Lines held back are counted and summarised once a second by
//! [`LogLimiter::flush`], which the proxy's swap-follower task calls on a timer.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use foldhash::fast::RandomState;
use tokio::time::Instant;

use crate::addr::canonical;

/// Lines one client may have a second.
pub(crate) const PER_CLIENT: u32 = 10;
/// Lines all clients together may have a second, past their first ones.
pub(crate) const TOTAL: u32 = 50;
/// Clients whose first line of a second is logged past [`TOTAL`]: a crowd of flooders costs at
/// most this many more lines a second, and every other client is still heard from once a
/// second.
pub(crate) const FIRST_LINES: u32 = 200;
/// Counters clients are hashed into: 32 KiB, so two given clients share one with odds 1/4096.
const SLOTS: usize = 4096;
/// The IPv6 prefix one client is counted by: what one host or site is usually given.
const IPV6_CLIENT_PREFIX: u32 = 64;

/// Budgets of log lines per second: per client, over all clients, and for each client's first.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    start: Instant,
    hasher: RandomState,
    /// Each a [`Window`]: the second it counts, and lines taken in it.
    slots: Box<[AtomicU64]>,
    total: AtomicU64,
    first_lines: AtomicU64,
    /// Lines held back since the last summary.
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            hasher: RandomState::default(),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            first_lines: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether one more line about `client` may be logged now. Counting is approximate at
    /// second boundaries, which is all a log budget needs.
    pub(crate) fn allow(&self, client: IpAddr) -> bool {
        let second = self.second();
        let slot = &self.slots[self.slot_of(client)];
        let allowed = match take(slot, second) {
            n if n >= PER_CLIENT => false,
            0 if take(&self.first_lines, second) < FIRST_LINES => true,
            _ => take(&self.total, second) < TOTAL,
        };
        if !allowed {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }

    /// Logs how many lines were held back since the last call, if any.
    pub(crate) fn flush(&self) {
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        if suppressed > 0 {
            tracing::warn!(
                suppressed,
                per_client = PER_CLIENT,
                total = TOTAL,
                "connection log lines suppressed (over the per-second log budget)"
            );
        }
    }

    fn second(&self) -> u32 {
        // Wraps after 136 years, harmlessly: windows only compare for equality.
        self.start.elapsed().as_secs() as u32
    }

    fn slot_of(&self, client: IpAddr) -> usize {
        let key = match canonical(client) {
            IpAddr::V4(v4) => u128::from(v4.to_bits()),
            IpAddr::V6(v6) => {
                (v6.to_bits() >> (128 - IPV6_CLIENT_PREFIX)) | (1 << IPV6_CLIENT_PREFIX)
            }
        };
        (self.hasher.hash_one(key) as usize) % SLOTS
    }
}

/// Takes one line from a window counter (the second in the high half, the lines taken in it in
/// the low half), starting it afresh in a new second; returns the lines taken before this one.
fn take(window: &AtomicU64, second: u32) -> u32 {
    let mut current = window.load(Ordering::Relaxed);
    loop {
        let (at, taken) = ((current >> 32) as u32, current as u32);
        let taken = if at == second { taken } else { 0 };
        let next = (u64::from(second) << 32) | u64::from(taken.saturating_add(1));
        match window.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return taken,
            Err(seen) => current = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn one_client_gets_its_share_and_no_more_per_second() {
        let limiter = LogLimiter::new();
        let flooder = ip("127.0.0.7");
        let allowed = (0..10_000).filter(|_| limiter.allow(flooder)).count();
        assert_eq!(allowed, PER_CLIENT as usize);
        assert_eq!(limiter.suppressed.load(Ordering::Relaxed), 10_000 - 10);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.allow(flooder), "a new second has a new budget");
        limiter.flush();
        assert_eq!(limiter.suppressed.load(Ordering::Relaxed), 0, "reported");
    }

    /// A client hashed to none of `taken`'s counters, so a test does not hang on the 1/4096 odds
    /// of two clients sharing one.
    fn apart_from(limiter: &LogLimiter, taken: &[IpAddr]) -> IpAddr {
        let slots: Vec<usize> = taken.iter().map(|&c| limiter.slot_of(c)).collect();
        (1..=255)
            .map(|i| IpAddr::from([127, 0, 1, i]))
            .find(|&c| !slots.contains(&limiter.slot_of(c)))
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_leaves_other_clients_their_lines() {
        let limiter = LogLimiter::new();
        let flooder = ip("127.0.0.7");
        for _ in 0..10_000 {
            limiter.allow(flooder);
        }
        let other = apart_from(&limiter, &[flooder]);
        let allowed = (0..PER_CLIENT).filter(|_| limiter.allow(other)).count();
        assert_eq!(allowed, PER_CLIENT as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn many_flooders_stay_within_the_budgets_and_everyone_is_heard_once() {
        let limiter = LogLimiter::new();
        let flooders: Vec<IpAddr> = (1..=100).map(|i| ip(&format!("198.18.0.{i}"))).collect();
        let mut slots: Vec<usize> = flooders.iter().map(|&c| limiter.slot_of(c)).collect();
        slots.sort_unstable();
        slots.dedup();
        let mut allowed = 0;
        for _ in 0..100 {
            allowed += flooders.iter().filter(|&&c| limiter.allow(c)).count();
        }
        // Each counter's first line is its own; the rest share TOTAL.
        assert_eq!(allowed, slots.len() + TOTAL as usize);
        let newcomer = apart_from(&limiter, &flooders);
        assert!(limiter.allow(newcomer), "a newcomer's first line");
        // Past FIRST_LINES counters a second, first lines come out of the shared budget too.
        let crowd = (0..1000u32).map(|i| IpAddr::from([198, 19, (i >> 8) as u8, i as u8]));
        let heard = crowd.filter(|&c| limiter.allow(c)).count();
        assert_eq!(heard, FIRST_LINES as usize - slots.len() - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ipv6_client_is_its_slash_64() {
        let limiter = LogLimiter::new();
        let allowed = (0..100u16)
            .map(|i| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, i]))
            .filter(|&c| limiter.allow(c))
            .count();
        assert_eq!(allowed, PER_CLIENT as usize);
        let mapped = ip("::ffff:127.0.0.7");
        assert_eq!(
            limiter.slot_of(mapped),
            limiter.slot_of(ip("127.0.0.7")),
            "a mapped address is the IPv4 client"
        );
    }
}
