//! `conns`: N idle joined sessions, `per_channel` to a channel, held for a
//! while. Measures connect and join times, the join rate, and (with
//! `--server-pid`) the server's RSS growth per session and CPU per join.
//! Sessions keep reading (answering pings, taking later joiners' headers)
//! so the server never sees them as slow or dead.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};

use super::{ErrorLog, HarnessFigures, Hists, JoinCtx, Sample, ServerFigures};
use crate::cli::ConnsArgs;
use crate::clock::{now_ns, secs_to_ns};
use crate::conn::Status;
use crate::metrics::{self, Summary};
use crate::procstat::ProcSample;
use crate::report::Report;
use crate::target::Targets;
use crate::workers::{self, Phase, Ticker};

struct Shared {
    args: ConnsArgs,
    targets: Arc<Targets>,
    channels: Vec<String>,
    phase: watch::Sender<Phase>,
    joined: AtomicUsize,
    failed: AtomicUsize,
    closed: AtomicUsize,
    frames: AtomicU64,
    errors: ErrorLog,
}

/// Server memory and CPU for the sessions.
#[derive(Debug, Serialize)]
pub struct ServerMemory {
    /// The processes sampled (figures are their sums).
    pub pids: Vec<u32>,
    /// RSS before the first connection, KiB.
    pub rss_kb_before: u64,
    /// RSS when the last session had joined, KiB.
    pub rss_kb_joined: u64,
    /// RSS at the end of the hold, KiB.
    pub rss_kb_end: u64,
    /// (end - before) / joined sessions, bytes. Meaningful only against a
    /// freshly started server: allocators keep memory freed by earlier runs.
    /// It includes the binary's code pages the run faulted in (a fixed
    /// amount, see `file_kb_*`), which are not per session.
    pub bytes_per_conn: f64,
    /// Anonymous RSS (RssAnon) before the first connection and at the end, KiB.
    pub anon_kb_before: u64,
    pub anon_kb_end: u64,
    /// File-backed RSS (RssFile) before and at the end, KiB.
    pub file_kb_before: u64,
    pub file_kb_end: u64,
    /// Anonymous RSS growth / joined sessions, bytes: `bytes_per_conn`
    /// without the code pages (0 when the kernel has no RssAnon).
    pub anon_bytes_per_conn: f64,
    /// CPU seconds from the first connect to the last join.
    pub join_cpu_s: f64,
    /// CPU microseconds per joined session.
    pub join_cpu_us_per_conn: f64,
}

impl ServerMemory {
    /// From the samples before the first connection (`s0`), when the last
    /// session had joined (`s1`) and at the end of the hold (`s2`).
    fn new(pids: Vec<u32>, s0: ProcSample, s1: ProcSample, s2: ProcSample, joined: usize) -> Self {
        let per = |kb0: u64, kb2: u64| (kb2 as f64 - kb0 as f64) * 1024.0 / joined.max(1) as f64;
        let join_cpu_s = s1.cpu_ns.saturating_sub(s0.cpu_ns) as f64 / 1e9;
        ServerMemory {
            pids,
            rss_kb_before: s0.rss_kb,
            rss_kb_joined: s1.rss_kb,
            rss_kb_end: s2.rss_kb,
            bytes_per_conn: per(s0.rss_kb, s2.rss_kb),
            anon_kb_before: s0.anon_kb,
            anon_kb_end: s2.anon_kb,
            file_kb_before: s0.file_kb,
            file_kb_end: s2.file_kb,
            anon_bytes_per_conn: per(s0.anon_kb, s2.anon_kb),
            join_cpu_s,
            join_cpu_us_per_conn: join_cpu_s * 1e6 / joined.max(1) as f64,
        }
    }
}

/// The figures of a conns run.
#[derive(Debug, Serialize)]
pub struct ConnsResults {
    /// Resolved server address.
    pub target: String,
    /// Sessions asked for.
    pub requested: u32,
    /// Sessions joined.
    pub joined: usize,
    /// Sessions that failed to connect or join.
    pub failed: usize,
    /// Sessions the server closed during the hold.
    pub closed_early: usize,
    /// Seconds from the first connect to the last join.
    pub join_wall_s: f64,
    /// Joins per second over that time.
    pub joins_per_s: f64,
    /// Frames received by the idle sessions (joiners' headers, history).
    pub frames_received: u64,
    /// TCP + TLS + WebSocket handshake.
    pub connect: Summary,
    /// Header sent until the first (history) frame arrived.
    pub join: Summary,
    /// Server memory (with --server-pid).
    pub server_memory: Option<ServerMemory>,
    /// Server CPU and RSS during the hold.
    pub server_hold: Option<ServerFigures>,
    /// The harness during the hold.
    pub harness: HarnessFigures,
    /// Errors (the first few).
    pub errors: Vec<String>,
}

