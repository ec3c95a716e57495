//! A shard: one thread, one current-thread runtime, its sessions, the
//! channels it owns, and its local members of every channel.
//!
//! All state here is `Rc`/`RefCell` and never leaves the thread; other shards
//! are reached only through [`mesh::Mesh`]. A channel's owner
//! (`router::owner`) orders its frames: that order is the channel's total order.
//! Handlers never hold a `RefCell` borrow across an await, and messages a
//! shard posts to itself go through a local queue so no handler re-enters another.

pub mod channel;
pub mod listener;
pub mod mesh;
mod owner;
pub mod router;
pub mod runtime;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::Bytes;
use tokio::sync::Notify;

use crate::config::Limits;
use crate::metrics::Counters;
use crate::protocol::close::{self, Close};
use crate::protocol::frame::{self, OP_TEXT};
use crate::protocol::header::Header;
use crate::session::{Session, TickOutcome};
use channel::OwnedChannel;
use mesh::{ChannelKey, InboxRx, Mesh, SessionId, ShardMsg, owner_of};

/// Size of the per-shard read buffer every session reads into. Large enough
/// for many small frames per syscall; it is allocated once per shard.
const SCRATCH: usize = 64 * 1024;
/// Messages handled per inbox wake-up before yielding to sessions.
const INBOX_BATCH: usize = 512;
/// Bytes waiting in an owner's inbox above which publishers pause reading.
const BACKLOG_LIMIT: usize = 64 << 20;
/// Channels with no members and no activity for this long may be dropped.
const CHANNEL_IDLE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Default)]
struct State {
    sessions: AHashMap<SessionId, Rc<Session>>,
    /// Local members of each channel, by the owner's key.
    members: AHashMap<ChannelKey, Vec<Rc<Session>>>,
    /// Channels this shard owns.
    by_name: AHashMap<Arc<str>, u32>,
    owned: AHashMap<u32, OwnedChannel>,
    next_slot: u32,
}

/// One shard's state and its view of the mesh.
pub struct Shard {
    pub id: u16,
    pub mesh: Arc<Mesh>,
    pub limits: Limits,
    /// The read buffer all of this shard's sessions share.
    pub scratch: RefCell<Box<[u8]>>,
    state: RefCell<State>,
    local: RefCell<VecDeque<ShardMsg>>,
    pumping: Cell<bool>,
    next_session: Cell<u64>,
    paused: RefCell<Vec<Waker>>,
    paused_wake: Notify,
    shutting_down: Cell<bool>,
    /// Signalled when the last session ends during shutdown.
    pub drained: Notify,
    /// This shard itself, for starting peer-link tasks from a handler.
    me: RefCell<std::rc::Weak<Shard>>,
    /// Peer servers every owned channel is linked to (PROTOCOL.md §7).
    peers: RefCell<Option<Arc<crate::peer::PeerConfig>>>,
}

/// Resets `pumping` even if a handler panics.
struct PumpGuard<'a>(&'a Cell<bool>);

impl Drop for PumpGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl Shard {
    pub fn new(id: u16, mesh: Arc<Mesh>, limits: Limits) -> Shard {
        Shard {
            id,
            mesh,
            limits,
            scratch: RefCell::new(vec![0u8; SCRATCH].into_boxed_slice()),
            state: RefCell::default(),
            local: RefCell::default(),
            pumping: Cell::new(false),
            next_session: Cell::new(0),
            paused: RefCell::default(),
            paused_wake: Notify::new(),
            shutting_down: Cell::new(false),
            drained: Notify::new(),
            me: RefCell::default(),
            peers: RefCell::default(),
        }
    }

    /// Enables peer links: channels this shard owns get one link per peer
    /// once their first client joins. `me` is this shard's own `Rc`.
    pub fn set_peers(me: &Rc<Shard>, peers: Option<Arc<crate::peer::PeerConfig>>) {
        *me.me.borrow_mut() = Rc::downgrade(me);
        *me.peers.borrow_mut() = peers;
    }

