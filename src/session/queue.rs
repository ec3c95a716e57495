//! A session's outbound frames: the history being replayed to a joiner and
//! the live frames queued behind it, gathered into vectored writes and
//! dropped as the socket takes them. Owns no socket: writes go through
//! [`socket::send`] on the descriptor the session recorded.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

use super::{Inner, MAX_IOV, NO_SOCKET, socket};

/// History being replayed to a joiner. Boxed and present only while frames
/// remain, so an idle session pays 8 bytes for it rather than a whole queue.
#[derive(Default)]
#[allow(clippy::box_collection)] // the box is the point: 8 bytes when idle instead of 32
pub(super) struct Replay(Option<Box<VecDeque<Bytes>>>);

impl Replay {
    pub(super) fn push_back(&mut self, frame: Bytes) {
        self.0.get_or_insert_with(Default::default).push_back(frame);
    }

    pub(super) fn set(&mut self, frames: Vec<Bytes>) {
        self.0 = (!frames.is_empty()).then(|| Box::new(frames.into()));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(super) fn front(&self) -> Option<&Bytes> {
        self.0.as_ref().and_then(|q| q.front())
    }

    pub(super) fn pop_front(&mut self) -> Option<Bytes> {
        let q = self.0.as_mut()?;
        let f = q.pop_front();
        if q.is_empty() {
            self.0 = None;
        }
        f
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.0.iter().flat_map(|q| q.iter())
    }

    pub(super) fn take(&mut self) -> Vec<Bytes> {
        self.0.take().map(|q| Vec::from(*q)).unwrap_or_default()
    }

    pub(super) fn clear(&mut self) {
        self.0 = None;
    }
}

impl Inner {
    /// Whether something may be written now.
    pub(super) fn writable(&self) -> bool {
        !self.replay.is_empty() || (!self.held && !self.out.is_empty())
    }

    /// The frames to write next, history first; live ones unless held.
    pub(super) fn to_write(&self) -> impl Iterator<Item = &Bytes> {
        let live = if self.held {
            None
        } else {
            Some(self.out.iter())
        };
        self.replay.iter().chain(live.into_iter().flatten())
    }

    /// Fills `iov` with the frames to write next; returns how many.
    pub(super) fn gather<'a>(&'a self, iov: &mut [IoSlice<'a>; MAX_IOV]) -> usize {
        let mut k = 0;
        for f in self.to_write().take(MAX_IOV) {
            iov[k] = IoSlice::new(if k == 0 { &f[self.written..] } else { &f[..] });
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

    /// Drops `n` written bytes from the front of the replay and live queues.
    pub(super) fn advance(&mut self, n: usize) {
        let mut n = n + self.written;
        self.written = 0;
        while n > 0 {
            let (len, from_out) = if let Some(f) = self.replay.front() {
                (f.len(), false)
            } else if let Some(f) = self.out.front() {
                (f.len(), true)
            } else {
                break;
            };
            if n < len {
                self.written = n;
                break;
            }
            n -= len;
            if from_out {
                self.out.pop_front();
                self.out_bytes = self.out_bytes.saturating_sub(len);
            } else {
                self.replay.pop_front();
            }
        }
        // An idle session keeps no queue memory: drained queues give theirs back.
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = VecDeque::new();
        }
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
