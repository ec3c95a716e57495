//! Command-line arguments for every scenario; the only place options are
//! defined. Every argument struct serializes into the JSON report, so a
//! result always carries the exact parameters that produced it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// Load-test harness for Mles v2 servers (any server, by URL).
#[derive(Parser, Debug, Clone)]
#[command(name = "mles-loadtest", version, about)]
pub struct Cli {
    /// The scenario.
    #[command(subcommand)]
    pub command: Command,
}

/// The scenarios.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// C channels x S subscribers x P publishers: throughput, latency, loss, order.
    Fanout(FanoutArgs),
    /// N idle joined sessions: connect and join times, server memory per connection.
    Conns(ConnsArgs),
    /// Connect, join, leave in a loop: rate and times.
    Churn(ChurnArgs),
    /// History replay correctness for a late joiner, then live frames.
    History(HistoryArgs),
}

impl Command {
    /// The options shared by all scenarios.
    pub fn common(&self) -> &Common {
        match self {
            Command::Fanout(a) => &a.common,
            Command::Conns(a) => &a.common,
            Command::Churn(a) => &a.common,
            Command::History(a) => &a.common,
        }
    }

    /// The hard bound on the whole run, in seconds.
    pub fn deadline_secs(&self) -> f64 {
        let (times, common) = match self {
            Command::Fanout(a) => (a.warmup + a.duration + a.drain, &a.common),
            Command::Conns(a) => (a.warmup + a.duration, &a.common),
            Command::Churn(a) => (a.warmup + a.duration, &a.common),
            Command::History(a) => (a.timeout * 4.0, &a.common),
        };
        common
            .deadline
            .unwrap_or(times + 2.0 * common.connect_timeout + 30.0)
    }
}

/// Seconds as a non-negative finite number.
fn secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(String::from("must be a finite number of seconds >= 0"))
    }
}

/// A positive rate.
fn rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(String::from("must be a positive number"))
    }
}

/// Options every scenario takes.
#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// Server URL: ws://host:port/path or wss://host:port/path. Repeat it to
    /// deal sessions over several servers round robin (the nodes of one
    /// service): every check then holds across them.
    #[arg(
        long = "url",
        value_name = "URL",
        default_value = "ws://127.0.0.1:8080/"
    )]
    pub urls: Vec<String>,
    /// The server's MLES_KEY: every header then carries `auth` (PROTOCOL.md §3).
    #[arg(long, env = "MLES_KEY", hide_env_values = true)]
    #[serde(skip)]
    pub key: Option<String>,
    /// wss: accept any server certificate.
    #[arg(long)]
    pub insecure: bool,
    /// wss: trust only the certificates in this PEM file.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Worker threads, each with its own current-thread runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
    /// Server process to sample CPU time and RSS from (/proc/PID). Repeat
    /// it to add up several (the nodes of one service, and their NATS).
    #[arg(long, value_name = "PID")]
    pub server_pid: Vec<u32>,
    /// With an IPv4 loopback target, bind sockets to 127.0.0.1..127.0.0.N (1: no bind).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..))]
    pub source_addrs: u8,
    /// Connection attempts in flight at once, per worker thread.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_concurrency: u32,
    /// Limit for one connect + handshake + join, in seconds.
    #[arg(long, default_value_t = 10.0, value_parser = secs)]
    pub connect_timeout: f64,
    /// Hard bound for the whole run in seconds [default: the scenario's times + 2 x connect-timeout + 30].
    #[arg(long, value_parser = secs)]
    pub deadline: Option<f64>,
    /// Run id in every channel name [default: unix milliseconds + pid].
    #[arg(long)]
    pub run_id: Option<String>,
    /// Channel name prefix.
    #[arg(long, default_value = "mlt")]
    pub channel_prefix: String,
    /// Print one JSON object on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// No live progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// `fanout`: publishers and subscribers on C channels.
#[derive(Args, Debug, Clone, Serialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Channels.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub channels: u32,
    /// Subscribers per channel.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub subs: u32,
    /// Publishers per channel.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub pubs: u32,
    /// Payload bytes per message (at least 24: id, sequence, timestamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Messages per second per publisher; without it, as fast as --window allows.
    #[arg(long, value_parser = rate)]
    pub rate: Option<f64>,
    /// Without --rate: a publisher sends message k only once every
    /// subscriber of its channel has seen message k - window.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub window: u64,
    /// How the clients write and read: like ordinary client libraries, or batching.
    #[arg(long, value_enum, default_value_t = ClientMode::Ordinary)]
    pub client: ClientMode,
    /// `--client batch`: most messages a publisher writes with one syscall [default: 64].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: Option<u32>,
    /// Messages per publisher: it stops after this many (the run fails if
    /// it could not send them all before the end; the run still lasts
    /// --warmup + --duration) [default: no limit].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: Option<u64>,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0, value_parser = secs)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0, value_parser = secs)]
    pub warmup: f64,
    /// Most seconds to wait after publishers stop for the last deliveries.
    #[arg(long, default_value_t = 5.0, value_parser = secs)]
    pub drain: f64,
    /// Read buffer bytes per connection [default: 4096 with `--client
    /// ordinary`, 65536 with `--client batch`].
    #[arg(long, value_parser = clap::value_parser!(u64).range(64..))]
    pub read_buf: Option<u64>,
}

