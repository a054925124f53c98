//! `client_hello_memory`: one budget for the buffers of every connection still reading its
//! ClientHello (and PROXY header) or waiting for its backend to accept, so a flood of slow,
//! huge, never-finished hellos cannot pin `max_connections x max_client_hello` bytes.
//!
//! A buffer is charged before it grows, for the capacity it grows to (what is allocated, not
//! what was received), and stays charged until the pair starts forwarding. A charge that would
//! pass the budget first closes other connections, in an order a flood cannot aim: the
//! largest buffer first, and among equal buffers the one that has gone longest without
//! growing. Age is not the order: an attacker's connections are always younger than the
//! victim it aims at, so "oldest first" let any flood of fresh connections evict a real
//! client between two of its records. Size is what the budget protects, and a real hello is
//! small (300-600 bytes; about 2 KB with a post-quantum key share), so a flood must keep its
//! buffers as small as a real client's to come before it, which takes
//! `client_hello_memory / buffer` connections (each counting against `max_connections` and
//! `client_limits`) and then still loses the tie to a client that just made progress. The
//! [`Ledger`] is the pure core; [`HelloBudget`] puts it behind a lock and tells each victim's
//! task through its own [`Notify`].
//!
//! The lock is for pressure only. A connection's first reservation, up to a quarter of the
//! budget over all such connections, is taken with two atomic additions and enters no ledger
//! (no lock, no `Notify`): the common hello, read into its first 1 KiB buffer and forwarded,
//! never takes the lock. Those reservations cannot be evicted, so a flood can pin at most that
//! quarter, each of its bytes for at most `client_hello_timeout`; every other reservation (a
//! growth, or a first one once the quarter is taken) goes through the ledger as before, in
//! the eviction order above, against the same one total: all reservations, with or without
//! the ledger, are added to one atomic counter by compare-and-swap within the limit, so the
//! budget is never passed however they interleave. That counter is the gauge's own value.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// A connection closed for the budget: its buffer was next in eviction order when another
/// needed the room (or, for the one that asked, itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// The bytes its buffer held.
    pub reserved: usize,
}

impl fmt::Display for Evicted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client_hello_memory is full and this connection's buffer ({} bytes) was among \
             the largest, longest without progress",
            self.reserved
        )
    }
}

/// A pending connection's place in eviction order: the largest buffer first, then the one
/// whose buffer grew longest ago. A new place is made at each growth, so it also names the
/// entry: stamps are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    bytes: Reverse<usize>,
    grown: u64,
}

impl Place {
    /// The bytes reserved at this place.
    pub fn bytes(&self) -> usize {
        self.bytes.0
    }
}

/// Bytes reserved per pending connection, in eviction order, within `limit`. Pure but for
/// `total`, the bytes reserved in all (its own and others' taken beside it; a gauge, so that
/// what is reported is what is counted): `S` is how a victim is told, handed back to the
/// caller on eviction. Only connections that hold bytes have an entry: one that has sent
/// nothing costs nothing, and evicting it would free nothing.
#[derive(Debug)]
pub struct Ledger<S> {
    limit: usize,
    /// Bytes of the ledger's own entries.
    held: usize,
    total: Gauge,
    /// The next growth's stamp: the ledger's own clock of progress.
    next: u64,
    // The first entry is the next to evict. O(log n) a change.
    pending: BTreeMap<Place, S>,
}

impl<S> Ledger<S> {
    /// An empty ledger for `limit` bytes, alone in its budget.
    #[cfg(test)]
    pub fn new(limit: usize) -> Self {
        Self::sharing(limit, Gauge::default())
    }

    /// An empty ledger for `limit` bytes of `total`, which others may add to (within the
    /// limit, by [`take`]) beside it.
    pub fn sharing(limit: usize, total: Gauge) -> Self {
        Self {
            limit,
            held: 0,
            total,
            next: 0,
            pending: BTreeMap::new(),
        }
    }