    /// Starts the peer links of a channel this shard owns.
    fn start_links(&self, channel: &Arc<str>) {
        let (Some(me), Some(peers)) = (self.me.borrow().upgrade(), self.peers.borrow().clone())
        else {
            return;
        };
        for url in &peers.urls {
            let task =
                crate::peer::run_link(me.clone(), peers.clone(), channel.clone(), url.clone());
            tokio::task::spawn_local(task);
        }
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Asks the channel's owner to join `session` as a peer link: it gets the
    /// history (to resync the peer) and live frames, and no header is relayed.
    pub fn join_link(&self, session: SessionId, channel: Arc<str>, uid: Arc<str>) {
        let owner = router::owner(&channel, self.mesh.shards());
        self.submit(
            owner,
            ShardMsg::Join {
                channel,
                uid,
                session,
                header: Bytes::new(),
            },
        );
    }

    /// This shard's counters.
    pub fn counters(&self) -> &Counters {
        self.mesh.metrics.shard(self.id)
    }

    /// Registers a new session on this shard.
    pub fn new_session(&self) -> Rc<Session> {
        let n = self.next_session.get();
        self.next_session.set(n + 1);
        let id = ((self.id as u64) << 48) | (n & ((1 << 48) - 1));
        let s = Rc::new(Session::new(id, crate::clock::now()));
        if self.shutting_down.get() {
            s.close(close::SHUTDOWN);
        }
        self.state.borrow_mut().sessions.insert(id, s.clone());
        self.counters()
            .sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        s
    }

    pub fn session_count(&self) -> usize {
        self.state.borrow().sessions.len()
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
    fn pump(&self) {
        if self.pumping.replace(true) {
            return;
        }
        let _guard = PumpGuard(&self.pumping);
        loop {
            let msg = self.local.borrow_mut().pop_front();
            match msg {
                Some(m) => self.handle(m),
                None => break,
            }
        }
    }

    fn handle(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Join {
                channel,
                uid,
                session,
                header,
            } => self.on_join(channel, uid, session, header),
            ShardMsg::Joined {
                session,
                key,
                uid,
                history,
            } => self.on_joined(session, key, uid, history),
            ShardMsg::Refused { session, close } => self.on_refused(session, close),
            ShardMsg::Publish {
                key,
                origin,
                frame,
                dedup,
            } => self.on_publish(key, origin, frame, dedup),
            ShardMsg::Deliver { key, origin, frame } => self.deliver_local(key, origin, &frame),
            ShardMsg::Leave { key, uid, session } => self.on_leave(key, &uid, session),
            ShardMsg::Probe { session, key, uid } => self.on_probe(session, key, uid),
            ShardMsg::ProbeResult {
                key,
                uid,
                session,
                alive,
            } => self.on_probe_result(key, uid, session, alive),
        }
    }

    // ---- called by sessions ----

    /// A session sent a valid header: ask the channel's owner to join it.
    pub fn join(&self, session: SessionId, h: Header) {
        let owner = router::owner(&h.channel, self.mesh.shards());
        let header = frame::encode(OP_TEXT, &h.relay);
        let msg = ShardMsg::Join {
            channel: h.channel.into(),
            uid: h.uid.into(),
            session,
            header,
        };
        self.submit(owner, msg);
    }

    /// A member sent a frame.
    pub fn publish(&self, key: ChannelKey, origin: SessionId, frame: Bytes) {
        self.publish_with(key, origin, frame, self.limits.dedup)
    }

    /// Publishes, dropping `frame` if `dedup` and it is byte-identical to one in history.
    pub fn publish_with(&self, key: ChannelKey, origin: SessionId, frame: Bytes, dedup: bool) {
        self.submit(
            owner_of(key),
            ShardMsg::Publish {
                key,
                origin,
                frame,
                dedup,
            },
        );
    }

    /// A probed session answered (or failed to).
    pub fn probe_answered(&self, key: ChannelKey, uid: Arc<str>, session: SessionId, alive: bool) {
        self.submit(
            owner_of(key),
            ShardMsg::ProbeResult {
                key,
                uid,
                session,
                alive,
            },
        );
    }

    /// Whether `session` must pause reading because its channel's owner is
    /// behind; if so its waker is kept and woken when the backlog clears.
    pub fn owner_backlogged(&self, session: &Session, waker: &Waker) -> bool {
        let Some(key) = session.key() else {
            return false;
        };
        let owner = owner_of(key);
        if owner == self.id || self.mesh.backlog(owner) < BACKLOG_LIMIT {
            return false;
        }
        // Only while an owner is behind (rare), so a linear check is fine; it
        // keeps a session polled again and again from piling up copies.
        let mut paused = self.paused.borrow_mut();
        if !paused.iter().any(|w| w.will_wake(waker)) {
            paused.push(waker.clone());
        }
        drop(paused);
        self.paused_wake.notify_one();
        true
    }

    /// A session's task ended: forget it and leave its channel.
    pub fn session_ended(&self, s: &Session) {
        let left = s.take_joined();
        let c = self.counters();
        c.sessions
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        c.closed(s.close_code());
        let mut st = self.state.borrow_mut();
        st.sessions.remove(&s.id);
        let empty = st.sessions.is_empty();
        if let Some((key, _, pos)) = &left {
            if let Some(list) = st.members.get_mut(key) {
                if list.get(*pos).is_some_and(|m| m.id == s.id) {
                    list.swap_remove(*pos);
                    if let Some(moved) = list.get(*pos) {
                        moved.set_member_pos(*pos);
                    }
                }
                if list.is_empty() {
                    st.members.remove(key);
                }
            }
        }
        drop(st);
        if let Some((key, uid, _)) = left {
            self.submit(
                owner_of(key),
                ShardMsg::Leave {
                    key,
                    uid,
                    session: s.id,
                },
            );
        }
        if empty && self.shutting_down.get() {
            self.drained.notify_one();
        }
    }

    // ---- member side ----

    fn deliver_local(&self, key: ChannelKey, origin: SessionId, frame: &Bytes) {
        let st = self.state.borrow();
        let n = write_members(st.members.get(&key), origin, frame, self.limits.max_queue);
        Counters::add(&self.counters().delivered, n);
    }

    fn on_joined(&self, session: SessionId, key: ChannelKey, uid: Arc<str>, history: Vec<Bytes>) {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let Some(s) = st.sessions.get(&session) else {
            self.submit(owner_of(key), ShardMsg::Leave { key, uid, session });
            return;
        };
        let list = st.members.entry(key).or_default();
        if s.joined(key, uid.clone(), history, list.len()) {
            list.push(s.clone());
        } else {
            if list.is_empty() {
                st.members.remove(&key);
            }
            self.submit(owner_of(key), ShardMsg::Leave { key, uid, session });
        }
    }

    fn on_refused(&self, session: SessionId, c: Close) {
        let s = self.state.borrow().sessions.get(&session).cloned();
        if let Some(s) = s {
            s.close(c);
        }
    }

    fn on_probe(&self, session: SessionId, key: ChannelKey, uid: Arc<str>) {
        let s = self.state.borrow().sessions.get(&session).cloned();
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
        {
            let st = self.state.borrow();
            for s in st.sessions.values() {
                if let TickOutcome::ProbeFailed { key, uid } = s.tick(
                    now_ms,
                    self.limits.ping_interval,
                    self.limits.header_timeout,
                ) {
                    failed.push((key, uid, s.id));
                }
            }
        }
        for (key, uid, id) in failed {
            self.probe_answered(key, uid, id, false);
        }
        if expire_channels {
            let mut st = self.state.borrow_mut();
            let st = &mut *st;
            st.owned.retain(|_, ch| {
                let keep = !ch.expired(now, CHANNEL_IDLE);
                if !keep {
                    st.by_name.remove(&ch.name);
                }
                keep
            });
        }
    }

    /// Wakes publishers paused on an owner's backlog once it has cleared.
    pub async fn resume_paused(&self) {
        loop {
            self.paused_wake.notified().await;
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let clear = (0..self.mesh.shards() as u16)
                    .all(|s| self.mesh.backlog(s) < BACKLOG_LIMIT / 2);
                if clear {
                    break;
                }
            }
            for w in self.paused.borrow_mut().drain(..) {
                w.wake();
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
        self.shutting_down.set(true);
        let sessions: Vec<Rc<Session>> = self.state.borrow().sessions.values().cloned().collect();
        for s in &sessions {
            s.close(close::SHUTDOWN);
        }
        if sessions.is_empty() {
            self.drained.notify_one();
        }
    }

    /// Ends every remaining session now (shutdown deadline passed).
    pub fn kill_all(&self) {
        let sessions: Vec<Rc<Session>> = self.state.borrow().sessions.values().cloned().collect();
        for s in sessions {
            s.kill();
        }
    }
}

/// Queues `frame` on every member in `list` except `origin`; returns how many.
fn write_members(
    list: Option<&Vec<Rc<Session>>>,
    origin: SessionId,
    frame: &Bytes,
    max_queue: usize,
) -> u64 {
    let mut n = 0;
    for m in list.into_iter().flatten() {
        if m.id != origin {
            m.push(frame.clone(), max_queue);
            n += 1;
        }
    }
    n
}
