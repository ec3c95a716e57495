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
    /// Synced peer links (either direction) on channels this shard owns (gauge).
    pub peer_links: AtomicI64,
    /// Peer links refused because they would close a cycle.
    pub peer_cycles_refused: AtomicU64,
    /// Bytes of incomplete frames and reassembled messages held (gauge).
    pub partial_bytes: AtomicI64,
    /// Sessions closed (1013) because `--max-memory` was reached.
    pub budget_refusals: AtomicU64,
    /// Sessions ended, by the close code they ended with (`CODES` order, then other).
    closed: [AtomicU64; CODES.len() + 1],
    /// Shard state the owner code reports through [`Counters::set`]
    /// (`Gauge` order); a gauge no shard has set is not exported.
    gauges: [AtomicI64; Gauge::ALL.len()],
}

/// Shard-state gauges for alerting. Shard code sets them with
/// [`Counters::set`] whenever the value changes (or periodically); reading
/// them costs the shard nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    /// Channels this shard owns.
    Channels = 0,
    /// Bytes of history held by this shard's channels.
    HistoryBytes,
    /// Bytes queued to this shard's sessions, not yet written.
    QueuedBytes,
    /// Bytes of messages waiting in this shard's inbox.
    InboxBacklog,
}

impl Gauge {
    const ALL: [Gauge; 4] = [
        Gauge::Channels,
        Gauge::HistoryBytes,
        Gauge::QueuedBytes,
        Gauge::InboxBacklog,
    ];

    fn series(self) -> (&'static str, &'static str) {
        match self {
            Gauge::Channels => ("mles_channels", "Channels owned by the shard."),
            Gauge::HistoryBytes => (
                "mles_history_bytes",
                "Bytes of history held by the shard's channels.",
            ),
            Gauge::QueuedBytes => (
                "mles_queued_bytes",
                "Bytes queued to the shard's sessions, not yet written.",
            ),
            Gauge::InboxBacklog => (
                "mles_inbox_backlog_bytes",
                "Bytes of messages waiting in the shard's inbox (publishers pause past a limit).",
            ),
        }
    }
}

/// A gauge's value before any shard reported it.
const UNSET: i64 = i64::MIN;

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            accepted: AtomicU64::new(0),
            sessions: AtomicI64::new(0),
            joins: AtomicU64::new(0),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dedup_dropped: AtomicU64::new(0),
            probe_replaced: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            peer_links: AtomicI64::new(0),
            peer_cycles_refused: AtomicU64::new(0),
            partial_bytes: AtomicI64::new(0),
            budget_refusals: AtomicU64::new(0),
            closed: Default::default(),
            gauges: std::array::from_fn(|_| AtomicI64::new(UNSET)),
        }
    }
}

impl Counters {
    /// Sets a shard-state gauge (see [`Gauge`]).
    pub fn set(&self, gauge: Gauge, value: i64) {
        self.gauges[gauge as usize].store(value, Ordering::Relaxed);
    }

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
        let series: [Series; 12] = [
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
            (
                "mles_peer_links",
                "gauge",
                "Synced peer links, either direction.",
                |c| c.peer_links.load(Ordering::Relaxed),
            ),
            (
                "mles_peer_cycles_refused_total",
                "counter",
                "Peer links refused because they would close a cycle.",
                |c| c.peer_cycles_refused.load(Ordering::Relaxed) as i64,
            ),
            (
                "mles_partial_bytes",
                "gauge",
                "Bytes of incomplete frames and fragmented messages held.",
                |c| c.partial_bytes.load(Ordering::Relaxed),
            ),
            (
                "mles_budget_refusals_total",
                "counter",
                "Sessions closed (1013) because --max-memory was reached.",
                |c| c.budget_refusals.load(Ordering::Relaxed) as i64,
            ),
        ];
        for (name, kind, help, get) in series {
            family(&mut out, name, kind, help);
            for (i, c) in self.shards.iter().enumerate() {
                let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", get(c));
            }
        }
        for gauge in Gauge::ALL {
            let reported = |c: &Counters| c.gauges[gauge as usize].load(Ordering::Relaxed);
            if self.shards.iter().all(|c| reported(c) == UNSET) {
                continue;
            }
            let (name, help) = gauge.series();
            family(&mut out, name, "gauge", help);
            for (i, c) in self.shards.iter().enumerate() {
                let v = reported(c);
                if v != UNSET {
                    let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {v}");
                }
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

/// Writes the `# HELP` and `# TYPE` lines of a metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one sample; `labels` is `key="value",...` or empty. Label values
/// must already be escaped (see [`label_value`]).
pub fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// A label value escaped for the text format (backslash, quote, newline).
pub fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
        // Gauges no shard reports are left out; reported ones show per shard.
        assert!(!text.contains("mles_channels"), "{text}");
        m.shard(1).set(Gauge::Channels, 3);
        let text = m.render();
        assert!(text.contains("mles_channels{shard=\"1\"} 3"), "{text}");
        assert!(!text.contains("mles_channels{shard=\"0\"}"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
