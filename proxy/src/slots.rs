//! A cap on things open at once as one atomic counter: taking a slot is a `fetch_add` (undone
//! when over the cap), releasing it a `fetch_sub`. Nothing waits for a slot (over the cap is
//! refused), so nothing needs a queue or its lock, as tokio's `Semaphore` takes one on every
//! release.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The one rule: `open` things leave no room under `limit`.
fn full(open: usize, limit: Option<usize>) -> bool {
    limit.is_some_and(|limit| open >= limit)
}

/// Things open now, counted against a cap each taker states.
#[derive(Debug, Default)]
pub struct Slots {
    open: AtomicUsize,
}

impl Slots {
    /// How many are open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes one if fewer than `limit` are open (`None`: no cap); released when dropped.
    pub fn try_take(self: &Arc<Self>, limit: Option<usize>) -> Option<Slot> {
        self.acquire(limit).then(|| Slot(self.clone()))
    }

    /// Whether a take would be refused now: what `explain` reports, by the rule a take
    /// applies.
    pub fn is_full(&self, limit: Option<usize>) -> bool {
        full(self.open(), limit)
    }

    /// Counts one in if fewer than `limit` are open; the caller [`release`](Self::release)s it.
    pub(crate) fn acquire(&self, limit: Option<usize>) -> bool {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if full(before, limit) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Counts one out.
    pub(crate) fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One taken slot.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_counts_slots_until_they_drop() {
        let slots = Arc::new(Slots::default());
        let one = slots.try_take(Some(2)).unwrap();
        let two = slots.try_take(Some(2)).unwrap();
        assert!(
            slots.try_take(Some(2)).is_none(),
            "the third is over the cap"
        );
        assert_eq!(slots.open(), 2, "a refused take leaves no count behind");
        drop(one);
        let _three = slots.try_take(Some(2)).unwrap();
        drop(two);
        assert_eq!(slots.open(), 1);
        assert!(slots.try_take(None).is_some(), "no cap");
    }
}
