//! How long channels and their history are kept: the history budget of all
//! channels together, the expiry of idle channels, and forgetting a channel
//! whose copy is incomplete.

use std::time::{Duration, Instant};

use super::state::Stage;
use super::{Action, Owner, channel_mut, peering};
use crate::channel::ChannelKey;
use crate::channel::sequencer::Sequencer;
use crate::protocol::close::Close;

impl<Q: Sequencer> Owner<Q> {
    /// Brings the history of all channels back under the budget (to 90% of
    /// it, so a steady stream does not trim on every frame): idle channels
    /// go first, whole, least recently active first; then live channels
    /// lose their oldest frames, least recently active first. Runs only
    /// when over budget, so the scans cost nothing in normal operation.
    pub(super) fn enforce_history_budget(&mut self) {
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
}
