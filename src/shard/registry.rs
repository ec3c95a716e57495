//! A shard's sessions and its local members of each channel.
//!
//! Members are kept in a slab per channel, so a member's place is a stable
//! key that the registry itself records next to the session: removing one
//! member moves no other, and sessions hold no index into shard state.

use std::rc::Rc;

use ahash::AHashMap;
use bytes::Bytes;
use slab::Slab;

use crate::channel::{ChannelKey, MemberKind, SessionId};
use crate::session::Session;

/// `Entry::place` of a session that is no channel's member.
const NO_PLACE: u32 = u32::MAX;

/// A session and, once it joined, its place in its channel's member slab
/// and how it was admitted (16 bytes: one per connection).
struct Entry {
    session: Rc<Session>,
    place: u32,
    kind: MemberKind,
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
            place: NO_PLACE,
            kind: MemberKind::Client,
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

    /// Records `session` as a local member of `key`; false when it is gone.
    pub fn add_member(&mut self, session: SessionId, key: ChannelKey, kind: MemberKind) -> bool {
        let Some(e) = self.sessions.get_mut(&session) else {
            return false;
        };
        let place = self
            .members
            .entry(key)
            .or_default()
            .insert(e.session.clone());
        e.place = u32::try_from(place).expect("fewer than 4 billion members of one channel");
        e.kind = kind;
        true
    }

    /// Forgets session `id`, a member of `key` if it joined; returns how it
    /// was admitted when it was a member.
    pub fn remove(&mut self, id: SessionId, key: Option<ChannelKey>) -> Option<MemberKind> {
        let e = self.sessions.remove(&id)?;
        let key = key.filter(|_| e.place != NO_PLACE)?;
        if let Some(list) = self.members.get_mut(&key) {
            list.try_remove(e.place as usize);
            if list.is_empty() {
                self.members.remove(&key);
            }
        }
        Some(e.kind)
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
            assert!(r.add_member(id, 7, MemberKind::Client));
        }
        r.insert(Rc::new(Session::new(4, 0)));
        assert!(!r.add_member(9, 7, MemberKind::Client));
        assert!(r.add_member(4, 7, MemberKind::Link));
        let f = Bytes::from_static(b"x");
        assert_eq!(r.deliver(7, Some(2), &f, 1 << 20), (3, 0));
        assert_eq!(r.remove(1, Some(7)), Some(MemberKind::Client));
        // Removing 1 moved no one: the others are still found by their places.
        assert_eq!(r.deliver(7, None, &f, 1 << 20), (3, 0));
        assert_eq!(r.remove(4, Some(7)), Some(MemberKind::Link));
        assert_eq!(r.remove(3, Some(7)), Some(MemberKind::Client));
        assert_eq!(r.deliver(7, None, &f, 0), (1, 1), "over the bound: closed");
        assert_eq!(r.remove(2, Some(7)), Some(MemberKind::Client));
        assert!(r.members.is_empty() && r.is_empty());
        r.insert(Rc::new(Session::new(5, 0)));
        assert_eq!(r.remove(5, None), None, "never joined");
        assert!(r.get(5).is_none());
    }

    #[test]
    fn an_entry_is_small() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }
}
