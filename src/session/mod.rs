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

use crate::channel::{ChannelKey, MemberId, SessionId};
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
    fn probe_answered(&self, key: ChannelKey, id: MemberId, session: SessionId, alive: bool);
    /// A link member sent a control message (a Ping payload, PROTOCOL.md §7).
    fn link_control(&self, key: ChannelKey, session: SessionId, payload: Bytes);
    /// Whether the session must stop reading for now (the process is
    /// congested); if so `waker` is woken when it may go on.
    fn must_pause(&self, waker: &Waker) -> bool;
    /// The session's task ended, however it ended (a panic included).
    fn ended(&self, session: &Session);
    /// Charges `bytes` more held between reads to the server's `--max-memory`;
    /// false, with nothing charged, when that would pass it.
    fn charge(&self, bytes: usize) -> bool;
    /// Gives back `bytes` charged before.
    fn discharge(&self, bytes: usize);
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
    fn push_back(&mut self, frame: Bytes) {
        self.0.get_or_insert_with(Default::default).push_back(frame);
    }

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
    id: MemberId,
    /// The peer's acknowledged bytes when the probe began, if data was
    /// waiting ahead of the ping: acknowledgements past it prove the peer
    /// is reading, though its answer is still queued behind that data.
    acked_at_start: Option<u64>,
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
    /// A peer link whose peer has not synced yet: live frames wait in `out`
    /// unwritten; control frames go out after the history (PROTOCOL.md §7).
    held: bool,
    /// The close code sent, 1005 while none was.
    close_code: u16,
    /// Channel and uid once joined: where published frames go, and what to leave.
    joined: Option<(ChannelKey, Arc<str>)>,
    probe: Option<Box<Probe>>,
    /// The TCP socket under the session (also under TLS), for the probe;
    /// -1 while unknown (a plain `RawFd`: an `Option` would cost 4 bytes more).
    fd: std::os::fd::RawFd,
    /// When the phase last changed (header timeout, close linger).
    since: Millis,
    last_rx: Millis,
    last_ping: Millis,
}

impl Inner {
    fn fd(&self) -> Option<std::os::fd::RawFd> {
        (self.fd >= 0).then_some(self.fd)
    }

    /// Whether something may be written now.
    fn writable(&self) -> bool {
        !self.replay.is_empty() || (!self.held && !self.out.is_empty())
    }

