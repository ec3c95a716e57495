//! One WebSocket session after the upgrade: reads and validates client frames,
//! writes what the shard queued for it, and closes with a code and reason.
//!
//! A session is one task (a hand-written future, [`SessionTask`]) plus shared
//! state ([`Session`]) that the shard reaches through an `Rc`: the shard pushes
//! encoded frames into the outbound queue and wakes the task; the task writes
//! everything queued in one vectored write per turn. A plain session's task
//! is not a tokio task: its shard stores and polls it
//! ([`crate::reactor::tasks`]), and its socket is on the shard's own epoll
//! instance ([`crate::reactor`]); a TLS session is a tokio task. A plain (non-TLS)
//! member's live frames skip the task: the shard collects the sessions it
//! offered frames to and later writes each one's queue straight to its
//! socket ([`Session::flush`]); the task is woken only when the socket would
//! block. An idle session holds no
//! read buffer: reads go into the shard's scratch buffer and only an
//! incomplete frame is copied out. This module must not touch other sessions
//! or channel state directly: everything it asks of its shard goes through
//! the narrow [`Host`] handle, which the shard implements (the session
//! module does not know the shard). A panic in a session's code ends that
//! session only: its task ends and the host forgets it (`Host::ended`).

use std::cell::RefCell;
use std::sync::Arc;
use std::task::Waker;

use bytes::Bytes;

use crate::channel::{ChannelKey, MemberId, SessionId};
use crate::clock::{self, Millis};
use crate::config::Limits;
use crate::protocol::close::{self, Close};
use crate::protocol::frame::{self, OP_CLOSE, OP_PING};
use crate::protocol::header::Header;
use probe::Probe;
use queue::Queue;

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

/// Frames gathered into one vectored write (Linux takes up to 1024): enough
/// for a whole default history replay (200 frames) in one syscall, while
/// the iovec array (4 KiB) stays on the stack.
const MAX_IOV: usize = 256;
/// Reads a session may do in one turn before it yields to its neighbours:
/// 16 × the 64 KiB scratch buffer is 1 MiB per turn, enough to keep one busy
/// publisher fast while it cannot delay the other sessions of its shard by
/// more than about a millisecond.
const READ_BUDGET: u32 = 16;
/// `Inner::fd` of a session without a socket.
const NO_SOCKET: std::os::fd::RawFd = -1;
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
    /// Close queued: flush, shut down, wait for EOF (bounded by `probe::CLOSE_LINGER`).
    Closing,
}

struct Inner {
    phase: Phase,
    /// History being replayed, then live frames (bounded by `--max-queue`).
    q: Queue,
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
    /// [`NO_SOCKET`] when there is none (4 bytes rather than an `Option`'s
    /// 8: they keep `Session` within 144 bytes).
    fd: std::os::fd::RawFd,
    /// Frames go to `fd` as they are (no TLS): the shard may write them.
    plain: bool,
    /// In the caller's list of sessions to [`Session::flush`].
    flushing: bool,
    /// The socket would block: the task waits for room and writes what is
    /// queued; until it has, offered frames are only queued (no write is
    /// tried and no task woken per frame).
    blocked: bool,
    /// When the phase last changed (header timeout, close linger).
    since: Millis,
    last_rx: Millis,
    last_ping: Millis,
}

/// What [`Session::offer`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Queued, and the task woken to write it (or dropped: closing).
    Queued,
    /// Queued on a plain member: the caller calls [`Session::flush`] later
    /// (once per session, however many frames it offered meanwhile).
    Flush,
    /// Over `--max-queue`: the session is closing with 1013.
    Closed,
}

/// The part of a session the shard holds: its outbound queue and state.
pub struct Session {
    pub id: SessionId,
    inner: RefCell<Inner>,
}

