//! What a channel's owner knows about peer links (PROTOCOL.md §7): the
//! control messages links exchange, the routes that detect cycles, and the
//! alignment of a peer's history with ours on (re)connect.
//!
//! Control messages travel as WebSocket Ping payloads, which servers answer
//! and never relay, so no client can forge one and no client sees one:
//! `mles-peer` + kind (`S`: sync, sent once right after the history a link
//! gets on joining; `R`: routes changed) + the sender's node id + the node
//! ids reachable through the sender (all big-endian u64), at most
//! [`MAX_ROUTES`] of them to stay within a Ping's 125 bytes.
//!
//! Cycles: every link advertises the nodes reachable through its sender. A
//! link whose peer advertises this node, or a node already reachable over
//! another link, would close a cycle: the newer of the two is refused.
//! Pure functions and data; the owner drives them.

use bytes::{BufMut, Bytes, BytesMut};

/// The prefix of every control payload.
pub const MAGIC: &[u8] = b"mles-peer";
/// Routes one control message carries: (125 - 9 - 1 - 8) / 8.
pub const MAX_ROUTES: usize = 13;

/// A link control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// The first message over a link, right after the history it got.
    pub sync: bool,
    /// The sender's node id.
    pub node: u64,
    /// Nodes reachable through the sender (not the sender itself).
    pub routes: Vec<u64>,
}

impl Control {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(MAGIC.len() + 9 + 8 * MAX_ROUTES);
        b.put_slice(MAGIC);
        b.put_u8(if self.sync { b'S' } else { b'R' });
        b.put_u64(self.node);
        for &r in self.routes.iter().take(MAX_ROUTES) {
            b.put_u64(r);
        }
        b.freeze()
    }

    /// Parses a Ping payload; `None` if it is not a control message.
    pub fn parse(p: &[u8]) -> Option<Control> {
        let rest = p.strip_prefix(MAGIC)?;
        let (&kind, rest) = rest.split_first()?;
        if rest.len() < 8 || rest.len() % 8 != 0 || !matches!(kind, b'S' | b'R') {
            return None;
        }
        let mut ids = rest
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("chunks of 8")));
        let node = ids.next()?;
        Some(Control {
            sync: kind == b'S',
            node,
            routes: ids.collect(),
        })
    }
}

/// One link as the owner sees it for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkEnds {
    /// The node that opened the link.
    pub initiator: u64,
    /// The node it links to.
    pub acceptor: u64,
}

/// How a peer's history lines up with ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alignment {
    /// Some frames are in both; these (indices into theirs, in their order)
    /// are new here.
    Overlap { new: Vec<usize> },
    /// No frame in common (a restarted server, or an outage longer than
    /// either history): nothing can be told apart.
    Disjoint,
}

/// Aligns `theirs` (oldest first) with `ours`. Each of their frames is
/// matched with one equal frame of ours, each of ours used once, so two
/// identical frames count as two (never a set lookup); the order of the
/// two histories may differ where frames crossed the link concurrently.
/// Their unmatched frames before the first match are older than our
/// history, not new; those after it are new here.
pub fn align<'a>(ours: impl Iterator<Item = &'a [u8]>, theirs: &[Bytes]) -> Alignment {
    let mut count: ahash::AHashMap<&[u8], usize> = ahash::AHashMap::new();
    for f in ours {
        *count.entry(f).or_default() += 1;
    }
    let mut new = Vec::new();
    let mut matched = false;
    for (i, f) in theirs.iter().enumerate() {
        match count.get_mut(&f[..]) {
            Some(n) if *n > 0 => {
                *n -= 1;
                matched = true;
            }
            _ if matched => new.push(i),
            _ => {}
        }
    }
    if matched {
        Alignment::Overlap { new }
    } else {
        Alignment::Disjoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn frames(v: &[&str]) -> Vec<Bytes> {
        v.iter().map(|s| b(s)).collect()
    }

    #[test]
    fn control_round_trips_and_rejects_other_pings() {
        let c = Control {
            sync: true,
            node: 7,
            routes: (1..=20).collect(),
        };
        let p = c.encode();
        assert!(p.len() <= 125, "fits a Ping");
        let back = Control::parse(&p).unwrap();
        assert_eq!((back.sync, back.node), (true, 7));
        assert_eq!(back.routes, (1..=13).collect::<Vec<_>>());
        assert_eq!(Control::parse(b""), None);
        assert_eq!(Control::parse(b"hello"), None);
        assert_eq!(Control::parse(b"mles-peerS1234"), None);
        assert_eq!(Control::parse(b"mles-peerX12345678"), None);
    }

    #[test]
    fn identical_frames_align_by_count_not_by_set() {
        let ours = frames(&["x", "ok", "ok"]);
        let theirs = frames(&["x", "ok", "ok", "ok"]);
        assert_eq!(
            align(ours.iter().map(|f| &f[..]), &theirs),
            Alignment::Overlap { new: vec![3] },
            "the third ok is new"
        );
        let theirs = frames(&["old", "x", "ok", "new1", "ok", "ok"]);
        assert_eq!(
            align(ours.iter().map(|f| &f[..]), &theirs),
            Alignment::Overlap { new: vec![3, 5] },
            "older than our history: not new"
        );
        // Frames that crossed the link concurrently sit in another order there.
        let theirs = frames(&["ok", "x", "ok", "y"]);
        assert_eq!(
            align(ours.iter().map(|f| &f[..]), &theirs),
            Alignment::Overlap { new: vec![3] }
        );
        assert_eq!(align(std::iter::empty(), &theirs), Alignment::Disjoint);
        assert_eq!(
            align(ours.iter().map(|f| &f[..]), &frames(&["a", "b"])),
            Alignment::Disjoint
        );
    }
}
