//! `churn`: `concurrency` loops, each repeating connect, join (until the
//! first history frame), leave (Close, until the server's Close or end of
//! stream), over seeded channels, for warm-up + duration; optionally paced
//! to a total rate. Measures cycles per second and connect / join / leave
//! times in the measured window.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::watch;

use super::{ErrorLog, HarnessFigures, Hists, Sample, ServerFigures};
use crate::cli::ChurnArgs;
use crate::clock::{self, now_ns, secs_to_ns};
use crate::metrics::{self, Summary};
use crate::report::Report;
use crate::target::Targets;
use crate::workers::{self, Phase, Ticker};

struct Shared {
    args: ChurnArgs,
    targets: Arc<Targets>,
    channels: Vec<String>,
    phase: watch::Sender<Phase>,
    t0: AtomicU64,
    cycles: AtomicU64,
    cycles_in_window: AtomicU64,
    failed: AtomicU64,
    errors: ErrorLog,
}

/// The figures of a churn run.
#[derive(Debug, Serialize)]
pub struct ChurnResults {
    /// Resolved server address.
    pub target: String,
    /// Length of the measured window, seconds.
    pub window_s: f64,
    /// Completed cycles in all.
    pub cycles: u64,
    /// Cycles that ended in the measured window.
    pub cycles_in_window: u64,
    /// Cycles per second in the window.
    pub cycles_per_s: f64,
    /// Cycles that failed (connect, join or leave).
    pub failed: u64,
    /// TCP + TLS + WebSocket handshake (window).
    pub connect: Summary,
    /// Header sent until the first (history) frame arrived (window).
    pub join: Summary,
    /// Close sent until the server's Close or end of stream (window).
    pub leave: Summary,
    /// Server CPU and RSS in the window (with --server-pid).
    pub server: Option<ServerFigures>,
    /// Server CPU microseconds per cycle in the window.
    pub server_cpu_us_per_cycle: Option<f64>,
    /// The harness in the window.
    pub harness: HarnessFigures,
    /// Errors (the first few).
    pub errors: Vec<String>,
}

/// Runs the scenario (blocking).
pub fn run(args: &ChurnArgs) -> Result<Report> {
    let common = &args.common;
    let deadline = now_ns() + secs_to_ns(crate::cli::Command::Churn(args.clone()).deadline_secs());
    let targets = Targets::new(common)?;
    let run_id = super::run_id(common);
    let channels: Vec<String> = (0..args.channels as usize)
        .map(|i| super::channel_name(common, &run_id, "ch", i))
        .collect();
    let (phase, _) = watch::channel(Phase::Join);
    let sh = Arc::new(Shared {
        args: args.clone(),
        targets: targets.clone(),
        channels,
        phase,
        t0: AtomicU64::new(0),
        cycles: AtomicU64::new(0),
        cycles_in_window: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        errors: ErrorLog::default(),
    });
    let rt = workers::runtime()?;
    rt.block_on(super::seed_channels(
        &targets,
        &sh.channels,
        common.connect_concurrency as usize,
        Duration::from_secs_f64(common.connect_timeout),
    ))?;

    let threads = usize::from(common.threads);
    let loops = args.concurrency as usize;
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let sh = sh.clone();
        let ids: Vec<usize> = (t..loops).step_by(threads).collect();
        handles.push(workers::spawn(t, move || worker(sh, ids))?);
    }

    let mut failures = Vec::new();
    let mut ticker = Ticker::new("churn", common.quiet);
    let pid = &common.server_pid;
    let (a, b) = rt.block_on(async {
        let mut tick = |name: &str| {
            ticker.tick(
                || format!("{name:<5} failed {}", sh.failed.load(Ordering::Relaxed)),
                [
                    ("cycles", sh.cycles.load(Ordering::Relaxed)),
                    ("in window", sh.cycles_in_window.load(Ordering::Relaxed)),
                ],
            )
        };
        let t0 = now_ns() + 10_000_000;
        sh.t0.store(t0, Ordering::Release);
        sh.phase.send_replace(Phase::Run);
        let ws = t0 + secs_to_ns(args.warmup);
        let we = ws + secs_to_ns(args.duration);
        workers::sleep_until(ws.min(deadline), || tick("warm")).await;
        let a = Sample::take(pid);
        workers::sleep_until(we.min(deadline), || tick("run")).await;
        let b = Sample::take(pid);
        if now_ns() >= deadline {
            failures.push(String::from("deadline passed during the run"));
        }
        (a, b)
    });
    sh.phase.send_replace(Phase::Stop);
    let outs = workers::join(handles)?;
    ticker.finish();

    let mut hists = Hists::default();
    let mut aborted = 0;
    for (h, ab) in &outs {
        hists.merge(h);
        aborted += ab;
    }
    let window_s = args.duration.max(1e-9);
    let cycles_in_window = sh.cycles_in_window.load(Ordering::Relaxed);
    let failed = sh.failed.load(Ordering::Relaxed);
    let (server, harness) = super::figures(common, &a, &b);
    let warnings = super::figure_warnings(common, &harness, &server);
    if failed > 0 {
        failures.push(format!("{failed} cycles failed"));
    }
    if aborted > 0 {
        failures.push(format!("{aborted} loops aborted at the deadline"));
    }
    if sh.cycles.load(Ordering::Relaxed) == 0 && failures.is_empty() {
        failures.push(String::from("no cycle completed"));
    }
    let server_cpu_us_per_cycle = server
        .as_ref()
        .filter(|_| cycles_in_window > 0)
        .map(|s| s.cpu_s * 1e6 / cycles_in_window as f64);
    let results = ChurnResults {
        target: targets.describe(),
        window_s,
        cycles: sh.cycles.load(Ordering::Relaxed),
        cycles_in_window,
        cycles_per_s: cycles_in_window as f64 / window_s,
        failed,
        connect: metrics::summarize(&hists.connect),
        join: metrics::summarize(&hists.join),
        leave: metrics::summarize(&hists.leave),
        server,
        server_cpu_us_per_cycle,
        harness,
        errors: sh.errors.messages(),
    };
    Ok(Report::new(
        "churn", run_id, args, &results, failures, warnings,
    ))
}

