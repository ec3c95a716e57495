//! Channels, sans-IO: what a channel's owner knows (members with their kind,
//! the history, joins waiting on a probe, the peer links' sync and routes)
//! and the rules of PROTOCOL.md §3–5 and §7 as a plain state machine:
//! `(input, now) -> actions`. [`links`] holds the link control messages,
//! cycle detection and history alignment.
//!
//! Nothing here sends, reads a clock, or holds a session: the shard feeds
//! [`Owner`] its messages and carries out the [`Action`]s it returns. A
//! channel's total order comes from one [`Sequencer`] (the owner shard itself
//! on one node; a shared log in cluster mode).
//!
//! Must not depend on `shard`, `session` or any I/O.

pub mod history;
pub mod links;
pub mod owner;
pub mod sequencer;

use std::sync::Arc;

pub use history::History;
pub use owner::{Action, Join, OwnedChannel, Owner};
pub use sequencer::{LocalSequencer, Ordered, Origin, Sequencer};

/// A session's id, unique in the process: its shard in the top 16 bits.
pub type SessionId = u64;

/// The shard a session lives on.
pub fn shard_of(id: SessionId) -> u16 {
    (id >> 48) as u16
}

/// A channel as its owner numbers it: the owner shard in the top 16 bits,
/// then a 16-bit generation and the 32-bit slot of the owner's table. The
/// generation changes whenever a slot is reused, so a message still in
/// flight for an expired channel never reaches the channel that took its slot.
pub type ChannelKey = u64;

/// The shard that owns a channel.
pub fn owner_of(key: ChannelKey) -> u16 {
    (key >> 48) as u16
}

/// How a member was admitted; decides what it gets and what it counts for,
/// never its uid or its header. Each kind has its own uid namespace, so a
/// client cannot take a link's uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberKind {
    /// A client: its header is relayed and stored, and it keeps the channel
    /// (and this server's peer links for it) alive.
    Client,
    /// Another server's link to this one (a header with `"peer": true`,
    /// PROTOCOL.md §7): gets history and live frames, its header is not
    /// relayed, and it does not keep the channel alive.
    Link,
    /// This server's own link to a peer: like [`MemberKind::Link`], and
    /// ended when the channel's last client leaves.
    OwnLink,
}

impl MemberKind {
    /// A link either way.
    pub fn is_link(self) -> bool {
        self != MemberKind::Client
    }
}

/// A member's identity in its channel: its kind and its uid.
pub type MemberId = (MemberKind, Arc<str>);
