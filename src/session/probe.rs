//! The half-open probe of an incumbent (PROTOCOL.md §4) and the shard
//! timer's per-session duties: keepalive pings, the header timeout, the
//! close linger and probe deadlines. Decides from clocks passed in and the
//! socket's TCP counters; the shard acts on what it returns.

use std::time::Duration;

use bytes::Bytes;

use super::{PING, Phase, Session, socket};
use crate::channel::{ChannelKey, MemberId};
use crate::clock::{self, Millis};
use crate::protocol::close;

/// How long a closing session may take to flush its Close and see the peer's EOF.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Half-open probe (PROTOCOL.md §4): silence before pinging, and time to answer.
pub const PROBE_QUIET: Duration = Duration::from_secs(2);
const PROBE_ANSWER: Duration = Duration::from_secs(2);

/// A probe of this session on behalf of a newcomer with the same uid.
pub(super) struct Probe {
    deadline: Millis,
    pub(super) key: ChannelKey,
    pub(super) id: MemberId,
    /// The peer's acknowledged bytes when the probe began, if data was
    /// waiting ahead of the ping: acknowledgements past it prove the peer
    /// is reading, though its answer is still queued behind that data.
    acked_at_start: Option<u64>,
}

/// What a shard's timer tick found about a session.
pub enum TickOutcome {
    Nothing,
    /// The incumbent did not answer the probe: it is being closed.
    ProbeFailed {
        key: ChannelKey,
        id: MemberId,
    },
    /// The incumbent's ping was stuck behind data it kept reading: alive.
    ProbeAlive {
        key: ChannelKey,
        id: MemberId,
    },
}

impl Session {
    /// Starts a half-open probe; `Some(alive)` when it can be answered at once.
    pub fn probe(&self, key: ChannelKey, id: MemberId, now: Millis) -> Option<bool> {
        let mut i = self.inner.borrow_mut();
        if i.phase == Phase::Closing {
            return Some(false);
        }
        if clock::since(now, i.last_rx) < PROBE_QUIET {
            return Some(true);
        }
        let ahead = !i.q.is_empty() || i.socket().and_then(socket::unacked).is_some_and(|n| n > 0);
        let acked_at_start = if ahead {
            i.socket().and_then(socket::bytes_acked)
        } else {
            None
        };
        i.probe = Some(Box::new(Probe {
            deadline: clock::after(now, PROBE_ANSWER),
            key,
            id,
            acked_at_start,
        }));
        drop(i);
        self.push_control(Bytes::from_static(PING));
        None
    }

    /// Keepalive, timeouts and probe deadlines, called by the shard's timer.
    pub fn tick(
        &self,
        now: Millis,
        ping_interval: Duration,
        header_timeout: Duration,
    ) -> TickOutcome {
        let mut i = self.inner.borrow_mut();
        if i.phase == Phase::Closing {
            if clock::since(now, i.since) >= CLOSE_LINGER {
                drop(i);
                self.kill();
            }
            return TickOutcome::Nothing;
        }
        if let Some(p) = i.probe.take_if(|p| clock::reached(now, p.deadline)) {
            let acked_now = i.socket().and_then(socket::bytes_acked);
            if let (Some(a0), Some(a1)) = (p.acked_at_start, acked_now)
                && a1 > a0
            {
                return TickOutcome::ProbeAlive {
                    key: p.key,
                    id: p.id,
                };
            }
            drop(i);
            self.close(close::PROBE_FAILED);
            return TickOutcome::ProbeFailed {
                key: p.key,
                id: p.id,
            };
        }
        if i.phase == Phase::Header && clock::since(now, i.since) >= header_timeout {
            drop(i);
            self.close(close::HEADER_TIMEOUT);
        } else if clock::since(now, i.last_rx) >= ping_interval * 3 {
            drop(i);
            self.close(close::KEEPALIVE_TIMEOUT);
        } else if clock::since(now, i.last_ping) >= ping_interval {
            i.last_ping = now;
            drop(i);
            self.push_control(Bytes::from_static(PING));
        }
        TickOutcome::Nothing
    }
}
