//! The one seam a channel's order comes through.
//!
//! Every frame a member publishes, and every client's join header, goes to
//! the channel's [`Sequencer`] and comes back as an [`Ordered`] frame (a
//! sequence number and an [`Origin`]); only then does [`Owner::ordered`]
//! store it in history and deliver it. The sequence numbers are the
//! channel's total order.
//!
//! - [`LocalSequencer`] (one node): the owner shard is the order; every call
//!   answers at once with the next number.
//! - A cluster sequencer (e.g. a JetStream stream per channel) answers
//!   `None`, publishes the frame to the shared log, and later feeds what the
//!   log returns, in log order, to [`Owner::ordered`] on the channel's owner
//!   shard — its own node's frames included, with `Origin::node` set to the
//!   publishing node. Frames from other nodes arrive through the same call.
//!   Likewise [`Sequencer::claim`] may answer `None` and report the outcome
//!   of a cross-node (channel, uid) claim later through [`Owner::claimed`];
//!   [`Sequencer::release`] is called when a member leaves.
//!
//! How to implement one: keep no channel state of your own beyond what the
//! log needs; the owner handles history, members, probes and fan-out.
//! `seq` must increase by exactly one per ordered frame of a channel as the
//! owner sees them (the local history numbers its frames the same way).
//!
//! Wiring: each shard builds its own sequencer from a
//! `shard::SequencerFactory` (`shard::runtime::ShardStart::sequencer`; the
//! local one when none is given), called on the shard's thread, so it may
//! hold `Rc` state and spawn local tasks. What comes back from the log is
//! fed in with `Shard::ordered` and `Shard::claimed`, from a task on the
//! owner shard — never from inside a `Sequencer` call, which runs while the
//! owner is borrowed.
//!
//! [`Owner::ordered`]: super::Owner::ordered
//! [`Owner::claimed`]: super::Owner::claimed

use std::sync::Arc;

use bytes::Bytes;

use super::{ChannelKey, SessionId};

/// This node, in an [`Origin`].
pub const LOCAL_NODE: u32 = 0;

/// Who published a frame: a node and one of its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// [`LOCAL_NODE`] for this node's sessions.
    pub node: u32,
    pub session: SessionId,
}

impl Origin {
    /// A session of this node.
    pub fn local(session: SessionId) -> Origin {
        Origin {
            node: LOCAL_NODE,
            session,
        }
    }

    /// The local session this is, if it is one.
    pub fn local_session(&self) -> Option<SessionId> {
        (self.node == LOCAL_NODE).then_some(self.session)
    }
}

/// A frame with its place in the channel's order.
#[derive(Debug, Clone)]
pub struct Ordered {
    pub seq: u64,
    pub origin: Origin,
    /// Encoded for receivers (a whole WebSocket frame).
    pub frame: Bytes,
}

/// Where a channel's order comes from. Called only on the owner shard.
pub trait Sequencer {
    /// Orders `frame`, published by `origin` into `channel` whose newest
    /// ordered frame has number `last_seq`. `Some` when ordered at once;
    /// `None` when it will come back through `Owner::ordered`.
    fn order(
        &mut self,
        key: ChannelKey,
        channel: &Arc<str>,
        last_seq: u64,
        origin: Origin,
        frame: Bytes,
    ) -> Option<Ordered>;

    /// Claims (channel, uid) for a joining `session` beyond this owner's own
    /// member set (which the owner has already checked). `Some(true)`: free;
    /// `Some(false)`: held elsewhere; `None`: answered later via `Owner::claimed`.
    fn claim(
        &mut self,
        key: ChannelKey,
        channel: &Arc<str>,
        uid: &Arc<str>,
        session: SessionId,
    ) -> Option<bool>;

    /// A member holding (channel, uid) left.
    fn release(&mut self, channel: &Arc<str>, uid: &Arc<str>);

    /// The owner dropped the idle channel `key`: forget anything kept for it.
    fn expired(&mut self, _key: ChannelKey) {}

    /// The concrete sequencer, for the code on the owner shard that feeds
    /// back what it answered later and needs its own methods to do so
    /// (cluster mode). `None` for sequencers that answer at once.
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
}

/// A boxed sequencer is one too, so a shard can hold whichever is configured.
impl<S: Sequencer + ?Sized> Sequencer for Box<S> {
    fn order(
        &mut self,
        key: ChannelKey,
        channel: &Arc<str>,
        last_seq: u64,
        origin: Origin,
        frame: Bytes,
    ) -> Option<Ordered> {
        (**self).order(key, channel, last_seq, origin, frame)
    }

    fn claim(
        &mut self,
        key: ChannelKey,
        channel: &Arc<str>,
        uid: &Arc<str>,
        session: SessionId,
    ) -> Option<bool> {
        (**self).claim(key, channel, uid, session)
    }

    fn release(&mut self, channel: &Arc<str>, uid: &Arc<str>) {
        (**self).release(channel, uid)
    }

    fn expired(&mut self, key: ChannelKey) {
        (**self).expired(key)
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        (**self).as_any_mut()
    }
}

/// One node: the owner shard's handling order is the channel's order.
#[derive(Debug, Default)]
pub struct LocalSequencer;

impl Sequencer for LocalSequencer {
    fn order(
        &mut self,
        _key: ChannelKey,
        _channel: &Arc<str>,
        last_seq: u64,
        origin: Origin,
        frame: Bytes,
    ) -> Option<Ordered> {
        Some(Ordered {
            seq: last_seq + 1,
            origin,
            frame,
        })
    }

    fn claim(
        &mut self,
        _key: ChannelKey,
        _channel: &Arc<str>,
        _uid: &Arc<str>,
        _session: SessionId,
    ) -> Option<bool> {
        // The owner's member set is the whole truth on one node.
        Some(true)
    }

    fn release(&mut self, _channel: &Arc<str>, _uid: &Arc<str>) {}
}
