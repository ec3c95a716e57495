//! A shard: one thread, one current-thread runtime, its sessions, the
//! channels it owns, and its local members of every channel.
//!
//! All state here is `Rc`/`RefCell` and never leaves the thread; other shards
//! are reached only through [`mesh::Mesh`]. Each concern has its own type:
//! [`registry::Registry`] (sessions, local members), [`Owner`] (the channels
//! this shard owns, a sans-IO state machine from [`crate::channel`]), the
//! paused publishers, and the link starter. [`Shard`] dispatches messages to
//! them and carries out what the owner decides; sessions see it only through
//! [`crate::session::Host`].
//!
//! Supervision: a shard-level handler that panics trips the process-wide
//! [`mesh::Failure`] (the server stops, loudly) and this shard handles
//! nothing more; a session's own panic ends only that session's task.
//! Handlers never hold a `RefCell` borrow across an await, and messages a
//! shard posts to itself go through a local queue so no handler re-enters another.

mod cluster;
pub mod listener;
pub mod mesh;
mod registry;
pub mod router;
pub mod runtime;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::channel::{
    Action, ChannelKey, Join, LocalSequencer, MemberKind, Owner, SessionId, owner_of, shard_of,
};
use crate::cluster::sequencer::NodeSequencer;
use crate::config::Limits;
use crate::metrics::Counters;
use crate::protocol::close::{self, Close};
use crate::protocol::frame::{self, OP_TEXT};
use crate::protocol::header::Header;
use crate::session::{Host, Session, TickOutcome};
pub use cluster::ShardProber;
use mesh::{InboxRx, Mesh, ShardMsg};
use registry::Registry;

/// Size of the per-shard read buffer every session reads into: 64 KiB takes
/// many small frames, or a large frame in few reads, per syscall; it is
/// allocated once per shard, not per session.
const SCRATCH: usize = 64 * 1024;
/// Messages handled per inbox wake-up before yielding to sessions: at the
/// measured ~0.4 µs per delivery, 512 messages are a few hundred µs, short
/// enough that sessions on a busy shard are not starved, long enough that the
/// yield costs little (quinn's `IO_LOOP_BOUND` reasoning).
const INBOX_BATCH: usize = 512;
/// Channels with no members and no activity for this long may be dropped
/// (PROTOCOL.md §6).
const CHANNEL_IDLE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Starts this server's peer links for a channel the shard owns; installed
/// by the server when `--peer` is given.
pub type LinkStarter = Arc<dyn Fn(&Rc<Shard>, Arc<str>) + Send + Sync>;

/// One shard's state and its view of the mesh.
pub struct Shard {
    id: u16,
    mesh: Arc<Mesh>,
    limits: Limits,
    scratch: RefCell<Box<[u8]>>,
    registry: RefCell<Registry>,
    owner: RefCell<Owner<NodeSequencer>>,
    /// Cluster mode: other nodes' probes waiting for an answer.
    remote_probes: RefCell<Vec<cluster::RemoteProbe>>,
    local: RefCell<VecDeque<ShardMsg>>,
    pumping: Cell<bool>,
    /// Set once a shard-level handler panicked: nothing more is handled.
    failed: Cell<bool>,
    next_session: Cell<u64>,
    paused: Paused,
    shutdown: Shutdown,
    links: Links,
}

/// Sessions paused because the process is congested, woken when it clears.
#[derive(Default)]
struct Paused {
    wakers: RefCell<Vec<Waker>>,
}

#[derive(Default)]
struct Shutdown {
    started: Cell<bool>,
    /// Signalled when the last session ends during shutdown.
    drained: Notify,
}

#[derive(Default)]
struct Links {
    /// This shard itself, for starting link tasks from a handler.
    me: RefCell<Weak<Shard>>,
    start: RefCell<Option<LinkStarter>>,
}

/// Resets `pumping` even if a handler panics.
struct PumpGuard<'a>(&'a Cell<bool>);

