//! Cluster mode on a shard: feeding what the shared log answers back to the
//! owner, and answering other nodes' half-open probes.
//!
//! The owner's [`ClusterSequencer`] reports on a channel; a task drains it
//! into the shard's own queue ([`ShardMsg::Cluster`]), so every event is
//! handled like any other message (in order, supervised). A probe from
//! another node goes to the channel's owner shard, which asks the session's
//! shard exactly as for a local newcomer (PROTOCOL.md §4) and answers when
//! the probe result comes back.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::mesh::{Mesh, ShardMsg};
use super::{Shard, router};
use crate::channel::{Action, ChannelKey, MemberId, MemberKind, Owner, Sequencer, SessionId};
use crate::cluster::link::BoxFuture;
use crate::cluster::sequencer::{ClaimOutcome, ClusterSequencer, SeqEvent, SeqEvents};
use crate::cluster::{Cluster, LogEvent, Prober, PublishError};
use crate::protocol::close;

/// A probe from another node waiting for its session's answer.
pub(super) struct RemoteProbe {
    key: ChannelKey,
    session: SessionId,
    reply: oneshot::Sender<bool>,
}

impl Shard {
    /// Puts this shard's channels on the shared log; returns the events to
    /// drain with [`Shard::run_cluster`].
    pub fn enable_cluster(&self, cluster: Cluster) -> SeqEvents {
        let (sequencer, events) = ClusterSequencer::new(cluster);
        *self.owner.borrow_mut().sequencer_mut() = Box::new(sequencer);
        events
    }

    /// Hands the shared log's events to this shard's queue, forever.
    pub async fn run_cluster(&self, mut events: SeqEvents) {
        while let Some(e) = events.next().await {
            self.submit(self.id, ShardMsg::Cluster(e));
        }
        // The sequencer (which holds the senders) lives as long as the shard.
        std::future::pending::<()>().await
    }

    /// The channel whose (channel, uid) `session` holds here, if it does.
    fn held_by(&self, channel: &str, uid: &str, session: SessionId) -> Option<ChannelKey> {
        self.owner
            .borrow()
            .channel(channel)
            .filter(|c| c.holder(uid) == Some(session))
            .map(|c| c.key())
    }

    /// Another node asks whether `session` still holds (channel, uid) here.
    pub(super) fn on_remote_probe(
        &self,
        channel: Arc<str>,
        uid: Arc<str>,
        session: SessionId,
        reply: oneshot::Sender<bool>,
    ) {
        let Some(key) = self.held_by(&channel, &uid, session) else {
            let _ = reply.send(false);
            return;
        };
        self.remote_probes.borrow_mut().push(RemoteProbe {
            key,
            session,
            reply,
        });
        let id: MemberId = (MemberKind::Client, uid);
        self.apply(Action::Probe { session, key, id });
    }

    /// Another node holds (channel, uid) now: `session`, if it still holds it
    /// here, is closed (1008).
    pub(super) fn on_taken_over(&self, channel: &str, uid: &str, session: SessionId) {
        if let Some(key) = self.held_by(channel, uid, session) {
            tracing::warn!(%channel, %uid, session, "cluster: uid taken over on another node; closing it here");
            self.with_owner(|o, out| o.abandon(key, session, close::UID_TAKEN, out));
        }
    }

    /// A probe of `session` was answered (or it left): tell the nodes that asked.
    pub(super) fn answer_remote_probes(&self, key: ChannelKey, session: SessionId, alive: bool) {
        let mut probes = self.remote_probes.borrow_mut();
        if probes.is_empty() {
            return;
        }
        let (done, rest): (Vec<_>, Vec<_>) = probes
            .drain(..)
            .partition(|p| p.key == key && p.session == session);
        *probes = rest;
        for p in done {
            let _ = p.reply.send(alive);
        }
    }
}

