//! Command line and environment -> a validated [`Config`].
//!
//! This is the only module that reads arguments or environment variables;
//! everything else receives the parts of `Config` it needs.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::cluster::{ClusterSettings, SettingsError};

/// The `mles` command line: the reference server's flags plus ours.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "mles",
    version,
    about = "Mles v2 publish/subscribe server (shard-per-core)"
)]
pub struct Cli {
    /// Domain(s) served; with no TLS flags these get Let's Encrypt certificates (repeatable).
    #[arg(short = 'd', long = "domains")]
    pub domains: Vec<String>,
    /// ACME contact e-mail address (repeatable).
    #[arg(short = 'e', long = "email")]
    pub email: Vec<String>,
    /// Directory that keeps the ACME account and certificates across restarts.
    #[arg(short = 'c', long = "cache")]
    pub cache: Option<PathBuf>,
    /// History limit in frames per channel.
    #[arg(short = 'l', long = "limit", default_value_t = 200)]
    pub limit: usize,
    /// Open files limit for static file serving.
    #[arg(short = 'f', long = "filelimit", default_value_t = 256)]
    pub filelimit: usize,
    /// Www-root directory for domain(s) (e.g. /path/static where domain example.io goes to static/example.io).
    #[arg(short = 'w', long = "wwwroot")]
    pub wwwroot: Option<PathBuf>,
    /// Use Let's Encrypt staging environment.
    #[arg(short = 's', long = "staging")]
    pub staging: bool,
    /// Port of the default listen address [default: 443 with TLS, 8080 otherwise].
    #[arg(short = 'p', long = "port")]
    pub port: Option<u16>,
    /// Serve an HTTP redirect to https on port 80 (see --redirect-port).
    #[arg(short = 'r', long = "redirect")]
    pub redirect: bool,
    /// Port of the redirect listener.
    #[arg(long = "redirect-port", default_value_t = 80)]
    pub redirect_port: u16,
    /// Number of shards (threads), 1 to 1024 [default: CPUs in this process's affinity mask].
    #[arg(long = "shards")]
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
    /// Full listen address, e.g. 0.0.0.0:9000 or [::]:443 (repeatable; wins over --port).
    #[arg(long = "listen")]
    pub listen: Vec<SocketAddr>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long = "tls-cert", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long = "tls-key", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain ws even with --domains (behind a TLS-terminating proxy).
    #[arg(long = "plain", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub plain: bool,
    /// ACME directory URL [default: Let's Encrypt production, or staging with --staging].
    #[arg(long = "acme-directory")]
    pub acme_directory: Option<String>,
    /// PEM root certificate to trust for the ACME directory (a private or test CA).
    #[arg(long = "acme-ca-root")]
    pub acme_ca_root: Option<PathBuf>,
    /// History bound in bytes per channel (suffixes: KiB, MiB, GiB).
    #[arg(long = "history-bytes", default_value = "16MiB", value_parser = parse_size)]
    pub history_bytes: usize,
    /// Largest accepted message (suffixes: KiB, MiB); larger ones close with 1009.
    #[arg(long = "max-message", default_value = "1MiB", value_parser = parse_size)]
    pub max_message: usize,
    /// Bound of a session's outbound queue in bytes; over it the session is closed with 1013.
    #[arg(long = "max-queue", default_value = "8MiB", value_parser = parse_size)]
    pub max_queue: usize,
    /// Interval between server pings (e.g. 24s, 500ms); 3 silent intervals close a session.
    #[arg(long = "ping-interval", default_value = "24s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// Time a new session has to send its header frame.
    #[arg(long = "header-timeout", default_value = "30s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Drop client frames byte-identical to one already in the channel's history.
    #[arg(long = "dedup")]
    pub dedup: bool,
    /// Peer server to link every channel to, ws:// or wss:// (repeatable).
    #[arg(long = "peer")]
    pub peer: Vec<String>,
    /// The uid this server's peer links use; unique per server [default: mles-peer-HOSTNAME-PORT].
    #[arg(long = "peer-uid")]
    pub peer_uid: Option<String>,
    /// Key the links' `auth` is computed with, for peers that set MLES_KEY [default: MLES_KEY].
    #[arg(long = "peer-key")]
    pub peer_key: Option<String>,
    /// PEM root certificate(s) to trust for wss:// peers [default: public roots].
    #[arg(long = "peer-ca")]
    pub peer_ca: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9090).
    #[arg(long = "metrics")]
    pub metrics: Option<SocketAddr>,
    /// Size of the in-memory cache of compressed static files, in MB.
    #[arg(long = "compression-cache", default_value_t = 64)]
    pub compression_cache: usize,
    /// Cluster mode: a NATS server (nats:// or tls://) of the shared JetStream log (repeatable).
    #[arg(long = "nats", conflicts_with_all = ["peer", "dedup"])]
    pub nats: Vec<String>,
    /// NATS credentials file (user JWT and NKey seed) for cluster mode.
    #[arg(long = "nats-creds", requires = "nats")]
    pub nats_creds: Option<PathBuf>,
    /// PEM root certificate(s) to trust for tls:// NATS servers [default: system roots].
    #[arg(long = "nats-ca", requires = "nats")]
    pub nats_ca: Option<PathBuf>,
    /// Replicas of the cluster's stream and registry (3 on a 3-node NATS cluster).
    #[arg(long = "nats-replicas", default_value_t = 1)]
    pub nats_replicas: usize,
    /// Prefix of the cluster's stream, bucket and subjects (several deployments can share a NATS).
    #[arg(long = "nats-prefix", default_value = "mles")]
    pub nats_prefix: String,
    /// Server-wide bound on incomplete frames, messages being reassembled and
    /// outbound queues; past it the session that asks for more, or the one
    /// with the largest queue, is closed with 1013 [default: half the RAM].
    #[arg(long = "max-memory", value_parser = parse_size)]
    pub max_memory: Option<usize>,
    /// Most messages (pings included) one session may send per second,
    /// bursts of one second's worth allowed; over it: close 1008 [default: no limit].
    #[arg(long = "rate-limit")]
    pub rate_limit: Option<std::num::NonZeroU32>,
    /// Most payload bytes one session may send per second (bursts may add one
    /// --max-message message); over it: close 1008 [default: no limit].
    #[arg(long = "rate-limit-bytes", value_parser = parse_size)]
    pub rate_limit_bytes: Option<usize>,
    /// Channels with no members are forgotten, history and all, after this long idle.
    #[arg(long = "channel-ttl", default_value = "10m", value_parser = parse_duration)]
    pub channel_ttl: Duration,
    /// History of all channels together; past it the least recently active
    /// idle channels are forgotten, then live ones lose their oldest frames
    /// [default: half of --max-memory].
    #[arg(long = "history-total", value_parser = parse_size)]
    pub history_total: Option<usize>,
    /// Most open connections in total; more are closed (plain HTTP: 503) before
    /// their request is read. Keep it below the open-files limit (`ulimit -n`).
    #[arg(long = "max-connections", default_value_t = 50_000)]
    pub max_connections: usize,
    /// Most open connections from one client address (IPv6: one /64), refused like --max-connections.
    #[arg(long = "max-connections-per-ip", default_value_t = 1000)]
    pub max_connections_per_ip: usize,
    /// Time a new connection has to send its request head (and its PROXY header).
    #[arg(long = "request-timeout", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Every connection starts with a PROXY protocol header (v1 or v2, from a
    /// TCP load balancer); its client address is used for limits and logs.
    #[arg(long = "proxy-protocol")]
    pub proxy_protocol: bool,
    /// An HTTP response (static file, web client) whose writes make no progress this long is dropped.
    #[arg(long = "write-timeout", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,
}

