//! The owner of channels: PROTOCOL.md §4–5 as a state machine.
//!
//! [`Owner`] holds every channel one shard owns. Each input (a join, a
//! publish, a leave, a probe's answer, an ordered frame) updates the state
//! and appends [`Action`]s for the caller to carry out, in order. Time is an
//! argument. The order of the inputs a channel's owner handles, as numbered
//! by its [`Sequencer`], is the channel's total order.
//!
//! Here: the actions, the table of channels (names, slots, generations)
//! and publishing. The rest, each an `impl Owner` of its own:
//! - `join`: joins, probes, claims, admission, leaving
//! - `retention`: the history budget, expiry, forgetting a channel
//! - `peering`: peer links' sync, resync, routes and cycles
//! - `state`, `members`: one channel's state and its members

use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use bytes::Bytes;
use slab::Slab;

use super::sequencer::{Ordered, Origin, Sequencer};
use super::{ChannelKey, MemberId, MemberKind, SessionId};
use crate::protocol::close::Close;

mod join;
mod members;
mod peering;
mod retention;
mod state;

pub use peering::LinkState;
pub use state::OwnedChannel;
use state::Stage;

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
    /// A client joiner's history comes as [`History::replay`](super::history::History::replay)'s few
    /// buffers, not frame by frame.
    coalesce_replay: bool,
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
            coalesce_replay: false,
        }
    }

    /// Sends client joiners their history in few buffers
    /// ([`History::replay`](super::history::History::replay)) instead of frame by frame; links always get
    /// frames (they forward them one by one).
    pub fn with_coalesced_replay(mut self) -> Owner<Q> {
        self.coalesce_replay = true;
        self
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
            let p = ch.remove_pending(&uid).expect("found above");
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
}

/// The channel `key` names, unless its slot was reused since.
fn channel_mut(channels: &mut Slab<OwnedChannel>, key: ChannelKey) -> Option<&mut OwnedChannel> {
    channels
        .get_mut(key as u32 as usize)
        .filter(|c| c.key == key)
}

#[cfg(test)]
mod tests;