/// The cluster sequencer inside an owner, if the node is in cluster mode.
fn cluster_sequencer(owner: &mut Owner<Box<dyn Sequencer>>) -> Option<&mut ClusterSequencer> {
    owner
        .sequencer_mut()
        .as_any_mut()?
        .downcast_mut::<ClusterSequencer>()
}

/// One event of the shared log, on the owner shard.
pub(super) fn on_event(
    owner: &mut Owner<Box<dyn Sequencer>>,
    e: SeqEvent,
    now: Instant,
    out: &mut Vec<Action>,
) {
    match e {
        SeqEvent::Log {
            key,
            event: LogEvent::Frame(d),
        } => {
            let Some(name) = cluster_sequencer(owner).and_then(|s| s.name(key).cloned()) else {
                return;
            };
            let next = owner
                .channel(&name)
                .filter(|c| c.key() == key)
                .map_or(1, |c| c.history().last_seq() + 1);
            let Some(frames) = cluster_sequencer(owner).and_then(|s| s.ordered(key, d, next))
            else {
                return;
            };
            for o in frames {
                owner.ordered(key, o, now, out);
            }
        }
        SeqEvent::Log {
            event: LogEvent::CaughtUp,
            ..
        } => {}
        SeqEvent::Log {
            key,
            event: LogEvent::Restarted,
        } => {
            if let Some(s) = cluster_sequencer(owner) {
                s.restarted(key);
            }
        }
        SeqEvent::Log {
            key,
            event: LogEvent::Behind,
        } => {
            // Only if the event is from the channel's current log: an old
            // log's events may still be queued after the channel was forgotten.
            if cluster_sequencer(owner).is_some_and(|s| s.name(key).is_some()) {
                owner.forget(key, close::CLUSTER_BEHIND, out);
            }
        }
        SeqEvent::Log {
            key,
            event: LogEvent::Lost { session, error },
        } => {
            let c = match error {
                PublishError::TooLarge => close::TOO_BIG,
                PublishError::Unavailable(_) => close::CLUSTER_UNAVAILABLE,
            };
            owner.abandon(key, session, c, out);
        }
        SeqEvent::Claimed {
            key,
            uid,
            session,
            outcome,
        } => {
            if let Some(seq) = cluster_sequencer(owner) {
                seq.settled(key, &outcome);
            }
            // The pending join is found by its session (the sequencer knows
            // the uid, not the member's kind).
            let id = owner
                .channel_by_key(key)
                .and_then(|c| c.pending_id(session))
                .unwrap_or((MemberKind::Client, uid));
            match outcome {
                ClaimOutcome::Free => owner.claimed(key, &id, session, true, now, out),
                ClaimOutcome::Taken => owner.claimed(key, &id, session, false, now, out),
                ClaimOutcome::Unavailable(reason) => {
                    tracing::debug!(%reason, "cluster: join refused, registry unavailable");
                    owner.abandon(key, session, close::CLUSTER_UNAVAILABLE, out);
                }
            }
        }
    }
}

/// Answers other nodes' probes by asking the channel's owner shard.
pub struct ShardProber {
    pub mesh: Arc<Mesh>,
}

impl Prober for ShardProber {
    fn taken_over(&self, channel: String, uid: String, session: u64) {
        let owner = router::owner(&channel, self.mesh.shards());
        let msg = ShardMsg::TakenOver {
            channel: Arc::from(channel),
            uid: Arc::from(uid),
            session,
        };
        // A shard that stopped has no session to close.
        let _ = self.mesh.send(owner, msg);
    }

    fn probe(&self, channel: String, uid: String, session: u64) -> BoxFuture<bool> {
        let (reply, answer) = oneshot::channel();
        let owner = router::owner(&channel, self.mesh.shards());
        let msg = ShardMsg::RemoteProbe {
            channel: Arc::from(channel),
            uid: Arc::from(uid),
            session,
            reply,
        };
        let sent = self.mesh.send(owner, msg).is_ok();
        // A dropped reply (the shard stopped) means the session is gone.
        Box::pin(async move { sent && answer.await.unwrap_or(false) })
    }
}
