//! Command line and environment -> a validated [`Config`].
//!
//! This is the only module that reads arguments or environment variables;
//! everything else receives the parts of `Config` it needs.
//!
//! [`Cli`] gathers its flags by topic, each group next to its checks:
//! - `listen`: listen addresses, TLS from files or ACME, the https redirect
//! - `limits`: history, message, queue, memory, rate and connection limits
//! - `peers`: peer links and cluster mode
//! - `units`: sizes (`64KiB`) and durations (`24s`) in flag values
//!
//! Each visible flag has a `display_order`, so `--help` keeps one order
//! across the groups: the reference server's flags first, then ours as they
//! came; a new flag takes the next number.
//!
//! Here: the server-wide flags (shards, static files, metrics, test hooks),
//! [`Config`], [`ConfigError`], and the order the groups are checked in.

mod limits;
mod listen;
mod peers;
mod units;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::cluster::{ClusterSettings, SettingsError};

pub use limits::{ConnectionSettings, LimitFlags, Limits, send_buffer_for};
pub use listen::{
    AcmeSettings, LETS_ENCRYPT_PRODUCTION, LETS_ENCRYPT_STAGING, ListenFlags, TlsChoice,
};
pub use peers::PeerFlags;
pub use units::{parse_duration, parse_size};

/// The `mles` command line: the reference server's flags plus ours.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "mles",
    version,
    about = "Mles v2 publish/subscribe server (shard-per-core)"
)]
pub struct Cli {
    #[command(flatten)]
    pub listening: ListenFlags,
    /// Open files limit for static file serving.
    #[arg(
        short = 'f',
        long = "filelimit",
        default_value_t = 256,
        display_order = 5
    )]
    pub filelimit: usize,
    /// Www-root directory for domain(s) (e.g. /path/static where domain example.io goes to static/example.io).
    #[arg(short = 'w', long = "wwwroot", display_order = 6)]
    pub wwwroot: Option<PathBuf>,
    /// Number of shards (threads), 1 to 1024 [default: CPUs in this process's affinity mask].
    #[arg(long = "shards", display_order = 11)]
    pub shards: Option<usize>,
    /// For tests only: on this channel, uid `panic-session` panics in its
    /// session, uid `panic-shard` in the owner shard, and uid `stall-shard`
    /// blocks the owner shard's thread for 3 s (supervision, backpressure).
    #[arg(long = "test-hook-channel", hide = true)]
    pub test_hook_channel: Option<String>,
    /// For tests only: bytes in one shard's inbox above which publishers
    /// pause [default: 64MiB].
    #[arg(long = "test-inbox-limit", hide = true, value_parser = parse_size)]
    pub test_inbox_limit: Option<usize>,
    /// For conformance tests only (Autobahn|Testsuite): no header frame, and
    /// every message is echoed to its sender instead of relayed.
    #[arg(long = "conformance-echo", hide = true)]
    pub conformance_echo: bool,
    #[command(flatten)]
    pub limits: LimitFlags,
    #[command(flatten)]
    pub peers: PeerFlags,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9090).
    #[arg(long = "metrics", display_order = 28)]
    pub metrics: Option<SocketAddr>,
    /// Size of the in-memory cache of compressed static files, in MB.
    #[arg(long = "compression-cache", default_value_t = 64, display_order = 29)]
    pub compression_cache: usize,
}

/// Static web serving settings.
#[derive(Debug, Clone)]
pub struct StaticSettings {
    pub wwwroot: Option<PathBuf>,
    /// Lower-cased domains; empty in local mode.
    pub domains: Vec<String>,
    pub file_limit: usize,
    pub compression_cache_bytes: usize,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub shards: usize,
    /// CPUs to pin shards to, round-robin (empty: no pinning).
    pub cpus: Vec<usize>,
    pub tls: TlsChoice,
    pub limits: Limits,
    pub statics: StaticSettings,
    /// Port of the http->https redirect listener, when enabled.
    pub redirect_port: Option<u16>,
    /// Port that https URLs in redirects point to.
    pub tls_port: u16,
    /// Address of the Prometheus metrics listener, when enabled.
    pub metrics: Option<SocketAddr>,
    /// Peer servers (`ws://` / `wss://` URLs) every channel is linked to.
    pub peers: Vec<String>,
    /// The uid of this server's peer links.
    pub peer_uid: String,
    /// The key the links' `auth` is computed with (`--peer-key`, else `MLES_KEY`).
    pub peer_key: Option<Vec<u8>>,
    /// Roots to trust for `wss://` peers instead of the public ones.
    pub peer_ca: Option<PathBuf>,
    /// Cluster mode (`--nats`): where the shared log is.
    pub cluster: Option<ClusterSettings>,
    /// Flags given but without effect in this mode, for the log at start.
    pub warnings: Vec<String>,
    /// How long an HTTP response write may make no progress.
    pub write_timeout: Duration,
    /// Connection admission and the request timeout (issue 9).
    pub connections: ConnectionSettings,
}

