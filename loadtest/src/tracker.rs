//! Per-publisher sequence tracking at one subscriber: loss, late
//! (out-of-order) arrivals and duplicates. The in-order case is one compare.
//! [`ChannelView`] is a subscriber's hot path: classify a message, track it,
//! and fold it into the subscriber's [`OrderLog`].

use crate::frame::{OP_BINARY, OP_TEXT};
use crate::order::{self, OrderLog};
use crate::payload;

/// Uid prefix of the harness's publishers: their join headers are part of
/// the sequence every subscriber must see alike (they join after every
/// subscriber), unlike the headers of earlier joiners, which each
/// subscriber sees a different part of.
pub const PUBLISHER_UID_PREFIX: &str = "pub-";

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

/// What one subscriber saw of its channel's publishers (global ids
/// `base..base + n`).
#[derive(Debug, Clone)]
pub struct ChannelView {
    base: u32,
    /// One tracker per publisher of the channel.
    pub trackers: Vec<SeqTracker>,
    /// Harness messages seen.
    pub received: u64,
    /// Binary frames that are not from a publisher of this channel.
    pub foreign: u64,
    /// Everything seen of the channel's sequence: messages and publishers'
    /// join headers, in arrival order.
    pub order: OrderLog,
}

impl ChannelView {
    /// A view of publishers `base..base + n`.
    pub fn new(base: u32, n: usize) -> Self {
        Self {
            base,
            trackers: vec![SeqTracker::default(); n],
            received: 0,
            foreign: 0,
            order: OrderLog::default(),
        }
    }

    /// Tracks one message; returns its send time when it is a harness
    /// message. Text frames (joiners' headers, live or from history) are
    /// not tracked; publishers' headers go into the order log.
    #[inline]
    pub fn on_msg(&mut self, opcode: u8, data: &[u8]) -> Option<u64> {
        if opcode != OP_BINARY {
            if opcode == OP_TEXT {
                self.on_text(data);
            }
            return None;
        }
        let stamp = payload::read(data);
        let tracker = stamp.and_then(|s| {
            self.trackers
                .get_mut(s.publisher.wrapping_sub(self.base) as usize)
        });
        match (stamp, tracker) {
            (Some(s), Some(t)) => {
                t.on_seq(s.seq);
                self.received += 1;
                self.order.push(order::msg_entry(s.publisher, s.seq));
                Some(s.sent_ns)
            }
            _ => {
                self.foreign += 1;
                None
            }
        }
    }

    #[cold]
    fn on_text(&mut self, data: &[u8]) {
        let uid = serde_json::from_slice::<serde_json::Value>(data)
            .ok()
            .and_then(|v| v.get("uid")?.as_str().map(str::to_string));
        if let Some(uid) = uid.filter(|u| u.starts_with(PUBLISHER_UID_PREFIX)) {
            self.order.push(order::header_entry(&uid));
        }
    }

    /// Whether every publisher's last message has arrived; `sent(j)` is how
    /// many publisher `base + j` sent.
    pub fn complete(&self, sent: impl Fn(usize) -> u64) -> bool {
        self.trackers
            .iter()
            .enumerate()
            .all(|(j, t)| t.next() >= sent(j))
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
    fn view_skips_text_and_flags_foreign() {
        let mut v = ChannelView::new(4, 2);
        let mut buf = payload::new_buffer(32);
        for (publisher, seq) in [(4, 0), (5, 0), (4, 1), (9, 0)] {
            payload::write(
                &mut buf,
                payload::Stamp {
                    publisher,
                    seq,
                    sent_ns: 7,
                },
            );
            let r = v.on_msg(OP_BINARY, &buf);
            assert_eq!(r.is_some(), publisher != 9);
        }
        assert_eq!(v.on_msg(crate::frame::OP_TEXT, b"{}"), None);
        assert_eq!(v.order.len(), 3, "messages from the channel's publishers");
        assert_eq!(v.on_msg(OP_TEXT, br#"{"uid":"sub-3","channel":"c"}"#), None);
        assert_eq!(v.order.len(), 3, "a subscriber's header is not ordered");
        v.on_msg(OP_TEXT, br#"{"uid":"pub-1","channel":"c"}"#);
        assert_eq!(v.order.len(), 4, "a publisher's header is");
        assert_eq!(v.on_msg(OP_BINARY, b"junk"), None);
        assert_eq!((v.received, v.foreign), (3, 2));
        assert!(v.complete(|j| [2, 1][j]));
        assert!(!v.complete(|j| [3, 1][j]));
    }

    #[test]
    fn repeat_is_duplicate() {
        let t = track(&[0, 1, 1, 2]);
        assert_eq!((t.lost(3), t.late, t.dups), (0, 0, 1));
        let t = track(&[0, 2, 1, 1]);
        assert_eq!((t.lost(3), t.late, t.dups), (0, 1, 1));
    }
}
