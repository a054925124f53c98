//! `client_hello_memory`: one budget for the buffers of every connection still reading its
//! ClientHello (and PROXY header), so a flood of slow, huge, never-finished hellos cannot pin
//! `max_connections x max_client_hello` bytes.
//!
//! A buffer is charged before it grows, for the capacity it grows to (what is allocated, not
//! what was received). A charge that would pass the budget first closes the connections whose
//! hellos have been pending longest: an attacker's connections age while it trickles, so a
//! fresh client with a complete hello is the last to go. The [`Ledger`] is the pure core
//! (bytes per pending connection, oldest first); [`HelloBudget`] puts it behind a lock and
//! tells each victim's task through its own [`Notify`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// A connection closed for the budget: its hello was the oldest pending when another needed
/// the room (or, for the one that asked, itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// The bytes its buffer held.
    pub reserved: usize,
}

impl fmt::Display for Evicted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client_hello_memory is full and this unfinished hello ({} bytes) was among the \
             oldest",
            self.reserved
        )
    }
}

/// A pending connection's place in the [`Ledger`]: also its age, as the caller hands tickets
/// out in the order connections open.
pub type Ticket = u64;

#[derive(Debug)]
struct Entry<S> {
    bytes: usize,
    signal: S,
}

/// Bytes reserved per pending connection, oldest first, within `limit`. Pure: `S` is how a
/// victim is told, handed back to the caller on eviction. Only connections that hold bytes
/// have an entry: one that has sent nothing costs nothing, and evicting it would free nothing.
#[derive(Debug)]
pub struct Ledger<S> {
    limit: usize,
    held: usize,
    // Ordered by age: the first entry is the oldest hello holding memory. O(log n) a change.
    pending: BTreeMap<Ticket, Entry<S>>,
}

impl<S> Ledger<S> {
    /// An empty ledger for `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            held: 0,
            pending: BTreeMap::new(),
        }
    }

    /// Grows `ticket`'s reservation from `from` bytes (what it holds, as its caller counts)
    /// to `to` (its buffer's new capacity); `signal` is how it is told if it is evicted later.
    /// To make room, the oldest connections are evicted, each signal handed to `evict`; once
    /// `ticket` is itself the oldest left, it is evicted instead, with `Err`. `Err` too if
    /// it was evicted before.
    pub fn reserve(
        &mut self,
        ticket: Ticket,
        from: usize,
        to: usize,
        signal: impl FnOnce() -> S,
        mut evict: impl FnMut(S),
    ) -> Result<(), Evicted> {
        let evicted = Evicted { reserved: from };
        if from > 0 && !self.pending.contains_key(&ticket) {
            return Err(evicted);
        }
        let more = to.saturating_sub(from);
        while self.held.saturating_add(more) > self.limit {
            let Some(oldest) = self.pending.first_entry() else {
                break;
            };
            if *oldest.key() >= ticket {
                self.close(ticket);
                return Err(evicted);
            }
            let victim = oldest.remove();
            self.held -= victim.bytes;
            evict(victim.signal);
        }
        if self.held.saturating_add(more) > self.limit {
            // More than the whole budget, with nobody left to evict.
            self.close(ticket);
            return Err(evicted);
        }
        self.pending
            .entry(ticket)
            .or_insert_with(|| Entry {
                bytes: 0,
                signal: signal(),
            })
            .bytes += more;
        self.held += more;
        Ok(())
    }

    /// Forgets `ticket` (its hello is complete or its connection ended); a no-op once it was
    /// evicted.
    pub fn close(&mut self, ticket: Ticket) {
        if let Some(entry) = self.pending.remove(&ticket) {
            self.held -= entry.bytes;
        }
    }

    /// Bytes reserved by pending connections.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Connections holding bytes.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// The shared budget: the [`Ledger`] behind one lock, taken only when a buffer grows (a few
/// times per connection), never when a connection opens or per read into room already
/// reserved.
#[derive(Debug)]
pub struct HelloBudget {
    ledger: Mutex<Ledger<Arc<Notify>>>,
    /// The next connection's ticket: an atomic, so opening takes no lock.
    next: AtomicU64,
    /// `sniroute_client_hello_memory_bytes`, set under the lock so it follows every change.
    held: Gauge,
}

