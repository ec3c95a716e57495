//! A shard's sessions and its local members of each channel.
//!
//! Members are kept in a slab per channel, so a member's place is a stable
//! key that the registry itself records next to the session: removing one
//! member moves no other, and sessions hold no index into shard state.

use std::rc::Rc;
use std::sync::Arc;

use ahash::AHashMap;
use bytes::Bytes;
use slab::Slab;

use crate::channel::{ChannelKey, SessionId};
use crate::session::Session;

/// A session's local membership, recorded on its shard.
pub struct Membership {
    pub key: ChannelKey,
    pub uid: Arc<str>,
    /// Its place in the channel's member slab.
    place: usize,
}

struct Entry {
    session: Rc<Session>,
    membership: Option<Membership>,
}

#[derive(Default)]
pub struct Registry {
    sessions: AHashMap<SessionId, Entry>,
    members: AHashMap<ChannelKey, Slab<Rc<Session>>>,
}

impl Registry {
    pub fn insert(&mut self, session: Rc<Session>) {
        let entry = Entry {
            session: session.clone(),
            membership: None,
        };
        self.sessions.insert(session.id, entry);
    }

    pub fn get(&self, id: SessionId) -> Option<&Rc<Session>> {
        self.sessions.get(&id).map(|e| &e.session)
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Every session, for shutdown and timers.
    pub fn sessions(&self) -> impl Iterator<Item = &Rc<Session>> {
        self.sessions.values().map(|e| &e.session)
    }

    /// Records `id` as a local member of `key`; false when the session is gone.
    pub fn add_member(&mut self, id: SessionId, key: ChannelKey, uid: Arc<str>) -> bool {
        let Some(e) = self.sessions.get_mut(&id) else {
            return false;
        };
        let place = self
            .members
            .entry(key)
            .or_default()
            .insert(e.session.clone());
        e.membership = Some(Membership { key, uid, place });
        true
    }

    /// Forgets session `id`; returns the membership it had.
    pub fn remove(&mut self, id: SessionId) -> Option<Membership> {
        let m = self.sessions.remove(&id)?.membership?;
        if let Some(list) = self.members.get_mut(&m.key) {
            list.try_remove(m.place);
            if list.is_empty() {
                self.members.remove(&m.key);
            }
        }
        Some(m)
    }

    /// Queues `frame` on every local member of `key` except `skip`; returns
    /// how many, and how many of them this closed as slow consumers.
    pub fn deliver(
        &self,
        key: ChannelKey,
        skip: Option<SessionId>,
        frame: &Bytes,
        max_queue: usize,
    ) -> (u64, u64) {
        let (mut n, mut slow) = (0, 0);
        for (_, m) in self.members.get(&key).into_iter().flatten() {
            if Some(m.id) != skip {
                slow += u64::from(m.push(frame.clone(), max_queue));
                n += 1;
            }
        }
        (n, slow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_have_stable_places() {
        let mut r = Registry::default();
        for id in 1..=3 {
            r.insert(Rc::new(Session::new(id, 0)));
            assert!(r.add_member(id, 7, format!("u{id}").into()));
        }
        assert!(!r.add_member(9, 7, "gone".into()));
        let f = Bytes::from_static(b"x");
        assert_eq!(r.deliver(7, Some(2), &f, 1 << 20), (2, 0));
        let m = r.remove(1).expect("a member");
        assert_eq!((m.key, &*m.uid), (7, "u1"));
        // Removing 1 moved no one: 3 is still found and removed by its place.
        assert_eq!(r.deliver(7, None, &f, 1 << 20), (2, 0));
        assert_eq!(&*r.remove(3).unwrap().uid, "u3");
        assert_eq!(r.deliver(7, None, &f, 0), (1, 1), "over the bound: closed");
        assert_eq!(r.remove(2).map(|m| m.key), Some(7));
        assert!(r.members.is_empty() && r.is_empty());
        assert_eq!(r.get(2).map(|s| s.id), None);
    }
}
