//! The owner of channels: PROTOCOL.md §4–5 as a state machine.
//!
//! [`Owner`] holds every channel one shard owns. Each input (a join, a
//! publish, a leave, a probe's answer, an ordered frame) updates the state
//! and appends [`Action`]s for the caller to carry out, in order. Time is an
//! argument. The order of the inputs a channel's owner handles, as numbered
//! by its [`Sequencer`], is the channel's total order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::Bytes;
use slab::Slab;

use super::history::History;
use super::sequencer::{Ordered, Origin, Sequencer};
use super::{ChannelKey, MemberKind, SessionId, shard_of};
use crate::protocol::close::{self, Close};

/// Most channels one shard may own at once: a slot must fit the key's 32 bits.
const MAX_CHANNELS: usize = u32::MAX as usize;

/// What the owner's caller must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write `frame` to the members of `key` on `shard`, except the local
    /// session `skip` (the frame's publisher, when it is a local session).
    Deliver {
        shard: u16,
        key: ChannelKey,
        skip: Option<SessionId>,
        frame: Bytes,
    },
    /// `session` is a member of `key` as `uid`: replay `history`, then live frames.
    Joined {
        session: SessionId,
        key: ChannelKey,
        uid: Arc<str>,
        history: Vec<Bytes>,
    },
    /// Close `session` (a refused join, or a link no longer needed).
    Refused { session: SessionId, close: Close },
    /// Ask the incumbent `session` holding `uid` whether it is alive (§4 probe).
    Probe {
        session: SessionId,
        key: ChannelKey,
        uid: Arc<str>,
    },
    /// The channel got its first client: start this server's peer links for it.
    StartLinks { key: ChannelKey, channel: Arc<str> },
}

/// A session asking to join.
#[derive(Debug, Clone)]
pub struct Join {
    pub channel: Arc<str>,
    pub uid: Arc<str>,
    pub session: SessionId,
    pub kind: MemberKind,
    /// The header frame to relay and store (without `auth`); empty for links.
    pub header: Bytes,
}

/// Counts of what the owner did, for metrics; taken with [`Owner::take_tally`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub joins: u64,
    pub published: u64,
    pub dedup_dropped: u64,
    pub probe_replaced: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    session: SessionId,
    kind: MemberKind,
}

/// Where a join that is not yet admitted waits.
#[derive(Debug)]
enum Stage {
    /// The incumbent with the same uid is being probed.
    Probing { incumbent: SessionId },
    /// The sequencer is claiming (channel, uid) beyond this owner.
    Claiming,
    /// The join header is on its way through the sequencer.
    Ordering,
}

#[derive(Debug)]
struct Pending {
    stage: Stage,
    join: Join,
}

impl Pending {
    /// Whether this join waits on a probe of `incumbent`.
    fn probes(&self, incumbent: SessionId) -> bool {
        matches!(self.stage, Stage::Probing { incumbent: i } if i == incumbent)
    }
}

/// The owner's record of one channel.
#[derive(Debug)]
pub struct OwnedChannel {
    name: Arc<str>,
    key: ChannelKey,
    history: History,
    members: AHashMap<Arc<str>, Member>,
    /// Joins not yet admitted, by uid: they count for the duplicate check.
    pending: AHashMap<Arc<str>, Pending>,
    /// Members per shard, and the shards with at least one, for fan-out.
    shard_counts: Vec<u32>,
    member_shards: Vec<u16>,
    clients: usize,
    last_activity: Instant,
    /// This server's peer links were started for the channel.
    linked: bool,
}

