//! A shard: one thread, one current-thread runtime, its sessions, the
//! channels it owns, and its local members of every channel.
//!
//! All state here is `Rc`/`RefCell` and never leaves the thread; other shards
//! are reached only through [`mesh::Mesh`]. Each concern has its own type:
//! the registry (sessions, local members), [`Owner`] (the channels
//! this shard owns, a sans-IO state machine from [`crate::channel`]), the
//! paused publishers, the link starter, and the plain members waiting to be
//! written (`Flush`, one task). [`Shard`] dispatches messages to
//! them and carries out what the owner decides; sessions see it only through
//! [`crate::session::Host`].
//!
//! Supervision: a shard-level handler that panics trips the process-wide
//! [`mesh::Failure`] (the server stops, loudly) and this shard handles
//! nothing more; a session's own panic ends only that session's task.
//! Handlers never hold a `RefCell` borrow across an await, and messages a
//! shard posts to itself go through a local queue so no handler re-enters another.

mod cluster;
mod dispatch;
mod host;
pub mod listener;
pub mod mesh;
mod registry;
pub mod router;
pub mod runtime;
mod shutdown;
mod tick;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::channel::{
    Action, ChannelKey, Join, LocalSequencer, MemberId, MemberKind, Ordered, Owner, Sequencer,
    SessionId,
};
use crate::config::Limits;
use crate::http::Admitted;
use crate::metrics::Counters;
use crate::protocol::close;
use crate::reactor::RawSocket;
use crate::reactor::tasks::Tasks;
use crate::session::{Session, SessionTask};
pub use cluster::ShardProber;
use mesh::{InboxRx, Mesh, ShardMsg};
use registry::Registry;
use shutdown::Shutdown;

/// Size of the per-shard read buffer every session reads into: 64 KiB takes
/// many small frames, or a large frame in few reads, per syscall; it is
/// allocated once per shard, not per session.
const SCRATCH: usize = 64 * 1024;
/// Messages handled per inbox wake-up before yielding to sessions: at the
/// measured ~0.4 µs per delivery, 512 messages are a few hundred µs, short
/// enough that sessions on a busy shard are not starved, long enough that the
/// yield costs little (quinn's `IO_LOOP_BOUND` reasoning).
const INBOX_BATCH: usize = 512;

/// Starts this server's peer links for a channel the shard owns; installed
/// by the server when `--peer` is given.
pub type LinkStarter = Arc<dyn Fn(&Rc<Shard>, Arc<str>) + Send + Sync>;

/// Builds a shard's sequencer (given the shard id) on that shard's thread;
/// see `channel::sequencer` for the seam.
pub type SequencerFactory = Arc<dyn Fn(u16) -> Box<dyn Sequencer> + Send + Sync>;

/// One shard's state and its view of the mesh.
pub struct Shard {
    id: u16,
    mesh: Arc<Mesh>,
    limits: Limits,
    scratch: RefCell<Box<[u8]>>,
    registry: RefCell<Registry>,
    owner: RefCell<Owner<Box<dyn Sequencer>>>,
    /// Cluster mode: other nodes' probes waiting for an answer.
    remote_probes: RefCell<Vec<cluster::RemoteProbe>>,
    local: RefCell<VecDeque<ShardMsg>>,
    pumping: Cell<bool>,
    /// Set once a shard-level handler panicked: nothing more is handled.
    failed: Cell<bool>,
    next_session: Cell<u64>,
    /// Bytes of this shard's outbound queues charged to `--max-memory`
    /// at the last tick.
    queues_charged: Cell<usize>,
    paused: Paused,
    shutdown: Shutdown,
    links: Links,
    flush: Flush,
    /// Plain sessions, run without a tokio task each; set up by
    /// [`Shard::run_plain`] (until then, and in unit tests, they get tokio tasks).
    plain: std::cell::OnceCell<Tasks<PlainSession>>,
}

/// A plain session's task as the shard stores it.
pub type PlainSession = Admitted<SessionTask<RawSocket, Shard>>;

/// Plain members offered frames and not yet written. One shard task
/// ([`Shard::run_flush`]) writes them, woken when the list stops being
/// empty: it runs after the tasks already scheduled (other reads, the
/// inbox), so frames for a member coalesce into one write as they did when
/// each member's task was woken, at the cost of one wake-up per round
/// instead of one per member.
#[derive(Default)]
struct Flush {
    list: RefCell<Vec<Rc<Session>>>,
    wake: Notify,
}

/// Sessions paused because the process is congested, woken when it clears.
#[derive(Default)]
struct Paused {
    wakers: RefCell<Vec<Waker>>,
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
    /// A shard whose channels are ordered by itself (one node).
    pub fn new(id: u16, mesh: Arc<Mesh>, limits: Limits) -> Rc<Shard> {
        Shard::with_sequencer(id, mesh, limits, Box::new(LocalSequencer))
    }