    /// The frames to write next, history first; live ones unless held.
    fn to_write(&self) -> impl Iterator<Item = &Bytes> {
        let live = if self.held {
            None
        } else {
            Some(self.out.iter())
        };
        self.replay.iter().chain(live.into_iter().flatten())
    }
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
        id: MemberId,
    },
    /// The incumbent's ping was stuck behind data it kept reading: alive.
    ProbeAlive {
        key: ChannelKey,
        id: MemberId,
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
                held: false,
                close_code: 1005,
                joined: None,
                probe: None,
                fd: -1,
                since: now,
                last_rx: now,
                last_ping: now,
            }),
        }
    }

    /// Records the TCP socket under this session. The session's task owns
    /// it; the shard forgets the session before the task closes it.
    pub fn set_socket(&self, fd: std::os::fd::RawFd) {
        self.inner.borrow_mut().fd = fd;
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
        i.writable()
    }

    /// Bytes of live frames waiting to be written (history replay excluded).
    pub fn queued_bytes(&self) -> usize {
        self.inner.borrow().out_bytes
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
        if !i.held {
            v.extend(i.out.drain(..));
            i.out_bytes = 0;
        }
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

    /// Queues a control frame (not counted against the queue bound); while
    /// held, after the history, ahead of the live frames that wait.
    pub fn push_control(&self, frame: Bytes) {
        let mut i = self.inner.borrow_mut();
        if i.held {
            i.replay.push_back(frame);
        } else {
            i.out.push_back(frame);
        }
        if let Some(w) = i.waker.take() {
            w.wake();
        }
    }

    /// A held link's peer synced and the link was kept: live frames flow.
    pub fn release(&self) {
        let mut i = self.inner.borrow_mut();
        i.held = false;
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
        if std::mem::take(&mut i.held) {
            // A link closed before it was open: what waited is not sent.
            i.out.clear();
            i.out_bytes = 0;
        }
        if c == close::SLOW_CONSUMER || c == close::MEMORY_BUDGET {
            // Its queue goes at once, so the memory is free now (not after
            // the close linger). Keep only a frame already partly written, so
            // the stream stays well-formed.
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
    /// A link (`hold`) sends no live frame until [`Session::release`].
    pub fn joined(&self, key: ChannelKey, uid: Arc<str>, history: Vec<Bytes>, hold: bool) -> bool {
        let mut i = self.inner.borrow_mut();
        if i.phase != Phase::Joining {
            return false;
        }
        i.phase = Phase::Member;
        i.joined = Some((key, uid));
        i.held = hold;
        i.replay.set(history);
        if let Some(w) = i.waker.take() {
            w.wake();
        }
        true
    }

    /// The channel this session is a member of.
    pub fn key(&self) -> Option<ChannelKey> {
        self.inner.borrow().joined.as_ref().map(|(k, _)| *k)
    }

    /// The channel and uid this session joined, taken when it ends.
    pub fn take_joined(&self) -> Option<(ChannelKey, Arc<str>)> {
        self.inner.borrow_mut().joined.take()
    }

    /// Starts a half-open probe; `Some(alive)` when it can be answered at once.
    pub fn probe(&self, key: ChannelKey, id: MemberId, now: Millis) -> Option<bool> {
        let mut i = self.inner.borrow_mut();
        if i.phase == Phase::Closing {
            return Some(false);
        }
        if clock::since(now, i.last_rx) < PROBE_QUIET {
            return Some(true);
        }
        let ahead = !i.out.is_empty()
            || !i.replay.is_empty()
            || i.fd().and_then(socket::unacked).is_some_and(|n| n > 0);
        let acked_at_start = if ahead {
            i.fd().and_then(socket::bytes_acked)
        } else {
            None
        };
        i.probe = Some(Box::new(Probe {
            deadline: clock::after(now, PROBE_ANSWER),
            key,
            id,
            acked_at_start,
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
            let acked_now = i.fd().and_then(socket::bytes_acked);
            if let (Some(a0), Some(a1)) = (p.acked_at_start, acked_now)
                && a1 > a0
            {
                return TickOutcome::ProbeAlive {
                    key: p.key,
                    id: p.id,
                };
            }
            drop(i);
            self.close(close::PROBE_FAILED);
            return TickOutcome::ProbeFailed {
                key: p.key,
                id: p.id,
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

pub mod echo;
pub mod rate;
pub mod socket;
mod task;

pub use task::SessionTask;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_session_state_stays_small() {
        // Every idle connection pays for this (BENCHMARKS.md: 144 bytes).
        assert!(
            std::mem::size_of::<Session>() <= 144,
            "{}",
            std::mem::size_of::<Session>()
        );
    }

    #[test]
    fn a_held_link_writes_control_frames_but_not_live_ones_until_released() {
        let s = Session::new(1, 0);
        s.begin_join();
        assert!(s.joined(7, "l".into(), vec![Bytes::from_static(b"h")], true));
        s.push(Bytes::from_static(b"live"), 1 << 20);
        s.push_control(Bytes::from_static(b"sync"));
        assert_eq!(
            s.take_queued(),
            ["h", "sync"].map(|f| Bytes::from_static(f.as_bytes()))
        );
        assert!(!s.has_queued());
        s.release();
        assert_eq!(s.take_queued(), [Bytes::from_static(b"live")]);
        // Closed before it opened: what waited is dropped, the Close goes out.
        let s = Session::new(2, 0);
        s.begin_join();
        s.joined(7, "l".into(), Vec::new(), true);
        s.push(Bytes::from_static(b"live"), 1 << 20);
        s.close(close::PEER_CYCLE);
        let q = s.take_queued();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0][0] & 0x0F, OP_CLOSE);
    }
}
