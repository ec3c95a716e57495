//! `fanout`: C channels, each with S subscribers and P publishers.
//!
//! Phases: seed the channels; all subscribers join; publishers join; load
//! runs for warm-up + duration (fixed rate per publisher, or as fast as a
//! window of unconfirmed messages allows); publishers stop and publish how
//! many they sent; subscribers drain until they have everything or the drain
//! time ends. Every subscriber tracks every publisher of its channel
//! (loss, late, duplicate), measures latency from the payload's timestamp in
//! the measured window, and skips header frames and history. At the end the
//! subscribers of each channel must agree on one sequence ([`crate::order`]).
//!
//! Clients (`--client`): `ordinary` publishers write each frame with its own
//! write call and every connection reads into a small buffer, as client
//! libraries do; `batch` publishers write up to `--batch` frames per call.
//! The report counts write calls and frames per call, so the claim is
//! checked, not assumed. With several `--url`s, sessions are dealt over the
//! servers round robin (see [`Targets`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, watch};

use super::{
    ErrorLog, HarnessFigures, Hists, JoinCtx, Sample, ServerFigures, figure_warnings, figures,
};
use crate::cli::{ClientMode, FanoutArgs};
use crate::clock::{self, now_ns, secs_to_ns};
use crate::conn::{Conn, IoStats, Msg, Status};
use crate::frame::OP_BINARY;
use crate::metrics::{self, Summary};
use crate::order::{self, OrderLog};
use crate::payload::{self, Stamp};
use crate::report::Report;
use crate::rng::{self, Rng};
use crate::target::Targets;
use crate::tracker::{ChannelView, PUBLISHER_UID_PREFIX};
use crate::workers::{self, Phase, Ticker};

/// What the subscribers of a channel have seen of one publisher, for the
/// window (publishers without --rate).
#[derive(Debug)]
struct PubProgress {
    /// Per subscriber: one past the highest sequence number seen
    /// (`u64::MAX` once the subscriber is gone, so it holds nobody back).
    seen: Vec<AtomicU64>,
    /// Woken when a subscriber advances.
    notify: Notify,
}

impl PubProgress {
    fn new(subs: usize) -> Self {
        Self {
            seen: (0..subs).map(|_| AtomicU64::new(0)).collect(),
            notify: Notify::new(),
        }
    }

    /// What the slowest subscriber has seen.
    fn min_seen(&self) -> u64 {
        self.seen
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX)
    }

    fn set(&self, sub: usize, seen: u64) {
        self.seen[sub].store(seen, Ordering::Release);
        self.notify.notify_one();
    }
}

/// State all threads share.
struct Shared {
    args: FanoutArgs,
    targets: Arc<Targets>,
    channels: Vec<String>,
    phase: watch::Sender<Phase>,
    /// Start of the load on the process clock (0 until the run starts).
    t0: AtomicU64,
    warmup_ns: u64,
    duration_ns: u64,
    subs_joined: AtomicUsize,
    subs_failed: AtomicUsize,
    /// Subscribers that have everything (in the drain) or have ended.
    subs_done: AtomicUsize,
    pubs_joined: AtomicUsize,
    pubs_failed: AtomicUsize,
    /// Publishers that stopped sending and stored their count in `sent`.
    pubs_done: AtomicUsize,
    sent: Vec<AtomicU64>,
    progress: Vec<PubProgress>,
    recv_total: AtomicU64,
    sent_total: AtomicU64,
    errors: ErrorLog,
}

impl Shared {
    fn error(&self, msg: String) {
        self.errors.push(msg);
    }

    fn join_ctx<'a>(&'a self, hists: &'a RefCell<Hists>, sem: &'a Semaphore) -> JoinCtx<'a> {
        JoinCtx {
            targets: &self.targets,
            timeout: self.connect_timeout(),
            errors: &self.errors,
            hists,
            sem,
            read_buf: self.args.read_buf_bytes(),
        }
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.args.common.connect_timeout)
    }
}