impl HelloBudget {
    /// A budget of `limit` bytes, reporting what it holds in `held`.
    pub fn new(limit: usize, held: Gauge) -> Self {
        Self {
            ledger: Mutex::new(Ledger::new(limit)),
            next: AtomicU64::new(0),
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
            ticket: self.next.fetch_add(1, Ordering::Relaxed),
            reserved: 0,
            evicted: None,
        }
    }

    fn report(&self, ledger: &Ledger<Arc<Notify>>) {
        self.held
            .set(i64::try_from(ledger.held()).unwrap_or(i64::MAX));
    }
}

/// One connection's reservation, released when dropped.
#[derive(Debug)]
pub struct Pending<'a> {
    budget: &'a HelloBudget,
    ticket: Ticket,
    reserved: usize,
    /// Made at the first reservation: only a connection holding bytes can be evicted.
    evicted: Option<Arc<Notify>>,
}

impl Pending<'_> {
    /// Reserves `capacity` bytes in all for this connection's buffer, before it grows to that.
    pub fn reserve(&mut self, capacity: usize) -> Result<(), Evicted> {
        let evicted = self.evicted.get_or_insert_with(|| Arc::new(Notify::new()));
        let mut ledger = self.budget.lock();
        let reserved = ledger.reserve(
            self.ticket,
            self.reserved,
            capacity,
            || evicted.clone(),
            |victim| victim.notify_one(),
        );
        self.budget.report(&ledger);
        drop(ledger);
        self.reserved = if reserved.is_ok() { capacity } else { 0 };
        reserved
    }

    /// Completes once another connection's reservation has evicted this one. (`notify_one`
    /// keeps a permit: an eviction while the task was not waiting is not lost.)
    pub async fn evicted(&self) {
        match &self.evicted {
            Some(evicted) => evicted.notified().await,
            // Nothing reserved yet, so nothing to evict; the caller asks again after reserving.
            None => std::future::pending().await,
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        // One that never reserved has no entry: no lock for it.
        if self.reserved > 0 {
            let mut ledger = self.budget.lock();
            ledger.close(self.ticket);
            self.budget.report(&ledger);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger's connection as the tests drive it: its ticket, what it holds, who it is.
    struct Conn {
        ticket: Ticket,
        held: usize,
        name: char,
    }

    /// Tickets in opening order, as [`HelloBudget::open`] hands them out.
    static NEXT: AtomicU64 = AtomicU64::new(0);

    fn open(name: char) -> Conn {
        Conn {
            ticket: NEXT.fetch_add(1, Ordering::Relaxed),
            held: 0,
            name,
        }
    }

    /// Grows `conn` to `to`; whether it stayed, and who was evicted.
    fn grow(ledger: &mut Ledger<char>, conn: &mut Conn, to: usize) -> (bool, Vec<char>) {
        let mut evicted = Vec::new();
        let name = conn.name;
        let ok = ledger
            .reserve(conn.ticket, conn.held, to, || name, |who| evicted.push(who))
            .is_ok();
        conn.held = if ok { to } else { 0 };
        (ok, evicted)
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
    fn the_oldest_are_evicted_first_and_only_as_many_as_needed() {
        let mut ledger = Ledger::new(4096);
        let mut conns: Vec<Conn> = ['a', 'b', 'c', 'd'].into_iter().map(open).collect();
        for conn in &mut conns {
            assert!(grow(&mut ledger, conn, 1024).0);
        }
        let mut young = open('e');
        // 1024 over the limit: the single oldest goes.
        assert_eq!(grow(&mut ledger, &mut young, 1024), (true, vec!['a']));
        // 2048 more: the next two oldest.
        assert_eq!(grow(&mut ledger, &mut young, 3072), (true, vec!['b', 'c']));
        assert_eq!(ledger.held(), 4096);
        assert_eq!(ledger.pending(), 2);
        // An evicted connection's later growth fails, without evicting; its close is a no-op.
        assert_eq!(grow(&mut ledger, &mut conns[0], 2048), (false, vec![]));
        ledger.close(conns[0].ticket);
        assert_eq!(ledger.held(), 4096);
    }

    #[test]
    fn the_oldest_asking_for_more_is_itself_evicted_not_the_younger() {
        let mut ledger = Ledger::new(4096);
        let mut old = open('o');
        let mut young = open('y');
        assert!(grow(&mut ledger, &mut old, 2048).0);
        assert!(grow(&mut ledger, &mut young, 2048).0);
        let refused = ledger.reserve(old.ticket, 2048, 4096, || 'o', |_| unreachable!());
        assert_eq!(refused, Err(Evicted { reserved: 2048 }));
        assert_eq!(ledger.held(), 2048);
        assert_eq!(ledger.pending(), 1);
    }

    #[test]
    fn an_old_connection_reserving_its_first_bytes_does_not_evict_younger_ones() {
        let mut ledger = Ledger::new(2048);
        let mut old = open('o');
        let mut young = open('y');
        assert!(grow(&mut ledger, &mut young, 2048).0);
        assert_eq!(grow(&mut ledger, &mut old, 1024), (false, vec![]));
        assert_eq!(ledger.held(), 2048);
    }

    #[test]
    fn a_middle_aged_asker_evicts_the_older_then_itself() {
        let mut ledger = Ledger::new(3072);
        let mut conns: Vec<Conn> = ['o', 'm', 'y'].into_iter().map(open).collect();
        for conn in &mut conns {
            assert!(grow(&mut ledger, conn, 1024).0);
        }
        // Wants 3072 of 3072 while the youngest holds 1024: the oldest goes, then the asker
        // is the oldest left.
        assert_eq!(grow(&mut ledger, &mut conns[1], 3072), (false, vec!['o']));
        assert_eq!(ledger.held(), 1024);
        assert_eq!(ledger.pending(), 1);
    }

    #[test]
    fn more_than_the_whole_budget_is_refused() {
        let mut ledger = Ledger::new(1024);
        let mut a = open('a');
        assert_eq!(grow(&mut ledger, &mut a, 2048), (false, vec![]));
        assert_eq!((ledger.held(), ledger.pending()), (0, 0));
    }

    #[test]
    fn nothing_reserved_is_never_an_entry() {
        let mut ledger = Ledger::<char>::new(1024);
        let idle = open('i');
        let mut busy = open('b');
        // The idle one is older but holds nothing: it is not evicted (nor counted).
        assert_eq!(grow(&mut ledger, &mut busy, 1024), (true, vec![]));
        assert_eq!(ledger.pending(), 1);
        ledger.close(idle.ticket);
        assert_eq!(ledger.held(), 1024);
    }

    #[test]
    fn closing_releases() {
        let mut ledger = Ledger::new(8192);
        let mut a = open('a');
        let mut b = open('b');
        assert!(grow(&mut ledger, &mut a, 4096).0);
        assert!(grow(&mut ledger, &mut b, 4096).0);
        ledger.close(a.ticket);
        assert_eq!(ledger.held(), 4096);
        ledger.close(b.ticket);
        assert_eq!((ledger.held(), ledger.pending()), (0, 0));
    }

    #[test]
    fn held_never_passes_the_limit_and_sums_hold_whatever_the_order() {
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
                    let to = (live[pick].held * 2).clamp(1024, 16384);
                    let (ok, evicted) = grow(&mut ledger, &mut live[pick], to);
                    evictions += evicted.len();
                    if !ok {
                        live.swap_remove(pick);
                    }
                }
                _ if !live.is_empty() => ledger.close(live.swap_remove(pick).ticket),
                _ => {}
            }
            assert!(ledger.held() <= limit, "step {step}: {}", ledger.held());
        }
        assert!(evictions > 0, "the mix never filled the budget");
        for conn in live {
            ledger.close(conn.ticket);
        }
        assert_eq!((ledger.held(), ledger.pending()), (0, 0));
    }

    #[tokio::test]
    async fn a_victim_is_told_even_when_not_waiting_and_drop_releases() {
        // What the budget holds is what the gauge says.
        let held = Gauge::default();
        let budget = HelloBudget::new(2048, held.clone());
        let mut old = budget.open();
        old.reserve(2048).unwrap();
        let mut young = budget.open();
        young.reserve(1024).unwrap();
        // The permit was stored before anyone waited.
        tokio::time::timeout(std::time::Duration::from_secs(1), old.evicted())
            .await
            .expect("the evicted connection is told");
        assert_eq!(held.get(), 1024);
        assert!(old.reserve(4096).is_err(), "evicted stays evicted");
        drop(old);
        assert_eq!(held.get(), 1024);
        drop(young);
        assert_eq!(held.get(), 0);
    }
}