    /// Grows a connection's reservation from what it holds at `place` (`None`: nothing yet)
    /// and `outside` (bytes it holds in the total without an entry) to `to` bytes (its
    /// buffer's new capacity), returning its new place; `signal` is how it is told if it is
    /// evicted later. To make room, the next connection in order is evicted, its signal handed
    /// to `evict`; if the asker at its new size would itself be next, it is evicted instead,
    /// with `Err`, and what it held is released. (Alone in its budget one victim is always
    /// enough: it holds at least `to` bytes, and the overflow is at most that.) `Err` too if
    /// it was evicted before.
    pub fn reserve(
        &mut self,
        place: Option<Place>,
        outside: usize,
        to: usize,
        signal: impl FnOnce() -> S,
        mut evict: impl FnMut(S),
    ) -> Result<Place, Evicted> {
        let in_ledger = place.map_or(0, |place| place.bytes());
        let from = in_ledger + outside;
        let evicted = Evicted { reserved: from };
        let held = match place {
            None => None,
            Some(place) => match self.pending.remove(&place) {
                Some(signal) => Some(signal),
                None => {
                    release(&self.total, outside);
                    return Err(evicted);
                }
            },
        };
        self.held -= in_ledger;
        // The newest stamp: among buffers of its size, the asker is the last to go.
        let grown = Place {
            bytes: Reverse(to),
            grown: self.next,
        };
        self.next += 1;
        while !take(&self.total, self.limit, from, to) {
            let next = match self.pending.first_entry() {
                // More than the whole budget, with nobody left to evict; or the asker is next.
                None => None,
                Some(next) if grown < *next.key() => None,
                Some(next) => Some(next),
            };
            let Some(next) = next else {
                release(&self.total, from);
                return Err(evicted);
            };
            let (victim, signal) = next.remove_entry();
            self.held -= victim.bytes();
            release(&self.total, victim.bytes());
            evict(signal);
        }
        self.pending.insert(grown, held.unwrap_or_else(signal));
        self.held += to;
        Ok(grown)
    }

    /// Forgets the connection at `place` (its buffer went to the backend, or its connection
    /// ended); a no-op once it was evicted.
    pub fn close(&mut self, place: Place) {
        if self.pending.remove(&place).is_some() {
            self.held -= place.bytes();
            release(&self.total, place.bytes());
        }
    }

    /// Bytes reserved by the ledger's pending connections.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held
    }

    /// Connections holding bytes.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// Replaces `from` of the bytes in `total` with `to` if that stays within `limit`; whether it
/// did. A compare-and-swap: concurrent takers never pass the limit together.
fn take(total: &Gauge, limit: usize, from: usize, to: usize) -> bool {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let (from, to) = (as_i64(from), as_i64(to));
    total
        .inner()
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
            let new = t.saturating_sub(from).saturating_add(to);
            (new <= limit).then_some(new)
        })
        .is_ok()
}

fn release(total: &Gauge, bytes: usize) {
    total.inner().fetch_sub(as_i64(bytes), Ordering::AcqRel);
}

fn as_i64(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// The shared budget: the [`Ledger`] behind one lock, taken only under pressure (see the
/// module's doc): when a buffer grows past its first reservation, when a first reservation
/// finds the unledgered quarter taken, and when a connection that went through the ledger
/// ends. Never when a connection opens, per read into room already reserved, or for a hello
/// that fits its first buffer while the quarter has room.
#[derive(Debug)]
pub struct HelloBudget {
    ledger: Mutex<Ledger<Arc<Notify>>>,
    limit: usize,
    /// Bytes reserved without the ledger, within `unledgered_limit`.
    unledgered: AtomicUsize,
    unledgered_limit: usize,
    /// `sniroute_client_hello_memory_bytes`: every byte reserved, the one total the limit
    /// holds (its atomic is what reservations add to).
    held: Gauge,
}

impl HelloBudget {
    /// A budget of `limit` bytes, reporting what it holds in `held`.
    pub fn new(limit: usize, held: Gauge) -> Self {
        Self {
            ledger: Mutex::new(Ledger::sharing(limit, held.clone())),
            limit,
            unledgered: AtomicUsize::new(0),
            unledgered_limit: limit / 4,
            held,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger<Arc<Notify>>> {
        // Each ledger step updates its sums only after everything that could fail.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection that starts reading its first bytes: no lock and no allocation
    /// until it reserves.
    pub fn open(&self) -> Pending<'_> {
        Pending {
            budget: self,
            place: None,
            unledgered: 0,
            evicted: None,
        }
    }

    /// Reserves `bytes` without the ledger, if the quarter and the budget have room.
    fn take_unledgered(&self, bytes: usize) -> bool {
        let cap = self.unledgered_limit;
        let quarter = self
            .unledgered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(bytes).filter(|&new| new <= cap)
            });
        if quarter.is_err() {
            return false;
        }
        if take(&self.held, self.limit, 0, bytes) {
            return true;
        }
        self.unledgered.fetch_sub(bytes, Ordering::AcqRel);
        false
    }
}

/// One connection's reservation, released when dropped.
#[derive(Debug)]
pub struct Pending<'a> {
    budget: &'a HelloBudget,
    /// Where it stands in the ledger, once it reserved there (and until it is evicted).
    place: Option<Place>,
    /// Bytes it reserved without the ledger (its first reservation, while there was room).
    unledgered: usize,
    /// Made at the first reservation through the ledger: only a connection there can be
    /// evicted.
    evicted: Option<Arc<Notify>>,
}

