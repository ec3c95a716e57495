//! A channel's history: its most recent frames, bounded in frames and in
//! bytes, oldest evicted first (PROTOCOL.md §5–6).
//!
//! Frames carry consecutive sequence numbers from the channel's sequencer;
//! the history keeps the number of its newest frame, so the oldest one's is
//! known too (peer resync aligns histories by these numbers). Pure data.

use std::collections::VecDeque;

use bytes::Bytes;

/// Frames of at most this many bytes are stored inline, copied back to back
/// into the history's own buffer; larger ones are kept as shared references.
pub const INLINE_MAX: usize = 1024;

/// A joiner's copy of the inline frames comes in pieces of whole frames of
/// at most this many bytes ([`History::replay`]).
pub const REPLAY_PIECE: usize = 64 * 1024;

/// `lens` entry of a frame kept in `shared`.
const SHARED: u32 = u32::MAX;

/// The most recent frames of a channel, bounded in frames and in bytes.
///
/// Small frames (the usual chat message, every join header) live back to
/// back in one buffer: a frame costs its bytes and a 4-byte length instead
/// of an allocation, a reference count and a 32-byte handle, and a joiner's
/// history is copied out in one piece, or a few ([`History::replay`]).
#[derive(Debug, Default)]
pub struct History {
    /// Each frame's length, oldest first; [`SHARED`] for one in `shared`.
    lens: VecDeque<u32>,
    /// The inline frames, oldest first, in `buf[head..]`.
    buf: Vec<u8>,
    /// Bytes at the front of `buf` that belong to evicted frames.
    head: usize,
    /// The frames over [`INLINE_MAX`], oldest first.
    shared: VecDeque<Bytes>,
    bytes: usize,
    /// Sequence number of the newest frame ever pushed (0: none yet).
    last_seq: u64,
}

impl History {
    /// Appends `frame`, evicting the oldest frames beyond either bound.
    pub fn push(&mut self, frame: Bytes, max_frames: usize, max_bytes: usize) {
        self.last_seq += 1;
        self.append(frame);
        while self.lens.len() > max_frames || self.bytes > max_bytes {
            if !self.pop_front() {
                break;
            }
        }
    }

    fn append(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        if frame.len() <= INLINE_MAX {
            self.make_room(frame.len());
            self.buf.extend_from_slice(&frame);
            self.lens.push_back(frame.len() as u32);
        } else {
            self.shared.push_back(frame);
            self.lens.push_back(SHARED);
        }
    }

    /// Before `buf` would grow by `n`: moves the live bytes to its front
    /// instead, when the evicted ones are at least half as many (so each
    /// evicted byte pays for at most two moved).
    fn make_room(&mut self, n: usize) {
        if self.head > 0 && self.buf.len() + n > self.buf.capacity() {
            let live = self.buf.len() - self.head;
            if self.head >= live / 2 {
                self.buf.drain(..self.head);
                self.head = 0;
            }
        }
    }

    /// Evicts the oldest frame; false when there is none.
    fn pop_front(&mut self) -> bool {
        match self.lens.pop_front() {
            None => false,
            Some(SHARED) => {
                let f = self
                    .shared
                    .pop_front()
                    .expect("a shared frame per SHARED length");
                self.bytes -= f.len();
                true
            }
            Some(n) => {
                self.head += n as usize;
                self.bytes -= n as usize;
                if self.head == self.buf.len() {
                    self.buf.clear();
                    self.head = 0;
                }
                true
            }
        }
    }

    /// Puts `older` (oldest first) before the stored frames, as far as the
    /// bounds allow (the oldest of them are left out first). For a peer's
    /// history that could not be aligned with ours (PROTOCOL.md §7); the
    /// sequence numbers of stored frames do not change.
    pub fn prepend(&mut self, older: Vec<Bytes>, max_frames: usize, max_bytes: usize) -> usize {
        let (mut frames, mut bytes) = (self.lens.len(), self.bytes);
        let keep = older
            .iter()
            .rev()
            .take_while(|f| {
                let fits = frames < max_frames && bytes + f.len() <= max_bytes;
                if fits {
                    frames += 1;
                    bytes += f.len();
                }
                fits
            })
            .count();
        if keep == 0 {
            return 0;
        }
        // Rare (a peer's resync): rebuilt, the kept older frames first.
        let mine = std::mem::take(self);
        self.last_seq = mine.last_seq;
        let skip = older.len() - keep;
        for f in older.into_iter().skip(skip) {
            self.append(f);
        }
        for f in mine.snapshot() {
            self.append(f);
        }
        keep
    }

