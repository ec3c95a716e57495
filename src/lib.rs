//! mles: a shard-per-core Mles v2 publish/subscribe server.
//!
//! - [`config`]: the command line and environment, validated into a `Config`.
//! - [`server`]: start the shards, wait for signals, shut down.
//! - [`shard`]: one thread per core: runtime, listeners, the cross-shard mesh,
//!   supervision, dispatch to the channel owner, and local fan-out.
//! - [`channel`]: sans-IO channel ownership: members (with their kind),
//!   history, the half-open probe, and the `Sequencer` seam for the order.
//! - [`session`]: one WebSocket session: framing, header, relay, close;
//!   it reaches its shard only through the narrow `session::Host` handle.
//! - [`http`]: TLS + HTTP/1.1 via hyper: the upgrade and ordinary responses.
//! - [`memory`]: the server-wide `--max-memory` budget for partial frames.
//! - [`metrics`], [`admin`], [`health`]: counters and readiness, served for
//!   Prometheus and health checks on the `--metrics` listener.
//! - [`background`]: the threads beside the shards (admin, redirect, ACME,
//!   certificate watcher), each with its own runtime.
//! - [`peer`]: links to peer servers (PROTOCOL.md §7).
//! - [`cluster`]: cluster mode: order, history and uids shared through NATS JetStream.
//! - [`protocol`]: sans-IO header parsing, auth, close codes, frame codec.
//! - [`statics`]: static files per domain and the built-in web client.
//! - [`tls`]: the shared rustls config: certificate files (with reload) or ACME.
//! - [`redirect`]: the plain-HTTP listener that redirects to https.
//! - [`clock`]: the compact millisecond clock sessions keep their times in.
//! - [`reactor`]: the shard's own readiness loop for plain TCP connections.
//!
//! Dependencies run one way: `server` → `shard` → `session` → `protocol`,
//! with `channel` (sans-IO) used by `shard`; `peer` and `http` sit beside
//! `shard` and use it; `statics` builds on `http`, which knows it only as
//! the `http::Pages` that answer ordinary requests; nothing below points
//! back up.

pub mod admin;
pub mod background;
pub mod channel;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod health;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod peer;
pub mod protocol;
pub mod reactor;
pub mod redirect;
pub mod server;
pub mod session;
pub mod shard;
pub mod statics;
pub mod tls;
