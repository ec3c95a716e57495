//! The shard thread: pinned to a CPU, a current-thread tokio runtime with a
//! `LocalSet`, the accept loops, the inbox drain, the timer, and shutdown.
//!
//! Supervision: the shard's own tasks (inbox drain, resume, timer, accept
//! loops) run for the life of the shard. If one of them ends early (a panic
//! inside it) or the thread itself panics, the process-wide failure is
//! tripped and the server stops, rather than leave a shard that accepts
//! connections but no longer relays.

use std::io;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::LocalSet;

use super::listener::is_fd_exhaustion;
use super::mesh::{InboxRx, Mesh};
use super::{LinkStarter, SequencerFactory, Shard, panic_message};
use crate::config::Limits;
use crate::http::Frontend;
use crate::reactor::Listener;

/// How long shutdown waits for sessions to flush their Close 1001.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after accept fails for lack of file descriptors.
const EMFILE_BACKOFF: Duration = Duration::from_millis(100);
/// Idle channels are looked at this often (or 4 times per `--channel-ttl`
/// when that is shorter, so a channel outlives its TTL by at most a quarter).
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// Everything a shard thread starts with.
pub struct ShardStart {
    pub id: u16,
    pub cpu: Option<usize>,
    /// Already registered with the shard's runtime (see [`register`]).
    pub listeners: Vec<Listener>,
    pub inbox: InboxRx,
    pub mesh: Arc<Mesh>,
    pub limits: Limits,
    pub frontend: Arc<Frontend>,
    pub links: Option<LinkStarter>,
    /// Where channel order comes from; the shard itself when `None`.
    pub sequencer: Option<SequencerFactory>,
    /// Cluster mode: the node's link to the shared log.
    pub cluster: Option<crate::cluster::Cluster>,
    pub shutdown: watch::Receiver<bool>,
}

/// Registers bound listeners with the runtime `rt` of the shard that will
/// accept on them. Done before start-up returns, so a failure is a start-up
/// error rather than a shard thread dying later.
pub fn register(
    rt: &tokio::runtime::Runtime,
    listeners: Vec<std::net::TcpListener>,
) -> io::Result<Vec<Listener>> {
    let _in_rt = rt.enter();
    listeners
        .into_iter()
        .map(crate::reactor::listener)
        .collect()
}

/// Starts a shard on its own named thread.
pub fn spawn(start: ShardStart, rt: tokio::runtime::Runtime) -> io::Result<JoinHandle<()>> {
    let id = start.id;
    let mesh = start.mesh.clone();
    std::thread::Builder::new()
        .name(format!("mles-shard-{id}"))
        .spawn(move || {
            if let Some(cpu) = start.cpu {
                pin_to_cpu(cpu);
            }
            let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                LocalSet::new().block_on(&rt, run(start))
            }));
            if let Err(panic) = ran {
                let why = panic_message(&*panic);
                mesh.failure
                    .trip(format!("shard {id}: thread panicked: {why}"));
            }
        })
}

