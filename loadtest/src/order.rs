//! Whether every subscriber of a channel saw one and the same sequence.
//!
//! Per-publisher sequence numbers ([`crate::tracker`]) catch loss,
//! duplicates and reordering within one publisher; they cannot see two
//! subscribers disagree on how different publishers' frames interleave,
//! which is what a channel's one order (PROTOCOL.md §5) forbids and what
//! servers that do not share a sequencer get wrong. So every subscriber
//! folds what it sees, in arrival order, into an [`OrderLog`]: a hash chain
//! plus the chain's value every `every` entries. Equal chains mean equal
//! sequences (up to a 2^-64 collision); the checkpoints locate the first
//! difference without keeping the sequence (8 bytes per `every` entries).
//!
//! A subscriber that lost, repeated or reordered anything also differs
//! from the others here: its sequence is not theirs.

use std::collections::HashMap;

/// Checkpoint spacing of the harness's logs: at 1 M deliveries/s over 100
/// subscribers, 8 bytes per 1,024 entries is ~80 KB per measured second.
pub const CHECKPOINT_EVERY: u64 = 1024;

/// The entry of a harness message: its publisher and sequence number.
#[inline]
pub fn msg_entry(publisher: u32, seq: u64) -> u64 {
    mix(seq ^ (u64::from(publisher) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The entry of a join header: its uid (kept apart from messages' entries
/// by a different mixing constant).
pub fn header_entry(uid: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0x6865_6164, 0x6572);
    h.write(uid.as_bytes());
    mix(h.finish() ^ 0xc2b2_ae3d_27d4_eb4f)
}

/// splitmix64's finalizer: a bijection that spreads every input bit.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One subscriber's sequence, folded.
#[derive(Debug, Clone)]
pub struct OrderLog {
    every: u64,
    len: u64,
    chain: u64,
    /// The chain after entries `every`, `2 * every`, ...
    checkpoints: Vec<u64>,
}

impl Default for OrderLog {
    fn default() -> Self {
        Self::new(CHECKPOINT_EVERY)
    }
}

impl OrderLog {
    /// An empty log with a checkpoint every `every` entries (at least 1).
    pub fn new(every: u64) -> Self {
        Self {
            every: every.max(1),
            len: 0,
            chain: 0,
            checkpoints: Vec::new(),
        }
    }

    /// Appends one entry ([`msg_entry`], [`header_entry`]).
    #[inline]
    pub fn push(&mut self, entry: u64) {
        // The rotation makes the chain depend on the position as well as
        // the content, so swapping two entries changes it.
        self.chain = mix(self.chain.rotate_left(17) ^ entry);
        self.len += 1;
        if self.len.is_multiple_of(self.every) {
            self.checkpoints.push(self.chain);
        }
    }

    /// Entries seen.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Nothing seen.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries `from..to` hold the first difference from `other` (the
    /// sequences differ); `None` when they are equal.
    pub fn first_difference(&self, other: &OrderLog) -> Option<(u64, u64)> {
        if self.len == other.len && self.chain == other.chain {
            return None;
        }
        let agree = self
            .checkpoints
            .iter()
            .zip(&other.checkpoints)
            .take_while(|(a, b)| a == b)
            .count() as u64;
        let from = agree * self.every;
        let to = (from + self.every).min(self.len.max(other.len));
        Some((from, to.max(from + 1)))
    }
}

/// A subscriber whose sequence is not its channel's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// Index of the subscriber in the slice given to [`compare`].
    pub subscriber: usize,
    /// Entries `from..to` of its sequence hold the first difference.
    pub from: u64,
    /// See `from`.
    pub to: u64,
    /// Entries it saw.
    pub len: u64,
    /// Entries the channel's sequence has.
    pub reference_len: u64,
}

/// Compares one channel's subscribers. The channel's sequence is the one
/// most of them saw (on a tie, the one the lowest index saw); every
/// subscriber that saw another sequence is returned, in index order.
pub fn compare(logs: &[&OrderLog]) -> Vec<Divergence> {
    let mut groups: HashMap<(u64, u64), (usize, usize)> = HashMap::new();
    for (i, l) in logs.iter().enumerate() {
        groups.entry((l.len, l.chain)).or_insert((0, i)).0 += 1;
    }
    let Some(&(_, reference)) = groups
        .values()
        .max_by_key(|&&(count, first)| (count, std::cmp::Reverse(first)))
    else {
        return Vec::new();
    };
    let r = logs[reference];
    logs.iter()
        .enumerate()
        .filter_map(|(i, l)| {
            l.first_difference(r).map(|(from, to)| Divergence {
                subscriber: i,
                from,
                to,
                len: l.len,
                reference_len: r.len,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of messages given as (publisher, seq), checkpoint every `every`.
    fn log(every: u64, msgs: &[(u32, u64)]) -> OrderLog {
        let mut l = OrderLog::new(every);
        for &(p, s) in msgs {
            l.push(msg_entry(p, s));
        }
        l
    }

    /// Two publishers interleaved: (0,0) (1,0) (0,1) (1,1) ...
    fn interleaved(n: u64) -> Vec<(u32, u64)> {
        (0..n).flat_map(|s| [(0, s), (1, s)]).collect()
    }

    #[test]
    fn same_sequences_agree() {
        let seq = interleaved(50);
        let (a, b, c) = (log(8, &seq), log(8, &seq), log(8, &seq));
        assert!(compare(&[&a, &b, &c]).is_empty());
        assert_eq!(a.first_difference(&b), None);
        assert_eq!(a.len(), 100);
    }

    #[test]
    fn a_reordering_is_found_where_it_is() {
        let seq = interleaved(50);
        let mut swapped = seq.clone();
        // Entries 41 and 42 belong to different publishers: each
        // publisher's own order is intact, only the interleaving differs.
        swapped.swap(41, 42);
        assert_ne!(seq[41].0, seq[42].0);
        let (a, b, c) = (log(8, &seq), log(8, &swapped), log(8, &seq));
        let d = compare(&[&a, &b, &c]);
        assert_eq!(
            d,
            vec![Divergence {
                subscriber: 1,
                from: 40,
                to: 48,
                len: 100,
                reference_len: 100
            }]
        );
        // With a checkpoint per entry the place is exact.
        let d = compare(&[&log(1, &seq), &log(1, &swapped), &log(1, &seq)]);
        assert_eq!((d[0].from, d[0].to), (41, 42));
    }

    #[test]
    fn a_gap_is_found_where_it_is() {
        let seq = interleaved(50);
        let mut gap = seq.clone();
        gap.remove(17);
        let d = compare(&[&log(1, &seq), &log(1, &seq), &log(1, &gap)]);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (
                d[0].subscriber,
                d[0].from,
                d[0].to,
                d[0].len,
                d[0].reference_len
            ),
            (2, 17, 18, 99, 100)
        );
    }

    #[test]
    fn a_missing_tail_and_a_duplicate_differ_too() {
        let seq = interleaved(10);
        let short = log(4, &seq[..19]);
        let mut dup = seq.clone();
        dup.insert(5, dup[4]);
        let d = compare(&[&log(4, &seq), &short, &log(4, &dup)]);
        let subs: Vec<usize> = d.iter().map(|d| d.subscriber).collect();
        assert_eq!(subs, vec![1, 2]);
        assert_eq!((d[0].from, d[0].to), (16, 20), "the tail is missing");
        assert_eq!((d[1].from, d[1].to), (4, 8));
    }

    #[test]
    fn headers_count_and_differ_from_messages() {
        let mut a = OrderLog::new(1);
        a.push(header_entry("pub-0"));
        a.push(msg_entry(0, 0));
        let mut b = OrderLog::new(1);
        b.push(msg_entry(0, 0));
        b.push(header_entry("pub-0"));
        let mut c = OrderLog::new(1);
        c.push(header_entry("pub-1"));
        c.push(msg_entry(0, 0));
        assert!(a.first_difference(&b).is_some(), "a header moved");
        assert!(a.first_difference(&c).is_some(), "another header");
        assert_ne!(header_entry("x"), msg_entry(0, 0));
    }

    #[test]
    fn the_majority_is_the_reference_and_ties_go_to_the_first() {
        let seq = interleaved(4);
        let mut other = seq.clone();
        other.swap(0, 1);
        let (a, b) = (log(2, &seq), log(2, &other));
        let d = compare(&[&b, &a, &a]);
        assert_eq!(d.iter().map(|d| d.subscriber).collect::<Vec<_>>(), vec![0]);
        let d = compare(&[&b, &a]);
        assert_eq!(d.iter().map(|d| d.subscriber).collect::<Vec<_>>(), vec![1]);
        assert!(compare(&[]).is_empty());
    }
}