#[derive(Debug, Clone, Copy)]
enum Job {
    Sub { chan: usize, idx: usize },
    Pub { chan: usize, idx: usize },
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct SubResult {
    chan: usize,
    idx: usize,
    /// The sequence it saw; `None` when it never joined.
    order: Option<OrderLog>,
    io: IoStats,
    /// Messages its channel's publishers sent (what it was owed).
    expected: u64,
    received: u64,
    in_window: u64,
    lost: u64,
    late: u64,
    dups: u64,
    foreign: u64,
    closed_early: bool,
}

/// What one publisher did.
#[derive(Debug, Default)]
struct PubResult {
    sent: u64,
    sent_in_window: u64,
    echoed: u64,
    closed_early: bool,
    io: IoStats,
}

enum TaskOut {
    Sub(SubResult),
    Pub(PubResult),
}

struct WorkerOut {
    outs: Vec<TaskOut>,
    aborted: usize,
    hists: Hists,
}

/// The figures of a fanout run.
#[derive(Debug, Serialize)]
pub struct FanoutResults {
    /// Resolved server addresses, in `--url` order.
    pub target: String,
    /// Servers the sessions were dealt over.
    pub servers: usize,
    /// "rate" or "window".
    pub mode: &'static str,
    /// How the clients wrote and read.
    pub client: ClientMode,
    /// Length of the measured window, seconds.
    pub window_s: f64,
    /// Subscribers joined / expected.
    pub subscribers: String,
    /// Publishers joined / expected.
    pub publishers: String,
    /// Messages sent in all.
    pub sent: u64,
    /// Messages sent in the measured window.
    pub sent_in_window: u64,
    /// Messages sent per second in the window, all publishers.
    pub sent_per_s: f64,
    /// Deliveries owed: each message times the joined subscribers of its channel.
    pub expected_deliveries: u64,
    /// Deliveries seen in all.
    pub delivered: u64,
    /// Deliveries seen in the measured window.
    pub delivered_in_window: u64,
    /// Deliveries per second in the measured window.
    pub delivered_per_s: f64,
    /// Deliveries never seen.
    pub lost: u64,
    /// Deliveries that came after a later message of the same publisher.
    pub late: u64,
    /// Deliveries seen twice.
    pub duplicates: u64,
    /// Binary frames no publisher of the channel sent.
    pub foreign: u64,
    /// Frames that came back to their own publisher.
    pub echoed: u64,
    /// Subscribers whose sequence (messages and publishers' headers, in
    /// arrival order) differs from the one most of their channel saw.
    pub order_divergent: u64,
    /// Channels whose subscribers did not all see one sequence.
    pub order_split_channels: u64,
    /// Publishers that stopped short of `--messages`.
    pub short_publishers: u64,
    /// Write calls of all publishers (header and control frames included).
    pub publisher_writes: u64,
    /// Frames those calls wrote.
    pub publisher_frames: u64,
    /// Frames per publisher write call, on average.
    pub frames_per_write: f64,
    /// The most frames one publisher write call carried bytes of.
    pub max_frames_per_write: u64,
    /// Reads of all subscribers that returned data.
    pub subscriber_reads: u64,
    /// Deliveries per subscriber read, on average.
    pub deliveries_per_read: f64,
    /// Sessions the server closed (or that failed) before the end.
    pub closed_early: u64,
    /// Tasks aborted at the deadline.
    pub aborted_tasks: usize,
    /// Delivery latency in the measured window (send to receive).
    pub latency: Summary,
    /// TCP + TLS + WebSocket handshake.
    pub connect: Summary,
    /// Header sent until the first (history) frame arrived.
    pub join: Summary,
    /// Server CPU and RSS in the measured window (with --server-pid).
    pub server: Option<ServerFigures>,
    /// Server CPU nanoseconds per delivery in the measured window.
    pub server_cpu_ns_per_delivery: Option<f64>,
    /// The harness's own CPU in the measured window.
    pub harness: HarnessFigures,
    /// Errors (the first few).
    pub errors: Vec<String>,
}

/// Runs the scenario (blocking; starts its own runtimes and threads).
pub fn run(args: &FanoutArgs) -> Result<Report> {
    let args = &args.resolved().map_err(anyhow::Error::msg)?;
    if args.size < payload::STAMP_LEN {
        bail!("--size must be at least {} bytes", payload::STAMP_LEN);
    }
    let common = &args.common;
    let deadline = now_ns() + secs_to_ns(crate::cli::Command::Fanout(args.clone()).deadline_secs());
    let targets = Targets::new(common)?;
    let run_id = super::run_id(common);
    let (c, s, p) = (
        args.channels as usize,
        args.subs as usize,
        args.pubs as usize,
    );
    let channels: Vec<String> = (0..c)
        .map(|i| super::channel_name(common, &run_id, "f", i))
        .collect();
    let (phase, _) = watch::channel(Phase::Join);
    let sh = Arc::new(Shared {
        args: args.clone(),
        targets: targets.clone(),
        channels,
        phase,
        t0: AtomicU64::new(0),
        warmup_ns: secs_to_ns(args.warmup),
        duration_ns: secs_to_ns(args.duration),
        subs_joined: AtomicUsize::new(0),
        subs_failed: AtomicUsize::new(0),
        subs_done: AtomicUsize::new(0),
        pubs_joined: AtomicUsize::new(0),
        pubs_failed: AtomicUsize::new(0),
        pubs_done: AtomicUsize::new(0),
        sent: (0..c * p).map(|_| AtomicU64::new(0)).collect(),
        progress: (0..c * p).map(|_| PubProgress::new(s)).collect(),
        recv_total: AtomicU64::new(0),
        sent_total: AtomicU64::new(0),
        errors: ErrorLog::default(),
    });

    let rt = workers::runtime()?;
    rt.block_on(super::seed_channels(
        &targets,
        &sh.channels,
        common.connect_concurrency as usize,
        sh.connect_timeout(),
    ))?;

    // Subscribers first, then publishers, dealt round robin over threads.
    let threads = usize::from(common.threads);
    let mut jobs: Vec<Vec<Job>> = vec![Vec::new(); threads];
    let mut k = 0;
    for chan in 0..c {
        for idx in 0..s {
            jobs[k % threads].push(Job::Sub { chan, idx });
            k += 1;
        }
    }
    for chan in 0..c {
        for idx in 0..p {
            jobs[k % threads].push(Job::Pub { chan, idx });
            k += 1;
        }
    }
    let mut handles = Vec::with_capacity(threads);
    for (i, jobs) in jobs.into_iter().enumerate() {
        let sh = sh.clone();
        handles.push(workers::spawn(i, move || worker(sh, jobs))?);
    }

    let mut failures = Vec::new();
    let mut ticker = Ticker::new("fanout", common.quiet);
    let (a, b) = rt.block_on(coordinate(&sh, deadline, &mut ticker, &mut failures));
    sh.phase.send_replace(Phase::Stop);
    let outs = workers::join(handles)?;
    ticker.finish();

    // Aggregate.
    let mut hists = Hists::default();
    let mut subs = Vec::new();
    let mut pubs = Vec::new();
    let mut aborted = 0;
    for w in outs {
        hists.merge(&w.hists);
        aborted += w.aborted;
        for o in w.outs {
            match o {
                TaskOut::Sub(r) => subs.push(r),
                TaskOut::Pub(r) => pubs.push(r),
            }
        }
    }
    let sum = |f: fn(&SubResult) -> u64| subs.iter().map(f).sum::<u64>();
    let sent: u64 = pubs.iter().map(|r| r.sent).sum();
    let sent_in_window: u64 = pubs.iter().map(|r| r.sent_in_window).sum();
    let echoed: u64 = pubs.iter().map(|r| r.echoed).sum();
    let closed_early = subs.iter().filter(|r| r.closed_early).count() as u64
        + pubs.iter().filter(|r| r.closed_early).count() as u64;
    let (lost, late, dups, foreign) = (
        sum(|r| r.lost),
        sum(|r| r.late),
        sum(|r| r.dups),
        sum(|r| r.foreign),
    );
    let delivered = sum(|r| r.received);
    let (mut pub_io, mut sub_io) = (IoStats::default(), IoStats::default());
    pubs.iter().for_each(|r| pub_io.add(&r.io));
    subs.iter().for_each(|r| sub_io.add(&r.io));
    let split = order_check(&sh.channels, &subs);
    let order_divergent: u64 = split.iter().map(|s| s.divergent).sum();
    let short_publishers = match args.messages {
        Some(n) => pubs.iter().filter(|r| r.sent < n).count() as u64,
        None => 0,
    };
    let delivered_in_window = sum(|r| r.in_window);
    let window_s = args.duration.max(1e-9);
    let (server, harness) = figures(common, &a, &b);
    let mut warnings = figure_warnings(common, &harness, &server);
    let subs_joined = sh.subs_joined.load(Ordering::Relaxed);
    let pubs_joined = sh.pubs_joined.load(Ordering::Relaxed);
    let expected_deliveries = sum(|r| r.expected);

    let check = |failures: &mut Vec<String>, n: u64, what: &str| {
        if n > 0 {
            failures.push(format!("{n} {what}"));
        }
    };
    check(&mut failures, lost, "deliveries lost");
    check(&mut failures, late, "deliveries out of order (late)");
    check(&mut failures, dups, "duplicate deliveries");
    check(
        &mut failures,
        foreign,
        "frames from no publisher of the channel",
    );
    check(
        &mut failures,
        echoed,
        "frames echoed back to their publisher",
    );
    check(
        &mut failures,
        order_divergent,
        "subscribers saw another sequence than the rest of their channel",
    );
    failures.extend(
        split
            .iter()
            .take(MAX_SPLIT_REPORTS)
            .map(|s| s.detail.clone()),
    );
    if split.len() > MAX_SPLIT_REPORTS {
        failures.push(format!(
            "... and {} more channels whose subscribers disagree",
            split.len() - MAX_SPLIT_REPORTS
        ));
    }
    check(
        &mut failures,
        closed_early,
        "sessions closed before the end",
    );
    if let Some(n) = args.messages {
        check(
            &mut failures,
            short_publishers,
            &format!("publishers sent fewer than --messages {n} before the end"),
        );
    }
    check(
        &mut failures,
        aborted as u64,
        "tasks aborted at the deadline",
    );
    let sf = sh.subs_failed.load(Ordering::Relaxed) as u64;
    check(&mut failures, sf, "subscribers failed to join");
    let pf = sh.pubs_failed.load(Ordering::Relaxed) as u64;
    check(&mut failures, pf, "publishers failed to join");
    if sent == 0 && failures.is_empty() {
        failures.push(String::from("no message was sent"));
    }
    if args.rate.is_none() && delivered_in_window == 0 && sent > 0 {
        warnings.push(String::from("nothing was delivered in the measured window"));
    }
    let errors = sh.errors.messages();
    let cpu_per = server
        .as_ref()
        .filter(|_| delivered_in_window > 0)
        .map(|s| s.cpu_s * 1e9 / delivered_in_window as f64);
    let results = FanoutResults {
        target: targets.describe(),
        servers: targets.all().len(),
        mode: if args.rate.is_some() {
            "rate"
        } else {
            "window"
        },
        client: args.client,
        window_s,
        subscribers: format!("{subs_joined}/{}", c * s),
        publishers: format!("{pubs_joined}/{}", c * p),
        sent,
        sent_in_window,
        sent_per_s: sent_in_window as f64 / window_s,
        expected_deliveries,
        delivered,
        delivered_in_window,
        delivered_per_s: delivered_in_window as f64 / window_s,
        lost,
        late,
        duplicates: dups,
        foreign,
        echoed,
        order_divergent,
        order_split_channels: split.len() as u64,
        short_publishers,
        publisher_writes: pub_io.writes,
        publisher_frames: pub_io.frames_written,
        frames_per_write: pub_io.frames_written as f64 / pub_io.writes.max(1) as f64,
        max_frames_per_write: pub_io.max_frames_per_write,
        subscriber_reads: sub_io.reads,
        deliveries_per_read: delivered as f64 / sub_io.reads.max(1) as f64,
        closed_early,
        aborted_tasks: aborted,
        latency: metrics::summarize(&hists.latency),
        connect: metrics::summarize(&hists.connect),
        join: metrics::summarize(&hists.join),
        server,
        server_cpu_ns_per_delivery: cpu_per,
        harness,
        errors,
    };
    Ok(Report::new(
        "fanout", run_id, args, &results, failures, warnings,
    ))
}

/// Channels whose disagreement is spelled out in the failures.
const MAX_SPLIT_REPORTS: usize = 5;

/// One channel whose subscribers did not all see one sequence.
struct Split {
    divergent: u64,
    detail: String,
}

/// Compares the sequences of every channel's joined subscribers.
fn order_check(channels: &[String], subs: &[SubResult]) -> Vec<Split> {
    let mut by_chan: Vec<Vec<&SubResult>> = vec![Vec::new(); channels.len()];
    for r in subs.iter().filter(|r| r.order.is_some()) {
        by_chan[r.chan].push(r);
    }
    let mut out = Vec::new();
    for (chan, members) in by_chan.iter().enumerate() {
        let logs: Vec<&OrderLog> = members.iter().filter_map(|r| r.order.as_ref()).collect();
        let d = order::compare(&logs);
        let Some(first) = d.first() else {
            continue;
        };
        let who = members[first.subscriber].idx;
        out.push(Split {
            divergent: d.len() as u64,
            detail: format!(
                "channel {}: {} of {} subscribers saw another sequence; sub-{who} first differs \
                 within entries {}..{} (it saw {} entries, the channel's sequence has {})",
                channels[chan],
                d.len(),
                logs.len(),
                first.from,
                first.to,
                first.len,
                first.reference_len
            ),
        });
    }
    out
}

/// Drives the phases; returns the samples at the start and end of the
/// measured window.
async fn coordinate(
    sh: &Arc<Shared>,
    deadline: u64,
    ticker: &mut Ticker,
    failures: &mut Vec<String>,
) -> (Sample, Sample) {
    let pid = &sh.args.common.server_pid;
    let c = sh.args.channels as usize;
    let total_subs = c * sh.args.subs as usize;
    let total_pubs = c * sh.args.pubs as usize;
    let mut phase_name = "join";
    let tick = |ticker: &mut Ticker, name: &str| {
        ticker.tick(
            || {
                format!(
                    "{name:<5} subs {}/{total_subs} pubs {}/{total_pubs}",
                    sh.subs_joined.load(Ordering::Relaxed),
                    sh.pubs_joined.load(Ordering::Relaxed)
                )
            },
            [
                ("sent", sh.sent_total.load(Ordering::Relaxed)),
                ("recv", sh.recv_total.load(Ordering::Relaxed)),
            ],
        )
    };
    let idle = Sample::take(pid);
    let subs_in = workers::wait_until(
        deadline,
        || {
            sh.subs_joined.load(Ordering::Relaxed) + sh.subs_failed.load(Ordering::Relaxed)
                >= total_subs
        },
        || tick(ticker, phase_name),
    )
    .await;
    if !subs_in {
        failures.push(String::from("deadline passed while subscribers joined"));
        return (idle, Sample::take(pid));
    }
    if sh.subs_joined.load(Ordering::Relaxed) == 0 {
        failures.push(String::from("no subscriber joined"));
        return (idle, Sample::take(pid));
    }
    sh.phase.send_replace(Phase::JoinPubs);
    let pubs_in = workers::wait_until(
        deadline,
        || {
            sh.pubs_joined.load(Ordering::Relaxed) + sh.pubs_failed.load(Ordering::Relaxed)
                >= total_pubs
        },
        || tick(ticker, phase_name),
    )
    .await;
    if !pubs_in || sh.pubs_joined.load(Ordering::Relaxed) == 0 {
        failures.push(String::from("publishers did not join"));
        return (idle, Sample::take(pid));
    }

    let t0 = now_ns() + 10_000_000;
    sh.t0.store(t0, Ordering::Release);
    sh.phase.send_replace(Phase::Run);
    let ws = t0 + sh.warmup_ns;
    let we = ws + sh.duration_ns;
    phase_name = "warm";
    workers::sleep_until(ws.min(deadline), || tick(ticker, phase_name)).await;
    let a = Sample::take(pid);
    phase_name = "run";
    workers::sleep_until(we.min(deadline), || tick(ticker, phase_name)).await;
    let b = Sample::take(pid);
    if now_ns() >= deadline {
        failures.push(String::from("deadline passed during the run"));
        return (a, b);
    }

    phase_name = "stop";
    let pubs_joined = sh.pubs_joined.load(Ordering::Relaxed);
    if !workers::wait_until(
        deadline,
        || sh.pubs_done.load(Ordering::Acquire) >= pubs_joined,
        || tick(ticker, phase_name),
    )
    .await
    {
        failures.push(String::from("deadline passed while publishers stopped"));
        return (a, b);
    }
    sh.phase.send_replace(Phase::Drain);
    phase_name = "drain";
    let drain_end = deadline.min(now_ns() + secs_to_ns(sh.args.drain));
    let subs_joined = sh.subs_joined.load(Ordering::Relaxed);
    workers::wait_until(
        drain_end,
        || sh.subs_done.load(Ordering::Acquire) >= subs_joined,
        || tick(ticker, phase_name),
    )
    .await;
    (a, b)
}

async fn worker(sh: Arc<Shared>, jobs: Vec<Job>) -> WorkerOut {
    let hists = Rc::new(RefCell::new(Hists::default()));
    let sem = Rc::new(Semaphore::new(sh.args.common.connect_concurrency as usize));
    let mut handles = Vec::with_capacity(jobs.len());
    for job in jobs {
        let (sh, hists, sem) = (sh.clone(), hists.clone(), sem.clone());
        handles.push(tokio::task::spawn_local(async move {
            match job {
                Job::Sub { chan, idx } => TaskOut::Sub(sub_task(sh, hists, sem, chan, idx).await),
                Job::Pub { chan, idx } => TaskOut::Pub(pub_task(sh, hists, sem, chan, idx).await),
            }
        }));
    }
    let (outs, aborted) = workers::collect(handles, sh.phase.subscribe()).await;
    let hists = hists.take();
    WorkerOut {
        outs,
        aborted,
        hists,
    }
}

async fn sub_task(
    sh: Arc<Shared>,
    hists: Rc<RefCell<Hists>>,
    sem: Rc<Semaphore>,
    chan: usize,
    idx: usize,
) -> SubResult {
    let pubs = sh.args.pubs as usize;
    let base = chan * pubs;
    let mut st = ChannelView::new(base as u32, pubs);
    let mut in_window = 0u64;
    let mut res = SubResult {
        chan,
        idx,
        ..SubResult::default()
    };
    let mut phase = sh.phase.subscribe();
    let uid = format!("sub-{idx}");
    let global = chan * sh.args.subs as usize + idx;
    let Some(mut conn) = sh
        .join_ctx(&hists, &sem)
        .join(global, &uid, &sh.channels[chan], |m| {
            st.on_msg(m.opcode, m.payload);
        })
        .await
    else {
        sh.subs_failed.fetch_add(1, Ordering::Relaxed);
        release_window(&sh, base, idx);
        return res;
    };
    sh.subs_joined.fetch_add(1, Ordering::Relaxed);

    let windowed = sh.args.rate.is_none();
    let (mut ws, mut we) = (u64::MAX, 0);
    let mut draining = false;
    let mut done = false;
    let mut stopped = false;
    loop {
        tokio::select! {
            biased;
            r = conn.read_more() => {
                if let Err(e) = r {
                    sh.error(format!("{uid} on channel {chan}: read: {e}"));
                    break;
                }
                if ws == u64::MAX {
                    let t0 = sh.t0.load(Ordering::Acquire);
                    if t0 != 0 {
                        ws = t0 + sh.warmup_ns;
                        we = ws + sh.duration_ns;
                    }
                }
                let now = now_ns();
                let before = st.received;
                let status = if now >= ws && now < we {
                    let mut h = hists.borrow_mut();
                    let lat = &mut h.latency;
                    conn.process(|m| {
                        if let Some(sent) = st.on_msg(m.opcode, m.payload) {
                            in_window += 1;
                            lat.saturating_record(now.saturating_sub(sent).max(1));
                        }
                    })
                } else {
                    conn.process(|m| {
                        st.on_msg(m.opcode, m.payload);
                    })
                };
                let n = st.received - before;
                if n > 0 {
                    sh.recv_total.fetch_add(n, Ordering::Relaxed);
                    if windowed {
                        for (j, t) in st.trackers.iter().enumerate() {
                            let pr = &sh.progress[base + j];
                            if t.next() > pr.seen[idx].load(Ordering::Relaxed) {
                                pr.set(idx, t.next());
                            }
                        }
                    }
                }
                let status = match status {
                    Ok(s) => s,
                    Err(e) => {
                        sh.error(format!("{uid} on channel {chan}: {e:#}"));
                        break;
                    }
                };
                if let Err(e) = conn.flush_control().await {
                    sh.error(format!("{uid} on channel {chan}: write: {e}"));
                    break;
                }
                if status == Status::Closed {
                    sh.error(format!("{uid} on channel {chan}: {}", super::closed_reason(&conn)));
                    break;
                }
                if draining && !done && st.complete(|j| sh.sent[base + j].load(Ordering::Acquire)) {
                    done = true;
                    sh.subs_done.fetch_add(1, Ordering::Release);
                }
                // A socket that always has data never returns Pending, and
                // tokio's budget would let this task read ~128 buffers (8 MiB)
                // per turn while the thread's other sessions wait: take one
                // full buffer per turn instead, so latency measures the
                // server. (After a short read the next read returns Pending
                // and yields by itself.)
                if conn.read_was_full() {
                    tokio::task::yield_now().await;
                }
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    stopped = true;
                    break;
                }
                let ph = *phase.borrow_and_update();
                if ph >= Phase::Drain && !draining {
                    draining = true;
                    if !done && st.complete(|j| sh.sent[base + j].load(Ordering::Acquire)) {
                        done = true;
                        sh.subs_done.fetch_add(1, Ordering::Release);
                    }
                }
                if ph == Phase::Stop {
                    stopped = true;
                    break;
                }
            }
        }
    }
    if !done {
        sh.subs_done.fetch_add(1, Ordering::Release);
    }
    release_window(&sh, base, idx);
    res.io = conn.io_stats();
    if stopped {
        let _ = conn.close(Duration::from_millis(500)).await;
    } else {
        res.closed_early = true;
    }
    // Publishers have all stored their counts before the drain began.
    for (j, t) in st.trackers.iter().enumerate() {
        let sent = sh.sent[base + j].load(Ordering::Acquire);
        res.expected += sent;
        res.lost += t.lost(sent);
        res.late += t.late;
        res.dups += t.dups;
    }
    res.received = st.received;
    res.in_window = in_window;
    res.foreign = st.foreign;
    res.order = Some(st.order);
    res
}

