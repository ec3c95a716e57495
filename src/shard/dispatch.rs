//! Carrying out what a channel's owner decided ([`Action`]), and the
//! member side of the mesh: deliveries, joins answered, refusals, probes
//! and link control for this shard's own sessions.

use bytes::Bytes;

use super::Shard;
use super::mesh::ShardMsg;
use crate::channel::{Action, ChannelKey, MemberId, SessionId, owner_of, shard_of};
use crate::metrics::Counters;
use crate::protocol::close::Close;
use crate::protocol::frame::{self, OP_PING};
use crate::session::Host;

/// Frames up to this size go to another shard as a copy of their own: that
/// shard clones a frame once per member and drops it once per write, and
/// with a copy those reference counts stay in its own core's cache instead
/// of one count bouncing between every core the channel reaches. Larger
/// frames are shared (the copy would cost more than the counting).
pub(super) const COPY_TO_SHARD_MAX: usize = 1024;

impl Shard {
    /// Carries out one of the owner's decisions; what concerns this shard's
    /// own sessions is done at once, so a joiner is a member before any
    /// later frame is delivered here.
    pub(super) fn apply(&self, a: Action) {
        match a {
            Action::Deliver {
                shard,
                key,
                skip,
                frame,
            } => {
                if shard == self.id {
                    self.deliver_local(key, skip, &frame);
                } else {
                    let frame = if frame.len() <= COPY_TO_SHARD_MAX {
                        Bytes::copy_from_slice(&frame)
                    } else {
                        frame
                    };
                    self.send(shard, ShardMsg::Deliver { key, skip, frame });
                }
            }
            Action::Joined {
                session,
                key,
                id,
                history,
            } => {
                if shard_of(session) == self.id {
                    self.on_joined(session, key, id, history);
                } else {
                    let msg = ShardMsg::Joined {
                        session,
                        key,
                        id,
                        history,
                    };
                    self.send(shard_of(session), msg);
                }
            }
            Action::Refused { session, close } => {
                if shard_of(session) == self.id {
                    self.on_refused(session, close);
                } else {
                    self.send(shard_of(session), ShardMsg::Refused { session, close });
                }
            }
            Action::Probe { session, key, id } => {
                if shard_of(session) == self.id {
                    self.on_probe(session, key, id);
                } else {
                    self.send(shard_of(session), ShardMsg::Probe { session, key, id });
                }
            }
            Action::OpenLink { session } => {
                if shard_of(session) == self.id {
                    self.on_open(session);
                } else {
                    self.send(shard_of(session), ShardMsg::OpenLink { session });
                }
            }
            Action::LinkControl { session, payload } => {
                if shard_of(session) == self.id {
                    self.on_control(session, payload);
                } else {
                    self.send(shard_of(session), ShardMsg::Control { session, payload });
                }
            }
            Action::StartLinks { channel, .. } => {
                let start = self.links.start.borrow().clone();
                let me = self.links.me.borrow().upgrade();
                if let (Some(start), Some(me)) = (start, me) {
                    start(&me, channel);
                }
            }
        }
    }

    /// Posts to another shard; a stopped shard (shutdown) drops it.
    pub(super) fn send(&self, to: u16, msg: ShardMsg) {
        if self.mesh.send(to, msg).is_err() {
            tracing::debug!(shard = self.id, to, "message to a stopped shard dropped");
        }
    }

    // ---- member side ----

    /// Queues `frame` for the local members of `key`; plain members are
    /// written by the flush task ([`Shard::run_flush`]).
    pub(super) fn deliver_local(&self, key: ChannelKey, skip: Option<SessionId>, frame: &Bytes) {
        let (n, slow) = {
            let mut list = self.flush.list.borrow_mut();
            let was_empty = list.is_empty();
            let r =
                self.registry
                    .borrow()
                    .deliver(key, skip, frame, self.limits.max_queue, &mut list);
            if was_empty && !list.is_empty() {
                self.flush.wake.notify_one();
            }
            r
        };
        let c = self.counters();
        Counters::add(&c.delivered, n);
        Counters::add(&c.slow_consumers, slow);
    }

    /// Writes out the members offered frames since the last flush.
    pub(super) fn flush_members(&self) {
        let mut list = std::mem::take(&mut *self.flush.list.borrow_mut());
        for s in list.drain(..) {
            s.flush();
        }
        // Keep the list's memory for the next round.
        let mut f = self.flush.list.borrow_mut();
        if f.is_empty() {
            *f = list;
        }
    }

    pub(super) fn on_joined(
        &self,
        session: SessionId,
        key: ChannelKey,
        id: MemberId,
        history: Vec<Bytes>,
    ) {
        let s = self.registry.borrow().get(session).cloned();
        let member = s.is_some_and(|s| s.joined(key, id.1.clone(), history, id.0.is_link()))
            && self.registry.borrow_mut().add_member(session, key, id.0);
        if !member {
            // Gone or closing meanwhile: the owner must forget it again.
            self.submit(owner_of(key), ShardMsg::Leave { key, id, session });
        }
    }

    /// A link's peer synced and the link was kept: its live frames may flow.
    pub(super) fn on_open(&self, session: SessionId) {
        let s = self.registry.borrow().get(session).cloned();
        if let Some(s) = s {
            s.release();
        }
    }

    /// Sends a link member a control message, as a Ping.
    pub(super) fn on_control(&self, session: SessionId, payload: Bytes) {
        let s = self.registry.borrow().get(session).cloned();
        if let Some(s) = s {
            s.push_control(frame::encode(OP_PING, &payload));
        }
    }

    pub(super) fn on_refused(&self, session: SessionId, c: Close) {
        let s = self.registry.borrow().get(session).cloned();
        if let Some(s) = s {
            s.close(c);
        }
    }

    pub(super) fn on_probe(&self, session: SessionId, key: ChannelKey, id: MemberId) {
        let s = self.registry.borrow().get(session).cloned();
        let answer = match s {
            Some(s) => s.probe(key, id.clone(), crate::clock::now()),
            None => Some(false),
        };
        if let Some(alive) = answer {
            self.probe_answered(key, id, session, alive);
        }
    }
}
