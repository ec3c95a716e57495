//! Per-session rate limits: messages per second (`--rate-limit`) and bytes
//! per second (`--rate-limit-bytes`), with GCRA from the `governor` crate.
//! A session over either is closed with 1008 and a reason naming the flag.
//!
//! Counted: every data message a session sends (header and pings
//! included: a ping costs the server a pong). Bursts of one second's worth
//! pass; the byte limit's burst has room for one more `--max-message`
//! message on top, so a largest message is never refused on its own.
//! Allocated only when a limit is set, so sessions pay nothing otherwise.

use std::num::NonZeroU32;

use governor::clock::MonotonicClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::protocol::close::{self, Close};

/// The configured limits; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateSettings {
    pub messages_per_sec: Option<NonZeroU32>,
    pub bytes_per_sec: Option<NonZeroU32>,
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, MonotonicClock>;

/// One session's limiters.
pub struct SessionRate {
    messages: Option<Limiter>,
    bytes: Option<Limiter>,
}

impl SessionRate {
    /// The limiters for one session, `None` when no limit is configured.
    pub fn new(s: RateSettings, max_message: usize) -> Option<Box<SessionRate>> {
        if s.messages_per_sec.is_none() && s.bytes_per_sec.is_none() {
            return None;
        }
        let messages = s
            .messages_per_sec
            .map(|n| RateLimiter::direct_with_clock(Quota::per_second(n), MonotonicClock));
        let bytes = s.bytes_per_sec.map(|n| {
            let one_message = u32::try_from(max_message).unwrap_or(u32::MAX);
            let burst = n.saturating_add(one_message);
            RateLimiter::direct_with_clock(Quota::per_second(n).allow_burst(burst), MonotonicClock)
        });
        Some(Box::new(SessionRate { messages, bytes }))
    }

    /// Counts one message of `len` payload bytes; the close when over a limit.
    pub fn admit(&self, len: usize) -> Result<(), Close> {
        if let Some(m) = &self.messages
            && m.check().is_err()
        {
            return Err(close::RATE_MESSAGES);
        }
        if let Some(b) = &self.bytes
            && let Some(n) = NonZeroU32::new(u32::try_from(len).unwrap_or(u32::MAX))
            && !matches!(b.check_n(n), Ok(Ok(())))
        {
            return Err(close::RATE_BYTES);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: u32) -> Option<NonZeroU32> {
        NonZeroU32::new(v)
    }

    #[test]
    fn no_limit_allocates_nothing() {
        assert!(SessionRate::new(RateSettings::default(), 1 << 20).is_none());
    }

    #[test]
    fn a_burst_of_one_seconds_worth_passes_then_messages_are_refused() {
        let s = RateSettings {
            messages_per_sec: n(5),
            bytes_per_sec: None,
        };
        let r = SessionRate::new(s, 1 << 20).unwrap();
        for _ in 0..5 {
            assert_eq!(r.admit(10), Ok(()));
        }
        assert_eq!(r.admit(10), Err(close::RATE_MESSAGES));
    }

    #[test]
    fn bytes_are_limited_but_one_whole_message_always_fits() {
        let s = RateSettings {
            messages_per_sec: None,
            bytes_per_sec: n(1000),
        };
        let r = SessionRate::new(s, 4000).unwrap();
        assert_eq!(r.admit(4000), Ok(()), "one --max-message message");
        assert_eq!(r.admit(4000), Err(close::RATE_BYTES));
        assert_eq!(r.admit(0), Ok(()), "empty messages cost no bytes");
    }
}
