//! One monotonic clock for the whole process, as nanoseconds since its first
//! use, so timestamps written by one thread can be compared on another.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static BASE: OnceLock<Instant> = OnceLock::new();

fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds since the process clock's base.
#[inline]
pub fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

/// The tokio instant of a process-clock time (for `sleep_until`).
pub fn instant(ns: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(base() + Duration::from_nanos(ns))
}

/// Seconds (as given on the command line) to nanoseconds.
pub fn secs_to_ns(secs: f64) -> u64 {
    (secs * 1e9) as u64
}