/// Runs the scenario (blocking).
pub fn run(args: &ConnsArgs) -> Result<Report> {
    let common = &args.common;
    let deadline = now_ns() + secs_to_ns(crate::cli::Command::Conns(args.clone()).deadline_secs());
    let targets = Targets::new(common)?;
    let run_id = super::run_id(common);
    let n = args.conns as usize;
    let per = args.per_channel as usize;
    let channels: Vec<String> = (0..n.div_ceil(per))
        .map(|i| super::channel_name(common, &run_id, "c", i))
        .collect();
    let pid = &common.server_pid;
    let before = Sample::take(pid);
    let (phase, _) = watch::channel(Phase::Join);
    let sh = Arc::new(Shared {
        args: args.clone(),
        targets: targets.clone(),
        channels,
        phase,
        joined: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        closed: AtomicUsize::new(0),
        frames: AtomicU64::new(0),
        errors: ErrorLog::default(),
    });
    let timeout = Duration::from_secs_f64(common.connect_timeout);
    let rt = workers::runtime()?;
    rt.block_on(super::seed_channels(
        &targets,
        &sh.channels,
        common.connect_concurrency as usize,
        timeout,
    ))?;

    let threads = usize::from(common.threads);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let sh = sh.clone();
        let ids: Vec<usize> = (t..n).step_by(threads).collect();
        handles.push(workers::spawn(t, move || worker(sh, ids))?);
    }

    let mut failures = Vec::new();
    let mut ticker = Ticker::new("conns", common.quiet);
    let start = Sample::take(&[]);
    let samples = rt.block_on(async {
        let mut tick = |name: &str| {
            ticker.tick(
                || {
                    format!(
                        "{name:<5} joined {}/{n} failed {} closed {}",
                        sh.joined.load(Ordering::Relaxed),
                        sh.failed.load(Ordering::Relaxed),
                        sh.closed.load(Ordering::Relaxed)
                    )
                },
                [
                    ("joined", sh.joined.load(Ordering::Relaxed) as u64),
                    ("frames", sh.frames.load(Ordering::Relaxed)),
                ],
            )
        };
        let all_in = workers::wait_until(
            deadline,
            || sh.joined.load(Ordering::Relaxed) + sh.failed.load(Ordering::Relaxed) >= n,
            || tick("join"),
        )
        .await;
        let joined = Sample::take(pid);
        if !all_in {
            failures.push(String::from("deadline passed while sessions joined"));
            return (joined, joined, joined);
        }
        let hold = now_ns() + secs_to_ns(args.warmup);
        workers::sleep_until(hold.min(deadline), || tick("settle")).await;
        let a = Sample::take(pid);
        let end = now_ns() + secs_to_ns(args.duration);
        workers::sleep_until(end.min(deadline), || tick("hold")).await;
        let b = Sample::take(pid);
        if now_ns() >= deadline {
            failures.push(String::from("deadline passed during the hold"));
        }
        (joined, a, b)
    });
    let (joined_s, a, b) = samples;
    sh.phase.send_replace(Phase::Stop);
    let outs = workers::join(handles)?;
    ticker.finish();

    let mut hists = Hists::default();
    let mut aborted = 0;
    for (h, ab) in &outs {
        hists.merge(h);
        aborted += ab;
    }
    let joined = sh.joined.load(Ordering::Relaxed);
    let failed = sh.failed.load(Ordering::Relaxed);
    let closed = sh.closed.load(Ordering::Relaxed);
    let join_wall_s = joined_s.at_ns.saturating_sub(start.at_ns) as f64 / 1e9;
    let (server_hold, harness) = super::figures(common, &a, &b);
    let warnings = super::figure_warnings(common, &harness, &server_hold);
    let server_memory = match (before.server, joined_s.server, b.server) {
        (Some(s0), Some(s1), Some(s2)) => Some(ServerMemory::new(pid.clone(), s0, s1, s2, joined)),
        _ => None,
    };
    if failed > 0 {
        failures.push(format!("{failed} sessions failed to join"));
    }
    if closed > 0 {
        failures.push(format!("{closed} sessions closed during the hold"));
    }
    if aborted > 0 {
        failures.push(format!("{aborted} tasks aborted at the deadline"));
    }
    let results = ConnsResults {
        target: targets.describe(),
        requested: args.conns,
        joined,
        failed,
        closed_early: closed,
        join_wall_s,
        joins_per_s: joined as f64 / join_wall_s.max(1e-9),
        frames_received: sh.frames.load(Ordering::Relaxed),
        connect: metrics::summarize(&hists.connect),
        join: metrics::summarize(&hists.join),
        server_memory,
        server_hold,
        harness,
        errors: sh.errors.messages(),
    };
    Ok(Report::new(
        "conns", run_id, args, &results, failures, warnings,
    ))
}

