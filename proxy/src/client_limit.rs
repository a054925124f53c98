//! Per-client limits: connections open at once and new connections per second from one client,
//! in a table whose memory is fixed however many addresses a flood brings.
//!
//! A client is an IPv4 address or an IPv6 prefix (`ipv6_prefix`, a /64 by default, since one
//! host often holds the whole /64); IPv4-mapped IPv6 addresses count as the IPv4 client.
//! [`ClientLimits::admit`] takes the client and the time, and hands back a [`ClientGuard`] that
//! holds one of the client's open connections until dropped, or says which limit refused.
//!
//! The rate is a token bucket of depth `burst`, kept as one timestamp per client (GCRA: the
//! time at which the bucket is full again), so an entry is 32 bytes. An entry with no open
//! connection and a full bucket is *idle*: it says nothing a fresh entry would not, so it may be
//! forgotten at any time without changing a decision. Entries live in [`SHARDS`] fixed-capacity
//! maps of [`SHARD_CLIENTS`] each; a full shard forgets its idle entries to make room, and when
//! none is idle the new client is refused ([`Limited::Full`]) rather than a busy client evicted.
//! Filling a shard therefore takes that many clients each holding a connection open (all of
//! them bounded by the global `max_connections`) or each connecting again before its bucket
//! has refilled (1 / rate after one connection, at most burst / rate): with shards picked by a
//! keyed SipHash, in practice a flood of that size over the whole table. A client the table
//! already tracks is never refused or forgotten because of a flood of others.

use std::collections::hash_map::{Entry as MapEntry, HashMap, RandomState};
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ipnet::IpNet;
use tokio::time::Instant;

use crate::addr::canonical;

/// Shards of the client table: a new connection locks one, so accepts on many cores rarely meet.
pub const SHARDS: usize = 64;
/// Clients tracked per shard. 1,792 is 7/8 of 2,048 buckets, the most a std `HashMap` holds
/// before it would grow, so each shard is allocated once at 2,048 x 33 bytes (a 32-byte entry
/// and a control byte) = 66 KiB, and the table at 4.1 MiB.
pub const SHARD_CLIENTS: usize = 1_792;
/// Clients tracked at most: 114,688.
pub const MAX_CLIENTS: usize = SHARDS * SHARD_CLIENTS;

/// The limits one client is held to, as configured under `client_limits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Connections open at once from one client.
    pub max_connections: u32,
    /// New connections from one client, refilling a bucket of `burst`.
    pub connection_rate: Rate,
    /// Depth of the rate's bucket: connections a quiet client may open at once.
    pub burst: u32,
    /// IPv6 clients in one prefix of this length are one client (at most 128).
    pub ipv6_prefix: u8,
    /// Clients never limited nor tracked.
    pub exempt: Vec<IpNet>,
}

/// A rate of new connections, written `50/s` or `600/m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Time between two tokens, in nanoseconds; never zero.
    interval_ns: u64,
}

/// Why a client's connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The client already has `max_connections` open.
    Connections,
    /// The client opened `burst` connections faster than `connection_rate` refills.
    Rate,
    /// The client is new and its shard of the table holds only busy clients.
    Full,
}

/// The per-client limits and what they track; shared by every connection of the listeners.
pub struct ClientLimits {
    policy: Policy,
    /// Nanoseconds the rate's bucket may run ahead of now: (burst - 1) intervals.
    tolerance_ns: u64,
    /// Time zero for the stored timestamps.
    epoch: Instant,
    /// Picks a client's shard; keyed apart from the maps' own hashers.
    shard_of: RandomState,
    shards: Arc<Shards>,
}

/// One open connection of a tracked client; dropping it closes the count.
#[must_use = "the connection counts as open only while the guard lives"]
pub struct ClientGuard(Option<Held>);

/// Where a guard's client is: 32 bytes, as the guard lives as long as the connection.
struct Held {
    shards: Arc<Shards>,
    key: Key,
    shard: u8,
}

type Shards = [Mutex<Shard>; SHARDS];

/// A client: an IPv4 address as its IPv4-mapped IPv6 form, or an IPv6 prefix's first address;
/// bytes rather than a u128 so that entries and guards need only 8-byte alignment.
type Key = [u8; 16];

struct Shard {
    clients: HashMap<Key, Client>,
    /// Before this time (ns since the epoch) no entry can be idle unless a guard has since
    /// closed a client's last connection; a full shard does not look for room before it.
    next_idle_ns: u64,
}

