//! The scenarios, and what they share: run ids and channel names, connect +
//! join with a measured join time, channel seeding, server/harness samples.
//!
//! Join time: the protocol has no join acknowledgement, so a join counts as
//! done when the first frame reaches the joiner. Every channel is seeded
//! first (a seed session joins and a second one confirms it is in history),
//! so that first frame is always the seed's header replayed from history.

pub mod churn;
pub mod conns;
pub mod fanout;
pub mod history;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cli::Common;
use crate::clock::now_ns;
use crate::conn::{Conn, Msg, Status};
use crate::frame::OP_TEXT;
use crate::procstat::{self, ProcSample};
use crate::target::{Target, Targets};

/// The run id: `--run-id`, or unix milliseconds and pid, so channels of
/// earlier runs (and their history) cannot interfere.
pub fn run_id(common: &Common) -> String {
    common.run_id.clone().unwrap_or_else(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("{ms}-{}", std::process::id())
    })
}

/// `prefix-runid-kindN`.
pub fn channel_name(common: &Common, run_id: &str, kind: &str, i: usize) -> String {
    format!("{}-{run_id}-{kind}{i}", common.channel_prefix)
}

/// A joined session and how long getting there took.
#[derive(Debug)]
pub struct Joined {
    /// The session.
    pub conn: Conn,
    /// TCP (+ TLS) connect and WebSocket handshake, nanoseconds.
    pub connect_ns: u64,
    /// Header sent until the first frame arrived, nanoseconds.
    pub join_ns: u64,
}

/// Connects, sends the header, and waits for the first frame; every frame
/// read meanwhile goes to `on_msg`.
pub async fn connect_join(
    target: &Target,
    idx: usize,
    read_buf: usize,
    uid: &str,
    channel: &str,
    mut on_msg: impl FnMut(Msg<'_>),
) -> Result<Joined> {
    let t0 = now_ns();
    let mut conn = target.connect(idx, read_buf).await?;
    let t1 = now_ns();
    conn.join(uid, channel).await.context("sending header")?;
    let mut got = false;
    loop {
        let status = conn
            .pump(|m| {
                got = true;
                on_msg(m)
            })
            .await?;
        if got {
            break;
        }
        if status == Status::Closed {
            bail!("{} before the first frame", closed_reason(&conn));
        }
    }
    Ok(Joined {
        conn,
        connect_ns: t1 - t0,
        join_ns: now_ns() - t1,
    })
}

/// A description of how the server closed `conn`.
pub fn closed_reason(conn: &Conn) -> String {
    conn.close_info()
        .map(|c| c.to_string())
        .unwrap_or_else(|| String::from("closed"))
}

/// The `uid` of a header frame, if `payload` is one.
pub fn header_uid(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get("uid")?.as_str().map(str::to_string)
}

/// Seeds every channel on every server (see the module comment),
/// `concurrency` at a time. Each server gets its own seed sessions: servers
/// that do not share history (or share it late) still give every joiner a
/// first frame, and the seeds' uids differ per server so that servers
/// sharing one membership do not refuse them as duplicates.
pub async fn seed_channels(
    targets: &Targets,
    channels: &[String],
    concurrency: usize,
    timeout: Duration,
) -> Result<()> {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for (t, target) in targets.all().iter().enumerate() {
        for (i, ch) in channels.iter().enumerate() {
            let (target, ch, sem) = (target.clone(), ch.clone(), sem.clone());
            set.spawn(async move {
                let _permit = sem.acquire_owned().await.expect("never closed");
                tokio::time::timeout(timeout, seed_channel(&target, &ch, t, 2 * i))
                    .await
                    .map_err(|_| anyhow!("timed out"))
                    .and_then(|r| r)
                    .with_context(|| format!("seeding channel {ch} on {}", target.addr))
            });
        }
    }
    while let Some(r) = set.join_next().await {
        r.context("seed task")??;
    }
    Ok(())
}

async fn seed_channel(target: &Target, channel: &str, server: usize, idx: usize) -> Result<()> {
    let (uid_a, uid_b) = (format!("seed-a{server}"), format!("seed-b{server}"));
    let mut a = target.connect(idx, 4096).await?;
    a.join(&uid_a, channel).await?;
    let mut b = target.connect(idx + 1, 4096).await?;
    b.join(&uid_b, channel).await?;
    loop {
        let Some(m) = b.recv().await? else {
            bail!("second seed session {}", closed_reason(&b));
        };
        if m.opcode == OP_TEXT && header_uid(&m.payload).as_deref() == Some(uid_a.as_str()) {
            break;
        }
    }
    let wait = Duration::from_secs(1);
    let _ = tokio::join!(a.close(wait), b.close(wait));
    Ok(())
}

/// Server and harness samples at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Process clock, nanoseconds.
    pub at_ns: u64,
    /// The server's figures (with `--server-pid`).
    pub server: Option<ProcSample>,
    /// This process's CPU time, nanoseconds.
    pub self_cpu_ns: u64,
    /// This process's RSS, KiB.
    pub self_rss_kb: u64,
}

