//! Rate limiting for per-connection log lines, so a flood of bad input cannot flood the logs.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tokio::time::Instant;

/// Allows `per_second` lines in each wall-clock second and reports how many it held back.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    per_second: u32,
    start: Instant,
    second: AtomicU64,
    used: AtomicU32,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub(crate) fn new(per_second: u32) -> Self {
        Self {
            per_second,
            start: Instant::now(),
            second: AtomicU64::new(0),
            used: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether one more line may be logged now. Counting is approximate at second boundaries,
    /// which is all a log budget needs.
    pub(crate) fn allow(&self) -> bool {
        let now = self.start.elapsed().as_secs();
        let second = self.second.load(Ordering::Relaxed);
        if now != second
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            if suppressed > 0 {
                tracing::warn!(
                    suppressed,
                    "connection log lines suppressed in the last burst"
                );
            }
        }
        let used = self.used.fetch_add(1, Ordering::Relaxed);
        if used < self.per_second {
            return true;
        }
        if used == self.per_second {
            // Said at once, so a burst that ends here is still visible in the logs.
            tracing::warn!(
                per_second = self.per_second,
                "connection log lines suppressed for the rest of this second"
            );
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_a_budget_per_second() {
        let limiter = LogLimiter::new(3);
        let allowed = (0..10).filter(|_| limiter.allow()).count();
        assert_eq!(allowed, 3);
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert!(limiter.allow(), "a new second has a new budget");
        assert_eq!(
            limiter.suppressed.load(Ordering::Relaxed),
            0,
            "reported and reset"
        );
    }
}
