//! Cross-shard messaging: one unbounded crossbeam inbox per shard plus a
//! wake-up, the one message enum that crosses threads, the congestion
//! signal that pauses publishers, and the process-wide failure flag.
//!
//! Only `Send` data travels here (`Bytes`, `Arc<str>`, ids); shard state never does.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use tokio::sync::Notify;

use crate::channel::{ChannelKey, MemberId, MemberKind, SessionId};
use crate::memory::MemoryBudget;
use crate::metrics::Metrics;
use crate::protocol::close::Close;

/// Bytes waiting in one inbox above which every publisher of the process
/// pauses reading (TCP backpressure) until that inbox is below half of it
/// again. 64 MiB: a few hundred ms of a shard's relay work at the measured
/// rates, so a busy but healthy shard never trips it, while memory held in
/// inboxes stays bounded by shards × (64 MiB + what one read can add).
pub const BACKLOG_LIMIT: usize = 64 << 20;

/// Everything one shard can ask of another.
pub enum ShardMsg {
    /// To the owner: a session with a valid header asks to join.
    Join {
        channel: Arc<str>,
        uid: Arc<str>,
        session: SessionId,
        kind: MemberKind,
        /// The header frame to relay (empty for links).
        header: Bytes,
    },
    /// To the session's shard: joined; replay `history`, then live frames follow.
    Joined {
        session: SessionId,
        key: ChannelKey,
        id: MemberId,
        history: Vec<Bytes>,
    },
    /// To the session's shard: close it (a refused join, a link not needed).
    Refused { session: SessionId, close: Close },
    /// To the owner: a member published `frame` (already encoded for receivers).
    Publish {
        key: ChannelKey,
        origin: SessionId,
        frame: Bytes,
        dedup: bool,
    },
    /// To a shard with members: write `frame` to every local member but `skip`.
    Deliver {
        key: ChannelKey,
        skip: Option<SessionId>,
        frame: Bytes,
    },
    /// To the owner: a member is gone.
    Leave {
        key: ChannelKey,
        id: MemberId,
        session: SessionId,
    },
    /// To an incumbent's shard: is `session` alive? (PROTOCOL.md §4 half-open probe)
    Probe {
        session: SessionId,
        key: ChannelKey,
        id: MemberId,
    },
    /// To the owner: the answer to a probe.
    ProbeResult {
        key: ChannelKey,
        id: MemberId,
        session: SessionId,
        alive: bool,
    },
    /// To the owner: a link member sent a control message (PROTOCOL.md §7).
    LinkControl {
        key: ChannelKey,
        session: SessionId,
        payload: Bytes,
    },
    /// To a link member's shard: send it this control message.
    Control { session: SessionId, payload: Bytes },
    /// To a link member's shard: its peer synced; live frames may flow.
    OpenLink { session: SessionId },
    /// To the owner, in cluster mode: what the shared log answered.
    Cluster(crate::cluster::sequencer::SeqEvent),
    /// To the owner, in cluster mode: another node asks whether `session`
    /// still holds (channel, uid) here (PROTOCOL.md §4 across nodes).
    RemoteProbe {
        channel: Arc<str>,
        uid: Arc<str>,
        session: SessionId,
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    /// To the owner, in cluster mode: the registry entry `session` held for
    /// (channel, uid) is another node's now; close it.
    TakenOver {
        channel: Arc<str>,
        uid: Arc<str>,
        session: SessionId,
    },
}

impl ShardMsg {
    /// Bytes this message holds, for inbox accounting: the payload plus a
    /// flat 64 for the message itself (its size, rounded up). A history
    /// counts its frames' bytes too: most are shared with the owner's
    /// history, but a client's replay of the open piece is a copy
    /// ([`crate::channel::history::History::replay`]).
    pub fn weight(&self) -> usize {
        64 + match self {
            ShardMsg::Publish { frame, .. } | ShardMsg::Deliver { frame, .. } => frame.len(),
            ShardMsg::Join { header, .. } => header.len(),
            // A frame's reference, or a replay buffer's copy as well.
            ShardMsg::Joined { history, .. } => history.iter().map(|f| 32 + f.len()).sum(),
            _ => 0,
        }
    }
}

/// Where shutdown stands across the shards.
#[derive(Default)]
struct Stopping {
    /// Shards with no session left.
    ended: AtomicUsize,
    all_ended: Notify,
}

struct Inbox {
    tx: Sender<ShardMsg>,
    wake: Notify,
    bytes: AtomicUsize,
    /// Over [`BACKLOG_LIMIT`] and not yet back under half of it.
    congested: AtomicBool,
    /// Woken when some congested inbox has drained (this shard's paused sessions may go on).
    resume: Notify,
}

/// Why the process must stop: a shard-level handler panicked or a shard's
/// own task or thread ended. Shared by every shard and the server.
#[derive(Default)]
pub struct Failure {
    tripped: AtomicBool,
    reason: Mutex<Option<String>>,
    notify: Notify,
}

impl Failure {
    /// Records the first failure, logs it, and wakes whoever waits on [`Failure::wait`].
    pub fn trip(&self, reason: String) {
        tracing::error!(%reason, "shard failure: stopping the server");
        if !self.tripped.swap(true, Ordering::AcqRel) {
            *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        }
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// The first failure's reason, if any.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until a failure is recorded; returns its reason.
    pub async fn wait(&self) -> String {
        loop {
            let n = self.notify.notified();
            if let Some(r) = self.reason() {
                return r;
            }
            n.await;
        }
    }
}

/// The senders of every shard's inbox; shared by all shards.
pub struct Mesh {
    inboxes: Box<[Inbox]>,
    limit: usize,
    /// Inboxes now congested; publishers pause while it is not zero.
    congested: AtomicUsize,
    /// Every shard's counters; each shard writes only its own.
    pub metrics: Metrics,
    pub failure: Failure,
    /// What sessions hold between reads, against `--max-memory`.
    pub memory: MemoryBudget,
    stopping: Stopping,
}

/// One shard's receiving end.
pub struct InboxRx {
    pub rx: Receiver<ShardMsg>,
}

impl Mesh {
    pub fn new(shards: usize) -> (Arc<Mesh>, Vec<InboxRx>) {
        Mesh::with_limit(shards, BACKLOG_LIMIT)
    }

