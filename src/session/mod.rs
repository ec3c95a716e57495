//! One WebSocket session after the upgrade: reads and validates client frames,
//! writes what the shard queued for it, and closes with a code and reason.
//!
//! A session is one task (a hand-written future, [`SessionTask`]) plus shared
//! state ([`Session`]) that the shard reaches through an `Rc`: the shard pushes
//! encoded frames into the outbound queue and wakes the task; the task writes
//! everything queued in one vectored write per turn. An idle session holds no
//! read buffer: reads go into the shard's scratch buffer and only an
//! incomplete frame is copied out. This module must not touch other sessions
//! or channel state directly: everything it asks of its shard goes through
//! the narrow [`Host`] handle, which the shard implements (the session
//! module does not know the shard). A panic in a session's code ends that
//! session only: its task ends and the host forgets it (`Host::ended`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;

use crate::channel::{ChannelKey, SessionId};
use crate::clock::{self, Millis};
use crate::config::Limits;
use crate::protocol::close::{self, Close};
use crate::protocol::frame::{self, OP_CLOSE, OP_PING};
use crate::protocol::header::Header;

/// What a session asks of the shard it lives on.
pub trait Host {
    /// The limits sessions enforce (`--max-message`, `--max-queue`, ...).
    fn limits(&self) -> &Limits;
    /// The read buffer every session of this shard reads into.
    fn scratch(&self) -> &RefCell<Box<[u8]>>;
    /// `session` sent a valid header: join its channel (answered by
    /// [`Session::joined`] or a close).
    fn join(&self, session: SessionId, header: Header);
    /// A member published `frame` (encoded for receivers) into `key`.
    fn publish(&self, key: ChannelKey, origin: SessionId, frame: Bytes, dedup: bool);
    /// A probed session answered (or failed to).
    fn probe_answered(&self, key: ChannelKey, uid: Arc<str>, session: SessionId, alive: bool);
    /// Whether the session must stop reading for now (the process is
    /// congested); if so `waker` is woken when it may go on.
    fn must_pause(&self, waker: &Waker) -> bool;
    /// The session's task ended, however it ended (a panic included).
    fn ended(&self, session: &Session);
}

/// How long a closing session may take to flush its Close and see the peer's EOF.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Half-open probe (PROTOCOL.md §4): silence before pinging, and time to answer.
pub const PROBE_QUIET: Duration = Duration::from_secs(2);
const PROBE_ANSWER: Duration = Duration::from_secs(2);
/// Frames gathered into one vectored write (Linux takes up to 1024): enough
/// for a whole default history replay (200 frames) in one syscall, while
/// the iovec array (4 KiB) stays on the stack.
const MAX_IOV: usize = 256;
/// Reads a session may do in one turn before it yields to its neighbours:
/// 16 × the 64 KiB scratch buffer is 1 MiB per turn, enough to keep one busy
/// publisher fast while it cannot delay the other sessions of its shard by
/// more than about a millisecond.
const READ_BUDGET: u32 = 16;
/// An empty server Ping.
static PING: &[u8] = &[0x80 | OP_PING, 0];
/// An empty Close, the reply to a Close without a status code.
static EMPTY_CLOSE: &[u8] = &[0x80 | OP_CLOSE, 0];

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the header frame.
    Header,
    /// Header sent to the channel's owner; reading paused until it answers.
    Joining,
    /// A member: frames read are published.
    Member,
    /// Close queued: flush, shut down, wait for EOF (bounded by [`CLOSE_LINGER`]).
    Closing,
}

/// History being replayed to a joiner. Boxed and present only while frames
/// remain, so an idle session pays 8 bytes for it rather than a whole queue.
#[derive(Default)]
#[allow(clippy::box_collection)] // the box is the point: 8 bytes when idle instead of 32
struct Replay(Option<Box<VecDeque<Bytes>>>);

impl Replay {
    fn set(&mut self, frames: Vec<Bytes>) {
        self.0 = (!frames.is_empty()).then(|| Box::new(frames.into()));
    }

    fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn front(&self) -> Option<&Bytes> {
        self.0.as_ref().and_then(|q| q.front())
    }

    fn pop_front(&mut self) -> Option<Bytes> {
        let q = self.0.as_mut()?;
        let f = q.pop_front();
        if q.is_empty() {
            self.0 = None;
        }
        f
    }

    fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.0.iter().flat_map(|q| q.iter())
    }

    fn take(&mut self) -> Vec<Bytes> {
        self.0.take().map(|q| Vec::from(*q)).unwrap_or_default()
    }

    fn clear(&mut self) {
        self.0 = None;
    }
}

/// A probe of this session on behalf of a newcomer with the same uid.
struct Probe {
    deadline: Millis,
    key: ChannelKey,
    uid: Arc<str>,
}

struct Inner {
    phase: Phase,
    /// Live frames waiting to be written, and their bytes (bounded by `--max-queue`).
    out: VecDeque<Bytes>,
    out_bytes: usize,
    /// History being replayed, written before `out`; paced by the socket.
    replay: Replay,
    /// Bytes of the front frame (of `replay`, else `out`) already written.
    written: usize,
    waker: Option<Waker>,
    /// Set to end the task at once (close linger over, or shutdown deadline).
    kill: bool,
    /// The close code sent, 1005 while none was.
    close_code: u16,
    /// The channel once joined: where published frames go.
    key: Option<ChannelKey>,
    probe: Option<Box<Probe>>,
    /// When the phase last changed (header timeout, close linger).
    since: Millis,
    last_rx: Millis,
    last_ping: Millis,
}

/// The part of a session the shard holds: its outbound queue and state.
pub struct Session {
    pub id: SessionId,
    inner: RefCell<Inner>,
}

/// What a shard's timer tick found about a session.
pub enum TickOutcome {
    Nothing,
    /// The incumbent did not answer the probe: it is being closed.
    ProbeFailed {
        key: ChannelKey,
        uid: Arc<str>,
    },
}

impl Session {
    pub fn new(id: SessionId, now: Millis) -> Session {
        Session {
            id,
            inner: RefCell::new(Inner {
                phase: Phase::Header,
                out: VecDeque::new(),
                out_bytes: 0,
                replay: Replay::default(),
                written: 0,
                waker: None,
                kill: false,
                close_code: 1005,
                key: None,
                probe: None,
                since: now,
                last_rx: now,
                last_ping: now,
            }),
        }
    }

    pub fn phase(&self) -> Phase {
        self.inner.borrow().phase
    }

