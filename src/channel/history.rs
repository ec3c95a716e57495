//! A channel's history: its most recent frames, bounded in frames and in
//! bytes, oldest evicted first (PROTOCOL.md §5–6).
//!
//! Frames carry consecutive sequence numbers from the channel's sequencer;
//! the history keeps the number of its newest frame, so the oldest one's is
//! known too (peer resync aligns histories by these numbers). Pure data.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;

/// Frames of at most this many bytes are stored inline, copied back to back
/// into the history's own buffers; larger ones are kept as shared references.
pub const INLINE_MAX: usize = 1024;

/// The inline frames are kept in pieces of whole frames of at most this
/// many bytes: the newest piece open, the older ones sealed and shared with
/// the joiners replaying them ([`History::replay`]).
pub const REPLAY_PIECE: usize = 64 * 1024;

/// `lens` entry of a frame kept in `shared`.
const SHARED: u32 = u32::MAX;

/// The most recent frames of a channel, bounded in frames and in bytes.
///
/// Small frames (the usual chat message, every join header) live back to
/// back in pieces of up to [`REPLAY_PIECE`] bytes: a frame costs its bytes
/// and a 4-byte length instead of an allocation, a reference count and a
/// 32-byte handle. A full piece is sealed into a [`Bytes`]: a joiner's
/// history shares the sealed pieces and copies only the open one
/// ([`History::replay`]), so joining a long history costs the joiner at
/// most one piece of its own. A channel whose history fits in one piece
/// (the usual case) has only the open one, compacted in place.
#[derive(Debug, Default)]
pub struct History {
    /// Each frame's length, oldest first; [`SHARED`] for one in `shared`.
    lens: VecDeque<u32>,
    /// Full pieces of inline frames, oldest first.
    sealed: VecDeque<Bytes>,
    /// The open piece: the inline frames after the sealed ones.
    open: Vec<u8>,
    /// Bytes at the front of the oldest piece (`sealed`'s first, else
    /// `open`) that belong to evicted frames.
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
        if frame.len() <= INLINE_MAX {
            self.append_inline(&frame);
        } else {
            self.bytes += frame.len();
            self.shared.push_back(frame);
            self.lens.push_back(SHARED);
        }
    }

    fn append_inline(&mut self, frame: &[u8]) {
        self.bytes += frame.len();
        self.make_room(frame.len());
        self.open.extend_from_slice(frame);
        self.lens.push_back(frame.len() as u32);
    }

    /// Before `n` more bytes go into the open piece: when it is full,
    /// moves its live bytes to its front if it is the oldest piece and the
    /// evicted ones are at least half as many (so each evicted byte pays
    /// for at most two moved); seals it if it still cannot take them within
    /// [`REPLAY_PIECE`]; grows it by doubling, never past that.
    fn make_room(&mut self, n: usize) {
        let open = &mut self.open;
        if open.len() + n <= open.capacity() {
            return;
        }
        if self.sealed.is_empty() && self.head > 0 && self.head >= (open.len() - self.head) / 2 {
            open.drain(..self.head);
            self.head = 0;
        }
        if open.len() + n > REPLAY_PIECE {
            let full = std::mem::take(open);
            self.sealed.push_back(Bytes::from(full));
        }
        let open = &mut self.open;
        if open.len() + n > open.capacity() {
            let want = (open.capacity() * 2).min(REPLAY_PIECE).max(open.len() + n);
            open.reserve_exact(want - open.len());
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
                // The oldest piece all evicted: dropped (sealed) or emptied.
                let oldest = self.sealed.front().map_or(self.open.len(), Bytes::len);
                if self.head == oldest {
                    if self.sealed.pop_front().is_none() {
                        self.open.clear();
                    }
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
        // Frames over INLINE_MAX are exactly the shared ones.
        let mut shared = mine.shared.iter();
        for f in mine.iter() {
            match f.len() {
                0..=INLINE_MAX => self.append_inline(f),
                _ => self.append(next_shared(&mut shared).clone()),
            }
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
        // Under a memory budget: give back what the pieces no longer hold.
        match self.sealed.front_mut() {
            Some(p) if self.head > 0 => *p = Bytes::copy_from_slice(&p[self.head..]),
            Some(_) => {}
            None => drop(self.open.drain(..self.head)),
        }
        self.head = 0;
        self.open.shrink_to_fit();
        if self.lens.is_empty() {
            self.lens = VecDeque::new();
            self.sealed = VecDeque::new();
            self.shared = VecDeque::new();
        }
        before - self.bytes
    }

    /// Whether a byte-identical frame is already stored (`--dedup`).
    pub fn contains(&self, frame: &[u8]) -> bool {
        if frame.len() > INLINE_MAX {
            return self.shared.iter().any(|f| f[..] == *frame);
        }
        // The bytes compared only where the lengths agree.
        self.iter().any(|f| f.len() == frame.len() && f == frame)
    }

    /// The frames, oldest first.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            lens: self.lens.iter(),
            shared: self.shared.iter(),
            inline: Cursor::new(self),
        }
    }

    /// The frames, oldest first, one `Bytes` each (those of sealed pieces
    /// shared, those of the open one slices of one copy): for links, which
    /// forward frame by frame.
    pub fn snapshot(&self) -> Vec<Bytes> {
        let (mut inline, mut shared) = (Cursor::new(self), self.shared.iter());
        let mut open = None;
        self.lens
            .iter()
            .map(|&n| {
                if n == SHARED {
                    return next_shared(&mut shared).clone();
                }
                let at = inline.next(n as usize);
                match self.sealed_at(inline.piece) {
                    Some((p, from)) => p.slice(from + at.start..from + at.end),
                    None => open
                        .get_or_insert_with(|| Bytes::copy_from_slice(inline.bytes))
                        .slice(at),
                }
            })
            .collect()
    }

    /// The frames, oldest first, as a joiner's socket takes them: runs of
    /// inline frames (each within one piece, so of at most
    /// [`REPLAY_PIECE`] bytes and ending between frames), the large frames
    /// between them. Runs of sealed pieces are shared with the history;
    /// those of the open piece are copied, each its own allocation. Byte
    /// for byte the stream of [`History::snapshot`]. What the joiner holds
    /// alone is at most one piece, plus whatever the history evicts while
    /// the joiner has not written it yet.
    pub fn replay(&self) -> Vec<Bytes> {
        let (mut inline, mut shared) = (Cursor::new(self), self.shared.iter());
        let mut out = Vec::new();
        // The run being gathered: its piece and where it starts in it.
        let (mut piece, mut from) = (0, 0);
        for &n in &self.lens {
            if n == SHARED {
                self.flush_run(piece, from..inline.at, &mut out);
                from = inline.at;
                out.push(next_shared(&mut shared).clone());
                continue;
            }
            let end = inline.at;
            let at = inline.next(n as usize);
            if inline.piece != piece {
                self.flush_run(piece, from..end, &mut out);
                (piece, from) = (inline.piece, at.start);
            }
        }
        self.flush_run(piece, from..inline.at, &mut out);
        out
    }

    /// Appends `run`, inline frames of piece `piece`, to a replay.
    fn flush_run(&self, piece: usize, run: Range<usize>, out: &mut Vec<Bytes>) {
        if run.is_empty() {
            return;
        }
        out.push(match self.sealed_at(piece) {
            Some((p, from)) => p.slice(from + run.start..from + run.end),
            None => Bytes::copy_from_slice(&self.piece(piece)[run]),
        });
    }

    /// The live bytes of piece `i`: the sealed ones in order, then the
    /// open one (the oldest starting at `head`).
    fn piece(&self, i: usize) -> &[u8] {
        match self.sealed_at(i) {
            Some((p, from)) => &p[from..],
            None => {
                debug_assert_eq!(i, self.sealed.len(), "no piece past the open one");
                &self.open[if i == 0 { self.head } else { 0 }..]
            }
        }
    }

    /// Sealed piece `i` and where its live bytes start; `None` for the
    /// open piece.
    fn sealed_at(&self, i: usize) -> Option<(&Bytes, usize)> {
        self.sealed
            .get(i)
            .map(|p| (p, if i == 0 { self.head } else { 0 }))
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

/// The next of the frames over [`INLINE_MAX`], whose place a [`SHARED`]
/// length marks.
fn next_shared<'a>(shared: &mut std::collections::vec_deque::Iter<'a, Bytes>) -> &'a Bytes {
    shared.next().expect("a shared frame per SHARED length")
}

