//! The cluster sequencer: a channel's order and its (channel, uid) claims
//! come from the shared log instead of the owner shard (PROTOCOL.md §9).
//!
//! It implements [`Sequencer`] for one owner shard. `order` queues the frame
//! on the channel's [`ChannelLog`] and answers `None`; `claim` starts a
//! registry claim and answers `None`. What comes back (frames in stream
//! order, claim outcomes, frames that could not be stored) arrives as
//! [`SeqEvent`]s on a channel the shard drains, and the shard hands them to
//! the owner: [`ClusterSequencer::ordered`] turns a stored frame into an
//! [`Ordered`] for `Owner::ordered`.
//!
//! A channel's log is open while the node has members (or joins under way)
//! on it: opened by the first claim, closed when the last holder leaves. It
//! remembers the last stream sequence it delivered, so a log opened again
//! resumes there and the owner's history stays exact; frames already
//! delivered are never delivered twice (an old log's events may still be
//! queued when a new one starts). What it keeps of a channel goes when the
//! owner expires the channel.

use std::sync::Arc;

use ahash::AHashMap;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::channel_log::{ChannelLog, LogEvent, LogSink};
use super::envelope::{Delivery, Kind};
use super::link::{Cluster, LinkState, PublishError};
use super::registry::Claim;
use crate::channel::sequencer::LOCAL_NODE;
use crate::channel::{ChannelKey, Ordered, Origin, Sequencer, SessionId};
use crate::protocol::frame::{self, OP_BINARY, OP_TEXT};

/// Payload bytes a channel may have queued for the stream and not yet
/// acknowledged before its publishers are closed (1013) rather than buffered
/// without bound; the same bound as a shard inbox's backlog.
pub const MAX_UNACKED: usize = 64 << 20;

/// `Origin::node` of frames from other nodes (the owner only tells local from not).
pub const OTHER_NODE: u32 = LOCAL_NODE + 1;

/// What the shared log reports to the owner shard.
#[derive(Debug)]
pub enum SeqEvent {
    /// From a channel's log (tagged with its key).
    Log { key: ChannelKey, event: LogEvent },
    /// The outcome of a registry claim.
    Claimed {
        key: ChannelKey,
        uid: Arc<str>,
        session: SessionId,
        outcome: ClaimOutcome,
    },
}

/// How a claim ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The pair is the joiner's.
    Free,
    /// A live session holds it (on this node or another).
    Taken,
    /// NATS could not be asked: refuse with 1013.
    Unavailable(String),
}

/// The receiving ends the shard drains.
pub struct SeqEvents {
    pub logs: mpsc::UnboundedReceiver<(u64, LogEvent)>,
    pub claims: mpsc::UnboundedReceiver<SeqEvent>,
}

impl SeqEvents {
    /// The next event of either kind.
    pub async fn next(&mut self) -> Option<SeqEvent> {
        tokio::select! {
            Some((key, event)) = self.logs.recv() => Some(SeqEvent::Log { key, event }),
            Some(e) = self.claims.recv() => Some(e),
            else => None,
        }
    }
}

/// One channel as the sequencer tracks it.
struct Channel {
    name: Arc<str>,
    log: Option<ChannelLog>,
    /// Claims under way plus members holding a claim: the log is open while > 0.
    holders: usize,
    /// Stream sequence of the last frame handed to the owner.
    last: u64,
}

/// The [`Sequencer`] of one owner shard in cluster mode.
pub struct ClusterSequencer {
    cluster: Cluster,
    channels: AHashMap<ChannelKey, Channel>,
    by_name: AHashMap<Arc<str>, ChannelKey>,
    logs: LogSink,
    claims: mpsc::UnboundedSender<SeqEvent>,
    /// The [`Cluster::stream_epoch`] the channels' `last` sequences belong to.
    epoch: u64,
}