impl Sample {
    /// Samples now: the sum over the server processes, `None` when there
    /// are none or one has vanished.
    pub fn take(server_pids: &[u32]) -> Sample {
        let server = if server_pids.is_empty() {
            None
        } else {
            server_pids
                .iter()
                .try_fold(ProcSample::default(), |sum, &p| {
                    Some(sum + procstat::sample(p).ok()?)
                })
        };
        Sample {
            at_ns: now_ns(),
            server,
            self_cpu_ns: procstat::self_cpu_ns(),
            self_rss_kb: procstat::self_rss_kb(),
        }
    }
}

/// The server's figures over an interval.
#[derive(Debug, Clone, Serialize)]
pub struct ServerFigures {
    /// The processes sampled (figures are their sums).
    pub pids: Vec<u32>,
    /// CPU seconds (utime + stime) used in the interval.
    pub cpu_s: f64,
    /// CPU seconds per wall second (1.0 = one core busy).
    pub cpu_cores: f64,
    /// RSS at the start, KiB.
    pub rss_kb_start: u64,
    /// RSS at the end, KiB.
    pub rss_kb_end: u64,
}

/// The harness's own figures over an interval.
#[derive(Debug, Clone, Serialize)]
pub struct HarnessFigures {
    /// Worker threads.
    pub threads: u16,
    /// CPU seconds used in the interval (all threads).
    pub cpu_s: f64,
    /// CPU seconds per wall second.
    pub cpu_cores: f64,
    /// True when the workers were close to fully busy: figures may then
    /// measure the harness rather than the server.
    pub saturated: bool,
    /// The harness's RSS at the end of the interval, KiB.
    pub rss_kb: u64,
}

/// Figures between two samples.
pub fn figures(common: &Common, a: &Sample, b: &Sample) -> (Option<ServerFigures>, HarnessFigures) {
    let wall = (b.at_ns.saturating_sub(a.at_ns)).max(1) as f64 / 1e9;
    let server = match (a.server, b.server) {
        (Some(sa), Some(sb)) => {
            let cpu_s = sb.cpu_ns.saturating_sub(sa.cpu_ns) as f64 / 1e9;
            Some(ServerFigures {
                pids: common.server_pid.clone(),
                cpu_s,
                cpu_cores: cpu_s / wall,
                rss_kb_start: sa.rss_kb,
                rss_kb_end: sb.rss_kb,
            })
        }
        _ => None,
    };
    let cpu_s = b.self_cpu_ns.saturating_sub(a.self_cpu_ns) as f64 / 1e9;
    let cores = cpu_s / wall;
    let harness = HarnessFigures {
        threads: common.threads,
        cpu_s,
        cpu_cores: cores,
        saturated: cores >= 0.9 * f64::from(common.threads),
        rss_kb: b.self_rss_kb,
    };
    (server, harness)
}