/// What is tracked per client.
struct Client {
    /// When the bucket is full again (GCRA's theoretical arrival time), ns since the epoch.
    full_at_ns: u64,
    /// Connections open now.
    open: u32,
}

// === impl Rate ===

impl Rate {
    /// `count` connections per `per`; `None` when either is zero.
    pub fn new(count: u32, per: Duration) -> Option<Self> {
        let per_ns = u64::try_from(per.as_nanos()).ok()?;
        let interval_ns = per_ns.checked_div(u64::from(count))?;
        (interval_ns > 0).then_some(Self { interval_ns })
    }

    /// Reads `N/s` or `N/m` with N positive; `None` for anything else, for the config to say
    /// where.
    pub fn parse(s: &str) -> Option<Self> {
        let (count, unit) = s.trim().split_once('/')?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            _ => return None,
        };
        Self::new(count.trim().parse().ok()?, per)
    }
}

// === impl Limited ===

impl Limited {
    /// A static label, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connections => "max_connections",
            Self::Rate => "connection_rate",
            Self::Full => "client_table_full",
        }
    }
}

impl fmt::Display for Limited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connections => "client has max_connections open",
            Self::Rate => "client over connection_rate",
            Self::Full => "client table full of busy clients",
        })
    }
}

// === impl ClientLimits ===

impl ClientLimits {
    /// An empty table for `policy`; a `burst` of 0 counts as 1 (the config refuses both, and
    /// an `ipv6_prefix` over 128).
    pub fn new(policy: Policy) -> Self {
        let burst = policy.burst.max(1);
        let tolerance_ns = policy
            .connection_rate
            .interval_ns
            .saturating_mul(u64::from(burst - 1));
        let shards = std::array::from_fn(|_| {
            Mutex::new(Shard {
                clients: HashMap::with_capacity(SHARD_CLIENTS),
                next_idle_ns: 0,
            })
        });
        Self {
            policy,
            tolerance_ns,
            epoch: Instant::now(),
            shard_of: RandomState::new(),
            shards: Arc::new(shards),
        }
    }

    /// Admits one new connection from `client` at `now`, or says which limit refuses it.
    pub fn admit(&self, client: IpAddr, now: Instant) -> Result<ClientGuard, Limited> {
        let client = canonical(client);
        if self.policy.exempt.iter().any(|net| net.contains(&client)) {
            return Ok(ClientGuard(None));
        }
        let key = self.key(client);
        let now_ns = self.ns(now);
        let shard = self.shard(key);
        let mut guard = lock(&self.shards[usize::from(shard)]);
        let state = &mut *guard;
        if state.clients.len() >= SHARD_CLIENTS && !state.clients.contains_key(&key) {
            state.forget_idle(now_ns);
            if state.clients.len() >= SHARD_CLIENTS {
                return Err(Limited::Full);
            }
        }
        let entry = match state.clients.entry(key) {
            MapEntry::Occupied(entry) => entry.into_mut(),
            MapEntry::Vacant(entry) => {
                if self.policy.max_connections == 0 {
                    return Err(Limited::Connections);
                }
                entry.insert(Client {
                    full_at_ns: now_ns,
                    open: 0,
                })
            }
        };
        if entry.open >= self.policy.max_connections {
            return Err(Limited::Connections);
        }
        // GCRA: a bucket that is full at `full_at` may run at most `tolerance` ahead of now.
        let start = entry.full_at_ns.max(now_ns);
        if start - now_ns > self.tolerance_ns {
            return Err(Limited::Rate);
        }
        entry.full_at_ns = start.saturating_add(self.policy.connection_rate.interval_ns);
        entry.open += 1;
        drop(guard);
        Ok(ClientGuard(Some(Held {
            shards: self.shards.clone(),
            shard,
            key,
        })))
    }