/// A subscriber that is gone no longer holds its channel's publishers back.
fn release_window(sh: &Shared, base: usize, idx: usize) {
    for pr in &sh.progress[base..base + sh.args.pubs as usize] {
        pr.set(idx, u64::MAX);
    }
}

/// Counts frames that came back to publisher `id`.
#[inline]
fn count_echo(m: Msg<'_>, id: u32, echoed: &mut u64) {
    if m.opcode == OP_BINARY
        && let Some(s) = payload::read(m.payload)
        && s.publisher == id
    {
        *echoed += 1;
    }
}

async fn pub_task(
    sh: Arc<Shared>,
    hists: Rc<RefCell<Hists>>,
    sem: Rc<Semaphore>,
    chan: usize,
    idx: usize,
) -> PubResult {
    let mut res = PubResult::default();
    let mut phase = sh.phase.subscribe();
    match phase.wait_for(|p| *p >= Phase::JoinPubs).await {
        Ok(p) if *p < Phase::Stop => {}
        _ => return res,
    }
    let id = chan * sh.args.pubs as usize + idx;
    let id32 = id as u32;
    let uid = format!("{PUBLISHER_UID_PREFIX}{idx}");
    let global = sh.channels.len() * sh.args.subs as usize + id;
    let mut echoed = 0u64;
    let Some(mut conn) = sh
        .join_ctx(&hists, &sem)
        .join(global, &uid, &sh.channels[chan], |m| {
            count_echo(m, id32, &mut echoed)
        })
        .await
    else {
        sh.pubs_failed.fetch_add(1, Ordering::Relaxed);
        return res;
    };
    sh.pubs_joined.fetch_add(1, Ordering::Relaxed);

    let (seq, sent_in_window, ok) = publish(&sh, &mut conn, &mut phase, id, &mut echoed).await;
    sh.sent[id].store(seq, Ordering::Release);
    sh.pubs_done.fetch_add(1, Ordering::Release);
    res.sent = seq;
    res.sent_in_window = sent_in_window;

    // Keep reading (and checking for echoes) until the end.
    let mut ok = ok;
    while ok && *phase.borrow() < Phase::Stop {
        tokio::select! {
            biased;
            r = conn.read_more() => {
                ok = r.is_ok()
                    && matches!(conn.process(|m| count_echo(m, id32, &mut echoed)), Ok(Status::Open))
                    && conn.flush_control().await.is_ok();
                if !ok {
                    sh.error(format!("{uid} on channel {chan}: {}", super::closed_reason(&conn)));
                }
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    res.io = conn.io_stats();
    if ok {
        let _ = conn.close(Duration::from_millis(500)).await;
    }
    res.closed_early = !ok;
    res.echoed = echoed;
    res
}

/// The send loop; returns (messages sent, sent in the window, still open).
async fn publish(
    sh: &Shared,
    conn: &mut Conn,
    phase: &mut watch::Receiver<Phase>,
    id: usize,
    echoed: &mut u64,
) -> (u64, u64, bool) {
    let id32 = id as u32;
    // Wait for the start, reading meanwhile.
    while *phase.borrow() < Phase::Run {
        tokio::select! {
            biased;
            r = conn.read_more() => {
                let open = r.is_ok()
                    && matches!(conn.process(|m| count_echo(m, id32, echoed)), Ok(Status::Open))
                    && conn.flush_control().await.is_ok();
                if !open {
                    sh.error(format!("pub {id}: {} before the start", super::closed_reason(conn)));
                    return (0, 0, false);
                }
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    return (0, 0, true);
                }
            }
        }
    }
    if *phase.borrow() >= Phase::Stop {
        return (0, 0, true);
    }
    let t0 = sh.t0.load(Ordering::Acquire);
    let ws = t0 + sh.warmup_ns;
    let end = ws + sh.duration_ns;
    let rate = sh.args.rate;
    let period = rate.map(|r| 1e9 / r).unwrap_or(0.0);
    let mut rng = Rng::new(rng::seed_from_time() ^ id as u64);
    // Spread publishers over one period so they do not send in lockstep.
    let start = t0 + rng.below((period as u64).max(1));
    let window = sh.args.window;
    // One frame per write call for an ordinary client.
    let batch = u64::from(sh.args.frames_per_write());
    let limit = sh.args.messages.unwrap_or(u64::MAX);
    let prog = &sh.progress[id];
    let mut buf = payload::new_buffer(sh.args.size);
    let mut seq = 0u64;
    let mut in_window = 0u64;
    // The slowest subscriber's progress, refreshed only when it blocks sending.
    let mut min_seen = 0u64;
    loop {
        let now = now_ns();
        if now >= end || seq >= limit {
            return (seq, in_window, true);
        }
        let allowed = match rate {
            Some(_) if now < start => 0,
            Some(_) => (((now - start) as f64 / period) as u64 + 1).saturating_sub(seq),
            None => {
                if min_seen.saturating_add(window) <= seq {
                    min_seen = prog.min_seen();
                }
                min_seen.saturating_add(window).saturating_sub(seq)
            }
        };
        let n = allowed.min(batch).min(limit - seq);
        let wake = match rate {
            Some(_) => (start + (seq as f64 * period) as u64).min(end),
            None => end,
        };
        tokio::select! {
            biased;
            r = conn.read_more() => {
                let open = r.is_ok()
                    && matches!(conn.process(|m| count_echo(m, id32, echoed)), Ok(Status::Open))
                    && conn.flush_control().await.is_ok();
                if !open {
                    sh.error(format!("pub {id}: {}", super::closed_reason(conn)));
                    return (seq, in_window, false);
                }
            }
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow_and_update() >= Phase::Stop {
                    return (seq, in_window, true);
                }
            }
            () = std::future::ready(()), if n > 0 => {
                for _ in 0..n {
                    payload::write(&mut buf, Stamp { publisher: id32, seq, sent_ns: now });
                    conn.queue(OP_BINARY, &buf);
                    seq += 1;
                }
                if now >= ws {
                    in_window += n;
                }
                if let Err(e) = conn.flush().await {
                    sh.error(format!("pub {id}: write: {e}"));
                    return (seq, in_window, false);
                }
                sh.sent_total.fetch_add(n, Ordering::Relaxed);
                // One batch per turn (see the subscriber loop).
                tokio::task::yield_now().await;
            }
            () = tokio::time::sleep_until(clock::instant(wake)), if n == 0 => {}
            () = prog.notify.notified(), if n == 0 && rate.is_none() => {}
        }
    }
}