impl Drop for PumpGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl Shard {
    pub fn new(id: u16, mesh: Arc<Mesh>, limits: Limits) -> Rc<Shard> {
        let owner = Owner::new(
            id,
            mesh.shards(),
            limits.history_frames,
            limits.history_bytes,
            NodeSequencer::Local(LocalSequencer),
        );
        let shard = Rc::new(Shard {
            id,
            mesh,
            limits,
            scratch: RefCell::new(vec![0u8; SCRATCH].into_boxed_slice()),
            registry: RefCell::default(),
            owner: RefCell::new(owner),
            remote_probes: RefCell::default(),
            local: RefCell::default(),
            pumping: Cell::new(false),
            failed: Cell::new(false),
            next_session: Cell::new(0),
            paused: Paused::default(),
            shutdown: Shutdown::default(),
            links: Links::default(),
        });
        *shard.links.me.borrow_mut() = Rc::downgrade(&shard);
        shard
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    /// Enables peer links: channels this shard owns get them once their first client joins.
    pub fn set_link_starter(&self, start: Option<LinkStarter>) {
        *self.links.start.borrow_mut() = start;
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.started.get()
    }

    /// This shard's counters.
    pub fn counters(&self) -> &Counters {
        self.mesh.metrics.shard(self.id)
    }

    /// Registers a new session on this shard.
    pub fn new_session(&self) -> Rc<Session> {
        let n = self.next_session.get();
        self.next_session.set(n.wrapping_add(1));
        let id = (u64::from(self.id) << 48) | (n & ((1 << 48) - 1));
        let s = Rc::new(Session::new(id, crate::clock::now()));
        if self.is_shutting_down() {
            s.close(close::SHUTDOWN);
        }
        self.registry.borrow_mut().insert(s.clone());
        self.counters().sessions.fetch_add(1, Ordering::Relaxed);
        s
    }

    pub fn session_count(&self) -> usize {
        self.registry.borrow().len()
    }

    /// Asks the channel's owner to join `session` as a peer link: it gets the
    /// history (to resync the peer) and live frames; no header is relayed.
    pub fn join_link(&self, session: SessionId, channel: Arc<str>, uid: Arc<str>) {
        self.join_as(session, channel, uid, MemberKind::Link, Bytes::new());
    }

    fn join_as(
        &self,
        session: SessionId,
        channel: Arc<str>,
        uid: Arc<str>,
        kind: MemberKind,
        header: Bytes,
    ) {
        let owner = router::owner(&channel, self.mesh.shards());
        let msg = ShardMsg::Join {
            channel,
            uid,
            session,
            kind,
            header,
        };
        self.submit(owner, msg);
    }

    /// Posts `msg` to shard `to`; to itself through the local queue.
    fn submit(&self, to: u16, msg: ShardMsg) {
        if to == self.id {
            self.local.borrow_mut().push_back(msg);
            self.pump();
        } else if self.mesh.send(to, msg).is_err() {
            tracing::debug!(shard = self.id, to, "message to a stopped shard dropped");
        }
    }

    /// Handles queued local messages unless a handler is already running.
    /// A panicking handler stops the process (see the module docs).
    fn pump(&self) {
        if self.pumping.replace(true) {
            return;
        }
        let _guard = PumpGuard(&self.pumping);
        loop {
            let msg = self.local.borrow_mut().pop_front();
            let Some(m) = msg else { break };
            if self.failed.get() {
                continue;
            }
            let run = std::panic::catch_unwind(AssertUnwindSafe(|| self.handle(m)));
            if let Err(panic) = run {
                self.failed.set(true);
                self.mesh.failure.trip(format!(
                    "shard {}: a handler panicked: {}",
                    self.id,
                    panic_message(&*panic)
                ));
            }
        }
    }

    fn handle(&self, msg: ShardMsg) {
        let now = Instant::now();
        let mut out = Vec::new();
        {
            let mut owner = self.owner.borrow_mut();
            match msg {
                ShardMsg::Join {
                    channel,
                    uid,
                    session,
                    kind,
                    header,
                } => {
                    if let Some(hook) = &self.limits.panic_channel
                        && channel == *hook
                        && &*uid == "panic-shard"
                    {
                        panic!("test hook: a shard-level handler panics (--test-panic-channel)");
                    }
                    let j = Join {
                        channel,
                        uid,
                        session,
                        kind,
                        header,
                    };
                    owner.join(j, now, &mut out);
                }
                ShardMsg::Publish {
                    key,
                    origin,
                    frame,
                    dedup,
                } => owner.publish(key, origin, frame, dedup, now, &mut out),
                ShardMsg::Leave { key, uid, session } => {
                    self.answer_remote_probes(key, session, false);
                    owner.leave(key, &uid, session, now, &mut out)
                }
                ShardMsg::ProbeResult {
                    key,
                    uid,
                    session,
                    alive,
                } => {
                    self.answer_remote_probes(key, session, alive);
                    owner.probe_result(key, &uid, session, alive, now, &mut out)
                }
                ShardMsg::Cluster(e) => {
                    drop(owner);
                    self.on_cluster(e, now, &mut out);
                    owner = self.owner.borrow_mut();
                }
                ShardMsg::RemoteProbe {
                    channel,
                    uid,
                    session,
                    reply,
                } => {
                    drop(owner);
                    if let Some(a) = self.on_remote_probe(channel, uid, session, reply) {
                        self.apply(a);
                    }
                    return;
                }
                ShardMsg::Deliver { key, skip, frame } => {
                    drop(owner);
                    return self.deliver_local(key, skip, &frame);
                }
                ShardMsg::Joined {
                    session,
                    key,
                    uid,
                    history,
                } => {
                    drop(owner);
                    return self.on_joined(session, key, uid, history);
                }
                ShardMsg::Refused { session, close } => {
                    drop(owner);
                    return self.on_refused(session, close);
                }
                ShardMsg::Probe { session, key, uid } => {
                    drop(owner);
                    return self.on_probe(session, key, uid);
                }
            }
            let t = owner.take_tally();
            let c = self.counters();
            Counters::add(&c.joins, t.joins);
            Counters::add(&c.published, t.published);
            Counters::add(&c.dedup_dropped, t.dedup_dropped);
            Counters::add(&c.probe_replaced, t.probe_replaced);
        }
        for a in out {
            self.apply(a);
        }
    }

    /// Carries out one of the owner's decisions; what concerns this shard's
    /// own sessions is done at once, so a joiner is a member before any
    /// later frame is delivered here.
    fn apply(&self, a: Action) {
        match a {
            Action::Deliver {
                shard,
                key,
                skip,
                frame,
            } => {
                if shard == self.id {
                    self.deliver_local(key, skip, &frame);
                } else {
                    self.send(shard, ShardMsg::Deliver { key, skip, frame });
                }
            }
            Action::Joined {
                session,
                key,
                uid,
                history,
            } => {
                if shard_of(session) == self.id {
                    self.on_joined(session, key, uid, history);
                } else {
                    let msg = ShardMsg::Joined {
                        session,
                        key,
                        uid,
                        history,
                    };
                    self.send(shard_of(session), msg);
                }
            }
            Action::Refused { session, close } => {
                if shard_of(session) == self.id {
                    self.on_refused(session, close);
                } else {
                    self.send(shard_of(session), ShardMsg::Refused { session, close });
                }
            }
            Action::Probe { session, key, uid } => {
                if shard_of(session) == self.id {
                    self.on_probe(session, key, uid);
                } else {
                    self.send(shard_of(session), ShardMsg::Probe { session, key, uid });
                }
            }
            Action::StartLinks { channel, .. } => {
                let start = self.links.start.borrow().clone();
                let me = self.links.me.borrow().upgrade();
                if let (Some(start), Some(me)) = (start, me) {
                    start(&me, channel);
                }
            }
        }
    }

    /// Posts to another shard; a stopped shard (shutdown) drops it.
    fn send(&self, to: u16, msg: ShardMsg) {
        if self.mesh.send(to, msg).is_err() {
            tracing::debug!(shard = self.id, to, "message to a stopped shard dropped");
        }
    }

    // ---- member side ----

    fn deliver_local(&self, key: ChannelKey, skip: Option<SessionId>, frame: &Bytes) {
        let (n, slow) = self
            .registry
            .borrow()
            .deliver(key, skip, frame, self.limits.max_queue);
        let c = self.counters();
        Counters::add(&c.delivered, n);
        Counters::add(&c.slow_consumers, slow);
    }

    fn on_joined(&self, session: SessionId, key: ChannelKey, uid: Arc<str>, history: Vec<Bytes>) {
        let s = self.registry.borrow().get(session).cloned();
        let member = s.is_some_and(|s| s.joined(key, history))
            && self
                .registry
                .borrow_mut()
                .add_member(session, key, uid.clone());
        if !member {
            // Gone or closing meanwhile: the owner must forget it again.
            self.submit(owner_of(key), ShardMsg::Leave { key, uid, session });
        }
    }

    fn on_refused(&self, session: SessionId, c: Close) {
        let s = self.registry.borrow().get(session).cloned();
        if let Some(s) = s {
            s.close(c);
        }
    }

    fn on_probe(&self, session: SessionId, key: ChannelKey, uid: Arc<str>) {
        let s = self.registry.borrow().get(session).cloned();
        let answer = match s {
            Some(s) => s.probe(key, uid.clone(), crate::clock::now()),
            None => Some(false),
        };
        if let Some(alive) = answer {
            self.probe_answered(key, uid, session, alive);
        }
    }

    // ---- timers and shutdown ----

    /// Keepalive, header timeouts, probe deadlines; expires idle channels.
    pub fn tick(&self, now: Instant, expire_channels: bool) {
        let now_ms = crate::clock::now();
        let mut failed = Vec::new();
        for s in self.registry.borrow().sessions() {
            let outcome = s.tick(
                now_ms,
                self.limits.ping_interval,
                self.limits.header_timeout,
            );
            if let TickOutcome::ProbeFailed { key, uid } = outcome {
                failed.push((key, uid, s.id));
            }
        }
        for (key, uid, id) in failed {
            self.probe_answered(key, uid, id, false);
        }
        if expire_channels {
            let n = self.owner.borrow_mut().expire(now, CHANNEL_IDLE);
            if n > 0 {
                tracing::debug!(shard = self.id, channels = n, "idle channels dropped");
            }
        }
    }

    /// Wakes the sessions paused on congestion whenever a congested inbox
    /// has drained and none is left. Signalled by the mesh: no polling.
    pub async fn resume_paused(&self) {
        loop {
            self.mesh.resumed(self.id).await;
            if !self.mesh.congested() {
                for w in self.paused.wakers.borrow_mut().drain(..) {
                    w.wake();
                }
            }
        }
    }

    /// Drains this shard's inbox forever, a bounded batch per wake-up.
    pub async fn run_inbox(&self, inbox: InboxRx) {
        loop {
            self.mesh.notified(self.id).await;
            loop {
                let mut n = 0;
                while n < INBOX_BATCH {
                    let Ok(msg) = inbox.rx.try_recv() else { break };
                    self.mesh.taken(self.id, &msg);
                    self.local.borrow_mut().push_back(msg);
                    self.pump();
                    n += 1;
                }
                if n < INBOX_BATCH {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
    }

    /// Starts shutdown: every session gets Close 1001.
    pub fn begin_shutdown(&self) {
        self.shutdown.started.set(true);
        let sessions: Vec<Rc<Session>> = self.registry.borrow().sessions().cloned().collect();
        for s in &sessions {
            s.close(close::SHUTDOWN);
        }
        if sessions.is_empty() {
            self.shutdown.drained.notify_one();
        }
    }

    /// Waits until every session has ended.
    pub async fn drained(&self) {
        while self.session_count() > 0 {
            self.shutdown.drained.notified().await;
        }
    }

    /// Ends every remaining session now (shutdown deadline passed).
    pub fn kill_all(&self) {
        let sessions: Vec<Rc<Session>> = self.registry.borrow().sessions().cloned().collect();
        for s in sessions {
            s.kill();
        }
    }
}

impl Host for Shard {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn scratch(&self) -> &RefCell<Box<[u8]>> {
        &self.scratch
    }

    fn join(&self, session: SessionId, h: Header) {
        let header = frame::encode(OP_TEXT, &h.relay);
        let kind = MemberKind::Client;
        self.join_as(session, h.channel.into(), h.uid.into(), kind, header);
    }

    fn publish(&self, key: ChannelKey, origin: SessionId, frame: Bytes, dedup: bool) {
        let msg = ShardMsg::Publish {
            key,
            origin,
            frame,
            dedup,
        };
        self.submit(owner_of(key), msg);
    }

    fn probe_answered(&self, key: ChannelKey, uid: Arc<str>, session: SessionId, alive: bool) {
        let msg = ShardMsg::ProbeResult {
            key,
            uid,
            session,
            alive,
        };
        self.submit(owner_of(key), msg);
    }

    fn must_pause(&self, waker: &Waker) -> bool {
        if !self.mesh.congested() {
            return false;
        }
        // Only while congested (rare), so a linear check is fine; it keeps a
        // session polled again and again from piling up copies.
        let mut paused = self.paused.wakers.borrow_mut();
        if !paused.iter().any(|w| w.will_wake(waker)) {
            paused.push(waker.clone());
        }
        true
    }

    fn ended(&self, s: &Session) {
        let c = self.counters();
        c.sessions.fetch_sub(1, Ordering::Relaxed);
        c.closed(s.close_code());
        let left = self.registry.borrow_mut().remove(s.id);
        if let Some(m) = left {
            let msg = ShardMsg::Leave {
                key: m.key,
                uid: m.uid,
                session: s.id,
            };
            self.submit(owner_of(m.key), msg);
        }
        if self.is_shutting_down() && self.registry.borrow().is_empty() {
            self.shutdown.drained.notify_one();
        }
    }
}

/// The text of a panic payload, for the log line.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests;