    /// Clients tracked now, idle ones included.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| lock(s).clients.len()).sum()
    }

    fn key(&self, client: IpAddr) -> Key {
        match client {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => {
                let prefix = u32::from(self.policy.ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                (u128::from(v6) & mask).to_be_bytes()
            }
        }
    }

    fn shard(&self, key: Key) -> u8 {
        // SHARDS is a power of two below 256: the low bits are uniform and fit.
        (self.shard_of.hash_one(key) % SHARDS as u64) as u8
    }

    fn ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

impl fmt::Debug for ClientLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLimits")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // Nothing panics while a shard is locked; if something did, its counts are still whole.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Shard ===

impl Shard {
    /// Drops every idle entry, if any can be idle yet, and notes when the next one can be.
    fn forget_idle(&mut self, now_ns: u64) {
        if now_ns < self.next_idle_ns {
            return;
        }
        let mut next = u64::MAX;
        self.clients.retain(|_, client| {
            let idle = client.open == 0 && client.full_at_ns <= now_ns;
            if client.open == 0 && !idle {
                next = next.min(client.full_at_ns);
            }
            !idle
        });
        self.next_idle_ns = next;
    }
}

// === impl ClientGuard ===

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let Some(held) = &self.0 else {
            return;
        };
        let mut shard = lock(&held.shards[usize::from(held.shard)]);
        // An entry with an open connection is never forgotten, so it is there.
        if let Some(client) = shard.clients.get_mut(&held.key) {
            client.open = client.open.saturating_sub(1);
            if client.open == 0 {
                let full_at = client.full_at_ns;
                shard.next_idle_ns = shard.next_idle_ns.min(full_at);
            }
        }
    }
}