async fn worker(sh: Arc<Shared>, ids: Vec<usize>) -> (Hists, usize) {
    let hists = Rc::new(RefCell::new(Hists::default()));
    let sem = Rc::new(Semaphore::new(sh.args.common.connect_concurrency as usize));
    let handles: Vec<_> = ids
        .into_iter()
        .map(|i| {
            let (sh, hists, sem) = (sh.clone(), hists.clone(), sem.clone());
            tokio::task::spawn_local(async move { session(&sh, &hists, &sem, i).await })
        })
        .collect();
    let (_, aborted) = workers::collect(handles, sh.phase.subscribe()).await;
    (hists.take(), aborted)
}

async fn session(sh: &Shared, hists: &RefCell<Hists>, sem: &Semaphore, i: usize) {
    let mut phase = sh.phase.subscribe();
    let ctx = JoinCtx {
        targets: &sh.targets,
        timeout: Duration::from_secs_f64(sh.args.common.connect_timeout),
        errors: &sh.errors,
        hists,
        sem,
        read_buf: sh.args.read_buf,
    };
    let uid = format!("idle-{i}");
    let channel = &sh.channels[i / sh.args.per_channel as usize];
    let mut frames = 0u64;
    let Some(mut conn) = ctx.join(i, &uid, channel, |_| frames += 1).await else {
        sh.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    sh.frames.fetch_add(frames, Ordering::Relaxed);
    sh.joined.fetch_add(1, Ordering::Relaxed);
    loop {
        tokio::select! {
            biased;
            r = conn.read_more() => {
                let mut frames = 0u64;
                let open = r.is_ok()
                    && matches!(conn.process(|_| frames += 1), Ok(Status::Open))
                    && conn.flush_control().await.is_ok();
                sh.frames.fetch_add(frames, Ordering::Relaxed);
                if !open {
                    sh.closed.fetch_add(1, Ordering::Relaxed);
                    sh.errors.push(format!("{uid}: {}", super::closed_reason(&conn)));
                    return;
                }
            }
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow_and_update() == Phase::Stop {
                    break;
                }
            }
        }
    }
    let _ = conn.close(Duration::from_millis(500)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_session_memory_leaves_out_code_pages() {
        let at = |cpu_ns, anon_kb, file_kb| ProcSample {
            cpu_ns,
            rss_kb: anon_kb + file_kb,
            anon_kb,
            file_kb,
        };
        // 10,000 sessions: 10,000 KiB more heap, 500 KiB more code faulted in.
        let m = ServerMemory::new(
            vec![7],
            at(1_000_000_000, 4_000, 8_000),
            at(1_500_000_000, 13_000, 8_400),
            at(1_600_000_000, 14_000, 8_500),
            10_000,
        );
        assert_eq!(m.bytes_per_conn, 10_500.0 * 1024.0 / 10_000.0);
        assert_eq!(m.anon_bytes_per_conn, 1024.0);
        assert_eq!((m.anon_kb_before, m.anon_kb_end), (4_000, 14_000));
        assert_eq!((m.file_kb_before, m.file_kb_end), (8_000, 8_500));
        assert_eq!((m.rss_kb_before, m.rss_kb_joined), (12_000, 21_400));
        assert!((m.join_cpu_us_per_conn - 50.0).abs() < 1e-9);
    }
}
