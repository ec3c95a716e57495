//! Per-publisher sequence tracking at one subscriber: loss, late
//! (out-of-order) arrivals and duplicates. The in-order case is one compare.

/// Gaps remembered per publisher; older gaps are forgotten (still counted as
/// missing, but a late arrival inside one then counts as a duplicate).
const MAX_GAPS: usize = 4096;

/// What one subscriber saw of one publisher.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    next: u64,
    /// Missing ranges `[start, end)`, ascending.
    gaps: Vec<(u64, u64)>,
    missing: u64,
    /// Frames that arrived after a later one (filled a gap).
    pub late: u64,
    /// Frames seen before (or older than every remembered gap).
    pub dups: u64,
    /// Frames seen in all.
    pub received: u64,
}

impl SeqTracker {
    /// Records the arrival of `seq`.
    #[inline]
    pub fn on_seq(&mut self, seq: u64) {
        self.received += 1;
        if seq == self.next {
            self.next += 1;
        } else {
            self.out_of_line(seq);
        }
    }

    #[cold]
    fn out_of_line(&mut self, seq: u64) {
        if seq > self.next {
            self.missing += seq - self.next;
            if self.gaps.len() == MAX_GAPS {
                self.gaps.remove(0);
            }
            self.gaps.push((self.next, seq));
            self.next = seq + 1;
            return;
        }
        let Some(i) = self.gaps.iter().position(|&(a, b)| a <= seq && seq < b) else {
            self.dups += 1;
            return;
        };
        self.missing -= 1;
        self.late += 1;
        let (a, b) = self.gaps[i];
        match (seq == a, seq + 1 == b) {
            (true, true) => {
                self.gaps.remove(i);
            }
            (true, false) => self.gaps[i].0 = a + 1,
            (false, true) => self.gaps[i].1 = seq,
            (false, false) => {
                self.gaps[i].1 = seq;
                self.gaps.insert(i + 1, (seq + 1, b));
            }
        }
    }

    /// One past the highest sequence number seen.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Frames never seen, given that the publisher sent `sent` frames.
    pub fn lost(&self, sent: u64) -> u64 {
        self.missing + sent.saturating_sub(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(seqs: &[u64]) -> SeqTracker {
        let mut t = SeqTracker::default();
        for &s in seqs {
            t.on_seq(s);
        }
        t
    }

    #[test]
    fn in_order_is_clean() {
        let t = track(&[0, 1, 2, 3]);
        assert_eq!((t.lost(4), t.late, t.dups, t.next()), (0, 0, 0, 4));
        assert_eq!(t.lost(6), 2, "tail loss counts");
    }

    #[test]
    fn gap_is_loss() {
        let t = track(&[0, 1, 3, 4]);
        assert_eq!((t.lost(5), t.late, t.dups), (1, 0, 0));
    }

    #[test]
    fn swap_is_late_not_loss() {
        let t = track(&[0, 2, 1, 3]);
        assert_eq!((t.lost(4), t.late, t.dups), (0, 1, 0));
        let t = track(&[0, 5, 2, 1, 4, 3]);
        assert_eq!((t.lost(6), t.late, t.dups), (0, 4, 0));
    }

    #[test]
    fn repeat_is_duplicate() {
        let t = track(&[0, 1, 1, 2]);
        assert_eq!((t.lost(3), t.late, t.dups), (0, 0, 1));
        let t = track(&[0, 2, 1, 1]);
        assert_eq!((t.lost(3), t.late, t.dups), (0, 1, 1));
    }
}
