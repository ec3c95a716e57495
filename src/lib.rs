//! mles: a shard-per-core Mles v2 publish/subscribe server.
pub mod config;
pub mod statics;
