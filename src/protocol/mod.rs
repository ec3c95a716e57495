//! The Mles v2 protocol without I/O: the header frame, auth, close codes and
//! the RFC 6455 frame codec. Everything here is pure and unit-tested; nothing
//! here touches sockets, clocks or shard state.

pub mod auth;
pub mod close;
pub mod frame;
pub mod header;

/// The WebSocket subprotocol every Mles client must offer.
pub const SUBPROTOCOL: &str = "mles-websocket";