    /// A mesh whose inboxes congest above `limit` bytes (tests use small ones).
    pub fn with_limit(shards: usize, limit: usize) -> (Arc<Mesh>, Vec<InboxRx>) {
        let (inboxes, rxs): (Vec<_>, Vec<_>) = (0..shards)
            .map(|_| {
                let (tx, rx) = crossbeam_channel::unbounded();
                let inbox = Inbox {
                    tx,
                    wake: Notify::new(),
                    bytes: AtomicUsize::new(0),
                    congested: AtomicBool::new(false),
                    resume: Notify::new(),
                };
                (inbox, InboxRx { rx })
            })
            .unzip();
        let mesh = Mesh {
            inboxes: inboxes.into(),
            limit,
            congested: AtomicUsize::new(0),
            metrics: Metrics::new(shards),
            failure: Failure::default(),
            memory: MemoryBudget::default(),
            stopping: Stopping::default(),
        };
        (Arc::new(mesh), rxs)
    }

    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Posts `msg` to shard `to` and wakes it. Hands the message back when that shard is gone.
    pub fn send(&self, to: u16, msg: ShardMsg) -> Result<(), ShardMsg> {
        let inbox = &self.inboxes[to as usize];
        let w = msg.weight();
        let after = inbox.bytes.fetch_add(w, Ordering::Relaxed) + w;
        match inbox.tx.send(msg) {
            Ok(()) => {
                if after >= self.limit && !inbox.congested.swap(true, Ordering::AcqRel) {
                    self.congested.fetch_add(1, Ordering::AcqRel);
                }
                inbox.wake.notify_one();
                Ok(())
            }
            Err(e) => {
                inbox.bytes.fetch_sub(w, Ordering::Relaxed);
                Err(e.into_inner())
            }
        }
    }

    /// Shutdown: this shard has no session left. What sessions sent before
    /// they ended may still be on its way to other shards' channels.
    pub fn sessions_ended(&self) {
        let n = self.stopping.ended.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.shards() {
            self.stopping.all_ended.notify_waiters();
        }
    }

    /// Shutdown: waits until no shard has a session left, so that nothing
    /// more is sent to any shard's channels.
    pub async fn all_sessions_ended(&self) {
        loop {
            let ended = self.stopping.all_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.stopping.ended.load(Ordering::Acquire) >= self.shards() {
                return;
            }
            ended.await;
        }
    }

    /// Waits until shard `me` has been posted something since it last drained.
    pub async fn notified(&self, me: u16) {
        self.inboxes[me as usize].wake.notified().await
    }

    /// Called by the receiving shard for each message it takes; once a
    /// congested inbox is under half its limit, every shard is told to resume.
    pub fn taken(&self, me: u16, msg: &ShardMsg) {
        let inbox = &self.inboxes[me as usize];
        let w = msg.weight();
        let after = inbox.bytes.fetch_sub(w, Ordering::Relaxed) - w;
        if after < self.limit / 2
            && inbox.congested.load(Ordering::Relaxed)
            && inbox.congested.swap(false, Ordering::AcqRel)
        {
            self.congested.fetch_sub(1, Ordering::AcqRel);
            for i in self.inboxes.iter() {
                i.resume.notify_one();
            }
        }
    }

    /// Bytes waiting in shard `to`'s inbox.
    pub fn backlog(&self, to: u16) -> usize {
        self.inboxes[to as usize].bytes.load(Ordering::Relaxed)
    }

    /// Whether some inbox is congested: publishers must pause.
    pub fn congested(&self) -> bool {
        self.congested.load(Ordering::Acquire) > 0
    }

    /// Waits until a congested inbox has drained since shard `me` last looked.
    pub async fn resumed(&self, me: u16) {
        self.inboxes[me as usize].resume.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(n: usize) -> ShardMsg {
        ShardMsg::Deliver {
            key: 0,
            skip: None,
            frame: Bytes::from(vec![0; n]),
        }
    }

    #[test]
    fn congestion_sets_over_the_limit_and_clears_under_half() {
        let (mesh, rxs) = Mesh::with_limit(2, 1000);
        for _ in 0..9 {
            assert!(mesh.send(1, deliver(36)).is_ok());
        }
        assert!(!mesh.congested(), "900 bytes");
        assert!(mesh.send(1, deliver(36)).is_ok());
        assert!(mesh.congested(), "1000 bytes");
        let mut taken = 0;
        while mesh.congested() {
            let m = rxs[1].rx.try_recv().unwrap();
            mesh.taken(1, &m);
            taken += 1;
        }
        assert_eq!(taken, 6, "cleared once under 500 bytes");
        assert_eq!(mesh.backlog(1), 400);
    }

    #[test]
    fn a_send_to_a_gone_shard_hands_the_message_back() {
        let (mesh, rxs) = Mesh::new(1);
        drop(rxs);
        assert!(matches!(
            mesh.send(0, deliver(5)),
            Err(ShardMsg::Deliver { .. })
        ));
        assert_eq!(mesh.backlog(0), 0);
    }
}
