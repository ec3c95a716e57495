//! A session's outbound frames: the history being replayed to a joiner and
//! the live frames queued behind it, gathered into vectored writes and
//! dropped as the socket takes them. Owns no socket: writes go through
//! [`socket::send`] on the descriptor the session recorded.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

use super::{Inner, MAX_IOV, NO_SOCKET, socket};

/// The frames waiting to be written. Boxed and present only while there
/// are some (`None` exactly when nothing is queued), so an idle session pays
/// 8 bytes for its queues instead of 56: that keeps `Session` in a smaller
/// allocation (BENCHMARKS.md, "Per-session memory"), for one more
/// allocation when a burst of frames finds the queue empty.
#[derive(Default)]
pub(super) struct Queue(Option<Box<Frames>>);

#[derive(Default)]
struct Frames {
    /// History being replayed, written before `live`; paced by the socket.
    replay: VecDeque<Bytes>,
    /// Live frames (and control frames) waiting to be written.
    live: VecDeque<Bytes>,
    /// Bytes of live frames counted against `--max-queue`.
    live_bytes: usize,
    /// Bytes of the front frame (of `replay`, else `live`) already written.
    written: usize,
}

impl Queue {
    fn frames(&mut self) -> &mut Frames {
        self.0.get_or_insert_with(Default::default)
    }

    /// Gives the box back once nothing is left in it.
    fn settle(&mut self) {
        if self
            .0
            .as_ref()
            .is_some_and(|f| f.replay.is_empty() && f.live.is_empty())
        {
            self.0 = None;
        }
    }

    /// Nothing is queued, history or live.
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(super) fn has_replay(&self) -> bool {
        self.0.as_ref().is_some_and(|f| !f.replay.is_empty())
    }

    pub(super) fn has_live(&self) -> bool {
        self.0.as_ref().is_some_and(|f| !f.live.is_empty())
    }

    /// Bytes waiting to be written, as charged to `--max-memory`: the live
    /// frames (control frames aside), and those buffers of the history
    /// being replayed that this session alone holds. A replay shares the
    /// history's sealed pieces while the channel keeps them
    /// (`History::replay`); its copy of the open piece, and whatever the
    /// channel has evicted since, are the joiner's own. Summed when asked
    /// (by the shard's tick), over a few buffers.
    pub(super) fn queued_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |f| {
            let own = f.replay.iter().filter(|b| b.is_unique()).map(Bytes::len);
            f.live_bytes + own.sum::<usize>()
        })
    }

    /// Bytes of the front frame already written.
    pub(super) fn written(&self) -> usize {
        self.0.as_ref().map_or(0, |f| f.written)
    }

    /// Queues a live frame counted against `--max-queue`; returns the bytes
    /// counted now.
    pub(super) fn push_counted(&mut self, frame: Bytes) -> usize {
        let f = self.frames();
        f.live_bytes += frame.len();
        f.live.push_back(frame);
        f.live_bytes
    }

    /// Queues a frame behind the live ones, not counted (control, Close).
    pub(super) fn push_live(&mut self, frame: Bytes) {
        self.frames().live.push_back(frame);
    }

    /// Queues a frame behind the history, ahead of the live frames.
    pub(super) fn push_replay(&mut self, frame: Bytes) {
        self.frames().replay.push_back(frame);
    }

    /// Replaces the history to replay.
    pub(super) fn set_replay(&mut self, frames: Vec<Bytes>) {
        if frames.is_empty() {
            if let Some(f) = self.0.as_mut() {
                f.replay.clear();
            }
            self.settle();
        } else {
            self.frames().replay = frames.into();
        }
    }

    /// Drops the live frames (what waited on a held link).
    pub(super) fn clear_live(&mut self) {
        if let Some(f) = self.0.as_mut() {
            f.live.clear();
            f.live_bytes = 0;
        }
        self.settle();
    }

    /// Drops everything but a frame already partly written, so the stream
    /// stays well-formed; it is kept as a live frame.
    pub(super) fn clear_unwritten(&mut self) {
        let Some(mut f) = self.0.take() else { return };
        let keep = if f.written > 0 {
            f.replay.pop_front().or_else(|| f.live.pop_front())
        } else {
            None
        };
        if let Some(frame) = keep {
            f.replay.clear();
            f.live.clear();
            f.live.push_back(frame);
            f.live_bytes = 0;
            self.0 = Some(f);
        }
    }

    /// Takes the history and, unless `held`, the live frames.
    pub(super) fn take(&mut self, held: bool) -> Vec<Bytes> {
        let Some(f) = self.0.as_mut() else {
            return Vec::new();
        };
        let mut v = Vec::from(std::mem::take(&mut f.replay));
        if !held {
            v.extend(f.live.drain(..));
            f.live_bytes = 0;
        }
        f.written = 0;
        self.settle();
        v
    }

    /// The frames to write next, history first; live ones unless `held`.
    fn iter(&self, held: bool) -> impl Iterator<Item = &Bytes> {
        self.0.iter().flat_map(move |f| {
            let live = (!held).then_some(&f.live);
            f.replay.iter().chain(live.into_iter().flatten())
        })
    }

    /// Drops `n` written bytes from the front of the replay and live frames.
    fn advance(&mut self, n: usize) {
        let Some(f) = self.0.as_mut() else { return };
        let mut n = n + f.written;
        f.written = 0;
        while n > 0 {
            let (len, live) = if let Some(b) = f.replay.front() {
                (b.len(), false)
            } else if let Some(b) = f.live.front() {
                (b.len(), true)
            } else {
                break;
            };
            if n < len {
                f.written = n;
                break;
            }
            n -= len;
            if live {
                f.live.pop_front();
                f.live_bytes = f.live_bytes.saturating_sub(len);
            } else {
                f.replay.pop_front();
            }
        }
        // An idle session keeps no queue memory: drained queues give theirs back.
        self.settle();
    }
}

impl Inner {
    /// Whether something may be written now.
    pub(super) fn writable(&self) -> bool {
        self.q.has_replay() || (!self.held && self.q.has_live())
    }

    /// Fills `iov` with the frames to write next; returns how many.
    pub(super) fn gather<'a>(&'a self, iov: &mut [IoSlice<'a>; MAX_IOV]) -> usize {
        let written = self.q.written();
        let mut k = 0;
        for f in self.q.iter(self.held).take(MAX_IOV) {
            iov[k] = IoSlice::new(if k == 0 { &f[written..] } else { &f[..] });
            k += 1;
        }
        k
    }

    /// The socket the shard or the task may write frames to directly.
    pub(super) fn plain_fd(&self) -> Option<std::os::fd::RawFd> {
        self.socket().filter(|_| self.plain)
    }

    /// The TCP socket under the session, if it has one.
    pub(super) fn socket(&self) -> Option<std::os::fd::RawFd> {
        (self.fd != NO_SOCKET).then_some(self.fd)
    }

    /// Drops `n` written bytes from the front of the queues.
    pub(super) fn advance(&mut self, n: usize) {
        self.q.advance(n);
    }

    /// Writes what is queued to the plain socket `fd` until it is all out
    /// (true) or the socket would block or failed (false: the task takes over).
    pub(super) fn write_direct(&mut self, fd: std::os::fd::RawFd) -> bool {
        while self.writable() {
            let sent = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let k = self.gather(&mut iov);
                socket::send(fd, &iov[..k])
            };
            match sent {
                Ok(n) if n > 0 => self.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.blocked = true;
                    return false;
                }
                _ => return false,
            }
        }
        true
    }
}