/// Where the inline frames of a [`History`] are, oldest first: frames never
/// span two pieces, so a frame that does not fit in what is left of a piece
/// starts the next.
#[derive(Clone)]
struct Cursor<'a> {
    history: &'a History,
    /// The piece of the last frame, and its live bytes.
    piece: usize,
    bytes: &'a [u8],
    /// Where the last frame ended in it.
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(history: &'a History) -> Cursor<'a> {
        Cursor {
            history,
            piece: 0,
            bytes: history.piece(0),
            at: 0,
        }
    }

    /// The next inline frame, of `n` bytes: where it is in `bytes`.
    fn next(&mut self, n: usize) -> Range<usize> {
        while self.at + n > self.bytes.len() {
            self.piece += 1;
            self.bytes = self.history.piece(self.piece);
            self.at = 0;
        }
        self.at += n;
        self.at - n..self.at
    }
}

/// The frames of a [`History`], oldest first, as byte slices.
#[derive(Clone)]
pub struct Iter<'a> {
    lens: std::collections::vec_deque::Iter<'a, u32>,
    shared: std::collections::vec_deque::Iter<'a, Bytes>,
    inline: Cursor<'a>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let n = *self.lens.next()?;
        if n == SHARED {
            return self.shared.next().map(|f| &f[..]);
        }
        let at = self.inline.next(n as usize);
        Some(&self.inline.bytes[at])
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
    fn a_large_replay_shares_the_sealed_pieces_and_copies_the_open_one() {
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
        // The sealed pieces are the history's own memory, the open one a
        // copy of the joiner's.
        assert!(r[0].as_ptr() == h.sealed[0].as_ptr() && !r[0].is_unique());
        assert!(r[2].is_unique());
        // Evicted from the history, what the joiner holds is its alone.
        h.trim_to(0);
        assert!(r.iter().all(|p| p.is_unique()));
    }

    #[test]
    fn evicting_frames_frees_whole_pieces_only_past_the_first() {
        let mut h = History::default();
        let n = 3 * REPLAY_PIECE / 1000;
        for i in 0..n {
            h.push(Bytes::from(vec![i as u8; 1000]), n, usize::MAX);
        }
        assert_eq!(h.sealed.len(), 3);
        // One frame more than a piece holds, evicted: the first piece goes.
        for i in 0..REPLAY_PIECE / 1000 + 1 {
            h.push(Bytes::from(vec![i as u8; 1]), n, usize::MAX);
        }
        assert_eq!((h.sealed.len(), h.head), (2, 1000));
        let r = h.replay();
        assert_eq!(r[0].len(), h.sealed[0].len() - 1000);
        assert_eq!(r.concat(), h.snapshot().concat());
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
    /// open piece never more than a few times the most it held, nor over a
    /// piece.
    #[test]
    fn behaves_as_a_list_of_frames() {
        behaves_as_a_list_of_frames_within(50, 20_000, 20_000, 15_000);
    }

    /// The same with room for several pieces.
    #[test]
    fn behaves_as_a_list_of_frames_over_several_pieces() {
        behaves_as_a_list_of_frames_within(2_000, 300_000, 5_000, 250_000);
    }

    fn behaves_as_a_list_of_frames_within(
        max_frames: usize,
        max_bytes: usize,
        steps: u32,
        trims_to: u64,
    ) {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let mut h = History::default();
        let mut model: VecDeque<Bytes> = VecDeque::new();
        let mut peak = 0;
        for step in 0..steps {
            let r = rng(&mut seed);
            match r % 100 {
                0 => {
                    let keep = (rng(&mut seed) % trims_to) as usize;
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
            // Never more than a few times the most it held (trim_to gives
            // back), never more than a piece.
            let open_live = h.open.len() - if h.sealed.is_empty() { h.head } else { 0 };
            peak = peak.max(open_live);
            assert!(h.open.capacity() <= REPLAY_PIECE, "step {step}");
            if h.sealed.is_empty() {
                assert!(h.open.capacity() <= 4 * peak.max(INLINE_MAX), "step {step}");
            }
            if r.is_multiple_of(100) {
                peak = h.open.len();
                assert_eq!(h.open.capacity(), peak, "trimmed to fit");
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
