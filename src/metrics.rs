//! Per-shard counters and their Prometheus text rendering.
//!
//! Each shard writes only its own cache-padded block with relaxed atomics
//! (uncontended, so about as cheap as a plain add); a scrape reads them all.
//! Counting must never allocate or lock on a shard's path.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Close codes counted separately (PROTOCOL.md, "Close codes"); others go to "other".
const CODES: [u16; 9] = [1000, 1001, 1002, 1007, 1008, 1009, 1011, 1013, 1005];

/// One shard's counters.
#[derive(Default)]
#[repr(align(128))]
pub struct Counters {
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// Open WebSocket sessions (gauge).
    pub sessions: AtomicI64,
    /// Joins admitted by this shard as channel owner.
    pub joins: AtomicU64,
    /// Frames published into channels this shard owns.
    pub published: AtomicU64,
    /// Frames queued to this shard's sessions.
    pub delivered: AtomicU64,
    /// Frames dropped as byte-identical to history (`--dedup`).
    pub dedup_dropped: AtomicU64,
    /// Half-open incumbents replaced after an unanswered probe.
    pub probe_replaced: AtomicU64,
    /// Sessions closed (1013) because their outbound queue went over `--max-queue`.
    pub slow_consumers: AtomicU64,
    /// Sessions ended, by the close code they ended with (`CODES` order, then other).
    closed: [AtomicU64; CODES.len() + 1],
}

impl Counters {
    /// Counts a session that ended with close `code` (1005: no close frame).
    pub fn closed(&self, code: u16) {
        let i = CODES.iter().position(|&c| c == code).unwrap_or(CODES.len());
        self.closed[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One exported series: name, type, help, and how to read it from a shard.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Counters) -> i64,
);

/// Every shard's counters.
pub struct Metrics {
    shards: Box<[Counters]>,
}

impl Metrics {
    pub fn new(shards: usize) -> Metrics {
        Metrics {
            shards: (0..shards).map(|_| Counters::default()).collect(),
        }
    }

    pub fn shard(&self, id: u16) -> &Counters {
        &self.shards[id as usize]
    }

    /// The Prometheus text exposition (format 0.0.4) of all counters.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let series: [Series; 8] = [
            (
                "mles_connections_accepted_total",
                "counter",
                "TCP connections accepted.",
                |c| c.accepted.load(Ordering::Relaxed) as i64,
            ),
            ("mles_sessions", "gauge", "Open WebSocket sessions.", |c| {
                c.sessions.load(Ordering::Relaxed)
            }),
            (
                "mles_joins_total",
                "counter",
                "Joins admitted by the channel's owner shard.",
                |c| c.joins.load(Ordering::Relaxed) as i64,
            ),
            (
                "mles_frames_published_total",
                "counter",
                "Frames published into owned channels.",
                |c| c.published.load(Ordering::Relaxed) as i64,
            ),
            (
                "mles_frames_delivered_total",
                "counter",
                "Frames queued to sessions.",
                |c| c.delivered.load(Ordering::Relaxed) as i64,
            ),
            (
                "mles_frames_dedup_dropped_total",
                "counter",
                "Frames dropped as duplicates of history.",
                |c| c.dedup_dropped.load(Ordering::Relaxed) as i64,
            ),
            (
                "mles_probe_replaced_total",
                "counter",
                "Half-open sessions replaced by a rejoin.",
                |c| c.probe_replaced.load(Ordering::Relaxed) as i64,
            ),
            (
                "mles_slow_consumers_total",
                "counter",
                "Sessions closed (1013) for an outbound queue over --max-queue.",
                |c| c.slow_consumers.load(Ordering::Relaxed) as i64,
            ),
        ];
        for (name, kind, help, get) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (i, c) in self.shards.iter().enumerate() {
                let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", get(c));
            }
        }
        let name = "mles_sessions_closed_total";
        let _ = writeln!(
            out,
            "# HELP {name} Sessions ended, by close code (1005: none sent).\n# TYPE {name} counter"
        );
        for (i, c) in self.shards.iter().enumerate() {
            for (j, n) in c.closed.iter().enumerate() {
                let code = CODES
                    .get(j)
                    .map_or_else(|| "other".to_string(), |c| c.to_string());
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{i}\",code=\"{code}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_shard_and_code() {
        let m = Metrics::new(2);
        m.shard(1).closed(1013);
        m.shard(1).closed(4000);
        Counters::add(&m.shard(0).delivered, 5);
        let text = m.render();
        assert!(
            text.contains("mles_frames_delivered_total{shard=\"0\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("mles_sessions_closed_total{shard=\"1\",code=\"1013\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mles_sessions_closed_total{shard=\"1\",code=\"other\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE mles_sessions gauge"), "{text}");
    }
}
