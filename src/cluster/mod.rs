//! Cluster mode (PROTOCOL.md §9): several mles nodes share one order and one
//! history per channel through a NATS JetStream stream.
//!
//! - [`settings`]: the `--nats*` flags, validated.
//! - [`subject`]: channel -> subject and (channel, uid) -> key encodings (sans-IO).
//! - [`envelope`]: a stored frame's kind, origin and message id (sans-IO).
//! - [`link`]: the node's handle on NATS: its state, publishes, feeds.
//! - `supervisor`: the connection, the stream and bucket set-up, the link state.
//! - [`cursor`]: what a channel feed handed out, gaps and drops (sans-IO).
//! - [`feed`]: one channel's frames in stream order, live with catch-ups from the stream.
//! - [`channel_log`]: one channel's feed and publish pipeline, as events for its owner.
//! - [`registry`]: the cluster-wide (channel, uid) registry with cross-node probes.
//! - [`sequencer`]: the channel owner's [`Sequencer`](crate::channel::Sequencer) in cluster mode.
//!
//! This module knows NATS and nothing of shards or sessions: the channel
//! owner drives it through [`Cluster`].

pub mod channel_log;
pub mod cursor;
pub mod envelope;
pub mod feed;
pub mod link;
pub mod registry;
pub mod sequencer;
pub mod settings;
pub mod subject;
mod supervisor;

pub use channel_log::{ChannelLog, LogEvent, LogSink};
pub use envelope::{Delivery, Frame, Kind, NodeId, Origin, Outgoing, Unit};
pub use feed::{Feed, Next};
pub use link::{Cluster, FollowError, LinkState, PublishError, StartError};
pub use registry::{Claim, Prober, Registry, RegistryError};
pub use settings::{ClusterSettings, SettingsError};
