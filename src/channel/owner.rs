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

use super::sequencer::{Ordered, Origin, Sequencer};
use super::{ChannelKey, MemberId, MemberKind, SessionId};
use crate::protocol::close::{self, Close};

mod members;
mod peering;
mod state;

pub use peering::LinkState;
pub use state::OwnedChannel;
use state::{Pending, Stage};

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
    /// `session` is a member of `key` as `id`: replay `history`, then live frames.
    Joined {
        session: SessionId,
        key: ChannelKey,
        id: MemberId,
        history: Vec<Bytes>,
    },
    /// Close `session` (a refused join, or a link no longer needed).
    Refused { session: SessionId, close: Close },
    /// Ask the incumbent `session` holding `id` whether it is alive (§4 probe).
    Probe {
        session: SessionId,
        key: ChannelKey,
        id: MemberId,
    },
    /// Send the link `session` a control message (a Ping with this payload).
    LinkControl { session: SessionId, payload: Bytes },
    /// The link `session` was synced and kept: its live frames, held until
    /// now, may flow (nothing crossed it while a cycle was still possible).
    OpenLink { session: SessionId },
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
    /// Change in the number of synced peer links.
    pub links: i64,
    /// Peer links refused for closing a cycle.
    pub cycles_refused: u64,
}

/// Every channel one shard owns.
#[derive(Debug)]
pub struct Owner<Q> {
    shard: u16,
    shards: usize,
    history_frames: usize,
    history_bytes: usize,
    /// Bound on the history bytes of all channels of this owner together
    /// (its share of `--history-total`).
    history_budget: usize,
    /// History bytes of all channels of this owner.
    history_total: usize,
    by_name: AHashMap<Arc<str>, u32>,
    channels: Slab<OwnedChannel>,
    /// Generation of each slot, bumped when its channel is dropped.
    generations: Vec<u16>,
    sequencer: Q,
    tally: Tally,
    /// This server's node id among peers (links, PROTOCOL.md §7).
    node: u64,
    /// Numbers links in the order they synced: the newest of two that
    /// would close a cycle is refused.
    syncs: u64,
    /// Links still waiting for their peer's sync (the timer looks only then).
    unsynced: usize,
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
            history_budget: usize::MAX,
            history_total: 0,
            by_name: AHashMap::new(),
            channels: Slab::new(),
            generations: Vec::new(),
            sequencer,
            tally: Tally::default(),
            node: 0,
            syncs: 0,
            unsynced: 0,
        }
    }

    /// Sets this server's node id among peers (from `--peer-uid`).
    pub fn with_node(mut self, node: u64) -> Owner<Q> {
        self.node = node;
        self
    }

    /// Bounds the history of all channels together to `bytes`: past it, idle
    /// channels are forgotten least recently active first, then live ones
    /// lose their oldest frames, least recently active first.
    pub fn with_history_budget(mut self, bytes: usize) -> Owner<Q> {
        self.history_budget = bytes;
        self
    }

    /// History bytes held by all channels of this owner.
    pub fn total_history_bytes(&self) -> usize {
        self.history_total
    }

    /// The channel named `name`, if this owner has it.
    pub fn channel(&self, name: &str) -> Option<&OwnedChannel> {
        self.by_name
            .get(name)
            .map(|&slot| &self.channels[slot as usize])
    }

    /// The channel `key` names, if this owner still has it.
    pub fn channel_by_key(&self, key: ChannelKey) -> Option<&OwnedChannel> {
        self.channels
            .get(key as u32 as usize)
            .filter(|c| c.key == key)
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
            .map(|(id, _)| id.clone());
        let member = ch.members.iter().any(|(_, _, s)| s == session);
        let was_pending = pending.is_some();
        if let Some(p) = pending.and_then(|id| ch.pending.remove(&id))
            && matches!(p.stage, Stage::Ordering)
        {
            self.sequencer.release(&ch.name, &p.join.uid);
        }
        if was_pending || member {
            out.push(Action::Refused { session, close });
        }
    }

    /// The sequencer found this node's copy of channel `key` incomplete (a
    /// cluster feed that fell behind what the shared log retains): every
    /// member and waiting joiner is closed with `close`, and the channel is
    /// forgotten with its history, so the next join loads it afresh.
    pub fn forget(&mut self, key: ChannelKey, close: Close, out: &mut Vec<Action>) {
        if channel_mut(&mut self.channels, key).is_none() {
            return;
        }
        let slot = key as u32 as usize;
        let mut ch = self.channels.remove(slot);
        self.by_name.remove(&ch.name);
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        self.history_total -= ch.history.bytes();
        for (_, uid, session) in ch.members.iter() {
            let link = ch.links.remove(&session);
            peering::link_gone(&mut self.tally, &mut self.unsynced, link);
            self.sequencer.release(&ch.name, uid);
            out.push(Action::Refused { session, close });
        }
        for p in ch.pending.values() {
            if matches!(p.stage, Stage::Ordering) {
                self.sequencer.release(&ch.name, &p.join.uid);
            }
            out.push(Action::Refused {
                session: p.join.session,
                close,
            });
        }
        self.sequencer.expired(key);
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
        let id = (j.kind, j.uid.clone());
        if ch.pending.contains_key(&id) {
            return out.push(Action::Refused {
                session: j.session,
                close: close::DUPLICATE,
            });
        }
        if let Some(incumbent) = ch.members.get(&id) {
            out.push(Action::Probe {
                session: incumbent,
                key: ch.key,
                id: id.clone(),
            });
            let stage = Stage::Probing { incumbent };
            ch.pending.insert(id, Pending { stage, join: j });
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
                ch.pending.insert((p.join.kind, p.join.uid.clone()), p);
            }
        }
    }

    /// The sequencer's answer to a claim it could not give at once.
    pub fn claimed(
        &mut self,
        key: ChannelKey,
        id: &MemberId,
        session: SessionId,
        free: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(ch) = channel_mut(&mut self.channels, key) else {
            return;
        };
        let ours = |p: &Pending| matches!(p.stage, Stage::Claiming) && p.join.session == session;
        let Some(p) = ch.take_pending(id, ours) else {
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
        if j.kind == MemberKind::OwnLink {
            if !ch.wants_links() {
                // Every client (and link passing frames on) left while this link was connecting.
                return out.push(Action::Refused {
                    session: j.session,
                    close: close::CHANNEL_EMPTY,
                });
            }
            return self.admit(slot, j, None, now, out);
        }
        if j.kind == MemberKind::Link {
            // Another server's link: no header to relay or store.
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
                ch.pending.insert((p.join.kind, p.join.uid.clone()), p);
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
            let before = ch.history.bytes();
            ch.history
                .push(h.frame, self.history_frames, self.history_bytes);
            self.history_total = self.history_total + ch.history.bytes() - before;
        }
        ch.add_member((j.kind, j.uid.clone()), j.session);
        ch.last_activity = now;
        self.tally.joins += 1;
        out.push(Action::Joined {
            session: j.session,
            key: ch.key,
            id: (j.kind, j.uid),
            history,
        });
        if j.kind.is_link() {
            self.link_admitted(slot, j.session, j.kind, now, out);
        }
        self.update_links(slot, out);
        self.enforce_history_budget();
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
        // Most channels have no links: skip the lookup for them.
        if !ch.links.is_empty()
            && let Some(link) = ch.links.get_mut(&origin)
            && link.buffer(&frame, self.history_frames, self.history_bytes)
        {
            return;
        }
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
        let before = ch.history.bytes();
        ch.history
            .push(o.frame, self.history_frames, self.history_bytes);
        self.history_total = self.history_total + ch.history.bytes() - before;
        ch.last_activity = now;
        self.enforce_history_budget();
    }

    /// Brings the history of all channels back under the budget (to 90% of
    /// it, so a steady stream does not trim on every frame): idle channels
    /// go first, whole, least recently active first; then live channels
    /// lose their oldest frames, least recently active first. Runs only
    /// when over budget, so the scans cost nothing in normal operation.
    fn enforce_history_budget(&mut self) {
        if self.history_total <= self.history_budget {
            return;
        }
        let target = self.history_budget - self.history_budget / 10;
        let mut by_age: Vec<(Instant, bool, usize)> = self
            .channels
            .iter()
            .map(|(slot, c)| {
                (
                    c.last_activity,
                    c.members.is_empty() && c.pending.is_empty(),
                    slot,
                )
            })
            .collect();
        by_age.sort_unstable();
        for &(_, idle, slot) in &by_age {
            if self.history_total <= target {
                return;
            }
            if idle {
                let ch = self.channels.remove(slot);
                self.by_name.remove(&ch.name);
                self.generations[slot] = self.generations[slot].wrapping_add(1);
                self.history_total -= ch.history.bytes();
                self.sequencer.expired(ch.key);
            }
        }
        for &(_, idle, slot) in &by_age {
            let over = self.history_total.saturating_sub(target);
            if over == 0 {
                return;
            }
            if !idle {
                let h = &mut self.channels[slot].history;
                let keep = h.bytes().saturating_sub(over);
                self.history_total -= h.trim_to(keep);
            }
        }
    }

    /// A member's session ended. A join waiting on it as the probed
    /// incumbent proceeds now; the last client's leaving ends this server's links.
    pub fn leave(
        &mut self,
        key: ChannelKey,
        id: &MemberId,
        session: SessionId,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(ch) = channel_mut(&mut self.channels, key) else {
            return;
        };
        let routed = ch
            .links
            .get(&session)
            .is_some_and(LinkState::routes_through);
        let Some(link) = ch.remove_member(id, session) else {
            return;
        };
        peering::link_gone(&mut self.tally, &mut self.unsynced, link);
        ch.last_activity = now;
        self.sequencer.release(&ch.name, &id.1);
        let slot = key as u32 as usize;
        if routed {
            self.advertise(slot, out);
        }
        let ch = &mut self.channels[slot];
        if let Some(p) = ch.take_pending(id, |p| p.probes(session)) {
            return self.claim(slot, p.join, now, out);
        }
        if id.0 != MemberKind::OwnLink {
            self.update_links(slot, out);
        }
    }

    /// The probed incumbent answered (or failed to): the waiting newcomer is
    /// refused if it is alive, else it replaces it. Stale answers are ignored.
    pub fn probe_result(
        &mut self,
        key: ChannelKey,
        id: &MemberId,
        incumbent: SessionId,
        alive: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(ch) = channel_mut(&mut self.channels, key) else {
            return;
        };
        let Some(p) = ch.take_pending(id, |p| p.probes(incumbent)) else {
            return;
        };
        if alive && ch.members.get(id) == Some(incumbent) {
            return out.push(Action::Refused {
                session: p.join.session,
                close: close::DUPLICATE,
            });
        }
        if let Some(link) = ch.remove_member(id, incumbent) {
            peering::link_gone(&mut self.tally, &mut self.unsynced, link);
            self.sequencer.release(&ch.name, &id.1);
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
        let total = &mut self.history_total;
        let sequencer = &mut self.sequencer;
        self.channels.retain(|slot, ch| {
            let keep = !ch.expired(now, idle);
            if !keep {
                by_name.remove(&ch.name);
                generations[slot] = generations[slot].wrapping_add(1);
                *total -= ch.history.bytes();
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