impl fmt::Debug for ClientGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClientGuard")
            .field(&self.0.as_ref().map(|held| held.key))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn policy(max_connections: u32, rate: &str, burst: u32) -> Policy {
        Policy {
            max_connections,
            connection_rate: Rate::parse(rate).unwrap(),
            burst,
            ipv6_prefix: 64,
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Admits `n` connections from `client` at `now`, all of which must pass.
    fn open(limits: &ClientLimits, client: &str, now: Instant, n: usize) -> Vec<ClientGuard> {
        (0..n)
            .map(|i| {
                limits
                    .admit(ip(client), now)
                    .unwrap_or_else(|e| panic!("{client} #{i}: {e}"))
            })
            .collect()
    }

    /// The nth distinct IPv4 client, outside the exempt 10/8.
    fn nth_v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x6400_0000 + n))
    }

    #[test]
    fn max_connections_counts_open_connections() {
        let limits = ClientLimits::new(policy(3, "1000/s", 1000));
        let t0 = Instant::now();
        let mut held = open(&limits, "192.0.2.1", t0, 3);
        assert_eq!(
            limits.admit(ip("192.0.2.1"), t0).unwrap_err(),
            Limited::Connections
        );
        // Another client is not affected.
        let _other = open(&limits, "192.0.2.2", t0, 3);
        held.pop();
        let _again = open(&limits, "192.0.2.1", t0, 1);
        assert_eq!(
            limits.admit(ip("192.0.2.1"), t0 + ms(1)).unwrap_err(),
            Limited::Connections
        );
    }

    #[test]
    fn rate_is_a_bucket_of_burst() {
        // 10/s: a token every 100 ms, 5 at once.
        let limits = ClientLimits::new(policy(100, "10/s", 5));
        let t0 = Instant::now();
        let client = "198.51.100.7";
        let _burst = open(&limits, client, t0, 5);
        assert_eq!(limits.admit(ip(client), t0).unwrap_err(), Limited::Rate);
        assert_eq!(
            limits.admit(ip(client), t0 + ms(99)).unwrap_err(),
            Limited::Rate
        );
        let _one = open(&limits, client, t0 + ms(100), 1);
        assert_eq!(
            limits.admit(ip(client), t0 + ms(150)).unwrap_err(),
            Limited::Rate
        );
        // Half a second after the last token was drawn the bucket is full again, no fuller.
        let _refilled = open(&limits, client, t0 + ms(600), 5);
        assert_eq!(
            limits.admit(ip(client), t0 + ms(600)).unwrap_err(),
            Limited::Rate
        );
        // Refused attempts draw nothing: a steady 10/s goes on being admitted.
        for n in 7..20 {
            let _ = limits.admit(ip(client), t0 + ms(n * 100));
            assert!(limits.admit(ip(client), t0 + ms(n * 100 + 50)).is_err());
        }
        let other = "198.51.100.8";
        let _other = open(&limits, other, t0 + ms(600), 5);
    }

    #[test]
    fn a_client_at_max_connections_keeps_its_tokens() {
        let limits = ClientLimits::new(policy(2, "1/s", 3));
        let t0 = Instant::now();
        let held = open(&limits, "192.0.2.9", t0, 2);
        for _ in 0..10 {
            assert_eq!(
                limits.admit(ip("192.0.2.9"), t0).unwrap_err(),
                Limited::Connections
            );
        }
        drop(held);
        // Two tokens were drawn, one is left.
        let _last = open(&limits, "192.0.2.9", t0, 1);
        assert_eq!(
            limits.admit(ip("192.0.2.9"), t0).unwrap_err(),
            Limited::Rate
        );
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix() {
        let t0 = Instant::now();
        let limits = ClientLimits::new(policy(2, "1000/s", 1000));
        let _two = [
            limits.admit(ip("2001:db8:1:2::1"), t0).unwrap(),
            limits
                .admit(ip("2001:db8:1:2:ffff:ffff:ffff:fffe"), t0)
                .unwrap(),
        ];
        assert_eq!(
            limits.admit(ip("2001:db8:1:2:abcd::9"), t0).unwrap_err(),
            Limited::Connections
        );
        let _next_64 = open(&limits, "2001:db8:1:3::1", t0, 2);

        for (prefix, a, b, same) in [
            (128, "2001:db8::1", "2001:db8::2", false),
            (48, "2001:db8:1:2::1", "2001:db8:1:ffff::1", true),
            (48, "2001:db8:1::1", "2001:db8:2::1", false),
            (0, "2001:db8::1", "fe80::1", true),
            (200, "2001:db8::1", "2001:db8::2", false),
        ] {
            let limits = ClientLimits::new(Policy {
                ipv6_prefix: prefix,
                ..policy(1, "1000/s", 1000)
            });
            let _a = limits.admit(ip(a), t0).unwrap();
            assert_eq!(limits.admit(ip(b), t0).is_err(), same, "/{prefix} {a} {b}");
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_is_the_ipv4_client() {
        let limits = ClientLimits::new(policy(1, "1000/s", 1000));
        let t0 = Instant::now();
        let _v4 = open(&limits, "192.0.2.1", t0, 1);
        assert_eq!(
            limits.admit(ip("::ffff:192.0.2.1"), t0).unwrap_err(),
            Limited::Connections
        );
        // Not mapped, so not the same client (nor an IPv4 one).
        let _compat = open(&limits, "::c000:201", t0, 1);
        assert_eq!(limits.tracked(), 2);
    }

    #[test]
    fn exempt_clients_are_neither_limited_nor_tracked() {
        let limits = ClientLimits::new(policy(1, "1/m", 1));
        let t0 = Instant::now();
        let _many = open(&limits, "10.1.2.3", t0, 50);
        let _mapped = open(&limits, "::ffff:10.9.9.9", t0, 50);
        assert_eq!(limits.tracked(), 0);
        let _one = open(&limits, "11.0.0.1", t0, 1);
        assert!(limits.admit(ip("11.0.0.1"), t0).is_err());
        assert_eq!(limits.tracked(), 1);
    }

    #[test]
    fn zero_limits() {
        let t0 = Instant::now();
        let none = ClientLimits::new(policy(0, "1/s", 5));
        assert_eq!(
            none.admit(ip("192.0.2.1"), t0).unwrap_err(),
            Limited::Connections
        );
        assert_eq!(none.tracked(), 0, "a refused new client is not stored");
        let one = ClientLimits::new(policy(9, "1/s", 0));
        let _first = open(&one, "192.0.2.1", t0, 1);
        assert_eq!(one.admit(ip("192.0.2.1"), t0).unwrap_err(), Limited::Rate);
    }

    #[test]
    fn rates_parse() {
        for (s, interval) in [
            ("50/s", ms(20)),
            ("600/m", ms(100)),
            (" 1 / s ", ms(1000)),
            ("1000000000/s", Duration::from_nanos(1)),
        ] {
            let rate = Rate::parse(s).unwrap();
            assert_eq!(
                rate.interval_ns,
                u64::try_from(interval.as_nanos()).unwrap(),
                "{s}"
            );
        }
        for bad in ["0/s", "50", "50/h", "-1/s", "x/s", "", "/s", "2000000000/s"] {
            assert_eq!(Rate::parse(bad), None, "{bad}");
        }
        assert_eq!(Rate::new(3, Duration::ZERO), None);
    }

    #[test]
    fn labels() {
        assert_eq!(Limited::Connections.as_str(), "max_connections");
        assert_eq!(Limited::Rate.as_str(), "connection_rate");
        assert_eq!(Limited::Full.as_str(), "client_table_full");
        assert_eq!(
            Limited::Full.to_string(),
            "client table full of busy clients"
        );
    }

    #[test]
    fn a_flood_of_busy_clients_fills_the_table_but_never_grows_it() {
        let limits = ClientLimits::new(policy(5, "10/s", 5));
        let capacities: Vec<usize> = limits
            .shards
            .iter()
            .map(|s| lock(s).clients.capacity())
            .collect();
        assert!(capacities.iter().all(|&c| c >= SHARD_CLIENTS));
        let t0 = Instant::now();
        let busy = open(&limits, "192.0.2.1", t0, 5);

        // Every flooding client keeps its connection open.
        let mut held = Vec::new();
        let mut full = 0;
        for n in 0..(MAX_CLIENTS as u32 + 20_000) {
            match limits.admit(nth_v4(n), t0) {
                Ok(guard) => held.push(guard),
                Err(why) => {
                    assert_eq!(why, Limited::Full);
                    full += 1;
                }
            }
        }
        assert!(full >= 20_000, "{full}");
        assert_eq!(limits.tracked(), MAX_CLIENTS);
        let after: Vec<usize> = limits
            .shards
            .iter()
            .map(|s| lock(s).clients.capacity())
            .collect();
        assert_eq!(after, capacities, "no shard grew");
        assert_eq!(std::mem::size_of::<ClientGuard>(), 32);

        // The busy client was never evicted: its five connections still count.
        assert_eq!(
            limits.admit(ip("192.0.2.1"), t0 + ms(10_000)).unwrap_err(),
            Limited::Connections
        );
        drop(busy);
        let _busy_again = open(&limits, "192.0.2.1", t0 + ms(10_000), 5);

        // Once the flood closes and its buckets refill, its entries make room again.
        drop(held);
        let later = t0 + ms(10_100);
        for n in 0..20_000 {
            drop(open(&limits, &nth_v4(1_000_000 + n).to_string(), later, 1));
        }
        assert!(limits.tracked() < MAX_CLIENTS);
    }

    #[test]
    fn clients_that_just_connected_are_not_evicted_before_their_bucket_refills() {
        // Every flooding client connects once and closes: its bucket is short one token for
        // 100 ms, so its entry still says something until then.
        let limits = ClientLimits::new(policy(5, "10/s", 2));
        let t0 = Instant::now();
        let mut full = 0;
        for n in 0..(MAX_CLIENTS as u32 + 5_000) {
            match limits.admit(nth_v4(n), t0) {
                Ok(guard) => drop(guard),
                Err(why) => {
                    assert_eq!(why, Limited::Full);
                    full += 1;
                }
            }
        }
        assert!(full >= 5_000, "{full}");
        // 100 ms later every one of them is idle: new clients are admitted again.
        let later = t0 + ms(100);
        for n in 0..5_000 {
            drop(limits.admit(nth_v4(2_000_000 + n), later).unwrap());
        }
        assert!(limits.tracked() <= MAX_CLIENTS);
    }

    /// A random walk of admits, closes and clock steps against a model of the open counts: the
    /// table agrees with the model on every client that has a connection open, never holds
    /// more than MAX_CLIENTS, and has no connection counted open once every guard is gone.
    #[test]
    fn random_walk_keeps_counts_and_bound() {
        let limits = ClientLimits::new(policy(3, "20/s", 4));
        let mut now = Instant::now();
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut held: Vec<(IpAddr, ClientGuard)> = Vec::new();
        for step in 0..60_000 {
            let r = next();
            match r % 8 {
                0..=4 => {
                    // A few busy clients and many one-off ones.
                    let client = if r % 3 == 0 {
                        nth_v4((r >> 8) as u32 % 16)
                    } else {
                        IpAddr::V6(Ipv6Addr::from(u128::from(r) << 64 | 1))
                    };
                    let open_now = held.iter().filter(|(c, _)| *c == client).count();
                    match limits.admit(client, now) {
                        Ok(guard) => {
                            assert!(open_now < 3, "{client} admitted over max_connections");
                            held.push((client, guard));
                        }
                        Err(Limited::Connections) => assert_eq!(open_now, 3, "{client}"),
                        Err(Limited::Rate) => {}
                        Err(Limited::Full) => panic!("full with {} tracked", limits.tracked()),
                    }
                }
                5 | 6 if !held.is_empty() => {
                    let i = (r >> 8) as usize % held.len();
                    drop(held.swap_remove(i));
                }
                _ => now += Duration::from_micros(r % 50_000),
            }
            if step % 1_000 == 0 {
                assert!(limits.tracked() <= MAX_CLIENTS);
            }
        }
        drop(held);
        for shard in limits.shards.iter() {
            assert!(lock(shard).clients.values().all(|c| c.open == 0));
        }
    }
}
