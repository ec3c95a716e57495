//! The limit flags: history, messages, queues, memory, rates and connection
//! admission; their checks, and what they become: [`Limits`] for the
//! protocol core and [`ConnectionSettings`] for the HTTP side.

use std::num::NonZeroU32;
use std::time::Duration;

use clap::Args;

use super::ConfigError;
use super::units::{parse_duration, parse_size};

/// The limit flags of [`super::Cli`].
#[derive(Args, Debug, Clone)]
pub struct LimitFlags {
    /// History limit in frames per channel.
    #[arg(short = 'l', long = "limit", default_value_t = 200, display_order = 4)]
    pub limit: usize,
    /// History bound in bytes per channel (suffixes: KiB, MiB, GiB).
    #[arg(long = "history-bytes", default_value = "16MiB", value_parser = parse_size, display_order = 18)]
    pub history_bytes: usize,
    /// Largest accepted message (suffixes: KiB, MiB); larger ones close with 1009.
    #[arg(long = "max-message", default_value = "1MiB", value_parser = parse_size, display_order = 19)]
    pub max_message: usize,
    /// Bound of a session's outbound queue in bytes; over it the session is closed with 1013.
    #[arg(long = "max-queue", default_value = "8MiB", value_parser = parse_size, display_order = 20)]
    pub max_queue: usize,
    /// Interval between server pings (e.g. 24s, 500ms); 3 silent intervals close a session.
    #[arg(long = "ping-interval", default_value = "24s", value_parser = parse_duration, display_order = 21)]
    pub ping_interval: Duration,
    /// Time a new session has to send its header frame.
    #[arg(long = "header-timeout", default_value = "30s", value_parser = parse_duration, display_order = 22)]
    pub header_timeout: Duration,
    /// Drop client frames byte-identical to one already in the channel's history.
    #[arg(long = "dedup", display_order = 23)]
    pub dedup: bool,
    /// Server-wide bound on incomplete frames, messages being reassembled and
    /// outbound queues; past it the session that asks for more, or the one
    /// with the largest queue, is closed with 1013 [default: half the RAM].
    #[arg(long = "max-memory", value_parser = parse_size, display_order = 35)]
    pub max_memory: Option<usize>,
    /// Most messages (pings included) one session may send per second,
    /// bursts of one second's worth allowed; over it: close 1008 [default: no limit].
    #[arg(long = "rate-limit", display_order = 36)]
    pub rate_limit: Option<NonZeroU32>,
    /// Most payload bytes one session may send per second (bursts may add one
    /// --max-message message); over it: close 1008 [default: no limit].
    #[arg(long = "rate-limit-bytes", value_parser = parse_size, display_order = 37)]
    pub rate_limit_bytes: Option<usize>,
    /// Channels with no members are forgotten, history and all, after this long idle.
    #[arg(long = "channel-ttl", default_value = "10m", value_parser = parse_duration, display_order = 38)]
    pub channel_ttl: Duration,
    /// History of all channels together; past it the least recently active
    /// idle channels are forgotten, then live ones lose their oldest frames
    /// [default: half of --max-memory].
    #[arg(long = "history-total", value_parser = parse_size, display_order = 39)]
    pub history_total: Option<usize>,
    /// Most open connections in total; more are closed (plain HTTP: 503) before
    /// their request is read. Keep it below the open-files limit (`ulimit -n`).
    #[arg(long = "max-connections", default_value_t = 50_000, display_order = 40)]
    pub max_connections: usize,
    /// Most open connections from one client address (IPv6: one /64), refused like --max-connections.
    #[arg(
        long = "max-connections-per-ip",
        default_value_t = 1000,
        display_order = 41
    )]
    pub max_connections_per_ip: usize,
    /// Time a new connection has to send its request head (and its PROXY header).
    #[arg(long = "request-timeout", default_value = "10s", value_parser = parse_duration, display_order = 42)]
    pub request_timeout: Duration,
    /// Every connection starts with a PROXY protocol header (v1 or v2, from a
    /// TCP load balancer); its client address is used for limits and logs.
    #[arg(long = "proxy-protocol", display_order = 43)]
    pub proxy_protocol: bool,
    /// An HTTP response (static file, web client) whose writes make no progress this long is dropped.
    #[arg(long = "write-timeout", default_value = "30s", value_parser = parse_duration, display_order = 44)]
    pub write_timeout: Duration,
}

/// Per-session and per-channel limits of the protocol core.
#[derive(Debug, Clone)]
pub struct Limits {
    pub history_frames: usize,
    pub history_bytes: usize,
    pub max_message: usize,
    pub max_queue: usize,
    pub ping_interval: Duration,
    pub header_timeout: Duration,
    pub dedup: bool,
    /// `MLES_KEY`, when set: auth becomes mandatory.
    pub key: Option<Vec<u8>>,
    /// This server's identity among peer servers: a hash of its `--peer-uid`
    /// (PROTOCOL.md §7, cycle detection).
    pub node: u64,
    /// Tests only (`--test-hook-channel`): on this channel, uid
    /// `panic-session` panics in its session, `panic-shard` in the owner
    /// shard's handler, and `stall-shard` blocks the owner shard for 3 s.
    pub hook_channel: Option<std::sync::Arc<str>>,
    /// Bytes in one shard's inbox above which publishers pause; `None`:
    /// `shard::mesh::BACKLOG_LIMIT` (set only by tests).
    pub inbox_limit: Option<usize>,
    /// `SO_SNDBUF` of every accepted socket (see [`send_buffer_for`]).
    pub send_buffer: usize,
    /// Server-wide bound on partial frames, reassembly and queues (`--max-memory`).
    pub max_memory: usize,
    /// Channels with no members forget their history after this (`--channel-ttl`).
    pub channel_ttl: Duration,
    /// History bytes of all channels together (`--history-total`).
    pub history_total: usize,
    /// Per-session rate limits (`--rate-limit`, `--rate-limit-bytes`).
    pub rate: crate::session::rate::RateSettings,
    /// Conformance testing only (`--conformance-echo`): every session is
    /// answered by echo instead of joining a channel (`session::echo`).
    pub conformance_echo: bool,
}