impl OwnedChannel {
    fn new(name: Arc<str>, key: ChannelKey, shards: usize, now: Instant) -> OwnedChannel {
        OwnedChannel {
            name,
            key,
            history: History::default(),
            members: AHashMap::new(),
            pending: AHashMap::new(),
            shard_counts: vec![0; shards],
            member_shards: Vec::new(),
            clients: 0,
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

    pub fn history(&self) -> &History {
        &self.history
    }

    /// Members of either kind.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Members that are clients.
    pub fn clients(&self) -> usize {
        self.clients
    }

    /// The session holding `uid`, if any.
    pub fn holder(&self, uid: &str) -> Option<SessionId> {
        self.members.get(uid).map(|m| m.session)
    }

    /// Shards with at least one member.
    pub fn member_shards(&self) -> &[u16] {
        &self.member_shards
    }

    fn add_member(&mut self, uid: Arc<str>, m: Member) {
        let s = shard_of(m.session) as usize;
        self.clients += usize::from(m.kind == MemberKind::Client);
        self.members.insert(uid, m);
        self.shard_counts[s] += 1;
        if self.shard_counts[s] == 1 {
            self.member_shards.push(s as u16);
        }
    }

    /// Removes `uid` if `session` holds it.
    fn remove_member(&mut self, uid: &str, session: SessionId) -> Option<Member> {
        if self.members.get(uid)?.session != session {
            return None;
        }
        let m = self.members.remove(uid).expect("looked up above");
        self.clients -= usize::from(m.kind == MemberKind::Client);
        let s = shard_of(session) as usize;
        self.shard_counts[s] -= 1;
        if self.shard_counts[s] == 0 {
            self.member_shards.retain(|&x| x as usize != s);
        }
        Some(m)
    }

    /// Takes the join pending for `uid` if `ours` says it is the one meant
    /// (answers about an older join are stale and change nothing).
    fn take_pending(&mut self, uid: &str, ours: impl Fn(&Pending) -> bool) -> Option<Pending> {
        if self.pending.get(uid).is_some_and(ours) {
            self.pending.remove(uid)
        } else {
            None
        }
    }

    /// Delivers `o` to every shard with members, except to its publisher.
    fn fan_out(&self, o: &Ordered, out: &mut Vec<Action>) {
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
    fn links(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.members
            .values()
            .filter(|m| m.kind == MemberKind::Link)
            .map(|m| m.session)
    }

    /// Whether the owner may forget this channel: no members, nothing
    /// pending, and no activity for `idle`.
    fn expired(&self, now: Instant, idle: Duration) -> bool {
        self.members.is_empty()
            && self.pending.is_empty()
            && now.saturating_duration_since(self.last_activity) >= idle
    }
}

/// Every channel one shard owns.
#[derive(Debug)]
pub struct Owner<Q> {
    shard: u16,
    shards: usize,
    history_frames: usize,
    history_bytes: usize,
    by_name: AHashMap<Arc<str>, u32>,
    channels: Slab<OwnedChannel>,
    /// Generation of each slot, bumped when its channel is dropped.
    generations: Vec<u16>,
    sequencer: Q,
    tally: Tally,
}

impl<Q: Sequencer> Owner<Q> {
    /// The owner on `shard` of `shards`, with history bounds `--limit` and `--history-bytes`.
    pub fn new(
        shard: u16,
        shards: usize,
        history_frames: usize,
        history_bytes: usize,
        sequencer: Q,
    ) -> Owner<Q> {
        Owner {
            shard,
            shards,
            history_frames,
            history_bytes,
            by_name: AHashMap::new(),
            channels: Slab::new(),
            generations: Vec::new(),
            sequencer,
            tally: Tally::default(),
        }
    }

    /// The channel named `name`, if this owner has it.
    pub fn channel(&self, name: &str) -> Option<&OwnedChannel> {
        self.by_name
            .get(name)
            .map(|&slot| &self.channels[slot as usize])
    }

    /// How many channels this owner holds.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// The sequencer, for the caller that feeds back what it answered later.
    pub fn sequencer_mut(&mut self) -> &mut Q {
        &mut self.sequencer
    }

    /// The sequencer could not carry out something for `session` (a claim
    /// it could not ask, a frame or join header it could not order): its
    /// join, if still pending, is dropped (a claim it already holds is
    /// released), and the session is closed with `close` (a member then
    /// leaves as usual).
    pub fn abandon(
        &mut self,
        key: ChannelKey,
        session: SessionId,
        close: Close,
        out: &mut Vec<Action>,
    ) {
        let Some(ch) = channel_mut(&mut self.channels, key) else {
            return;
        };
        let pending = ch
            .pending
            .iter()
            .find(|(_, p)| p.join.session == session)
            .map(|(uid, _)| uid.clone());
        let member = ch.members.values().any(|m| m.session == session);
        let was_pending = pending.is_some();
        if let Some(p) = pending.and_then(|uid| ch.pending.remove(&uid))
            && matches!(p.stage, Stage::Ordering)
        {
            self.sequencer.release(&ch.name, &p.join.uid);
        }
        if was_pending || member {
            out.push(Action::Refused { session, close });
        }
    }

    /// What was counted since the last call.
    pub fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    /// The slot of `name`, created if new; `None` when the table is full.
    fn slot(&mut self, name: &Arc<str>, now: Instant) -> Option<usize> {
        if let Some(&slot) = self.by_name.get(name) {
            return Some(slot as usize);
        }
        if self.channels.len() >= MAX_CHANNELS {
            return None;
        }
        let entry = self.channels.vacant_entry();
        let slot = entry.key();
        if self.generations.len() <= slot {
            self.generations.resize(slot + 1, 0);
        }
        let key =
            (u64::from(self.shard) << 48) | (u64::from(self.generations[slot]) << 32) | slot as u64;
        entry.insert(OwnedChannel::new(name.clone(), key, self.shards, now));
        self.by_name.insert(name.clone(), slot as u32);
        Some(slot)
    }

    /// A session asks to join (§4): refused as a duplicate, held while the
    /// incumbent is probed, or admitted.
    pub fn join(&mut self, j: Join, now: Instant, out: &mut Vec<Action>) {
        let Some(slot) = self.slot(&j.channel, now) else {
            return out.push(Action::Refused {
                session: j.session,
                close: close::TOO_MANY_CHANNELS,
            });
        };
        let ch = &mut self.channels[slot];
        if ch.pending.contains_key(&j.uid) {
            return out.push(Action::Refused {
                session: j.session,
                close: close::DUPLICATE,
            });
        }
        if let Some(&m) = ch.members.get(&j.uid) {
            out.push(Action::Probe {
                session: m.session,
                key: ch.key,
                uid: j.uid.clone(),
            });
            let stage = Stage::Probing {
                incumbent: m.session,
            };
            ch.pending.insert(j.uid.clone(), Pending { stage, join: j });
            return;
        }
        self.claim(slot, j, now, out);
    }

    /// The uid is free on this owner: claim it beyond, then order the header.
    fn claim(&mut self, slot: usize, j: Join, now: Instant, out: &mut Vec<Action>) {
        let ch = &mut self.channels[slot];
        match self.sequencer.claim(ch.key, &ch.name, &j.uid, j.session) {
            Some(true) => self.order_join(slot, j, now, out),
            Some(false) => out.push(Action::Refused {
                session: j.session,
                close: close::DUPLICATE,
            }),
            None => {
                let p = Pending {
                    stage: Stage::Claiming,
                    join: j,
                };
                ch.pending.insert(p.join.uid.clone(), p);
            }
        }
    }

    /// The sequencer's answer to a claim it could not give at once.
    pub fn claimed(
        &mut self,
        key: ChannelKey,
        uid: &str,
        session: SessionId,
        free: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(ch) = channel_mut(&mut self.channels, key) else {
            return;
        };
        let ours = |p: &Pending| matches!(p.stage, Stage::Claiming) && p.join.session == session;
        let Some(p) = ch.take_pending(uid, ours) else {
            return;
        };
        if free {
            let slot = key as u32 as usize;
            self.order_join(slot, p.join, now, out);
        } else {
            out.push(Action::Refused {
                session,
                close: close::DUPLICATE,
            });
        }
    }

    /// Sends a client's header through the sequencer; a link is admitted at once.
    fn order_join(&mut self, slot: usize, j: Join, now: Instant, out: &mut Vec<Action>) {
        let ch = &mut self.channels[slot];
        if j.kind == MemberKind::Link {
            if ch.clients == 0 {
                // Every client left while this link was connecting.
                return out.push(Action::Refused {
                    session: j.session,
                    close: close::CHANNEL_EMPTY,
                });
            }
            return self.admit(slot, j, None, now, out);
        }
        let last = ch.history.last_seq();
        let origin = Origin::local(j.session);
        match self
            .sequencer
            .order(ch.key, &ch.name, last, origin, j.header.clone())
        {
            Some(o) => self.admit(slot, j, Some(o), now, out),
            None => {
                let p = Pending {
                    stage: Stage::Ordering,
                    join: j,
                };
                ch.pending.insert(p.join.uid.clone(), p);
            }
        }
    }

    /// Makes `j` a member: its header (once ordered) to the members, the
    /// history to the joiner, then the header into history (§4 steps 2–5).
    fn admit(
        &mut self,
        slot: usize,
        j: Join,
        header: Option<Ordered>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let ch = &mut self.channels[slot];
        if let Some(h) = &header {
            ch.fan_out(h, out);
        }
        let history = ch.history.snapshot();
        if let Some(h) = header {
            ch.history
                .push(h.frame, self.history_frames, self.history_bytes);
        }
        let first_client = j.kind == MemberKind::Client && ch.clients == 0;
        ch.add_member(
            j.uid.clone(),
            Member {
                session: j.session,
                kind: j.kind,
            },
        );
        ch.last_activity = now;
        self.tally.joins += 1;
        out.push(Action::Joined {
            session: j.session,
            key: ch.key,
            uid: j.uid,
            history,
        });
        if first_client && !ch.linked {
            ch.linked = true;
            out.push(Action::StartLinks {
                key: ch.key,
                channel: ch.name.clone(),
            });
        }
    }

    /// A member published `frame`: dropped if `dedup` finds it in history,
    /// else handed to the sequencer.
    pub fn publish(
        &mut self,
        key: ChannelKey,
        origin: SessionId,
        frame: Bytes,
        dedup: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(ch) = channel_mut(&mut self.channels, key) else {
            return;
        };
        if dedup && ch.history.contains(&frame) {
            self.tally.dedup_dropped += 1;
            return;
        }
        let (name, last) = (ch.name.clone(), ch.history.last_seq());
        if let Some(o) = self
            .sequencer
            .order(key, &name, last, Origin::local(origin), frame)
        {
            self.ordered(key, o, now, out);
        }
    }

    /// A frame came back from the sequencer: a waiting joiner's header
    /// admits it; anything else is stored and delivered.
    pub fn ordered(&mut self, key: ChannelKey, o: Ordered, now: Instant, out: &mut Vec<Action>) {
        let Some(ch) = channel_mut(&mut self.channels, key) else {
            return;
        };
        let joiner = o.origin.local_session().and_then(|s| {
            ch.pending
                .iter()
                .find(|(_, p)| matches!(p.stage, Stage::Ordering) && p.join.session == s)
                .map(|(uid, _)| uid.clone())
        });
        if let Some(uid) = joiner {
            let p = ch.pending.remove(&uid).expect("found above");
            let slot = key as u32 as usize;
            return self.admit(slot, p.join, Some(o), now, out);
        }
        self.tally.published += 1;
        ch.fan_out(&o, out);
        ch.history
            .push(o.frame, self.history_frames, self.history_bytes);
        ch.last_activity = now;
    }

    /// A member's session ended. A join waiting on it as the probed
    /// incumbent proceeds now; the last client's leaving ends this server's links.
    pub fn leave(
        &mut self,
        key: ChannelKey,
        uid: &Arc<str>,
        session: SessionId,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(ch) = channel_mut(&mut self.channels, key) else {
            return;
        };
        let Some(m) = ch.remove_member(uid, session) else {
            return;
        };
        ch.last_activity = now;
        self.sequencer.release(&ch.name, uid);
        if let Some(p) = ch.take_pending(uid, |p| p.probes(session)) {
            let slot = key as u32 as usize;
            return self.claim(slot, p.join, now, out);
        }
        if m.kind == MemberKind::Client && ch.clients == 0 && ch.linked {
            ch.linked = false;
            out.extend(ch.links().map(|session| Action::Refused {
                session,
                close: close::CHANNEL_EMPTY,
            }));
        }
    }

    /// The probed incumbent answered (or failed to): the waiting newcomer is
    /// refused if it is alive, else it replaces it. Stale answers are ignored.
    pub fn probe_result(
        &mut self,
        key: ChannelKey,
        uid: &Arc<str>,
        incumbent: SessionId,
        alive: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(ch) = channel_mut(&mut self.channels, key) else {
            return;
        };
        let Some(p) = ch.take_pending(uid, |p| p.probes(incumbent)) else {
            return;
        };
        if alive && ch.holder(uid) == Some(incumbent) {
            return out.push(Action::Refused {
                session: p.join.session,
                close: close::DUPLICATE,
            });
        }
        if ch.remove_member(uid, incumbent).is_some() {
            self.sequencer.release(&ch.name, uid);
        }
        self.tally.probe_replaced += 1;
        let slot = key as u32 as usize;
        self.claim(slot, p.join, now, out);
    }

    /// Drops channels with no members, nothing pending and no activity for
    /// `idle`; returns how many.
    pub fn expire(&mut self, now: Instant, idle: Duration) -> usize {
        let before = self.channels.len();
        let (by_name, generations) = (&mut self.by_name, &mut self.generations);
        let sequencer = &mut self.sequencer;
        self.channels.retain(|slot, ch| {
            let keep = !ch.expired(now, idle);
            if !keep {
                by_name.remove(&ch.name);
                generations[slot] = generations[slot].wrapping_add(1);
                sequencer.expired(ch.key);
            }
            keep
        });
        before - self.channels.len()
    }
}

/// The channel `key` names, unless its slot was reused since.
fn channel_mut(channels: &mut Slab<OwnedChannel>, key: ChannelKey) -> Option<&mut OwnedChannel> {
    channels
        .get_mut(key as u32 as usize)
        .filter(|c| c.key == key)
}

#[cfg(test)]
mod tests;
