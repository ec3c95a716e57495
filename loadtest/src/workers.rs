//! Threads and time for a run: worker threads (one current-thread runtime
//! and `LocalSet` each), the phase signal every task watches, bounded
//! collection of task results, and the live progress line.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{self, now_ns};

/// Where a run is; tasks watch it through a `watch` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Subscribers (or all sessions) connect and join.
    Join,
    /// Publishers connect and join.
    JoinPubs,
    /// Load runs: warm-up, then the measured window.
    Run,
    /// Publishers stopped; waiting for the last deliveries.
    Drain,
    /// Everything stops now.
    Stop,
}

/// How long tasks get to finish after [`Phase::Stop`] before they are aborted.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Starts worker thread `i` running `f` on its own current-thread runtime.
pub fn spawn<F, Fut, R>(i: usize, f: F) -> Result<std::thread::JoinHandle<Result<R>>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
    R: Send + 'static,
{
    std::thread::Builder::new()
        .name(format!("loadtest-{i}"))
        .spawn(move || {
            let rt = runtime()?;
            let local = tokio::task::LocalSet::new();
            Ok(local.block_on(&rt, f()))
        })
        .context("spawning a worker thread")
}

/// A current-thread runtime (for workers and the coordinator).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")
}

/// Joins worker threads; a panicked or failed worker becomes an error.
pub fn join<R>(handles: Vec<std::thread::JoinHandle<Result<R>>>) -> Result<Vec<R>> {
    handles
        .into_iter()
        .map(|h| match h.join() {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("a worker thread panicked")),
        })
        .collect()
}

/// Awaits every task; once the phase reaches [`Phase::Stop`] and
/// [`STOP_GRACE`] has passed, aborts those still running. Returns the
/// outputs of the tasks that finished and how many were aborted.
pub async fn collect<T: 'static>(
    handles: Vec<JoinHandle<T>>,
    mut phase: watch::Receiver<Phase>,
) -> (Vec<T>, usize) {
    let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
    let stopper = async {
        let _ = phase.wait_for(|p| *p == Phase::Stop).await;
        tokio::time::sleep(STOP_GRACE).await;
        for a in &aborts {
            a.abort();
        }
        std::future::pending::<()>().await;
    };
    let all = async {
        let mut outs = Vec::with_capacity(handles.len());
        let mut aborted = 0;
        for h in handles {
            match h.await {
                Ok(v) => outs.push(v),
                Err(_) => aborted += 1,
            }
        }
        (outs, aborted)
    };
    tokio::select! {
        r = all => r,
        () = stopper => unreachable!("stopper never completes"),
    }
}

/// Polls `done` every few milliseconds, calling `tick` in between, until it
/// holds (true) or the process clock passes `until_ns` (false).
pub async fn wait_until(
    until_ns: u64,
    mut done: impl FnMut() -> bool,
    mut tick: impl FnMut(),
) -> bool {
    loop {
        if done() {
            return true;
        }
        if now_ns() >= until_ns {
            return false;
        }
        tick();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sleeps until `at_ns`, calling `tick` every few milliseconds.
pub async fn sleep_until(at_ns: u64, mut tick: impl FnMut()) {
    while now_ns() < at_ns {
        tick();
        let step = clock::instant(at_ns.min(now_ns() + 50_000_000));
        tokio::time::sleep_until(step).await;
    }
}

/// The live progress line on stderr: rewritten in place on a terminal, one
/// line per second otherwise.
#[derive(Debug)]
pub struct Ticker {
    enabled: bool,
    tty: bool,
    scenario: &'static str,
    start_ns: u64,
    last_ns: u64,
    prev: [u64; 2],
    printed: bool,
}

impl Ticker {
    /// A ticker; `quiet` disables it.
    pub fn new(scenario: &'static str, quiet: bool) -> Self {
        let now = now_ns();
        Self {
            enabled: !quiet,
            tty: std::io::stderr().is_terminal(),
            scenario,
            start_ns: now,
            last_ns: now,
            prev: [0; 2],
            printed: false,
        }
    }

    /// Prints a line if a second has passed: `status`, then two counters
    /// with their rates since the last line.
    pub fn tick(&mut self, status: impl FnOnce() -> String, counters: [(&str, u64); 2]) {
        let now = now_ns();
        if !self.enabled || now - self.last_ns < 1_000_000_000 {
            return;
        }
        let dt = (now - self.last_ns) as f64 / 1e9;
        let mut line = format!(
            "{} {:6.1}s {}",
            self.scenario,
            (now - self.start_ns) as f64 / 1e9,
            status()
        );
        for (i, (name, v)) in counters.iter().enumerate() {
            let rate = v.saturating_sub(self.prev[i]) as f64 / dt;
            line.push_str(&format!("  {name} {v} ({}/s)", si(rate)));
            self.prev[i] = *v;
        }
        self.last_ns = now;
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.printed = true;
    }

    /// Ends the in-place line.
    pub fn finish(&mut self) {
        if self.enabled && self.tty && self.printed {
            eprintln!();
        }
        self.printed = false;
    }
}

/// A number with a k/M/G suffix.
pub fn si(v: f64) -> String {
    match v.abs() {
        x if x >= 1e9 => format!("{:.2}G", v / 1e9),
        x if x >= 1e6 => format!("{:.2}M", v / 1e6),
        x if x >= 1e3 => format!("{:.1}k", v / 1e3),
        _ => format!("{v:.0}"),
    }
}