/// How connections are admitted, from `--max-connections*`,
/// `--request-timeout` and `--proxy-protocol`.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    pub limits: crate::http::limits::ConnLimitSettings,
    pub request_timeout: Duration,
    pub proxy_protocol: bool,
}

impl LimitFlags {
    /// Refuses limits that cannot work: no history, zero sizes, durations
    /// or connection counts.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.limit == 0 {
            return Err(ConfigError::ZeroLimit);
        }
        for (name, v) in [
            ("--history-bytes", self.history_bytes),
            ("--max-message", self.max_message),
            ("--max-queue", self.max_queue),
            ("--max-memory", self.max_memory.unwrap_or(1)),
            ("--history-total", self.history_total.unwrap_or(1)),
            ("--rate-limit-bytes", self.rate_limit_bytes.unwrap_or(1)),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroSize(name));
            }
        }
        for (name, v) in [
            ("--ping-interval", self.ping_interval),
            ("--header-timeout", self.header_timeout),
            ("--request-timeout", self.request_timeout),
            ("--channel-ttl", self.channel_ttl),
            ("--write-timeout", self.write_timeout),
        ] {
            if v.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        for (name, v) in [
            ("--max-connections", self.max_connections),
            ("--max-connections-per-ip", self.max_connections_per_ip),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroCount(name));
            }
        }
        Ok(())
    }

    /// The core's limits, with `key` (`MLES_KEY`) and this server's `node`
    /// id; the test hooks are left unset.
    pub(super) fn limits(&self, key: Option<Vec<u8>>, node: u64) -> Limits {
        let max_memory = self.max_memory.unwrap_or_else(crate::memory::default_limit);
        Limits {
            history_frames: self.limit,
            history_bytes: self.history_bytes,
            max_message: self.max_message,
            max_queue: self.max_queue,
            send_buffer: send_buffer_for(self.max_queue),
            ping_interval: self.ping_interval,
            header_timeout: self.header_timeout,
            dedup: self.dedup,
            key,
            node,
            hook_channel: None,
            inbox_limit: None,
            conformance_echo: false,
            max_memory,
            channel_ttl: self.channel_ttl,
            history_total: self.history_total.unwrap_or(max_memory / 2),
            rate: crate::session::rate::RateSettings {
                messages_per_sec: self.rate_limit,
                // governor's replenish interval is whole nanoseconds: 1 GB/s at most.
                bytes_per_sec: self.rate_limit_bytes.map(|b| {
                    NonZeroU32::new(b.min(1_000_000_000) as u32).unwrap_or(NonZeroU32::MIN)
                }),
            },
        }
    }

    /// Connection admission and the request timeout.
    pub(super) fn connections(&self) -> ConnectionSettings {
        ConnectionSettings {
            limits: crate::http::limits::ConnLimitSettings {
                max_total: self.max_connections,
                max_per_ip: self.max_connections_per_ip,
            },
            request_timeout: self.request_timeout,
            proxy_protocol: self.proxy_protocol,
        }
    }
}

/// `SO_SNDBUF` for every accepted socket, from `--max-queue`: without a set
/// value Linux grows each send buffer up to `tcp_wmem` (4 MiB) for every
/// subscriber that stops reading, beyond any bound of ours. Fixed at a
/// quarter of `--max-queue`, so a session holds at most 1.5 × `--max-queue`
/// (Linux allocates twice what is asked), within 256 KiB and 1 MiB asked:
/// 1 MiB (2 MiB of buffer) still carries 20 MB/s at 100 ms round trips,
/// and below 256 KiB a fast reader stalled on loopback (32 MB took 20 s
/// instead of 0.4 s in tests/backpressure.rs with 64 KiB).
pub fn send_buffer_for(max_queue: usize) -> usize {
    (max_queue / 4).clamp(256 << 10, 1 << 20)
}

#[cfg(test)]
mod tests {
    use super::super::tests::cfg;
    use super::*;

    #[test]
    fn send_buffer_is_a_bounded_quarter_of_the_queue() {
        assert_eq!(send_buffer_for(8 << 20), 1 << 20);
        assert_eq!(send_buffer_for(2 << 20), 512 << 10);
        assert_eq!(send_buffer_for(256 << 10), 256 << 10);
        assert_eq!(send_buffer_for(64 << 20), 1 << 20);
    }

    #[test]
    fn a_zero_limit_is_refused() {
        assert!(matches!(
            cfg(&["--limit", "0"]),
            Err(ConfigError::ZeroLimit)
        ));
    }
}
