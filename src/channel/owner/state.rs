//! The owner's record of one channel: history, members by kind, joins
//! waiting to be admitted, the shards with members, the links' state.
//! Plain data with the bookkeeping that keeps it consistent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::members::Members;
use super::{Action, Join, LinkState};
use crate::channel::history::History;
use crate::channel::sequencer::Ordered;
use crate::channel::{ChannelKey, MemberId, MemberKind, SessionId, shard_of};
use ahash::AHashMap;

/// Where a join that is not yet admitted waits.
#[derive(Debug)]
pub(super) enum Stage {
    /// The incumbent with the same uid is being probed.
    Probing { incumbent: SessionId },
    /// The sequencer is claiming (channel, uid) beyond this owner.
    Claiming,
    /// The join header is on its way through the sequencer.
    Ordering,
}

#[derive(Debug)]
pub(super) struct Pending {
    pub(super) stage: Stage,
    pub(super) join: Join,
}

impl Pending {
    /// Whether this join waits on a probe of `incumbent`.
    pub(super) fn probes(&self, incumbent: SessionId) -> bool {
        matches!(self.stage, Stage::Probing { incumbent: i } if i == incumbent)
    }
}

/// The owner's record of one channel.
#[derive(Debug)]
pub struct OwnedChannel {
    pub(super) name: Arc<str>,
    pub(super) key: ChannelKey,
    pub(super) history: History,
    pub(super) members: Members,
    /// Joins not yet admitted: they count for the duplicate check.
    pub(super) pending: AHashMap<MemberId, Pending>,
    /// Routing and resync state of the link members, by session.
    pub(super) links: AHashMap<SessionId, LinkState>,
    /// A refused cycle was logged at warn level for this channel.
    pub(super) cycle_logged: bool,
    /// Members per shard, and the shards with at least one, for fan-out.
    pub(super) shard_counts: Vec<u32>,
    pub(super) member_shards: Vec<u16>,
    pub(super) last_activity: Instant,
    /// This server's peer links were started for the channel.
    pub(super) linked: bool,
}

impl OwnedChannel {
    pub(super) fn new(
        name: Arc<str>,
        key: ChannelKey,
        shards: usize,
        now: Instant,
    ) -> OwnedChannel {
        OwnedChannel {
            name,
            key,
            history: History::default(),
            members: Members::default(),
            pending: AHashMap::new(),
            links: AHashMap::new(),
            cycle_logged: false,
            shard_counts: vec![0; shards],
            member_shards: Vec::new(),
            last_activity: now,
            linked: false,
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The key the owner numbers this channel by.
    pub fn key(&self) -> ChannelKey {
        self.key
    }

    /// The member id of the join of `session` waiting to be admitted, if any.
    pub fn pending_id(&self, session: SessionId) -> Option<MemberId> {
        self.pending
            .iter()
            .find(|(_, p)| p.join.session == session)
            .map(|(id, _)| id.clone())
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// Members of either kind.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Members that are clients.
    pub fn clients(&self) -> usize {
        self.members.clients()
    }

    /// The client session holding `uid`, if any.
    pub fn holder(&self, uid: &str) -> Option<SessionId> {
        self.members.client(uid)
    }

    /// The links' state, by session.
    pub fn links(&self) -> &AHashMap<SessionId, LinkState> {
        &self.links
    }

    /// Shards with at least one member.
    pub fn member_shards(&self) -> &[u16] {
        &self.member_shards
    }

    pub(super) fn add_member(&mut self, id: MemberId, session: SessionId) {
        let s = shard_of(session) as usize;
        self.members.insert(id, session);
        self.shard_counts[s] += 1;
        if self.shard_counts[s] == 1 {
            self.member_shards.push(s as u16);
        }
    }

    /// Removes `id` if `session` holds it; `Some` with a link's state, if any.
    pub(super) fn remove_member(
        &mut self,
        id: &MemberId,
        session: SessionId,
    ) -> Option<Option<LinkState>> {
        if self.members.get(id)? != session {
            return None;
        }
        self.members.remove(id);
        let link = self.links.remove(&session);
        let s = shard_of(session) as usize;
        self.shard_counts[s] -= 1;
        if self.shard_counts[s] == 0 {
            self.member_shards.retain(|&x| x as usize != s);
        }
        Some(link)
    }

    /// Takes the join pending for `id` if `ours` says it is the one meant
    /// (answers about an older join are stale and change nothing).
    pub(super) fn take_pending(
        &mut self,
        id: &MemberId,
        ours: impl Fn(&Pending) -> bool,
    ) -> Option<Pending> {
        if self.pending.get(id).is_some_and(ours) {
            self.remove_pending(id)
        } else {
            None
        }
    }

    /// Removes the join pending for `id`. The last one out gives the map's
    /// table back: a burst of joins waiting on a shared log (a hundred
    /// at once is ordinary) would otherwise leave each channel holding a
    /// table sized for the burst for as long as it lives.
    pub(super) fn remove_pending(&mut self, id: &MemberId) -> Option<Pending> {
        let p = self.pending.remove(id);
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            self.pending = AHashMap::new();
        }
        p
    }

    /// Delivers `o` to every shard with members, except to its publisher.
    pub(super) fn fan_out(&self, o: &Ordered, out: &mut Vec<Action>) {
        let skip = o.origin.local_session();
        out.extend(self.member_shards.iter().map(|&shard| Action::Deliver {
            shard,
            key: self.key,
            skip,
            frame: o.frame.clone(),
        }));
    }

    /// This server's own links among the members (the sessions to end when
    /// no client is left).
    pub(super) fn own_links(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.members.links_of(MemberKind::OwnLink)
    }

    /// Whether this server's own links should be up for the channel: it has
    /// clients, or a synced link from another server whose frames must go on
    /// along a chain (A->B->C with no client on B).
    pub(super) fn wants_links(&self) -> bool {
        self.members.clients() > 0 || self.links.values().any(|l| l.carries_in())
    }

    /// Whether the owner may forget this channel: no members, nothing
    /// pending, and no activity for `idle`.
    pub(super) fn expired(&self, now: Instant, idle: Duration) -> bool {
        self.members.is_empty()
            && self.pending.is_empty()
            && now.saturating_duration_since(self.last_activity) >= idle
    }
}
