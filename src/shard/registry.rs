//! A shard's sessions and its local members of each channel.
//!
//! Members are kept at stable places per channel ([`Places`]), so a
//! member's place is a key that the registry itself records next to the
//! session: removing one member moves no other, and sessions hold no index
//! into shard state.
//!
//! One connection costs a 16-byte session entry (the session's id is read
//! from the session, not stored beside it) and an 8-byte place.

use std::rc::Rc;

use ahash::{AHashMap, RandomState};
use bytes::Bytes;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry as Slot;

use crate::channel::{ChannelKey, MemberKind, SessionId};
use crate::session::{Offered, Session};

/// `Entry::place` of a session that is no channel's member.
const NO_PLACE: u32 = u32::MAX;

/// A session and, once it joined, its place in its channel's [`Places`]
/// and how it was admitted (16 bytes: one per connection).
struct Entry {
    session: Rc<Session>,
    place: u32,
    kind: MemberKind,
}

/// A channel's local members, each at a place that does not change while
/// it is a member; a vacated place is reused by a later member. 8 bytes a
/// place (`slab::Slab` takes 16: its vacant slots hold the next free one).
#[derive(Default)]
struct Places {
    slots: Vec<Option<Rc<Session>>>,
    /// Vacant places, the last vacated reused first.
    free: Vec<u32>,
}

impl Places {
    fn insert(&mut self, session: Rc<Session>) -> u32 {
        if let Some(place) = self.free.pop() {
            self.slots[place as usize] = Some(session);
            return place;
        }
        self.slots.push(Some(session));
        u32::try_from(self.slots.len() - 1)
            .ok()
            .filter(|&p| p != NO_PLACE)
            .expect("fewer than 4 billion members of one channel")
    }

    fn remove(&mut self, place: u32) {
        if let Some(slot) = self.slots.get_mut(place as usize)
            && slot.take().is_some()
        {
            self.free.push(place);
        }
    }

    fn is_empty(&self) -> bool {
        self.slots.len() == self.free.len()
    }

    fn iter(&self) -> impl Iterator<Item = &Rc<Session>> {
        self.slots.iter().flatten()
    }
}

#[derive(Default)]
pub struct Registry {
    /// Entries by their session's id.
    sessions: HashTable<Entry>,
    hasher: RandomState,
    members: AHashMap<ChannelKey, Places>,
}

impl Registry {
    pub fn insert(&mut self, session: Rc<Session>) {
        let id = session.id;
        let entry = Entry {
            session,
            place: NO_PLACE,
            kind: MemberKind::Client,
        };
        let hasher = &self.hasher;
        match self.sessions.entry(
            hasher.hash_one(id),
            |e| e.session.id == id,
            |e| hasher.hash_one(e.session.id),
        ) {
            Slot::Occupied(mut o) => *o.get_mut() = entry,
            Slot::Vacant(v) => {
                v.insert(entry);
            }
        }
    }

    pub fn get(&self, id: SessionId) -> Option<&Rc<Session>> {
        self.entry(id).map(|e| &e.session)
    }

    fn entry(&self, id: SessionId) -> Option<&Entry> {
        let hash = self.hasher.hash_one(id);
        self.sessions.find(hash, |e| e.session.id == id)
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Every session, for shutdown and timers.
    pub fn sessions(&self) -> impl Iterator<Item = &Rc<Session>> {
        self.sessions.iter().map(|e| &e.session)
    }

    /// Records `session` as a local member of `key`; false when it is gone.
    pub fn add_member(&mut self, session: SessionId, key: ChannelKey, kind: MemberKind) -> bool {
        let hash = self.hasher.hash_one(session);
        let Some(e) = self.sessions.find_mut(hash, |e| e.session.id == session) else {
            return false;
        };
        e.place = self
            .members
            .entry(key)
            .or_default()
            .insert(e.session.clone());
        e.kind = kind;
        true
    }

    /// Forgets session `id`, a member of `key` if it joined; returns how it
    /// was admitted when it was a member.
    pub fn remove(&mut self, id: SessionId, key: Option<ChannelKey>) -> Option<MemberKind> {
        let hash = self.hasher.hash_one(id);
        let (e, _) = self
            .sessions
            .find_entry(hash, |e| e.session.id == id)
            .ok()?
            .remove();
        let key = key.filter(|_| e.place != NO_PLACE)?;
        if let Some(list) = self.members.get_mut(&key) {
            list.remove(e.place);
            if list.is_empty() {
                self.members.remove(&key);
            }
        }
        Some(e.kind)
    }

    /// Queues `frame` on every local member of `key` except `skip`, adding
    /// to `flush` the members the caller must flush (see [`Offered`]);
    /// returns how many got it, and how many of them this closed as slow
    /// consumers.
    pub fn deliver(
        &self,
        key: ChannelKey,
        skip: Option<SessionId>,
        frame: &Bytes,
        max_queue: usize,
        flush: &mut Vec<Rc<Session>>,
    ) -> (u64, u64) {
        let (mut n, mut slow) = (0, 0);
        for m in self.members.get(&key).into_iter().flat_map(Places::iter) {
            if Some(m.id) != skip {
                match m.offer(frame.clone(), max_queue) {
                    Offered::Queued => {}
                    Offered::Flush => flush.push(m.clone()),
                    Offered::Closed => slow += 1,
                }
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
        assert_eq!(r.deliver(7, Some(2), &f, 1 << 20, &mut Vec::new()), (3, 0));
        assert_eq!(r.remove(1, Some(7)), Some(MemberKind::Client));
        // Removing 1 moved no one: the others are still found by their places.
        assert_eq!(r.deliver(7, None, &f, 1 << 20, &mut Vec::new()), (3, 0));
        assert_eq!(r.remove(4, Some(7)), Some(MemberKind::Link));
        assert_eq!(r.remove(3, Some(7)), Some(MemberKind::Client));
        assert_eq!(
            r.deliver(7, None, &f, 0, &mut Vec::new()),
            (1, 1),
            "over the bound: closed"
        );
        assert_eq!(r.remove(2, Some(7)), Some(MemberKind::Client));
        assert!(r.members.is_empty() && r.is_empty());
        r.insert(Rc::new(Session::new(5, 0)));
        assert_eq!(r.remove(5, None), None, "never joined");
        assert!(r.get(5).is_none());
    }

    #[test]
    fn vacated_places_are_reused() {
        let mut p = Places::default();
        let s = |id| Rc::new(Session::new(id, 0));
        assert_eq!((p.insert(s(1)), p.insert(s(2)), p.insert(s(3))), (0, 1, 2));
        p.remove(1);
        p.remove(1);
        assert_eq!(p.iter().map(|s| s.id).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(p.insert(s(4)), 1, "the vacated place, once");
        assert_eq!(p.insert(s(5)), 3);
        for place in 0..4 {
            p.remove(place);
        }
        assert!(p.is_empty());
    }

    #[test]
    fn a_connection_costs_a_16_byte_entry_and_an_8_byte_place() {
        // A session map bucket is the entry alone (BENCHMARKS.md, "Per-session memory").
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        assert_eq!(std::mem::size_of::<Option<Rc<Session>>>(), 8);
    }
}
