//! What the owner shard keeps about a channel: the history ring, the member
//! set (for the duplicate check) and which shards have members.
//!
//! Pure state, no I/O: the owner's message handlers drive it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use bytes::Bytes;

use super::mesh::{SessionId, shard_of};

/// Whether a member uid is a peer link's (PROTOCOL.md §7; see `peer::link_uid`).
pub fn is_link(uid: &str) -> bool {
    uid.starts_with('\0')
}

/// The most recent frames of a channel, bounded in frames and in bytes.
#[derive(Debug, Default)]
pub struct History {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl History {
    /// Appends `frame`, evicting the oldest frames beyond either bound.
    pub fn push(&mut self, frame: Bytes, max_frames: usize, max_bytes: usize) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
        while self.frames.len() > max_frames || self.bytes > max_bytes {
            match self.frames.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// Whether a byte-identical frame is already stored.
    pub fn contains(&self, frame: &[u8]) -> bool {
        self.frames.iter().any(|f| f[..] == *frame)
    }

    /// The frames, oldest first, as cheap clones.
    pub fn snapshot(&self) -> Vec<Bytes> {
        self.frames.iter().cloned().collect()
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

/// A join waiting for the half-open probe of the incumbent with the same uid.
#[derive(Debug)]
pub struct PendingJoin {
    pub session: SessionId,
    pub header: Bytes,
}

/// The owner's record of one channel.
#[derive(Debug)]
pub struct OwnedChannel {
    pub name: Arc<str>,
    pub history: History,
    /// uid -> the session holding it.
    pub members: AHashMap<Arc<str>, SessionId>,
    /// Joins waiting on a probe, by uid.
    pub pending: AHashMap<Arc<str>, PendingJoin>,
    shard_counts: Vec<u32>,
    /// Shards with at least one member, for fan-out.
    pub member_shards: Vec<u16>,
    pub last_activity: Instant,
    /// Peer links were started for this channel.
    pub linked: bool,
    /// How many of `members` are peer links (their uids start with NUL).
    links: usize,
}

impl OwnedChannel {
    pub fn new(name: Arc<str>, shards: usize, now: Instant) -> OwnedChannel {
        OwnedChannel {
            name,
            history: History::default(),
            members: AHashMap::new(),
            pending: AHashMap::new(),
            shard_counts: vec![0; shards],
            member_shards: Vec::new(),
            last_activity: now,
            linked: false,
            links: 0,
        }
    }

    /// Records a member.
    pub fn add_member(&mut self, uid: Arc<str>, session: SessionId) {
        let s = shard_of(session);
        self.links += usize::from(is_link(&uid));
        self.members.insert(uid, session);
        self.shard_counts[s as usize] += 1;
        if self.shard_counts[s as usize] == 1 {
            self.member_shards.push(s);
        }
    }

    /// Removes `uid` if it is held by `session`; false when it was not.
    pub fn remove_member(&mut self, uid: &str, session: SessionId) -> bool {
        if self.members.get(uid) != Some(&session) {
            return false;
        }
        self.members.remove(uid);
        self.links -= usize::from(is_link(uid));
        let s = shard_of(session);
        self.shard_counts[s as usize] -= 1;
        if self.shard_counts[s as usize] == 0 {
            self.member_shards.retain(|&x| x != s);
        }
        true
    }

    /// Members that are clients, not peer links.
    pub fn client_members(&self) -> usize {
        self.members.len() - self.links
    }

    /// The sessions of this channel's peer links.
    pub fn link_sessions(&self) -> Vec<SessionId> {
        self.members
            .iter()
            .filter(|(u, _)| is_link(u))
            .map(|(_, &s)| s)
            .collect()
    }

    /// Whether the owner may forget this channel: no members, nothing pending,
    /// and no activity for `idle` (30 days in production).
    pub fn expired(&self, now: Instant, idle: std::time::Duration) -> bool {
        self.members.is_empty()
            && self.pending.is_empty()
            && now.duration_since(self.last_activity) >= idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_bounds_by_frames_and_bytes() {
        let mut h = History::default();
        for i in 0..10u8 {
            h.push(Bytes::from(vec![i; 10]), 4, 1000);
        }
        assert_eq!(h.len(), 4);
        assert_eq!(h.snapshot()[0][0], 6);
        for _ in 0..3 {
            h.push(Bytes::from(vec![9; 400]), 100, 1000);
        }
        assert!(h.bytes() <= 1000);
        assert_eq!(h.snapshot().last().unwrap().len(), 400);
        h.push(Bytes::from(vec![1; 2000]), 100, 1000);
        assert!(h.is_empty(), "a frame over the byte bound is not kept");
    }

    #[test]
    fn dedup_lookup() {
        let mut h = History::default();
        h.push(Bytes::from_static(b"abc"), 10, 100);
        assert!(h.contains(b"abc"));
        assert!(!h.contains(b"abd"));
    }

    #[test]
    fn only_empty_idle_channels_expire() {
        let t0 = Instant::now();
        let idle = std::time::Duration::from_secs(30 * 24 * 3600);
        let mut c = OwnedChannel::new("c".into(), 2, t0);
        assert!(!c.expired(t0 + idle / 2, idle));
        assert!(c.expired(t0 + idle, idle));
        c.add_member("a".into(), 1);
        assert!(
            !c.expired(t0 + idle * 2, idle),
            "a channel with members never expires"
        );
    }

    #[test]
    fn member_shards_follow_counts() {
        let mut c = OwnedChannel::new("c".into(), 4, Instant::now());
        let a = (2u64 << 48) | 1;
        let b = (2u64 << 48) | 2;
        c.add_member("a".into(), a);
        c.add_member("b".into(), b);
        assert_eq!(c.member_shards, vec![2]);
        assert!(!c.remove_member("a", b), "only the holder may remove a uid");
        assert!(c.remove_member("a", a));
        assert_eq!(c.member_shards, vec![2]);
        assert!(c.remove_member("b", b));
        assert!(c.member_shards.is_empty());
    }
}