/// How connections are secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsChoice {
    /// Plain ws (local use, or behind a TLS-terminating proxy).
    Plain,
    /// Certificate chain and key from PEM files.
    Files { cert: PathBuf, key: PathBuf },
    /// Certificates from an ACME CA (Let's Encrypt by default).
    Acme(AcmeSettings),
}

/// ACME settings, from `--domains`, `--email`, `--cache`, `--staging`, `--acme-*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    pub domains: Vec<String>,
    pub emails: Vec<String>,
    pub cache: Option<PathBuf>,
    /// Directory URL; production Let's Encrypt unless `--staging` or `--acme-directory`.
    pub directory: String,
    pub ca_root: Option<PathBuf>,
}

/// Let's Encrypt production directory (the default, unlike rustls-acme's).
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt staging directory (`--staging`).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

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

/// How connections are admitted, from `--max-connections*`,
/// `--request-timeout` and `--proxy-protocol`.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    pub limits: crate::http::limits::ConnLimitSettings,
    pub request_timeout: Duration,
    pub proxy_protocol: bool,
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
        if cli.limit == 0 {
            return Err(ConfigError::ZeroLimit);
        }
        for (name, v) in [
            ("--history-bytes", cli.history_bytes),
            ("--max-message", cli.max_message),
            ("--max-queue", cli.max_queue),
            ("--max-memory", cli.max_memory.unwrap_or(1)),
            ("--history-total", cli.history_total.unwrap_or(1)),
            ("--rate-limit-bytes", cli.rate_limit_bytes.unwrap_or(1)),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroSize(name));
            }
        }
        for (name, v) in [
            ("--ping-interval", cli.ping_interval),
            ("--header-timeout", cli.header_timeout),
            ("--request-timeout", cli.request_timeout),
            ("--channel-ttl", cli.channel_ttl),
            ("--write-timeout", cli.write_timeout),
        ] {
            if v.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        for (name, v) in [
            ("--max-connections", cli.max_connections),
            ("--max-connections-per-ip", cli.max_connections_per_ip),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroCount(name));
            }
        }
        let max_memory = cli.max_memory.unwrap_or_else(crate::memory::default_limit);
        let domains: Vec<String> = cli
            .domains
            .iter()
            .map(|d| d.trim().to_ascii_lowercase())
            .collect();
        if domains.iter().any(|d| d.is_empty()) {
            return Err(ConfigError::EmptyDomain);
        }
        let tls = match (&cli.tls_cert, &cli.tls_key) {
            (Some(cert), Some(key)) => TlsChoice::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ if !domains.is_empty() && !cli.plain => TlsChoice::Acme(AcmeSettings {
                domains: domains.clone(),
                emails: cli.email.clone(),
                cache: cli.cache.clone(),
                directory: cli.acme_directory.clone().unwrap_or_else(|| {
                    if cli.staging {
                        LETS_ENCRYPT_STAGING
                    } else {
                        LETS_ENCRYPT_PRODUCTION
                    }
                    .to_string()
                }),
                ca_root: cli.acme_ca_root.clone(),
            }),
            _ => TlsChoice::Plain,
        };
        let secure = tls != TlsChoice::Plain;
        let local = !secure && domains.is_empty();
        let port = cli.port.unwrap_or(if secure { 443 } else { 8080 });
        let listen = if !cli.listen.is_empty() {
            cli.listen.clone()
        } else if local {
            vec![
                SocketAddr::from(([127, 0, 0, 1], port)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            ]
        } else {
            vec![SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))]
        };
        if let Some(p) = cli.peer.iter().find(|p| {
            !(p.starts_with("ws://") || p.starts_with("wss://")) || p.parse::<http::Uri>().is_err()
        }) {
            return Err(ConfigError::BadPeer(p.clone()));
        }
        if cli.redirect && !secure {
            return Err(ConfigError::RedirectWithoutTls);
        }
        let cluster = if cli.nats.is_empty() {
            None
        } else {
            Some(ClusterSettings::new(
                cli.nats.clone(),
                cli.nats_creds.clone(),
                cli.nats_ca.clone(),
                cli.nats_replicas,
                cli.nats_prefix.clone(),
                cli.limit,
                cli.max_message,
            )?)
        };
        let tls_port = listen.first().map(|a| a.port()).unwrap_or(port);
        let mut warnings = Vec::new();
        if matches!(tls, TlsChoice::Files { .. }) {
            for (given, flag) in [
                (cli.cache.is_some(), "--cache"),
                (!cli.email.is_empty(), "--email"),
                (cli.staging, "--staging"),
                (cli.acme_directory.is_some(), "--acme-directory"),
            ] {
                if given {
                    warnings.push(format!(
                        "{flag} is ignored: certificates come from --tls-cert/--tls-key, not ACME"
                    ));
                }
            }
        }
        let peer_uid = match &cli.peer_uid {
            Some(u) if u.is_empty() || u.chars().any(char::is_control) => {
                return Err(ConfigError::BadPeerUid);
            }
            Some(u) => u.clone(),
            None => default_peer_uid(listen.first().map_or(0, |a| a.port())),
        };
        Ok(Config {
            warnings,
            write_timeout: cli.write_timeout,
            listen,
            shards,
            cpus,
            tls,
            limits: Limits {
                history_frames: cli.limit,
                history_bytes: cli.history_bytes,
                max_message: cli.max_message,
                max_queue: cli.max_queue,
                send_buffer: send_buffer_for(cli.max_queue),
                ping_interval: cli.ping_interval,
                header_timeout: cli.header_timeout,
                dedup: cli.dedup,
                key: mles_key.clone().map(String::into_bytes),
                node: crate::protocol::auth::hash_parts(&[peer_uid.as_bytes()]),
                hook_channel: cli.test_hook_channel.as_deref().map(Into::into),
                inbox_limit: cli.test_inbox_limit,
                conformance_echo: cli.conformance_echo,
                max_memory,
                channel_ttl: cli.channel_ttl,
                history_total: cli.history_total.unwrap_or(max_memory / 2),
                rate: crate::session::rate::RateSettings {
                    messages_per_sec: cli.rate_limit,
                    // governor's replenish interval is whole nanoseconds: 1 GB/s at most.
                    bytes_per_sec: cli.rate_limit_bytes.map(|b| {
                        std::num::NonZeroU32::new(b.min(1_000_000_000) as u32)
                            .unwrap_or(std::num::NonZeroU32::MIN)
                    }),
                },
            },
            statics: StaticSettings {
                wwwroot: cli.wwwroot.clone(),
                domains,
                file_limit: cli.filelimit.max(1),
                compression_cache_bytes: cli.compression_cache.saturating_mul(1 << 20),
            },
            redirect_port: cli.redirect.then_some(cli.redirect_port),
            metrics: cli.metrics,
            peers: cli.peer.clone(),
            peer_uid,
            peer_key: cli.peer_key.clone().or(mles_key).map(String::into_bytes),
            peer_ca: cli.peer_ca.clone(),
            cluster,
            tls_port,
            connections: ConnectionSettings {
                limits: crate::http::limits::ConnLimitSettings {
                    max_total: cli.max_connections,
                    max_per_ip: cli.max_connections_per_ip,
                },
                request_timeout: cli.request_timeout,
                proxy_protocol: cli.proxy_protocol,
            },
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

/// The default uid of peer links: `mles-peer-<hostname>-<port>`, unique per
/// server on a host (two servers cannot share a port); with port 0 (chosen by
/// the kernel, not yet known) the process id and a counter stand in for it.
fn default_peer_uid(port: u16) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::from("local")
    };
    if port == 0 {
        // Several servers in one process (tests, embedding) still differ.
        static NTH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NTH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("mles-peer-{host}-pid{}-{n}", std::process::id())
    } else {
        format!("mles-peer-{host}-{port}")
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

/// Parses `1048576`, `64KiB`, `1MiB`, `2GiB` (also `K`, `KB`, `M`, `MB`, binary multiples).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 65536, 64KiB, 1MiB)"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("'{s}' has an unknown unit (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Parses `24s`, `500ms`, `2m`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 24s, 500ms)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}' has an unknown unit (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["mles"];
        v.extend_from_slice(args);
        Config::from_cli(Cli::try_parse_from(v).expect("parses"), None)
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1XB").is_err());
        assert_eq!(parse_duration("24s"), Ok(Duration::from_secs(24)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn local_default_is_loopback_8080() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.tls, TlsChoice::Plain);
        assert_eq!(
            c.listen,
            vec![
                "127.0.0.1:8080".parse().unwrap(),
                "[::1]:8080".parse().unwrap()
            ]
        );
    }

    #[test]
    fn domains_mean_acme_on_443_production() {
        let c = cfg(&["-d", "Example.org"]).unwrap();
        assert_eq!(c.listen, vec!["[::]:443".parse().unwrap()]);
        match c.tls {
            TlsChoice::Acme(a) => {
                assert_eq!(a.domains, vec!["example.org"]);
                assert_eq!(a.directory, LETS_ENCRYPT_PRODUCTION);
            }
            other => panic!("{other:?}"),
        }
        match cfg(&["-d", "x.org", "-s"]).unwrap().tls {
            TlsChoice::Acme(a) => assert_eq!(a.directory, LETS_ENCRYPT_STAGING),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn listen_wins_over_port_and_plain_with_domains() {
        let c = cfg(&["-d", "x.org", "--plain", "-p", "9000"]).unwrap();
        assert_eq!(c.tls, TlsChoice::Plain);
        assert_eq!(c.listen, vec!["[::]:9000".parse().unwrap()]);
        let c = cfg(&["--listen", "127.0.0.1:7000", "-p", "9000"]).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:7000".parse().unwrap()]);
    }

    #[test]
    fn send_buffer_is_a_bounded_quarter_of_the_queue() {
        assert_eq!(send_buffer_for(8 << 20), 1 << 20);
        assert_eq!(send_buffer_for(2 << 20), 512 << 10);
        assert_eq!(send_buffer_for(256 << 10), 256 << 10);
        assert_eq!(send_buffer_for(64 << 20), 1 << 20);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(matches!(
            cfg(&["--shards", "0"]),
            Err(ConfigError::BadShards)
        ));
        assert!(matches!(
            cfg(&["--shards", "1025"]),
            Err(ConfigError::BadShards)
        ));
        assert_eq!(cfg(&["--shards", "1024"]).unwrap().shards, MAX_SHARDS);
        assert!(matches!(
            cfg(&["--limit", "0"]),
            Err(ConfigError::ZeroLimit)
        ));
        assert!(matches!(cfg(&["-r"]), Err(ConfigError::RedirectWithoutTls)));
        assert!(Cli::try_parse_from(["mles", "--tls-cert", "a.pem"]).is_err());
    }

    #[test]
    fn nats_flags() {
        assert!(cfg(&[]).unwrap().cluster.is_none());
        let c = cfg(&[
            "--nats",
            "nats://a:4222",
            "--nats",
            "tls://b:4443",
            "--nats-replicas",
            "3",
            "-l",
            "50",
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.servers, vec!["nats://a:4222", "tls://b:4443"]);
        assert_eq!(
            (c.replicas, c.history_frames, c.prefix.as_str()),
            (3, 50, "mles")
        );
        assert!(matches!(
            cfg(&["--nats", "a:4222"]),
            Err(ConfigError::Cluster(SettingsError::BadUrl(_)))
        ));
        assert!(matches!(
            cfg(&["--nats", "nats://a:1", "--nats-prefix", "a.b"]),
            Err(ConfigError::Cluster(SettingsError::BadPrefix(_)))
        ));
        assert!(matches!(
            cfg(&["--nats", "nats://a:1", "--nats-replicas", "0"]),
            Err(ConfigError::Cluster(SettingsError::BadReplicas))
        ));
        // Cluster mode and peer links are two answers to one question: pick one.
        assert!(Cli::try_parse_from(["mles", "--nats", "nats://a:1", "--peer", "ws://b"]).is_err());
        assert!(Cli::try_parse_from(["mles", "--nats-creds", "x.creds"]).is_err());
    }

    #[test]
    fn acme_flags_in_file_mode_are_reported() {
        let c = cfg(&["--tls-cert", "c", "--tls-key", "k", "-c", "/x", "-e", "a@b"]).unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].starts_with("--cache is ignored"));
        assert!(
            cfg(&["-d", "x.org", "-c", "/x"])
                .unwrap()
                .warnings
                .is_empty()
        );
    }
}
