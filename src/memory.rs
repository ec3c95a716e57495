//! The server-wide memory budget (`--max-memory`) for what clients make the
//! server hold: incomplete frames and messages being reassembled from
//! fragments, and frames queued to sessions that do not read them. Without
//! it, every connection may hold up to `--max-message` of a frame it never
//! finishes, and every slow reader up to `--max-queue` (issue 9).
//!
//! One atomic shared by all shards, touched only when a partial buffer grows
//! or shrinks (a frame split across reads) and once per shard tick for the
//! shard's queues, never per relayed frame. A partial frame that would pass
//! the limit is refused, and the session that asked is closed with 1013;
//! queues past it close the sessions with the largest ones (1013). What
//! others hold is untouched.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bytes held against `--max-memory`, and the limit.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
    refusals: AtomicU64,
}

impl Default for MemoryBudget {
    /// An unbounded budget (until [`MemoryBudget::set_limit`]).
    fn default() -> MemoryBudget {
        MemoryBudget {
            limit: AtomicUsize::new(usize::MAX),
            used: AtomicUsize::new(0),
            refusals: AtomicU64::new(0),
        }
    }
}

impl MemoryBudget {
    /// Sets the limit, once, when the server starts.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Charges `n` more bytes; false (and nothing charged) when that would
    /// pass the limit.
    pub fn try_grow(&self, n: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let ok = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&after| after <= limit)
            })
            .is_ok();
        if !ok {
            self.refusals.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Gives back `n` bytes charged before.
    pub fn shrink(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Growths refused so far.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }
}

/// Half of the machine's physical memory: the default `--max-memory`.
pub fn default_limit() -> usize {
    // SAFETY: sysconf only reads system configuration values.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        // Unknown: 1 GiB, a safe bound on any machine this would run on.
        return 1 << 30;
    }
    (pages as usize).saturating_mul(page as usize) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_past_the_limit_is_refused_and_counted() {
        let b = MemoryBudget::default();
        b.set_limit(100);
        assert!(b.try_grow(60));
        assert!(!b.try_grow(41));
        assert_eq!((b.used(), b.refusals()), (60, 1));
        assert!(b.try_grow(40));
        b.shrink(100);
        assert_eq!(b.used(), 0);
        assert!(b.try_grow(100));
        assert!(!b.try_grow(usize::MAX));
    }

    #[test]
    fn default_limit_is_half_the_machine() {
        let l = default_limit();
        assert!(l >= 64 << 20, "{l}");
    }
}
