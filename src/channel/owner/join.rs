//! Joining a channel (PROTOCOL.md §4): the duplicate check, the probe of a
//! half-open incumbent, the claim of the uid beyond this owner (cluster
//! mode), ordering the joiner's header, admission with its history
//! snapshot; and the ends of membership: leaving, and a join the sequencer
//! could not carry out.

use std::time::Instant;

use super::state::{Pending, Stage};
use super::{Action, Join, LinkState, Owner, channel_mut, peering};
use crate::channel::sequencer::{Ordered, Origin, Sequencer};
use crate::channel::{ChannelKey, MemberId, MemberKind, SessionId};
use crate::protocol::close::{self, Close};

impl<Q: Sequencer> Owner<Q> {
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
    pub(super) fn claim(&mut self, slot: usize, j: Join, now: Instant, out: &mut Vec<Action>) {
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
    pub(super) fn order_join(&mut self, slot: usize, j: Join, now: Instant, out: &mut Vec<Action>) {
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
    pub(super) fn admit(
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
        let history = if self.coalesce_replay && !j.kind.is_link() {
            ch.history.replay()
        } else {
            ch.history.snapshot()
        };
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
        if let Some(p) = pending.and_then(|id| ch.remove_pending(&id))
            && matches!(p.stage, Stage::Ordering)
        {
            self.sequencer.release(&ch.name, &p.join.uid);
        }
        if was_pending || member {
            out.push(Action::Refused { session, close });
        }
    }
}
