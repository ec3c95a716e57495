//! The shard's timer tick: each session's keepalive, header timeout and
//! probe deadline, the owner's timers and channel expiry, the gauges, and
//! the charge of the outbound queues to `--max-memory`. Runs once per tick
//! over all sessions; nothing here runs per frame.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Shard;
use crate::metrics::Gauge;
use crate::protocol::close;
use crate::session::{Host, Session, TickOutcome};

impl Shard {
    /// Keepalive, header timeouts, probe deadlines; expires idle channels.
    pub fn tick(&self, now: Instant, expire_channels: bool) {
        let now_ms = crate::clock::now();
        let mut answers = Vec::new();
        let mut queued = 0;
        for s in self.registry.borrow().sessions() {
            queued += s.queued_bytes();
            let outcome = s.tick(
                now_ms,
                self.limits.ping_interval,
                self.limits.header_timeout,
            );
            match outcome {
                TickOutcome::ProbeFailed { key, id } => answers.push((key, id, s.id, false)),
                TickOutcome::ProbeAlive { key, id } => answers.push((key, id, s.id, true)),
                TickOutcome::Nothing => {}
            }
        }
        for (key, id, session, alive) in answers {
            self.probe_answered(key, id, session, alive);
        }
        if !self.failed.get() {
            self.with_owner(|o, out| o.tick(now, out));
        }
        if expire_channels {
            let n = self.owner.borrow_mut().expire(now, self.limits.channel_ttl);
            if n > 0 {
                tracing::debug!(shard = self.id, channels = n, "idle channels dropped");
            }
        }
        let queued = self.settle_queues(queued);
        let owner = self.owner.borrow();
        let c = self.counters();
        c.set(Gauge::Channels, owner.len() as i64);
        c.set(Gauge::HistoryBytes, owner.total_history_bytes() as i64);
        c.set(Gauge::QueuedBytes, queued as i64);
        // Every shard reports every inbox: a shard stuck in a handler
        // cannot report its own backlog, which is when it matters most.
        for to in 0..self.mesh.shards() as u16 {
            let backlog = self.mesh.backlog(to) as i64;
            self.mesh
                .metrics
                .shard(to)
                .set(Gauge::InboxBacklog, backlog);
        }
    }

    /// Charges this shard's outbound queues (`queued` bytes now) to the
    /// server-wide `--max-memory`, which partial frames share. Past it, the
    /// sessions with the largest queues are closed (1013) until the rest
    /// fits: the slowest readers go first, and nothing queued to others is
    /// touched. Settled every tick, never per delivery; between ticks each
    /// queue is still bounded by `--max-queue`. Returns the bytes kept.
    fn settle_queues(&self, queued: usize) -> usize {
        let memory = &self.mesh.memory;
        let charged = self.queues_charged.get();
        let mut keep = queued;
        if keep > charged && !memory.try_grow(keep - charged) {
            let mut largest: Vec<Rc<Session>> = self
                .registry
                .borrow()
                .sessions()
                .filter(|s| s.queued_bytes() > 0)
                .cloned()
                .collect();
            largest.sort_unstable_by_key(|s| std::cmp::Reverse(s.queued_bytes()));
            let c = self.counters();
            for s in largest {
                keep -= s.queued_bytes();
                s.close(close::MEMORY_BUDGET);
                c.budget_refusals.fetch_add(1, Ordering::Relaxed);
                if keep <= charged || memory.try_grow(keep - charged) {
                    break;
                }
            }
        }
        if keep < charged {
            memory.shrink(charged - keep);
        }
        self.queues_charged.set(keep);
        keep
    }
}
