//! A channel's history: its most recent frames, bounded in frames and in
//! bytes, oldest evicted first (PROTOCOL.md §5–6).
//!
//! Frames carry consecutive sequence numbers from the channel's sequencer;
//! the ring keeps the number of its newest frame, so the oldest one's is
//! known too (peer resync aligns histories by these numbers). Pure data.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Frames of at most this many bytes are copied into a joiner's replay
/// buffer ([`History::replay`]); larger ones are shared.
pub const COPY_FRAME_MAX: usize = 1024;

/// At most this many bytes of one replay are copies: a joiner that does not
/// read holds no more private memory than about a socket buffer's worth.
pub const COPY_BUDGET: usize = 64 * 1024;

/// The most recent frames of a channel, bounded in frames and in bytes.
#[derive(Debug, Default)]
pub struct History {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// Sequence number of the newest frame ever pushed (0: none yet).
    last_seq: u64,
}

impl History {
    /// Appends `frame`, evicting the oldest frames beyond either bound.
    pub fn push(&mut self, frame: Bytes, max_frames: usize, max_bytes: usize) {
        self.last_seq += 1;
        self.bytes += frame.len();
        self.frames.push_back(frame);
        while self.frames.len() > max_frames || self.bytes > max_bytes {
            match self.frames.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// Puts `older` (oldest first) before the stored frames, as far as the
    /// bounds allow (the oldest of them are left out first). For a peer's
    /// history that could not be aligned with ours (PROTOCOL.md §7); the
    /// sequence numbers of stored frames do not change.
    pub fn prepend(&mut self, older: Vec<Bytes>, max_frames: usize, max_bytes: usize) -> usize {
        let mut added = 0;
        for f in older.into_iter().rev() {
            if self.frames.len() >= max_frames || self.bytes + f.len() > max_bytes {
                break;
            }
            self.bytes += f.len();
            self.frames.push_front(f);
            added += 1;
        }
        added
    }

    /// Drops the oldest frames until at most `max_bytes` remain; returns
    /// the bytes dropped. Sequence numbers stay as they were.
    pub fn trim_to(&mut self, max_bytes: usize) -> usize {
        let before = self.bytes;
        while self.bytes > max_bytes {
            match self.frames.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
        if self.frames.is_empty() {
            self.frames = VecDeque::new();
        }
        before - self.bytes
    }

    /// Whether a byte-identical frame is already stored (`--dedup`).
    pub fn contains(&self, frame: &[u8]) -> bool {
        self.frames.iter().any(|f| f[..] == *frame)
    }

    /// The frames, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> + Clone {
        self.frames.iter()
    }

    /// The frames, oldest first, as cheap clones.
    pub fn snapshot(&self) -> Vec<Bytes> {
        self.frames.iter().cloned().collect()
    }

    /// The frames, oldest first, as a joiner's socket takes them: runs of
    /// small frames ([`COPY_FRAME_MAX`]) copied into one buffer, up to
    /// [`COPY_BUDGET`] bytes in all, every other frame shared. Byte for
    /// byte the same stream as [`History::snapshot`], in a few buffers
    /// instead of one reference count per frame (taken here, dropped when
    /// written) and one write vector per frame.
    pub fn replay(&self) -> Vec<Bytes> {
        let mut budget = COPY_BUDGET;
        let copied = |f: &Bytes, budget: &mut usize| {
            let take = f.len() <= COPY_FRAME_MAX && f.len() <= *budget;
            if take {
                *budget -= f.len();
            }
            take
        };
        // One allocation for every copied run: sized first, then split.
        let total = {
            let mut b = budget;
            self.frames
                .iter()
                .filter(|f| copied(f, &mut b))
                .map(|f| f.len())
                .sum()
        };
        let mut run = BytesMut::with_capacity(total);
        let mut out = Vec::new();
        for f in &self.frames {
            if copied(f, &mut budget) {
                run.extend_from_slice(f);
                continue;
            }
            if !run.is_empty() {
                out.push(run.split().freeze());
            }
            out.push(f.clone());
        }
        if !run.is_empty() {
            out.push(run.freeze());
        }
        out
    }

    /// Sequence number of the newest frame pushed, 0 before the first.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_frames_and_bytes() {
        let mut h = History::default();
        for i in 0..10u8 {
            h.push(Bytes::from(vec![i; 10]), 4, 1000);
        }
        assert_eq!(h.len(), 4);
        assert_eq!(h.snapshot()[0][0], 6);
        assert_eq!(h.last_seq(), 10);
        for _ in 0..3 {
            h.push(Bytes::from(vec![9; 400]), 100, 1000);
        }
        assert!(h.bytes() <= 1000);
        assert_eq!(h.snapshot().last().unwrap().len(), 400);
        h.push(Bytes::from(vec![1; 2000]), 100, 1000);
        assert!(h.is_empty(), "a frame over the byte bound is not kept");
        assert_eq!(h.bytes(), 0);
        assert_eq!(h.last_seq(), 14, "evicted frames still took a number");
    }

    #[test]
    fn prepend_fills_only_what_the_bounds_leave() {
        let mut h = History::default();
        h.push(Bytes::from_static(b"new"), 3, 100);
        let older = ["a", "b", "c"].map(|s| Bytes::copy_from_slice(s.as_bytes()));
        assert_eq!(h.prepend(older.to_vec(), 3, 100), 2);
        assert_eq!(
            h.snapshot(),
            ["b", "c", "new"].map(|s| Bytes::from_static(s.as_bytes()))
        );
        assert_eq!((h.bytes(), h.last_seq()), (5, 1));
    }

    #[test]
    fn replay_copies_runs_of_small_frames_and_shares_large_ones() {
        let mut h = History::default();
        let big = Bytes::from(vec![b'B'; COPY_FRAME_MAX + 1]);
        for f in ["a", "bc", "", "d"] {
            h.push(Bytes::copy_from_slice(f.as_bytes()), 100, usize::MAX);
        }
        h.push(big.clone(), 100, usize::MAX);
        h.push(Bytes::from_static(b"ef"), 100, usize::MAX);
        let r = h.replay();
        assert_eq!(r, [Bytes::from("abcd"), big.clone(), Bytes::from("ef")]);
        assert_eq!(r[1].as_ptr(), big.as_ptr(), "a large frame is shared");
        assert_eq!(r.concat(), h.snapshot().concat());
        assert!(History::default().replay().is_empty());
    }

    #[test]
    fn replay_copies_at_most_its_budget() {
        let mut h = History::default();
        let frame = Bytes::from(vec![7u8; COPY_FRAME_MAX]);
        let n = COPY_BUDGET / COPY_FRAME_MAX + 3;
        for _ in 0..n {
            h.push(frame.clone(), n, usize::MAX);
        }
        let r = h.replay();
        assert_eq!(r[0].len(), COPY_BUDGET, "one copied run, the budget's size");
        assert_eq!(r.len(), 4, "the frames past the budget are shared");
        assert!(r[1..].iter().all(|f| f.as_ptr() == frame.as_ptr()));
        assert_eq!(r.concat(), h.snapshot().concat());
    }

    #[test]
    fn dedup_lookup() {
        let mut h = History::default();
        h.push(Bytes::from_static(b"abc"), 10, 100);
        assert!(h.contains(b"abc"));
        assert!(!h.contains(b"abd"));
    }
}