impl ClusterSequencer {
    /// A sequencer on `cluster` and the events its shard must drain.
    pub fn new(cluster: Cluster) -> (ClusterSequencer, SeqEvents) {
        let (logs, logs_rx) = mpsc::unbounded_channel();
        let (claims, claims_rx) = mpsc::unbounded_channel();
        let epoch = *cluster.stream_epoch().borrow();
        let s = ClusterSequencer {
            epoch,
            cluster,
            channels: AHashMap::new(),
            by_name: AHashMap::new(),
            logs,
            claims,
        };
        (
            s,
            SeqEvents {
                logs: logs_rx,
                claims: claims_rx,
            },
        )
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    fn channel(&mut self, key: ChannelKey, name: &Arc<str>) -> &mut Channel {
        let by_name = &mut self.by_name;
        self.channels.entry(key).or_insert_with(|| {
            by_name.insert(name.clone(), key);
            Channel {
                name: name.clone(),
                log: None,
                holders: 0,
                last: 0,
            }
        })
    }

    /// The channel's log, opened (resuming after its last frame) if closed.
    fn log(&mut self, key: ChannelKey, name: &Arc<str>) -> &ChannelLog {
        let epoch = *self.cluster.stream_epoch().borrow();
        if epoch != self.epoch {
            // The stream was created anew: a channel not followed now starts
            // from its first frame when it is (a followed one is told by its
            // feed, `LogEvent::Restarted`).
            for ch in self.channels.values_mut().filter(|c| c.log.is_none()) {
                ch.last = 0;
            }
            self.epoch = epoch;
        }
        let (cluster, sink) = (self.cluster.clone(), self.logs.clone());
        let ch = self.channel(key, name);
        ch.log.get_or_insert_with(|| {
            tracing::debug!(node = %cluster.node(), channel = %ch.name, after = ch.last, "cluster: channel log opened");
            ChannelLog::open_at(&cluster, &ch.name, (ch.last, epoch), key, sink)
        })
    }

    /// The channel's stream was created anew: its next frame is numbered
    /// from 1 (`LogEvent::Restarted`, before that frame).
    pub fn restarted(&mut self, key: ChannelKey) {
        if let Some(ch) = self.channels.get_mut(&key) {
            ch.last = 0;
        }
    }

    /// One holder of `key` is gone; the last one closes the log.
    fn drop_holder(&mut self, key: ChannelKey) {
        if let Some(ch) = self.channels.get_mut(&key) {
            ch.holders = ch.holders.saturating_sub(1);
            if ch.holders == 0 && ch.log.take().is_some() {
                tracing::debug!(node = %self.cluster.node(), channel = %ch.name, "cluster: channel log closed");
            }
        }
    }

    /// How many channels this sequencer follows now (has a log open for).
    pub fn following(&self) -> usize {
        self.channels.values().filter(|c| c.log.is_some()).count()
    }

    /// The name of the channel `key`, if known.
    pub fn name(&self, key: ChannelKey) -> Option<&Arc<str>> {
        self.channels.get(&key).map(|c| &c.name)
    }

    /// A stored message's frames for the owner, numbered from `next_seq`
    /// (the owner's next number), or `None` if it was already handed over
    /// (a resumed log overlapping an old one).
    pub fn ordered(
        &mut self,
        key: ChannelKey,
        d: Delivery,
        next_seq: u64,
    ) -> Option<impl Iterator<Item = Ordered> + use<>> {
        let node = self.cluster.node().clone();
        let ch = self.channels.get_mut(&key)?;
        if d.seq <= ch.last {
            return None;
        }
        ch.last = d.seq;
        Some(d.frames.into_iter().zip(next_seq..).map(move |(f, seq)| {
            let origin = match &f.origin {
                Some(o) if o.node == node => Origin::local(o.session),
                Some(o) => Origin {
                    node: OTHER_NODE,
                    session: o.session,
                },
                // Published by something other than mles: nobody to skip.
                None => Origin {
                    node: OTHER_NODE,
                    session: SessionId::MAX,
                },
            };
            let op = if f.kind.is_text() { OP_TEXT } else { OP_BINARY };
            Ordered {
                seq,
                origin,
                frame: frame::encode(op, &f.payload),
            }
        }))
    }

    /// A claim ended: a refused one no longer holds the channel's log open.
    pub fn settled(&mut self, key: ChannelKey, outcome: &ClaimOutcome) {
        if *outcome != ClaimOutcome::Free {
            self.drop_holder(key);
        }
    }
}

impl Sequencer for ClusterSequencer {
    fn order(
        &mut self,
        key: ChannelKey,
        channel: &Arc<str>,
        _last_seq: u64,
        origin: Origin,
        frame: Bytes,
    ) -> Option<Ordered> {
        let kind = if frame.first().is_some_and(|b| b & 0x0f == OP_BINARY) {
            Kind::Binary
        } else {
            Kind::Text
        };
        let payload = frame.slice_ref(frame::payload_of(&frame));
        let log = self.log(key, channel);
        if log.queued_bytes() > MAX_UNACKED {
            // NATS is slower than the publishers: tell this one (nothing is dropped silently).
            let error = PublishError::Unavailable("cluster log backlogged".into());
            let lost = LogEvent::Lost {
                session: origin.session,
                error,
            };
            let _ = self.logs.send((key, lost));
            return None;
        }
        log.publish(origin.session, kind, payload);
        None
    }

    fn claim(
        &mut self,
        key: ChannelKey,
        channel: &Arc<str>,
        uid: &Arc<str>,
        session: SessionId,
    ) -> Option<bool> {
        self.channel(key, channel).holders += 1;
        // Open (and start loading) the log now: the joiner's header follows the history.
        self.log(key, channel);
        let (cluster, claims) = (self.cluster.clone(), self.claims.clone());
        let (channel, uid) = (channel.clone(), uid.clone());
        tokio::spawn(async move {
            let outcome = if let LinkState::Down(reason) = cluster.state() {
                ClaimOutcome::Unavailable(reason.to_string())
            } else {
                match cluster
                    .registry()
                    .claim(channel, uid.clone(), session)
                    .await
                {
                    Ok(Claim::Claimed) => ClaimOutcome::Free,
                    Ok(Claim::Taken { .. }) => ClaimOutcome::Taken,
                    Err(e) => ClaimOutcome::Unavailable(e.to_string()),
                }
            };
            let _ = claims.send(SeqEvent::Claimed {
                key,
                uid,
                session,
                outcome,
            });
        });
        None
    }

    fn expired(&mut self, key: ChannelKey) {
        if let Some(ch) = self.channels.remove(&key) {
            self.by_name.remove(&ch.name);
        }
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }

    fn release(&mut self, channel: &Arc<str>, uid: &Arc<str>) {
        tracing::debug!(node = %self.cluster.node(), %channel, %uid, "cluster: member released");
        let (cluster, channel_name, uid_name) =
            (self.cluster.clone(), channel.clone(), uid.clone());
        tokio::spawn(async move { cluster.registry().release(channel_name, uid_name).await });
        if let Some(&key) = self.by_name.get(channel) {
            self.drop_holder(key);
        }
    }
}
