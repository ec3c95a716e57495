//! A compact monotonic clock for per-session timestamps: milliseconds since
//! process start in a `u32` (4 bytes instead of a 16-byte `Instant`, which
//! matters at ~1 KB per idle session). Differences wrap after 49 days, far
//! beyond any timeout the server keeps.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds since the process's clock epoch, wrapping.
pub type Millis = u32;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The current time.
pub fn now() -> Millis {
    Instant::now().duration_since(epoch()).as_millis() as u32
}

/// Time from `then` to `now` (both from [`now`]).
pub fn since(now: Millis, then: Millis) -> Duration {
    Duration::from_millis(now.wrapping_sub(then) as u64)
}

/// `t` plus `d`, for deadlines.
pub fn after(t: Millis, d: Duration) -> Millis {
    t.wrapping_add(d.as_millis() as u32)
}

/// Whether `deadline` has passed at `now`.
pub fn reached(now: Millis, deadline: Millis) -> bool {
    (now.wrapping_sub(deadline) as i32) >= 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_arithmetic() {
        assert_eq!(since(5, u32::MAX - 4), Duration::from_millis(10));
        let d = after(u32::MAX - 1, Duration::from_millis(10));
        assert!(!reached(u32::MAX, d));
        assert!(reached(8, d));
        assert!(
            now() < 60_000,
            "tests start well within a minute of the epoch"
        );
    }
}
