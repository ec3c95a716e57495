//! Cross-shard messaging: one unbounded crossbeam inbox per shard plus a
//! wake-up, and the one message enum that crosses threads.
//!
//! Only `Send` data travels here (`Bytes`, `Arc<str>`, ids); shard state never does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::protocol::close::Close;

/// A session's id, unique in the process: the shard index in the top 16 bits.
pub type SessionId = u64;

/// The shard a session lives on.
pub fn shard_of(id: SessionId) -> u16 {
    (id >> 48) as u16
}

/// A channel as its owner numbers it: owner shard in the top 16 bits, the owner's slot below.
pub type ChannelKey = u64;

pub fn owner_of(key: ChannelKey) -> u16 {
    (key >> 48) as u16
}

/// Everything one shard can ask of another.
pub enum ShardMsg {
    /// To the owner: a session with a valid header asks to join. An empty
    /// `header` is a peer link (PROTOCOL.md §7): no header is relayed or stored.
    Join {
        channel: Arc<str>,
        uid: Arc<str>,
        session: SessionId,
        header: Bytes,
    },
    /// To the session's shard: joined; replay `history`, then live frames follow.
    Joined {
        session: SessionId,
        key: ChannelKey,
        uid: Arc<str>,
        history: Vec<Bytes>,
    },
    /// To the session's shard: the join was refused.
    Refused { session: SessionId, close: Close },
    /// To the owner: a member published `frame` (already encoded for receivers).
    Publish {
        key: ChannelKey,
        origin: SessionId,
        frame: Bytes,
        dedup: bool,
    },
    /// To a shard with members: write `frame` to every local member but `origin`.
    Deliver {
        key: ChannelKey,
        origin: SessionId,
        frame: Bytes,
    },
    /// To the owner: a member is gone.
    Leave {
        key: ChannelKey,
        uid: Arc<str>,
        session: SessionId,
    },
    /// To an incumbent's shard: is `session` alive? (PROTOCOL.md §4 half-open probe)
    Probe {
        session: SessionId,
        key: ChannelKey,
        uid: Arc<str>,
    },
    /// To the owner: the answer to a probe.
    ProbeResult {
        key: ChannelKey,
        uid: Arc<str>,
        session: SessionId,
        alive: bool,
    },
}

impl ShardMsg {
    /// Bytes this message holds, for inbox accounting.
    pub fn weight(&self) -> usize {
        64 + match self {
            ShardMsg::Publish { frame, .. } | ShardMsg::Deliver { frame, .. } => frame.len(),
            ShardMsg::Join { header, .. } => header.len(),
            ShardMsg::Joined { history, .. } => history.len() * 32,
            _ => 0,
        }
    }
}

struct Inbox {
    tx: Sender<ShardMsg>,
    wake: Notify,
    bytes: AtomicUsize,
}

/// The senders of every shard's inbox; shared by all shards.
pub struct Mesh {
    inboxes: Box<[Inbox]>,
    /// Every shard's counters; each shard writes only its own.
    pub metrics: Metrics,
}

/// One shard's receiving end.
pub struct InboxRx {
    pub rx: Receiver<ShardMsg>,
}

impl Mesh {
    pub fn new(shards: usize) -> (Arc<Mesh>, Vec<InboxRx>) {
        let (inboxes, rxs): (Vec<_>, Vec<_>) = (0..shards)
            .map(|_| {
                let (tx, rx) = crossbeam_channel::unbounded();
                (
                    Inbox {
                        tx,
                        wake: Notify::new(),
                        bytes: AtomicUsize::new(0),
                    },
                    InboxRx { rx },
                )
            })
            .unzip();
        (
            Arc::new(Mesh {
                inboxes: inboxes.into(),
                metrics: Metrics::new(shards),
            }),
            rxs,
        )
    }

    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Posts `msg` to shard `to` and wakes it. Hands the message back when that shard is gone.
    pub fn send(&self, to: u16, msg: ShardMsg) -> Result<(), ShardMsg> {
        let inbox = &self.inboxes[to as usize];
        let w = msg.weight();
        inbox.bytes.fetch_add(w, Ordering::Relaxed);
        match inbox.tx.send(msg) {
            Ok(()) => {
                inbox.wake.notify_one();
                Ok(())
            }
            Err(e) => {
                inbox.bytes.fetch_sub(w, Ordering::Relaxed);
                Err(e.into_inner())
            }
        }
    }

    /// Waits until shard `me` has been posted something since it last drained.
    pub async fn notified(&self, me: u16) {
        self.inboxes[me as usize].wake.notified().await
    }

    /// Called by the receiving shard for each message it takes.
    pub fn taken(&self, me: u16, msg: &ShardMsg) {
        self.inboxes[me as usize]
            .bytes
            .fetch_sub(msg.weight(), Ordering::Relaxed);
    }

    /// Bytes waiting in shard `to`'s inbox.
    pub fn backlog(&self, to: u16) -> usize {
        self.inboxes[to as usize].bytes.load(Ordering::Relaxed)
    }
}