/// Warnings about the figures themselves.
pub fn figure_warnings(
    common: &Common,
    harness: &HarnessFigures,
    server: &Option<ServerFigures>,
) -> Vec<String> {
    let mut w = Vec::new();
    if harness.saturated {
        w.push(format!(
            "the harness used {:.2} cores with {} worker thread(s): it may be the bottleneck (try --threads)",
            harness.cpu_cores, harness.threads
        ));
    }
    if !common.server_pid.is_empty() && server.is_none() {
        w.push(format!("could not sample /proc/{:?}", common.server_pid));
    }
    w
}

/// Error messages kept in a report.
const MAX_ERRORS: usize = 20;

/// The first few error messages of a run, and how many there were.
#[derive(Debug, Default)]
pub struct ErrorLog {
    kept: std::sync::Mutex<Vec<String>>,
    count: std::sync::atomic::AtomicUsize,
}

impl ErrorLog {
    /// Records one error.
    pub fn push(&self, msg: String) {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut kept = self.kept.lock().expect("not poisoned");
        if kept.len() < MAX_ERRORS {
            kept.push(msg);
        }
    }

    /// The kept messages, with a last line for the ones dropped.
    pub fn messages(&self) -> Vec<String> {
        let mut kept = self.kept.lock().expect("not poisoned").clone();
        let n = self.count.load(std::sync::atomic::Ordering::Relaxed);
        if n > kept.len() {
            kept.push(format!("... and {} more", n - kept.len()));
        }
        kept
    }
}

/// One worker thread's histograms (nanoseconds).
#[derive(Debug)]
pub struct Hists {
    /// Delivery latency.
    pub latency: hdrhistogram::Histogram<u64>,
    /// Connect + handshake.
    pub connect: hdrhistogram::Histogram<u64>,
    /// Header until the first frame.
    pub join: hdrhistogram::Histogram<u64>,
    /// Close sent until the server's close (churn).
    pub leave: hdrhistogram::Histogram<u64>,
}

impl Default for Hists {
    fn default() -> Self {
        Self {
            latency: crate::metrics::new_hist(),
            connect: crate::metrics::new_hist(),
            join: crate::metrics::new_hist(),
            leave: crate::metrics::new_hist(),
        }
    }
}

impl Hists {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Hists) {
        crate::metrics::merge(&mut self.latency, &other.latency);
        crate::metrics::merge(&mut self.connect, &other.connect);
        crate::metrics::merge(&mut self.join, &other.join);
        crate::metrics::merge(&mut self.leave, &other.leave);
    }
}

/// What a session needs to join, shared by a scenario's tasks.
#[derive(Debug, Clone, Copy)]
pub struct JoinCtx<'a> {
    /// The servers; session `idx` goes to `targets.pick(idx)`.
    pub targets: &'a Targets,
    /// Bound on connect + join.
    pub timeout: Duration,
    /// Where failures go.
    pub errors: &'a ErrorLog,
    /// Where connect and join times go.
    pub hists: &'a std::cell::RefCell<Hists>,
    /// Bounds connection attempts in flight.
    pub sem: &'a Semaphore,
    /// Read buffer bytes.
    pub read_buf: usize,
}

impl JoinCtx<'_> {
    /// Connects and joins `channel` as `uid`, recording the times; a failure
    /// is logged and gives `None`.
    pub async fn join(
        &self,
        idx: usize,
        uid: &str,
        channel: &str,
        on_msg: impl FnMut(Msg<'_>),
    ) -> Option<Conn> {
        let joined = {
            let _permit = self.sem.acquire().await.expect("never closed");
            tokio::time::timeout(
                self.timeout,
                connect_join(
                    self.targets.pick(idx),
                    idx,
                    self.read_buf,
                    uid,
                    channel,
                    on_msg,
                ),
            )
            .await
        };
        match joined {
            Ok(Ok(j)) => {
                let mut h = self.hists.borrow_mut();
                h.connect.saturating_record(j.connect_ns.max(1));
                h.join.saturating_record(j.join_ns.max(1));
                Some(j.conn)
            }
            Ok(Err(e)) => {
                self.errors.push(format!("{uid} on {channel}: {e:#}"));
                None
            }
            Err(_) => {
                self.errors
                    .push(format!("{uid} on {channel}: connect + join timed out"));
                None
            }
        }
    }
}