    /// A shard whose channels take their order from `sequencer`.
    pub fn with_sequencer(
        id: u16,
        mesh: Arc<Mesh>,
        limits: Limits,
        sequencer: Box<dyn Sequencer>,
    ) -> Rc<Shard> {
        let owner = Owner::new(
            id,
            mesh.shards(),
            limits.history_frames,
            limits.history_bytes,
            sequencer,
        )
        .with_node(limits.node)
        .with_history_budget(limits.history_total / mesh.shards().max(1))
        .with_coalesced_replay();
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
            queues_charged: Cell::new(0),
            next_session: Cell::new(0),
            paused: Paused::default(),
            shutdown: Shutdown::default(),
            links: Links::default(),
            flush: Flush::default(),
            plain: std::cell::OnceCell::new(),
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

    /// Runs this thread's plain sessions (one shard task, for the shard's
    /// life); [`Shard::stop_plain`] must follow, or the sessions, which hold
    /// the shard, keep it alive.
    pub async fn run_plain(&self) {
        self.plain.get_or_init(Tasks::new).run().await
    }

    /// Drops every plain session still running (the shard has stopped).
    pub fn stop_plain(&self) {
        if let Some(t) = self.plain.get() {
            t.clear();
        }
    }

    pub fn session_count(&self) -> usize {
        self.registry.borrow().len()
    }

    /// Asks the channel's owner to join `session` as this server's own link
    /// to a peer: it gets the history (to resync the peer) and live frames;
    /// no header is relayed.
    pub fn join_link(&self, session: SessionId, channel: Arc<str>, uid: Arc<str>) {
        self.join_as(session, channel, uid, MemberKind::OwnLink, Bytes::new());
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

    /// A frame the sequencer ordered later (cluster mode): stored and
    /// delivered, or a waiting joiner admitted. Call on the owner shard,
    /// from a task, never from inside a `Sequencer` call.
    pub fn ordered(&self, key: ChannelKey, o: Ordered) {
        let now = Instant::now();
        self.with_owner(|owner, out| owner.ordered(key, o, now, out));
    }

    /// The sequencer's later answer to a claim of (channel, uid) for `session`.
    pub fn claimed(&self, key: ChannelKey, id: &MemberId, session: SessionId, free: bool) {
        let now = Instant::now();
        self.with_owner(|owner, out| owner.claimed(key, id, session, free, now, out));
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
        match msg {
            ShardMsg::Join {
                channel,
                uid,
                session,
                kind,
                header,
            } => {
                if let Some(hook) = &self.limits.hook_channel
                    && channel == *hook
                {
                    test_hook(&uid);
                }
                let j = Join {
                    channel,
                    uid,
                    session,
                    kind,
                    header,
                };
                self.with_owner(|o, out| o.join(j, now, out));
            }
            ShardMsg::Publish {
                key,
                origin,
                frame,
                dedup,
            } => self.with_owner(|o, out| o.publish(key, origin, frame, dedup, now, out)),
            ShardMsg::Leave { key, id, session } => {
                self.answer_remote_probes(key, session, false);
                self.with_owner(|o, out| o.leave(key, &id, session, now, out))
            }
            ShardMsg::ProbeResult {
                key,
                id,
                session,
                alive,
            } => {
                self.answer_remote_probes(key, session, alive);
                self.with_owner(|o, out| o.probe_result(key, &id, session, alive, now, out))
            }
            ShardMsg::Cluster(e) => self.with_owner(|o, out| cluster::on_event(o, e, now, out)),
            ShardMsg::RemoteProbe {
                channel,
                uid,
                session,
                reply,
            } => self.on_remote_probe(channel, uid, session, reply),
            ShardMsg::TakenOver {
                channel,
                uid,
                session,
            } => self.on_taken_over(&channel, &uid, session),
            ShardMsg::LinkControl {
                key,
                session,
                payload,
            } => self.with_owner(|o, out| o.link_control(key, session, &payload, now, out)),
            ShardMsg::Deliver { key, skip, frame } => self.deliver_local(key, skip, &frame),
            ShardMsg::Joined {
                session,
                key,
                id,
                history,
            } => self.on_joined(session, key, id, history),
            ShardMsg::Refused { session, close } => self.on_refused(session, close),
            ShardMsg::Probe { session, key, id } => self.on_probe(session, key, id),
            ShardMsg::Control { session, payload } => self.on_control(session, payload),
            ShardMsg::OpenLink { session } => self.on_open(session),
        }
    }

    /// Runs `f` on the owner, counts what it did, then carries out its actions.
    fn with_owner(&self, f: impl FnOnce(&mut Owner<Box<dyn Sequencer>>, &mut Vec<Action>)) {
        let mut out = Vec::new();
        {
            let mut owner = self.owner.borrow_mut();
            f(&mut owner, &mut out);
            let t = owner.take_tally();
            let c = self.counters();
            Counters::add(&c.joins, t.joins);
            Counters::add(&c.published, t.published);
            Counters::add(&c.dedup_dropped, t.dedup_dropped);
            Counters::add(&c.probe_replaced, t.probe_replaced);
            Counters::add(&c.peer_cycles_refused, t.cycles_refused);
            c.peer_links.fetch_add(t.links, Ordering::Relaxed);
        }
        for a in out {
            self.apply(a);
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

    /// Writes the plain members that were offered frames, forever, a round
    /// per wake-up (see the `Flush` list).
    pub async fn run_flush(&self) {
        loop {
            self.flush.wake.notified().await;
            self.flush_members();
        }
    }
}

/// `--test-hook-channel`: what a join with `uid` does to the owner shard.
fn test_hook(uid: &str) {
    match uid {
        "panic-shard" => panic!("test hook: a shard-level handler panics (--test-hook-channel)"),
        // A shard that falls behind: its inbox fills while it sleeps.
        "stall-shard" => std::thread::sleep(std::time::Duration::from_secs(3)),
        _ => {}
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