    /// Registers the waker to call when frames are queued (for sessions driven
    /// without a [`SessionTask`], such as peer links and benches).
    pub fn set_waker(&self, waker: &Waker) {
        let mut i = self.inner.borrow_mut();
        if !i.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            i.waker = Some(waker.clone());
        }
    }

    /// Records that the peer of a socket-less session is alive (keepalive).
    pub fn touch_rx(&self) {
        self.inner.borrow_mut().last_rx = clock::now();
    }

    /// Whether frames are waiting to be taken.
    pub fn has_queued(&self) -> bool {
        let i = self.inner.borrow();
        !i.out.is_empty() || !i.replay.is_empty()
    }

    /// The close code this session sent (1005 if it ended without one).
    pub fn close_code(&self) -> u16 {
        self.inner.borrow().close_code
    }

    /// The header was accepted: reading pauses until the owner answers the join.
    pub fn begin_join(&self) {
        let mut i = self.inner.borrow_mut();
        if i.phase == Phase::Header {
            i.phase = Phase::Joining;
            i.since = clock::now();
        }
    }

    /// Takes every frame queued for writing (history first), as a socket
    /// write would. For in-process harnesses and benches that have no socket.
    pub fn take_queued(&self) -> Vec<Bytes> {
        let mut i = self.inner.borrow_mut();
        let mut v = i.replay.take();
        v.extend(i.out.drain(..));
        i.out_bytes = 0;
        i.written = 0;
        v
    }

    /// Queues a live frame; over `max_queue` bytes the session is closed
    /// with 1013, and this returns true.
    pub fn push(&self, frame: Bytes, max_queue: usize) -> bool {
        let mut i = self.inner.borrow_mut();
        if i.phase == Phase::Closing {
            return false;
        }
        i.out_bytes += frame.len();
        i.out.push_back(frame);
        if i.out_bytes > max_queue {
            drop(i);
            self.close(close::SLOW_CONSUMER);
            return true;
        }
        if let Some(w) = i.waker.take() {
            w.wake();
        }
        false
    }

    /// Queues a control frame (not counted against the queue bound).
    fn push_control(&self, frame: Bytes) {
        let mut i = self.inner.borrow_mut();
        i.out.push_back(frame);
        if let Some(w) = i.waker.take() {
            w.wake();
        }
    }

    /// Starts closing with `c`: queued frames are still written (except for a
    /// slow consumer, whose queue is dropped), then the Close frame.
    pub fn close(&self, c: Close) {
        self.close_with(c, frame::encode_close(c));
    }

    fn close_with(&self, c: Close, close_frame: Bytes) {
        let mut i = self.inner.borrow_mut();
        if i.phase == Phase::Closing {
            return;
        }
        tracing::debug!(
            session = self.id,
            code = c.code,
            reason = c.reason,
            "closing"
        );
        i.phase = Phase::Closing;
        i.close_code = c.code;
        i.since = clock::now();
        if c == close::SLOW_CONSUMER {
            // Keep only a frame already partly written, so the stream stays well-formed.
            let keep = if i.written > 0 {
                i.replay.pop_front().or_else(|| i.out.pop_front())
            } else {
                None
            };
            i.replay.clear();
            i.out.clear();
            i.out_bytes = 0;
            if let Some(f) = keep {
                i.out.push_back(f);
            }
        }
        i.out.push_back(close_frame);
        if let Some(w) = i.waker.take() {
            w.wake();
        }
    }

    /// Ends the task at once, without waiting for the peer.
    pub fn kill(&self) {
        let mut i = self.inner.borrow_mut();
        i.kill = true;
        if let Some(w) = i.waker.take() {
            w.wake();
        }
    }

    /// The owner accepted the join: replay `history`, then live frames.
    /// Returns false when the session is no longer waiting for it.
    pub fn joined(&self, key: ChannelKey, history: Vec<Bytes>) -> bool {
        let mut i = self.inner.borrow_mut();
        if i.phase != Phase::Joining {
            return false;
        }
        i.phase = Phase::Member;
        i.key = Some(key);
        i.replay.set(history);
        if let Some(w) = i.waker.take() {
            w.wake();
        }
        true
    }

    /// The channel this session is a member of.
    pub fn key(&self) -> Option<ChannelKey> {
        self.inner.borrow().key
    }

    /// Starts a half-open probe; `Some(alive)` when it can be answered at once.
    pub fn probe(&self, key: ChannelKey, uid: Arc<str>, now: Millis) -> Option<bool> {
        let mut i = self.inner.borrow_mut();
        if i.phase == Phase::Closing {
            return Some(false);
        }
        if clock::since(now, i.last_rx) < PROBE_QUIET {
            return Some(true);
        }
        i.probe = Some(Box::new(Probe {
            deadline: clock::after(now, PROBE_ANSWER),
            key,
            uid,
        }));
        drop(i);
        self.push_control(Bytes::from_static(PING));
        None
    }

    /// Keepalive, timeouts and probe deadlines, called by the shard's timer.
    pub fn tick(
        &self,
        now: Millis,
        ping_interval: Duration,
        header_timeout: Duration,
    ) -> TickOutcome {
        let mut i = self.inner.borrow_mut();
        if i.phase == Phase::Closing {
            if clock::since(now, i.since) >= CLOSE_LINGER {
                drop(i);
                self.kill();
            }
            return TickOutcome::Nothing;
        }
        if let Some(p) = i.probe.take_if(|p| clock::reached(now, p.deadline)) {
            drop(i);
            self.close(close::KEEPALIVE_TIMEOUT);
            return TickOutcome::ProbeFailed {
                key: p.key,
                uid: p.uid,
            };
        }
        if i.phase == Phase::Header && clock::since(now, i.since) >= header_timeout {
            drop(i);
            self.close(close::HEADER_TIMEOUT);
        } else if clock::since(now, i.last_rx) >= ping_interval * 3 {
            drop(i);
            self.close(close::KEEPALIVE_TIMEOUT);
        } else if clock::since(now, i.last_ping) >= ping_interval {
            i.last_ping = now;
            drop(i);
            self.push_control(Bytes::from_static(PING));
        }
        TickOutcome::Nothing
    }
}

mod task;

pub use task::SessionTask;