/// How the harness's clients use their sockets in `fanout`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientMode {
    /// Like ordinary client libraries: a publisher writes every frame with
    /// its own write syscall, and every connection reads into a 4 KiB
    /// buffer. Each delivery then costs the server what it costs under
    /// real clients; the headline figures use this mode.
    Ordinary,
    /// The least client cost per delivery: a publisher writes up to
    /// `--batch` frames with one syscall and connections read into 64 KiB.
    /// Cheaper for the server too (dozens of frames per read), so its
    /// figures are not comparable with ones taken under ordinary clients.
    Batch,
}

/// Read buffer of an ordinary client: the 4 KiB read chunk many WebSocket
/// client libraries use.
pub const ORDINARY_READ_BUF: u64 = 4096;
/// Read buffer of a batch client.
pub const BATCH_READ_BUF: u64 = 65536;
/// Frames per write of a batch publisher unless `--batch` says otherwise.
pub const DEFAULT_BATCH: u32 = 64;

impl FanoutArgs {
    /// Frames a publisher writes with one syscall at most.
    pub fn frames_per_write(&self) -> u32 {
        match self.client {
            ClientMode::Ordinary => 1,
            ClientMode::Batch => self.batch.unwrap_or(DEFAULT_BATCH),
        }
    }

    /// Read buffer bytes per connection.
    pub fn read_buf_bytes(&self) -> usize {
        let default = match self.client {
            ClientMode::Ordinary => ORDINARY_READ_BUF,
            ClientMode::Batch => BATCH_READ_BUF,
        };
        usize::try_from(self.read_buf.unwrap_or(default)).unwrap_or(usize::MAX)
    }

    /// The arguments with every default that depends on `--client` filled
    /// in (what the report shows), or why they do not go together.
    pub fn resolved(&self) -> Result<FanoutArgs, String> {
        if self.client == ClientMode::Ordinary && self.batch.is_some() {
            return Err(String::from(
                "--batch needs --client batch (an ordinary client writes one frame per write)",
            ));
        }
        let mut a = self.clone();
        if a.client == ClientMode::Batch {
            a.batch = Some(self.frames_per_write());
        }
        a.read_buf = Some(self.read_buf_bytes() as u64);
        Ok(a)
    }
}

/// `conns`: many idle joined sessions.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ConnsArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Sessions to open and hold.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub conns: u32,
    /// Sessions per channel.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub per_channel: u32,
    /// Seconds to let the server settle after the last join.
    #[arg(long, default_value_t = 1.0, value_parser = secs)]
    pub warmup: f64,
    /// Seconds to hold the sessions (server RSS is sampled at the end).
    #[arg(long, default_value_t = 10.0, value_parser = secs)]
    pub duration: f64,
    /// Read buffer bytes per connection (grows for larger frames).
    #[arg(long, default_value_t = 2048)]
    pub read_buf: usize,
}

/// `churn`: connect / join / leave cycles.
#[derive(Args, Debug, Clone, Serialize)]
pub struct ChurnArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Concurrent connect/join/leave loops.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Cycles per second in total; without it, as fast as the loops go.
    #[arg(long, value_parser = rate)]
    pub rate: Option<f64>,
    /// Channels the cycles join (round robin).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub channels: u32,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0, value_parser = secs)]
    pub duration: f64,
    /// Seconds of churn before measuring.
    #[arg(long, default_value_t = 1.0, value_parser = secs)]
    pub warmup: f64,
    /// Read buffer bytes per connection.
    #[arg(long, default_value_t = 16384)]
    pub read_buf: usize,
}

/// `history`: a late joiner's view of a channel.
#[derive(Args, Debug, Clone, Serialize)]
pub struct HistoryArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
    /// Messages published before the late joiner joins.
    #[arg(long, default_value_t = 300)]
    pub messages: u64,
    /// The server's history limit (frames, header frames included).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: u64,
    /// Live messages published after the late joiner joined.
    #[arg(long, default_value_t = 100)]
    pub live: u64,
    /// Live messages per second (a second joiner joins half-way through).
    #[arg(long, default_value_t = 1000.0, value_parser = rate)]
    pub rate: f64,
    /// Payload bytes per message (at least 24).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds any one step may take.
    #[arg(long, default_value_t = 10.0, value_parser = secs)]
    pub timeout: f64,
}