impl Session {
    pub fn new(id: SessionId, now: Millis) -> Session {
        Session {
            id,
            inner: RefCell::new(Inner {
                phase: Phase::Header,
                q: Queue::default(),
                waker: None,
                kill: false,
                held: false,
                close_code: 1005,
                joined: None,
                probe: None,
                fd: NO_SOCKET,
                plain: false,
                flushing: false,
                blocked: false,
                since: now,
                last_rx: now,
                last_ping: now,
            }),
        }
    }

    /// Records the TCP socket under this session; `plain` when frames go
    /// to it as they are (no TLS), so that they may be written without the
    /// task. The session's task owns the socket and forgets it here before
    /// closing it.
    pub fn set_socket(&self, fd: std::os::fd::RawFd, plain: bool) {
        let mut i = self.inner.borrow_mut();
        i.fd = fd;
        i.plain = plain;
    }

    /// The socket is about to be closed: nothing may reach it any more.
    fn forget_socket(&self) {
        let mut i = self.inner.borrow_mut();
        i.fd = NO_SOCKET;
        i.plain = false;
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

    /// Bytes waiting to be written: live frames and what of the history
    /// being replayed only this session holds, as charged to `--max-memory`.
    pub fn queued_bytes(&self) -> usize {
        self.inner.borrow().q.queued_bytes()
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
        let held = i.held;
        i.q.take(held)
    }

    /// Queues a live frame and has it written; over `max_queue` bytes the
    /// session is closed with 1013, and this returns true.
    pub fn push(&self, frame: Bytes, max_queue: usize) -> bool {
        match self.offer(frame, max_queue) {
            Offered::Queued => false,
            Offered::Flush => {
                self.flush();
                false
            }
            Offered::Closed => true,
        }
    }

    /// Queues a live frame, leaving a plain member's write to the caller's
    /// [`Session::flush`] (see [`Offered`]); over `max_queue` bytes the
    /// session is closed with 1013.
    pub fn offer(&self, frame: Bytes, max_queue: usize) -> Offered {
        let mut i = self.inner.borrow_mut();
        if i.phase == Phase::Closing {
            return Offered::Queued;
        }
        if i.q.push_counted(frame) > max_queue {
            drop(i);
            self.close(close::SLOW_CONSUMER);
            return Offered::Closed;
        }
        if i.plain && i.phase == Phase::Member && !i.held {
            if i.flushing || i.blocked {
                return Offered::Queued;
            }
            i.flushing = true;
            return Offered::Flush;
        }
        if let Some(w) = i.waker.take() {
            w.wake();
        }
        Offered::Queued
    }

    /// Writes what [`Session::offer`] queued straight to a plain member's
    /// socket, without waking its task; wakes the task only when the socket
    /// would block (it then waits for room) or failed (it finds the error),
    /// or when the session is no longer a plain member.
    pub fn flush(&self) {
        let mut i = self.inner.borrow_mut();
        i.flushing = false;
        let done = match i.plain_fd() {
            Some(fd) if i.phase == Phase::Member && !i.kill => i.write_direct(fd),
            _ => false,
        };
        if !done && let Some(w) = i.waker.take() {
            w.wake();
        }
    }

    /// Queues a control frame (not counted against the queue bound); while
    /// held, after the history, ahead of the live frames that wait.
    pub fn push_control(&self, frame: Bytes) {
        let mut i = self.inner.borrow_mut();
        if i.held {
            i.q.push_replay(frame);
        } else {
            i.q.push_live(frame);
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
            i.q.clear_live();
        }
        if c == close::SLOW_CONSUMER || c == close::MEMORY_BUDGET {
            // Its queue goes at once, so the memory is free now (not after
            // the close linger).
            i.q.clear_unwritten();
        }
        i.q.push_live(close_frame);
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
        i.q.set_replay(history);
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
}

pub mod echo;
mod probe;
mod queue;
pub mod rate;
pub mod socket;
mod task;

pub use probe::{PROBE_QUIET, TickOutcome};
pub use task::SessionTask;

#[cfg(test)]
mod tests;