/// Most shards a server runs. Shard ids are 16 bits inside session and
/// channel ids, and every channel's owner keeps a member count per shard
/// (4 bytes each); 1024 is far beyond the cores of any machine this runs on
/// while it keeps that per-channel table under 4 KiB.
pub const MAX_SHARDS: usize = 1024;

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--shards 0`, or more than [`MAX_SHARDS`].
    #[error("--shards must be between 1 and {MAX_SHARDS}")]
    BadShards,
    /// `--limit 0`.
    #[error("--limit must be at least 1")]
    ZeroLimit,
    /// A size flag too small to be useful.
    #[error("{0} must be at least 1 byte")]
    ZeroSize(&'static str),
    /// A connection limit of zero, which would refuse everyone.
    #[error("{0} must be at least 1")]
    ZeroCount(&'static str),
    /// A zero duration where time must pass.
    #[error("{0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// `--redirect` without a TLS mode to redirect to.
    #[error("--redirect needs TLS (--domains or --tls-cert/--tls-key)")]
    RedirectWithoutTls,
    /// An empty domain name.
    #[error("--domains must not be empty")]
    EmptyDomain,
    /// An empty `--peer-uid`, or one with control characters.
    #[error("--peer-uid must be non-empty, without control characters")]
    BadPeerUid,
    /// A `--peer` that is not a ws:// or wss:// URL.
    #[error("--peer {0}: expected a ws:// or wss:// URL")]
    BadPeer(String),
    /// A `--nats*` flag that cannot work.
    #[error(transparent)]
    Cluster(#[from] SettingsError),
}

impl Config {
    /// Validates the parsed command line; `mles_key` is the `MLES_KEY` environment variable.
    pub fn from_cli(cli: Cli, mles_key: Option<String>) -> Result<Config, ConfigError> {
        let cpus = affinity_cpus();
        let shards = cli.shards.unwrap_or(cpus.len().clamp(1, MAX_SHARDS));
        if shards == 0 || shards > MAX_SHARDS {
            return Err(ConfigError::BadShards);
        }
        cli.limits.check()?;
        let net = cli.listening.resolve()?;
        cli.peers.check_urls()?;
        let redirect_port = cli.listening.redirect_port(&net.tls)?;
        let cluster = cli
            .peers
            .cluster(cli.limits.limit, cli.limits.max_message)?;
        let peer_uid = cli
            .peers
            .peer_uid(net.listen.first().map_or(0, |a| a.port()))?;
        let key = mles_key.clone().map(String::into_bytes);
        let node = crate::protocol::auth::hash_parts(&[peer_uid.as_bytes()]);
        Ok(Config {
            warnings: net.warnings,
            write_timeout: cli.limits.write_timeout,
            listen: net.listen,
            shards,
            cpus,
            tls: net.tls,
            limits: Limits {
                hook_channel: cli.test_hook_channel.as_deref().map(Into::into),
                inbox_limit: cli.test_inbox_limit,
                conformance_echo: cli.conformance_echo,
                ..cli.limits.limits(key, node)
            },
            statics: StaticSettings {
                wwwroot: cli.wwwroot.clone(),
                domains: net.domains,
                file_limit: cli.filelimit.max(1),
                compression_cache_bytes: cli.compression_cache.saturating_mul(1 << 20),
            },
            redirect_port,
            metrics: cli.metrics,
            peers: cli.peers.peer.clone(),
            peer_uid,
            peer_key: cli
                .peers
                .peer_key
                .clone()
                .or(mles_key)
                .map(String::into_bytes),
            peer_ca: cli.peers.peer_ca.clone(),
            cluster,
            tls_port: net.tls_port,
            connections: cli.limits.connections(),
        })
    }

    /// A local plain-ws configuration for tests and embedding: `shards` shards on 127.0.0.1:0.
    pub fn local(shards: usize) -> Config {
        let cli = Cli::parse_from([
            "mles",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            &shards.to_string(),
        ]);
        Config::from_cli(cli, None).expect("the local test configuration is valid")
    }
}

/// The CPUs in this process's affinity mask (so `taskset` is honoured).
pub fn affinity_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for pid 0 (this thread).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration `mles ARGS` runs with (no `MLES_KEY`).
    pub(super) fn cfg(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["mles"];
        v.extend_from_slice(args);
        Config::from_cli(Cli::try_parse_from(v).expect("parses"), None)
    }

    #[test]
    fn shards_are_bounded() {
        assert!(matches!(
            cfg(&["--shards", "0"]),
            Err(ConfigError::BadShards)
        ));
        assert!(matches!(
            cfg(&["--shards", "1025"]),
            Err(ConfigError::BadShards)
        ));
        assert_eq!(cfg(&["--shards", "1024"]).unwrap().shards, MAX_SHARDS);
    }
}
