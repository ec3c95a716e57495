//! What a channel feed has handed out, and what a frame means for it: the
//! sans-IO rules of [`Feed`](super::feed::Feed).

/// What a feed hands out, and what a live frame means for it (sans-IO).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    last: u64,
}

/// What to do with a live frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The next frame: hand it out.
    Deliver,
    /// Already handed out (read by a catch-up first): drop it.
    Skip,
    /// A frame before it was missed: catch up from the stream first.
    Gap,
}

impl Cursor {
    /// A cursor that has handed out everything up to stream sequence `after`.
    pub fn new(after: u64) -> Cursor {
        Cursor { last: after }
    }

    /// The stream sequence of the last frame handed out.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// A live frame `seq` whose predecessor on the channel is `prev`.
    pub fn live(&mut self, seq: u64, prev: u64) -> Step {
        if seq <= self.last {
            Step::Skip
        } else if prev > self.last {
            Step::Gap
        } else {
            self.last = seq;
            Step::Deliver
        }
    }

    /// A frame read from the stream, in order: true if it is new.
    pub fn stored(&mut self, seq: u64) -> bool {
        if seq <= self.last {
            return false;
        }
        self.last = seq;
        true
    }
}

/// Whether a frame read by a catch-up, with `pending` frames after it, may
/// have had frames before it dropped unread by the stream's retention of
/// `retained` frames per channel: it was (about) the oldest one kept when
/// it was sent. NATS counts `pending` as it sends, racing its own discards
/// by a frame or so, hence the margin of an eighth. With one frame retained
/// every frame is the oldest: no telling.
pub fn may_follow_a_drop(pending: u64, retained: u64) -> bool {
    retained > 1 && pending + 1 + retained / 8 >= retained
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_frames_in_order_are_delivered() {
        let mut c = Cursor::new(0);
        assert_eq!(c.live(3, 0), Step::Deliver);
        assert_eq!(c.live(7, 3), Step::Deliver);
        assert_eq!(c.last(), 7);
    }

    #[test]
    fn a_missed_predecessor_is_a_gap_and_changes_nothing() {
        let mut c = Cursor::new(7);
        assert_eq!(c.live(12, 9), Step::Gap);
        assert_eq!(c.last(), 7);
        // The catch-up reads 9 and 12; the live 12 is then a duplicate.
        assert!(c.stored(9));
        assert!(c.stored(12));
        assert_eq!(c.live(12, 9), Step::Skip);
        assert_eq!(c.live(15, 12), Step::Deliver);
    }

    #[test]
    fn frames_already_handed_out_are_skipped() {
        let mut c = Cursor::new(10);
        assert_eq!(c.live(10, 8), Step::Skip);
        assert_eq!(c.live(4, 0), Step::Skip);
        assert!(!c.stored(10));
        assert_eq!(c.last(), 10);
    }

    #[test]
    fn a_purged_predecessor_is_no_gap() {
        // "0 if none or deleted": nothing before it to wait for.
        let mut c = Cursor::new(10);
        assert_eq!(c.live(11, 0), Step::Deliver);
    }

    #[test]
    fn only_the_oldest_retained_frames_may_follow_a_drop() {
        // 200 retained: a frame with 174 after it is safely inside.
        assert!(!may_follow_a_drop(173, 200));
        assert!(may_follow_a_drop(174, 200));
        assert!(may_follow_a_drop(199, 200));
        assert!(!may_follow_a_drop(0, 16));
        assert!(may_follow_a_drop(13, 16));
        // One frame retained: every frame is the oldest, no telling.
        assert!(!may_follow_a_drop(0, 1));
        assert!(!may_follow_a_drop(5, 1));
    }
}