    /// Drops the oldest frames until at most `max_bytes` remain; returns
    /// the bytes dropped. Sequence numbers stay as they were.
    pub fn trim_to(&mut self, max_bytes: usize) -> usize {
        let before = self.bytes;
        while self.bytes > max_bytes {
            if !self.pop_front() {
                break;
            }
        }
        // Under a memory budget: give back what the buffers no longer hold.
        self.buf.drain(..self.head);
        self.head = 0;
        self.buf.shrink_to_fit();
        if self.lens.is_empty() {
            self.lens = VecDeque::new();
            self.shared = VecDeque::new();
        }
        before - self.bytes
    }

    /// Whether a byte-identical frame is already stored (`--dedup`).
    pub fn contains(&self, frame: &[u8]) -> bool {
        if frame.len() > INLINE_MAX {
            return self.shared.iter().any(|f| f[..] == *frame);
        }
        // Inline frames only, by offset: the bytes compared only where the
        // lengths agree.
        let (buf, want) = (&self.buf[self.head..], frame.len() as u32);
        let mut at = 0;
        for &n in self.lens.iter().filter(|&&n| n != SHARED) {
            if n == want && buf[at..at + n as usize] == *frame {
                return true;
            }
            at += n as usize;
        }
        false
    }

    /// The frames, oldest first.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            lens: self.lens.iter(),
            buf: &self.buf[self.head..],
            shared: self.shared.iter(),
        }
    }

    /// The frames, oldest first, one `Bytes` each (the inline ones slices
    /// of one copy): for links, which forward frame by frame.
    pub fn snapshot(&self) -> Vec<Bytes> {
        let inline = Bytes::copy_from_slice(&self.buf[self.head..]);
        let (mut at, mut shared) = (0, self.shared.iter());
        self.lens
            .iter()
            .map(|&n| {
                if n == SHARED {
                    shared
                        .next()
                        .expect("a shared frame per SHARED length")
                        .clone()
                } else {
                    at += n as usize;
                    inline.slice(at - n as usize..at)
                }
            })
            .collect()
    }

    /// The frames, oldest first, as a joiner's socket takes them: the
    /// inline frames copied, in pieces of whole frames of at most
    /// [`REPLAY_PIECE`] bytes, each its own allocation (what the socket
    /// took is freed while the rest waits, and a session closed with its
    /// queue dropped keeps at most the piece it was writing), the large
    /// frames shared. Byte for byte the stream of [`History::snapshot`];
    /// usually one buffer. The copy is the joiner's own: at most `--limit`
    /// × [`INLINE_MAX`] bytes (and `--history-bytes`).
    pub fn replay(&self) -> Vec<Bytes> {
        let inline = &self.buf[self.head..];
        let mut out = Vec::new();
        let (mut from, mut at, mut shared) = (0, 0, self.shared.iter());
        for &n in &self.lens {
            if n == SHARED {
                if at > from {
                    out.push(Bytes::copy_from_slice(&inline[from..at]));
                    from = at;
                }
                let f = shared.next().expect("a shared frame per SHARED length");
                out.push(f.clone());
                continue;
            }
            if at + n as usize - from > REPLAY_PIECE {
                out.push(Bytes::copy_from_slice(&inline[from..at]));
                from = at;
            }
            at += n as usize;
        }
        if at > from {
            out.push(Bytes::copy_from_slice(&inline[from..at]));
        }
        out
    }

    /// Sequence number of the newest frame pushed, 0 before the first.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn len(&self) -> usize {
        self.lens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The frames of a [`History`], oldest first, as byte slices.
