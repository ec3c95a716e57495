//! A channel's members by [`MemberId`], each kind in its own uid namespace.
//!
//! Clients, nearly every member, are kept by uid alone: the map they are in
//! says their kind, so a member costs a uid and a session (24 bytes a
//! bucket) rather than a kind stored in both key and value (40). Links of
//! either kind, a few per channel at most, are keyed by kind and uid in a
//! map of their own, boxed so a channel without links pays 8 bytes for it.

use std::sync::Arc;

use ahash::AHashMap;

use crate::channel::{MemberId, MemberKind, SessionId};

#[derive(Debug, Default)]
pub(super) struct Members {
    clients: AHashMap<Arc<str>, SessionId>,
    links: Option<Box<AHashMap<MemberId, SessionId>>>,
}

impl Members {
    /// The session holding `id`.
    pub(super) fn get(&self, id: &MemberId) -> Option<SessionId> {
        match id.0 {
            MemberKind::Client => self.clients.get(&id.1),
            _ => self.links.as_ref()?.get(id),
        }
        .copied()
    }

    /// The client session holding `uid`.
    pub(super) fn client(&self, uid: &str) -> Option<SessionId> {
        self.clients.get(uid).copied()
    }

    /// Records `session` as holding `id` (which the caller found free).
    pub(super) fn insert(&mut self, id: MemberId, session: SessionId) {
        match id.0 {
            MemberKind::Client => self.clients.insert(id.1, session),
            _ => self.links.get_or_insert_default().insert(id, session),
        };
    }

    /// Forgets `id`; returns the session that held it.
    pub(super) fn remove(&mut self, id: &MemberId) -> Option<SessionId> {
        if id.0 == MemberKind::Client {
            return self.clients.remove(&id.1);
        }
        let links = self.links.as_mut()?;
        let session = links.remove(id);
        if links.is_empty() {
            self.links = None;
        }
        session
    }

    /// Members of either kind.
    pub(super) fn len(&self) -> usize {
        self.clients.len() + self.links.as_ref().map_or(0, |l| l.len())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Members that are clients.
    pub(super) fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Every member: its kind, uid and session.
    pub(super) fn iter(&self) -> impl Iterator<Item = (MemberKind, &Arc<str>, SessionId)> {
        let clients = self
            .clients
            .iter()
            .map(|(uid, &s)| (MemberKind::Client, uid, s));
        let links = self.links.iter().flat_map(|l| l.iter());
        clients.chain(links.map(|((kind, uid), &s)| (*kind, uid, s)))
    }

    /// The sessions of the link members of `kind`.
    pub(super) fn links_of(&self, kind: MemberKind) -> impl Iterator<Item = SessionId> + '_ {
        self.links
            .iter()
            .flat_map(|l| l.iter())
            .filter(move |((k, _), _)| *k == kind)
            .map(|(_, &s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: MemberKind, uid: &str) -> MemberId {
        (kind, uid.into())
    }

    #[test]
    fn each_kind_has_its_own_uids() {
        let mut m = Members::default();
        m.insert(id(MemberKind::Client, "a"), 1);
        m.insert(id(MemberKind::Link, "a"), 2);
        m.insert(id(MemberKind::OwnLink, "a"), 3);
        assert_eq!(m.get(&id(MemberKind::Client, "a")), Some(1));
        assert_eq!(m.get(&id(MemberKind::Link, "a")), Some(2));
        assert_eq!(m.get(&id(MemberKind::OwnLink, "a")), Some(3));
        assert_eq!(m.client("a"), Some(1));
        assert_eq!((m.len(), m.clients()), (3, 1));
        assert_eq!(m.links_of(MemberKind::OwnLink).collect::<Vec<_>>(), [3]);
        let mut all: Vec<_> = m.iter().map(|(k, u, s)| (k, u.clone(), s)).collect();
        all.sort_by_key(|&(_, _, s)| s);
        assert_eq!(
            all,
            [
                (MemberKind::Client, "a".into(), 1),
                (MemberKind::Link, "a".into(), 2),
                (MemberKind::OwnLink, "a".into(), 3),
            ]
        );
        assert_eq!(m.remove(&id(MemberKind::Link, "a")), Some(2));
        assert_eq!(m.remove(&id(MemberKind::Link, "a")), None);
        assert_eq!(m.remove(&id(MemberKind::OwnLink, "a")), Some(3));
        assert!(m.links.is_none(), "no links left: nothing kept for them");
        assert_eq!(m.remove(&id(MemberKind::Client, "a")), Some(1));
        assert!(m.is_empty());
    }

    #[test]
    fn a_client_costs_a_uid_and_a_session() {
        assert_eq!(std::mem::size_of::<(Arc<str>, SessionId)>(), 24);
        // The links' map is boxed: a channel without links pays 8 bytes for it.
        assert_eq!(
            std::mem::size_of::<Members>(),
            std::mem::size_of::<AHashMap<Arc<str>, SessionId>>() + 8
        );
    }
}
