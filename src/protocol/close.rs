//! Close codes and reasons the server sends (PROTOCOL.md, "Close codes").

/// A close code with its short human-readable reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: &'static str,
}

impl Close {
    pub const fn new(code: u16, reason: &'static str) -> Close {
        Close { code, reason }
    }
}

pub const SHUTDOWN: Close = Close::new(1001, "server shutting down");
/// Ends a peer link whose channel has no local clients left.
pub const CHANNEL_EMPTY: Close = Close::new(1000, "channel has no local members");
pub const NOT_TEXT_HEADER: Close = Close::new(1002, "header frame must be a text frame");
pub const BAD_HEADER_JSON: Close = Close::new(1002, "header frame is not a JSON object");
pub const BAD_HEADER_FIELD: Close =
    Close::new(1002, "header uid, channel and auth must be strings");
pub const MISSING_HEADER_FIELD: Close = Close::new(1002, "header needs uid and channel");
pub const UNMASKED: Close = Close::new(1002, "client frames must be masked");
pub const RESERVED_BITS: Close = Close::new(1002, "reserved bits set");
pub const BAD_OPCODE: Close = Close::new(1002, "unknown opcode");
pub const BAD_CONTROL: Close = Close::new(1002, "control frame too long or fragmented");
pub const BAD_CONTINUATION: Close = Close::new(1002, "unexpected continuation frame");
pub const UNFINISHED_MESSAGE: Close = Close::new(1002, "new message inside a fragmented message");
pub const BAD_CLOSE_PAYLOAD: Close = Close::new(1002, "invalid close frame");
pub const BAD_LENGTH: Close = Close::new(1002, "invalid frame length");
pub const NON_MINIMAL_LENGTH: Close = Close::new(1002, "frame length not in its shortest form");
pub const INVALID_UTF8: Close = Close::new(1007, "invalid utf-8 in text frame");
pub const EMPTY_FIELD: Close = Close::new(1008, "header uid and channel must not be empty");
pub const OVERSIZED_FIELD: Close = Close::new(1008, "header uid or channel over 1024 bytes");
pub const CONTROL_CHARS: Close = Close::new(
    1008,
    "header uid and channel must not contain control characters",
);
/// A peer link that would close a cycle of links (PROTOCOL.md §7).
pub const PEER_CYCLE: Close = Close::new(1008, "peer link would form a cycle");
pub const AUTH_REQUIRED: Close = Close::new(1008, "auth required");
pub const AUTH_FAILED: Close = Close::new(1008, "auth failed");
pub const DUPLICATE: Close = Close::new(1008, "uid already joined on this channel");
/// Cluster mode: the uid's registry entry is another node's now (it was
/// taken while this node could not keep it, say cut off from NATS).
pub const UID_TAKEN: Close = Close::new(1008, "uid joined on another node");
pub const HEADER_TIMEOUT: Close = Close::new(1008, "no header frame in time");
pub const PROBE_FAILED: Close =
    Close::new(1008, "no answer to a liveness probe: the uid joined again");
pub const KEEPALIVE_TIMEOUT: Close = Close::new(1008, "keepalive timeout");
pub const RATE_MESSAGES: Close = Close::new(1008, "message rate over --rate-limit");
pub const RATE_BYTES: Close = Close::new(1008, "byte rate over --rate-limit-bytes");
pub const TOO_BIG: Close = Close::new(1009, "message too big");
pub const HEADER_TOO_BIG: Close = Close::new(1009, "header frame over 8192 bytes");
pub const INTERNAL: Close = Close::new(1011, "internal error");
/// The owner shard's channel table is full (over 4 billion channels).
pub const TOO_MANY_CHANNELS: Close = Close::new(1013, "too many channels on this server");
/// Cluster mode: NATS (the shared log) cannot be reached; try again later.
pub const CLUSTER_UNAVAILABLE: Close = Close::new(1013, "cluster log unavailable; try again");
/// Cluster mode: this node fell further behind the shared log than it
/// retains, so frames may be missing here; rejoin to get the history whole.
pub const CLUSTER_BEHIND: Close = Close::new(1013, "cluster feed fell behind; rejoin");
pub const MEMORY_BUDGET: Close = Close::new(1013, "server memory budget reached, retry later");
pub const SLOW_CONSUMER: Close = Close::new(1013, "slow consumer: outbound queue full");

/// Whether a close code received from a client is one RFC 6455 allows on the wire.
pub fn valid_received_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