/// A shard's runtime. Every shard's is built before any shard accepts, so a
/// flood of connections cannot take the descriptors a runtime needs.
pub fn build() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Timer period: fine enough for the shortest configured timeout.
fn tick_period(limits: &Limits) -> Duration {
    (limits.ping_interval.min(limits.header_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_millis(250))
}

async fn run(start: ShardStart) {
    let ShardStart {
        id,
        listeners,
        inbox,
        mesh,
        limits,
        frontend,
        links,
        sequencer,
        cluster,
        mut shutdown,
        ..
    } = start;
    let period = tick_period(&limits);
    let expire_every = EXPIRE_EVERY.min(limits.channel_ttl / 4);
    let shard = match sequencer {
        Some(make) => Shard::with_sequencer(id, mesh.clone(), limits, make(id)),
        None => Shard::new(id, mesh.clone(), limits),
    };
    shard.set_link_starter(links);
    let mut tasks = Vec::new();
    match crate::reactor::epoll() {
        Ok(epoll) => tasks.push(tokio::task::spawn_local(async move {
            if let Err(e) = crate::reactor::drive(epoll).await {
                tracing::error!(shard = id, error = %e, "readiness loop failed");
            }
        })),
        Err(e) => {
            mesh.failure
                .trip(format!("shard {id}: cannot create its epoll instance: {e}"));
            return;
        }
    }
    if let Some(cluster) = cluster {
        let events = shard.enable_cluster(cluster);
        let s = shard.clone();
        tasks.push(tokio::task::spawn_local(async move {
            s.run_cluster(events).await
        }));
    }
    let s = shard.clone();
    tasks.push(tokio::task::spawn_local(
        async move { s.run_inbox(inbox).await },
    ));
    let s = shard.clone();
    tasks.push(tokio::task::spawn_local(
        async move { s.resume_paused().await },
    ));
    let s = shard.clone();
    tasks.push(tokio::task::spawn_local(async move { s.run_flush().await }));
    let s = shard.clone();
    tasks.push(tokio::task::spawn_local(async move { s.run_plain().await }));
    let s = shard.clone();
    tasks.push(tokio::task::spawn_local(async move {
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_expire = Instant::now();
        loop {
            every.tick().await;
            let now = Instant::now();
            let expire = now.duration_since(last_expire) >= expire_every;
            if expire {
                last_expire = now;
            }
            s.tick(now, expire);
        }
    }));
    let mut accepting = Vec::new();
    for listener in listeners {
        let (s, f) = (shard.clone(), frontend.clone());
        let t = tokio::task::spawn_local(accept_loop(s, f, listener));
        accepting.push(t.abort_handle());
        tasks.push(t);
    }
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    let mut supervised = futures_util::future::select_all(tasks);
    tracing::debug!(shard = id, "started");
    while !*shutdown.borrow_and_update() {
        tokio::select! {
            changed = shutdown.changed() => if changed.is_err() { break },
            // Another shard failed: stop with the others rather than run on alone.
            _ = mesh.failure.wait() => break,
            (ended, _, _) = &mut supervised => {
                let why = match ended {
                    Err(e) if e.is_panic() => panic_message(&*e.into_panic()).to_string(),
                    Err(e) => e.to_string(),
                    Ok(()) => "ended".to_string(),
                };
                mesh.failure.trip(format!("shard {id}: a shard task stopped: {why}"));
                break;
            }
        }
    }
    // Stop accepting first, then close every session with 1001.
    for t in &accepting {
        t.abort();
    }
    shard.begin_shutdown();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, shard.drained()).await;
    if drained.is_err() {
        tracing::warn!(
            shard = id,
            sessions = shard.session_count(),
            "shutdown grace over; dropping sessions"
        );
        shard.kill_all();
        tokio::task::yield_now().await;
    }
    // What the sessions of every shard sent before they ended is handled by
    // its channel's owner (in cluster mode: queued for the shared log, which
    // stores it before the link stops), not dropped with the inboxes.
    mesh.sessions_ended();
    let ended = tokio::time::timeout(SHUTDOWN_GRACE, mesh.all_sessions_ended()).await;
    if ended.is_ok() {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while mesh.backlog(id) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for t in &aborts {
        t.abort();
    }
    shard.stop_plain();
    tracing::debug!(shard = id, "stopped");
}

async fn accept_loop(shard: Rc<Shard>, frontend: Arc<Frontend>, listener: Listener) {
    let mut warned = false;
    loop {
        match crate::reactor::accept(&listener).await {
            Ok((tcp, peer)) => {
                warned = false;
                crate::metrics::Counters::add(&shard.counters().accepted, 1);
                tokio::task::spawn_local(crate::http::serve_connection(
                    shard.clone(),
                    frontend.clone(),
                    tcp,
                    peer,
                ));
            }
            Err(e) if is_fd_exhaustion(&e) => {
                if !warned {
                    tracing::warn!(shard = shard.id(), error = %e, "accept: out of file descriptors; backing off");
                    warned = true;
                }
                tokio::time::sleep(EMFILE_BACKOFF).await;
            }
            Err(e) => {
                tracing::debug!(shard = shard.id(), error = %e, "accept failed");
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Pins the calling thread to `cpu`; failure (e.g. a restricted container) is only logged.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data, filled with CPU_SET; pid 0 is this thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        tracing::debug!(cpu, error = %io::Error::last_os_error(), "could not pin shard");
    }
}