#[derive(Clone)]
pub struct Iter<'a> {
    lens: std::collections::vec_deque::Iter<'a, u32>,
    buf: &'a [u8],
    shared: std::collections::vec_deque::Iter<'a, Bytes>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let n = *self.lens.next()?;
        if n == SHARED {
            return self.shared.next().map(|f| &f[..]);
        }
        let (f, rest) = self.buf.split_at(n as usize);
        self.buf = rest;
        Some(f)
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
        let big = Bytes::from(vec![b'B'; INLINE_MAX + 1]);
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
    fn replay_is_one_copy_however_many_frames() {
        let mut h = History::default();
        for i in 0..500u32 {
            h.push(Bytes::from(i.to_string()), 200, usize::MAX);
        }
        let r = h.replay();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0], h.snapshot().concat());
    }

    #[test]
    fn a_large_replay_comes_in_pieces_of_whole_frames() {
        let mut h = History::default();
        // Frames that do not divide a piece: pieces end between frames.
        let (len, n) = (1000, 2 * REPLAY_PIECE / 1000 + 5);
        for i in 0..n {
            h.push(Bytes::from(vec![i as u8; len]), n, usize::MAX);
        }
        let r = h.replay();
        let per_piece = REPLAY_PIECE / len;
        let sizes: Vec<usize> = r.iter().map(|p| p.len()).collect();
        assert_eq!(
            sizes,
            [per_piece * len, per_piece * len, (n - 2 * per_piece) * len]
        );
        assert_eq!(r.concat(), h.snapshot().concat());
        // Each its own allocation (not slices of one): a written piece is
        // freed alone.
        assert!(r.iter().all(|p| p.is_unique()));
    }

    /// A tiny deterministic generator (xorshift): the same cases every run.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// Every operation against a plain list of frames with the same bounds:
    /// the same frames, bytes, lookups and replay after each step, and the
    /// inline buffer never more than a few times the most it held.
    #[test]
    fn behaves_as_a_list_of_frames() {
        let (max_frames, max_bytes) = (50, 20_000);
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let mut h = History::default();
        let mut model: VecDeque<Bytes> = VecDeque::new();
        let mut peak = 0;
        for step in 0..20_000u32 {
            let r = rng(&mut seed);
            match r % 100 {
                0 => {
                    let keep = (rng(&mut seed) % 15_000) as usize;
                    let dropped = h.trim_to(keep);
                    let before: usize = model.iter().map(|f| f.len()).sum();
                    while model.iter().map(|f| f.len()).sum::<usize>() > keep {
                        model.pop_front();
                    }
                    let after: usize = model.iter().map(|f| f.len()).sum();
                    assert_eq!(dropped, before - after);
                }
                1 => {
                    let older: Vec<Bytes> = (0..rng(&mut seed) % 8)
                        .map(|i| Bytes::from(format!("older-{step}-{i}")))
                        .collect();
                    let added = h.prepend(older.clone(), max_frames, max_bytes);
                    let mut bytes: usize = model.iter().map(|f| f.len()).sum();
                    let mut n = 0;
                    for f in older.into_iter().rev() {
                        if model.len() >= max_frames || bytes + f.len() > max_bytes {
                            break;
                        }
                        bytes += f.len();
                        model.push_front(f);
                        n += 1;
                    }
                    assert_eq!(added, n);
                }
                _ => {
                    // Mostly small frames, some over the inline bound.
                    let len = match r % 10 {
                        0 => INLINE_MAX + (rng(&mut seed) % 3000) as usize,
                        1 => INLINE_MAX,
                        _ => (rng(&mut seed) % 200) as usize,
                    };
                    let f = Bytes::from(vec![(step % 251) as u8; len]);
                    h.push(f.clone(), max_frames, max_bytes);
                    model.push_back(f);
                    while model.len() > max_frames
                        || model.iter().map(|f| f.len()).sum::<usize>() > max_bytes
                    {
                        model.pop_front();
                    }
                }
            }
            let want: Vec<Bytes> = model.iter().cloned().collect();
            assert_eq!(h.snapshot(), want, "step {step}");
            assert_eq!(h.len(), want.len());
            assert_eq!(h.bytes(), want.iter().map(|f| f.len()).sum::<usize>());
            assert!(h.iter().eq(want.iter().map(|f| &f[..])));
            let replay = h.replay();
            assert_eq!(replay.concat(), want.concat());
            // Pieces end between frames (a dropped queue keeps whole frames).
            let mut ends = std::collections::HashSet::new();
            let mut at = 0;
            for f in &want {
                at += f.len();
                ends.insert(at);
            }
            let mut at = 0;
            for p in &replay {
                at += p.len();
                assert!(
                    ends.contains(&at),
                    "step {step}: a piece ends inside a frame"
                );
            }
            if let Some(f) = want.get(want.len() / 2) {
                assert!(h.contains(f));
            }
            // Never more than a few times the most it held (trim_to gives back).
            peak = peak.max(h.buf.len() - h.head);
            assert!(h.buf.capacity() <= 4 * peak.max(INLINE_MAX), "step {step}");
            if r.is_multiple_of(100) {
                peak = h.buf.len();
                assert_eq!(h.buf.capacity(), peak, "trimmed to fit");
            }
        }
    }

    #[test]
    fn dedup_lookup() {
        let mut h = History::default();
        h.push(Bytes::from_static(b"abc"), 10, 100);
        assert!(h.contains(b"abc"));
        assert!(!h.contains(b"abd"));
    }
}