impl Pending<'_> {
    /// Reserves `capacity` bytes in all for this connection's buffer, before it grows to that.
    pub fn reserve(&mut self, capacity: usize) -> Result<(), Evicted> {
        let budget = self.budget;
        let first = self.place.is_none() && self.unledgered == 0 && self.evicted.is_none();
        if first && budget.take_unledgered(capacity) {
            self.unledgered = capacity;
            return Ok(());
        }
        let evicted = self.evicted.get_or_insert_with(|| Arc::new(Notify::new()));
        let outside = std::mem::take(&mut self.unledgered);
        let mut ledger = budget.lock();
        let reserved = ledger.reserve(
            self.place,
            outside,
            capacity,
            || evicted.clone(),
            |victim| victim.notify_one(),
        );
        drop(ledger);
        // Its bytes are in the ledger's entry now (or released with the refusal).
        budget.unledgered.fetch_sub(outside, Ordering::AcqRel);
        self.place = reserved.ok();
        reserved.map(drop)
    }

    /// Bytes this connection holds in the budget (as far as it knows: 0 once it found itself
    /// evicted).
    #[cfg(test)]
    pub fn reserved(&self) -> usize {
        self.place.map_or(0, |place| place.bytes()) + self.unledgered
    }

    /// Completes once another connection's reservation has evicted this one. (`notify_one`
    /// keeps a permit: an eviction while the task was not waiting is not lost.)
    pub async fn evicted(&self) {
        match &self.evicted {
            Some(evicted) => evicted.notified().await,
            // Nothing in the ledger, so nothing to evict; the caller asks again after its
            // next reservation.
            None => std::future::pending().await,
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let budget = self.budget;
        if self.unledgered > 0 {
            budget
                .unledgered
                .fetch_sub(self.unledgered, Ordering::AcqRel);
            release(&budget.held, self.unledgered);
        }
        // One that never reserved through the ledger has no entry: no lock for it.
        if let Some(place) = self.place {
            budget.lock().close(place);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger's connection as the tests drive it: where it stands, and who it is.
    struct Conn {
        place: Option<Place>,
        name: char,
    }

    fn open(name: char) -> Conn {
        Conn { place: None, name }
    }

    /// Grows `conn` to `to`; whether it stayed, and who was evicted.
    fn grow(ledger: &mut Ledger<char>, conn: &mut Conn, to: usize) -> (bool, Vec<char>) {
        let mut evicted = Vec::new();
        let name = conn.name;
        conn.place = ledger
            .reserve(conn.place, 0, to, || name, |who| evicted.push(who))
            .ok();
        (conn.place.is_some(), evicted)
    }

    fn close(ledger: &mut Ledger<char>, conn: &Conn) {
        if let Some(place) = conn.place {
            ledger.close(place);
        }
    }

    #[test]
    fn growth_within_the_limit_evicts_nobody() {
        let mut ledger = Ledger::new(10_000);
        let mut a = open('a');
        let mut b = open('b');
        assert_eq!(grow(&mut ledger, &mut a, 1024), (true, vec![]));
        assert_eq!(grow(&mut ledger, &mut b, 2048), (true, vec![]));
        assert_eq!(grow(&mut ledger, &mut a, 4096), (true, vec![]));
        assert_eq!(ledger.held(), 4096 + 2048);
        assert_eq!(ledger.pending(), 2);
    }

    #[test]
    fn the_largest_are_evicted_first_and_only_as_many_as_needed() {
        let mut ledger = Ledger::new(8 * 1024);
        let mut small = open('s');
        let mut big = open('b');
        let mut mid = open('m');
        assert!(grow(&mut ledger, &mut small, 1024).0);
        assert!(grow(&mut ledger, &mut big, 4096).0);
        assert!(grow(&mut ledger, &mut mid, 2048).0);
        let mut new = open('n');
        // 1024 over the limit: the largest goes, though it is younger than the small one.
        assert_eq!(grow(&mut ledger, &mut new, 2048), (true, vec!['b']));
        // To 8192: it would be the largest, so it goes itself, evicting nobody.
        assert_eq!(grow(&mut ledger, &mut new, 8192), (false, vec![]));
        assert_eq!(ledger.held(), 1024 + 2048);
        // An evicted connection's later growth fails, without evicting; its close is a no-op.
        assert_eq!(grow(&mut ledger, &mut big, 8192), (false, vec![]));
        close(&mut ledger, &big);
        assert_eq!(ledger.held(), 1024 + 2048);
    }

    #[test]
    fn among_equal_buffers_the_one_longest_without_growing_goes_first() {
        let mut ledger = Ledger::new(3 * 1024);
        let mut conns: Vec<Conn> = ['a', 'b', 'c'].into_iter().map(open).collect();
        for conn in &mut conns {
            assert!(grow(&mut ledger, conn, 1024).0);
        }
        // `a` grows again (to 1024 in all: progress, no more bytes), so `b` is now the
        // stalest.
        assert_eq!(grow(&mut ledger, &mut conns[0], 1024), (true, vec![]));
        let mut young = open('y');
        assert_eq!(grow(&mut ledger, &mut young, 1024), (true, vec!['b']));
        assert_eq!(grow(&mut ledger, &mut open('z'), 1024), (true, vec!['c']));
    }

    #[test]
    fn a_flood_of_younger_larger_buffers_never_evicts_a_smaller_older_one() {
        // The aimed attack on age order: a client sends its first record, then a flood of
        // fresh connections each holding a larger buffer fills the budget many times over.
        // Room for the client's first record and four attackers' full buffers.
        let mut ledger = Ledger::new(1024 + 4 * 16384);
        let mut client = open('c');
        assert!(grow(&mut ledger, &mut client, 1024).0);
        let mut evicted = Vec::new();
        for _ in 0..200 {
            let mut attacker = open('x');
            for to in [1024, 2048, 4096, 8192, 16384] {
                let (stayed, gone) = grow(&mut ledger, &mut attacker, to);
                evicted.extend(gone);
                if !stayed {
                    break;
                }
            }
        }
        assert!(!evicted.is_empty(), "the flood never filled the budget");
        assert!(!evicted.contains(&'c'), "the client was evicted");
        // Its next record grows it, and a growth that fits evicts an attacker, not it.
        assert_eq!(grow(&mut ledger, &mut client, 2048), (true, vec!['x']));
    }

    #[test]
    fn a_first_reservation_larger_than_everyone_else_is_refused_not_theirs() {
        let mut ledger = Ledger::new(2048);
        let mut a = open('a');
        let mut b = open('b');
        assert!(grow(&mut ledger, &mut a, 1024).0);
        assert!(grow(&mut ledger, &mut b, 1024).0);
        assert_eq!(grow(&mut ledger, &mut open('n'), 2048), (false, vec![]));
        assert_eq!((ledger.held(), ledger.pending()), (2048, 2));
    }

    #[test]
    fn a_growth_evicts_an_older_buffer_of_its_new_size_but_never_a_smaller_one() {
        let mut ledger = Ledger::new(4096);
        let mut peer = open('p');
        let mut small = open('s');
        let mut asker = open('a');
        assert!(grow(&mut ledger, &mut peer, 2048).0);
        assert!(grow(&mut ledger, &mut small, 1024).0);
        assert!(grow(&mut ledger, &mut asker, 1024).0);
        // To 2048: the older 2048 goes (one victim of at least the asker's new size always
        // frees enough); the smaller one stays.
        assert_eq!(grow(&mut ledger, &mut asker, 2048), (true, vec!['p']));
        assert_eq!((ledger.held(), ledger.pending()), (3072, 2));
    }

    #[test]
    fn more_than_the_whole_budget_is_refused() {
        let mut ledger = Ledger::new(1024);
        let mut a = open('a');
        assert_eq!(grow(&mut ledger, &mut a, 2048), (false, vec![]));
        assert_eq!((ledger.held(), ledger.pending()), (0, 0));
    }

    #[test]
    fn closing_releases() {
        let mut ledger = Ledger::new(8192);
        let mut a = open('a');
        let mut b = open('b');
        assert!(grow(&mut ledger, &mut a, 4096).0);
        assert!(grow(&mut ledger, &mut b, 4096).0);
        close(&mut ledger, &a);
        assert_eq!(ledger.held(), 4096);
        close(&mut ledger, &b);
        assert_eq!((ledger.held(), ledger.pending()), (0, 0));
    }

    #[test]
    fn held_never_passes_the_limit_each_growth_evicts_at_most_one_and_sums_hold() {
        // A deterministic mix of opens, growths and closes over many connections.
        let limit = 64 * 1024;
        let mut ledger = Ledger::new(limit);
        let mut live: Vec<Conn> = Vec::new();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut evictions = 0;
        for step in 0..20_000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let pick = (seed >> 8) as usize % live.len().max(1);
            match seed % 4 {
                0 => live.push(open('x')),
                1 | 2 if !live.is_empty() => {
                    let held = live[pick].place.map_or(0, |place| place.bytes());
                    let to = (held * 2).clamp(1024, 16384);
                    let (ok, evicted) = grow(&mut ledger, &mut live[pick], to);
                    // One victim at least as large as the asker's new size frees enough.
                    assert!(evicted.len() <= 1, "step {step}: {evicted:?}");
                    evictions += evicted.len();
                    if !ok {
                        live.swap_remove(pick);
                    }
                }
                _ if !live.is_empty() => close(&mut ledger, &live.swap_remove(pick)),
                _ => {}
            }
            assert!(ledger.held() <= limit, "step {step}: {}", ledger.held());
        }
        assert!(evictions > 0, "the mix never filled the budget");
        for conn in live {
            close(&mut ledger, &conn);
        }
        assert_eq!((ledger.held(), ledger.pending()), (0, 0));
    }

    #[tokio::test]
    async fn a_victim_is_told_even_when_not_waiting_and_drop_releases() {
        // What the budget holds is what the gauge says.
        let held = Gauge::default();
        let budget = HelloBudget::new(2048, held.clone());
        let mut big = budget.open();
        big.reserve(2048).unwrap();
        let mut small = budget.open();
        small.reserve(1024).unwrap();
        // The permit was stored before anyone waited.
        tokio::time::timeout(std::time::Duration::from_secs(1), big.evicted())
            .await
            .expect("the evicted connection is told");
        assert_eq!(held.get(), 1024);
        assert!(big.reserve(4096).is_err(), "evicted stays evicted");
        assert_eq!(big.reserved(), 0);
        drop(big);
        assert_eq!(held.get(), 1024);
        assert_eq!(small.reserved(), 1024);
        drop(small);
        assert_eq!(held.get(), 0);
    }

    #[test]
    fn first_reservations_skip_the_ledger_up_to_a_quarter_and_growth_enters_it() {
        let held = Gauge::default();
        let budget = HelloBudget::new(8 * 1024, held.clone());
        let mut a = budget.open();
        let mut b = budget.open();
        a.reserve(1024).unwrap();
        b.reserve(1024).unwrap();
        assert_eq!(
            budget.lock().pending(),
            0,
            "no ledger entry for a first 1 KiB"
        );
        assert_eq!(
            (held.get(), budget.unledgered.load(Ordering::Relaxed)),
            (2048, 2048)
        );
        // The quarter (2 KiB) is taken: the next first reservation goes through the ledger.
        let mut c = budget.open();
        c.reserve(1024).unwrap();
        assert_eq!(budget.lock().pending(), 1);
        // A growth moves a's bytes into the ledger, where it can be evicted.
        a.reserve(2048).unwrap();
        assert_eq!(budget.lock().pending(), 2);
        assert_eq!(budget.unledgered.load(Ordering::Relaxed), 1024);
        assert_eq!((held.get(), a.reserved()), (1024 + 1024 + 2048, 2048));
        // Past the limit, the ledger's next in order goes (a: the largest, longest without
        // growing); b, unledgered, cannot be.
        let mut later: Vec<_> = (0..3).map(|_| budget.open()).collect();
        for p in &mut later {
            p.reserve(2048).unwrap();
        }
        assert!(a.reserve(4096).is_err(), "a was evicted");
        assert_eq!(held.get(), 1024 + 1024 + 3 * 2048);
        drop((a, b, c, later));
        assert_eq!(
            (held.get(), budget.unledgered.load(Ordering::Relaxed)),
            (0, 0)
        );
    }

    #[test]
    fn threads_reserving_at_once_never_pass_the_limit_and_release_all() {
        let held = Gauge::default();
        let limit = 64 * 1024;
        let budget = HelloBudget::new(limit, held.clone());
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (budget, held) = (&budget, &held);
                s.spawn(move || {
                    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                    let mut live = Vec::new();
                    for _ in 0..20_000 {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        if seed.is_multiple_of(3) && !live.is_empty() {
                            live.swap_remove((seed >> 8) as usize % live.len());
                            continue;
                        }
                        let mut p = budget.open();
                        let mut to = 1024;
                        while p.reserve(to).is_ok() && seed.is_multiple_of(5) && to < 16 * 1024 {
                            to *= 2;
                        }
                        live.push(p);
                        assert!(held.get() <= limit as i64, "{}", held.get());
                    }
                });
            }
        });
        assert_eq!(
            (held.get(), budget.unledgered.load(Ordering::Relaxed)),
            (0, 0)
        );
        assert_eq!(budget.lock().held(), 0);
    }
}