async fn worker(sh: Arc<Shared>, ids: Vec<usize>) -> (Hists, usize) {
    let hists = Rc::new(RefCell::new(Hists::default()));
    let handles: Vec<_> = ids
        .into_iter()
        .map(|l| {
            let (sh, hists) = (sh.clone(), hists.clone());
            tokio::task::spawn_local(async move { churn_loop(&sh, &hists, l).await })
        })
        .collect();
    let (_, aborted) = workers::collect(handles, sh.phase.subscribe()).await;
    (hists.take(), aborted)
}

/// Times of one cycle, nanoseconds.
struct Cycle {
    connect: u64,
    join: u64,
    leave: u64,
}

async fn cycle(sh: &Shared, idx: usize, uid: &str, channel: &str) -> Result<Cycle> {
    let j = super::connect_join(
        sh.targets.pick(idx),
        idx,
        sh.args.read_buf,
        uid,
        channel,
        |_| {},
    )
    .await?;
    let mut conn = j.conn;
    let t = now_ns();
    conn.close(Duration::from_secs_f64(sh.args.common.connect_timeout))
        .await
        .context("leaving")?;
    Ok(Cycle {
        connect: j.connect_ns,
        join: j.join_ns,
        leave: now_ns() - t,
    })
}

async fn churn_loop(sh: &Shared, hists: &RefCell<Hists>, l: usize) {
    let mut phase = sh.phase.subscribe();
    match phase.wait_for(|p| *p >= Phase::Run).await {
        Ok(p) if *p < Phase::Stop => {}
        _ => return,
    }
    let t0 = sh.t0.load(Ordering::Acquire);
    let ws = t0 + secs_to_ns(sh.args.warmup);
    let we = ws + secs_to_ns(sh.args.duration);
    let loops = sh.args.concurrency as f64;
    // With a total rate R, each loop starts a cycle every loops / R seconds,
    // the loops offset from each other by 1 / R.
    let pace = sh.args.rate.map(|r| (l as f64 * 1e9 / r, loops * 1e9 / r));
    let timeout = Duration::from_secs_f64(sh.args.common.connect_timeout);
    let nch = sh.channels.len();
    for i in 0usize.. {
        if let Some((offset, interval)) = pace {
            let at = t0 + (offset + i as f64 * interval) as u64;
            if at >= we {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(clock::instant(at)) => {}
                _ = phase.wait_for(|p| *p == Phase::Stop) => return,
            }
        }
        if now_ns() >= we || *phase.borrow() == Phase::Stop {
            return;
        }
        let uid = format!("churn-{l}-{i}");
        let channel = &sh.channels[(l + i) % nch];
        let idx = l.wrapping_mul(7919).wrapping_add(i);
        let r = tokio::time::timeout(timeout, cycle(sh, idx, &uid, channel)).await;
        let end = now_ns();
        match r {
            Ok(Ok(c)) => {
                sh.cycles.fetch_add(1, Ordering::Relaxed);
                if end >= ws && end < we {
                    sh.cycles_in_window.fetch_add(1, Ordering::Relaxed);
                    let mut h = hists.borrow_mut();
                    h.connect.saturating_record(c.connect.max(1));
                    h.join.saturating_record(c.join.max(1));
                    h.leave.saturating_record(c.leave.max(1));
                }
            }
            Ok(Err(e)) => {
                sh.failed.fetch_add(1, Ordering::Relaxed);
                sh.errors.push(format!("{uid} on {channel}: {e:#}"));
            }
            Err(_) => {
                sh.failed.fetch_add(1, Ordering::Relaxed);
                sh.errors
                    .push(format!("{uid} on {channel}: cycle timed out"));
            }
        }
    }
}
