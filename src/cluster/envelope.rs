//! What a stored frame carries besides its payload: its kind and its origin.
//!
//! Sans-IO. A frame in the stream is the client's payload unchanged plus NATS
//! headers: `Mles-Kind` (text, binary, or a join header, which is text),
//! `Mles-Node` and `Mles-Session` (who sent it, so no node echoes it back to
//! its sender) and `Nats-Msg-Id` (so a publish retried after a NATS failover
//! is stored once). A message published by something other than mles (say
//! `nats pub mles.ch.general hi`) has no origin and reaches every member.

use std::fmt;
use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, NATS_MESSAGE_ID};
use bytes::Bytes;

// Names built once: a name given as `&str` is checked, matched against
// the standard names and copied into an allocation of its own on every
// lookup, and every node looks up three for every frame it delivers.
const KIND: HeaderName = HeaderName::from_static("Mles-Kind");
const NODE: HeaderName = HeaderName::from_static("Mles-Node");
const SESSION: HeaderName = HeaderName::from_static("Mles-Session");

/// What a frame is to WebSocket clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A text frame from a member.
    Text,
    /// A binary frame from a member.
    Binary,
    /// A joiner's header frame (text, `auth` already removed).
    Join,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Binary => "binary",
            Kind::Join => "join",
        }
    }

    fn from_tag(tag: &str) -> Option<Kind> {
        match tag {
            "text" => Some(Kind::Text),
            "binary" => Some(Kind::Binary),
            "join" => Some(Kind::Join),
            _ => None,
        }
    }

    /// Whether clients get it as a text frame.
    pub fn is_text(self) -> bool {
        !matches!(self, Kind::Binary)
    }
}

/// An mles node, named for one run of the process (a restarted node is a new node).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// A fresh id: 16 hex digits from the pid, the time and the host, unique
    /// enough that two runs never meet (ids live only as long as their run).
    pub fn generate() -> NodeId {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        h.write_u128(now.as_nanos());
        NodeId::from(format!("{:016x}", h.finish()).as_str())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> NodeId {
        NodeId(Arc::from(s))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who published a frame: a session on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub node: NodeId,
    /// The node-local session id.
    pub session: u64,
}

/// A frame on its way into the stream.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub origin: Origin,
    pub kind: Kind,
    /// The sender's count of its own frames: with the origin, the message id.
    pub serial: u64,
    pub payload: Bytes,
}

impl Outgoing {
    /// `<node>.<session>.<serial>`: the same for every retry of one frame, different for every frame.
    pub fn msg_id(&self) -> String {
        format!(
            "{}.{}.{}",
            self.origin.node, self.origin.session, self.serial
        )
    }

    /// The NATS headers that travel with the payload.
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(KIND, self.kind.tag());
        h.insert(NODE, self.origin.node.as_str());
        h.insert(SESSION, self.origin.session.to_string().as_str());
        h.insert(NATS_MESSAGE_ID, self.msg_id().as_str());
        h
    }
}

/// The last few nodes whose frames a feed delivered, so that a frame names
/// its node without an allocation of its own (a channel's frames come from
/// a handful of nodes).
#[derive(Debug, Default)]
pub struct KnownNodes {
    ids: [Option<NodeId>; 4],
    /// The slot the next new id takes.
    next: usize,
}

impl KnownNodes {
    /// The id named `name`.
    pub fn get(&mut self, name: &str) -> NodeId {
        if let Some(id) = self.ids.iter().flatten().find(|id| id.as_str() == name) {
            return id.clone();
        }
        let id = NodeId::from(name);
        self.ids[self.next] = Some(id.clone());
        self.next = (self.next + 1) % self.ids.len();
        id
    }
}

/// A frame read back from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream sequence: the frame's place in its channel's one order.
    pub seq: u64,
    /// Messages of this channel after this one already in the stream (0: caught up).
    pub pending: u64,
    /// `None` for a message that did not come from mles.
    pub origin: Option<Origin>,
    pub kind: Kind,
    pub payload: Bytes,
}

impl Delivery {
    /// Reads kind and origin from the headers; a message without them is text
    /// when its payload is UTF-8 (else binary) and has no origin.
    pub fn from_parts(
        seq: u64,
        pending: u64,
        headers: Option<&HeaderMap>,
        payload: Bytes,
        nodes: &mut KnownNodes,
    ) -> Delivery {
        let get = |name: HeaderName| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let kind = get(KIND).and_then(Kind::from_tag).unwrap_or_else(|| {
            if std::str::from_utf8(&payload).is_ok() {
                Kind::Text
            } else {
                Kind::Binary
            }
        });
        let origin = match (get(NODE), get(SESSION).and_then(|s| s.parse().ok())) {
            (Some(node), Some(session)) => Some(Origin {
                node: nodes.get(node),
                session,
            }),
            _ => None,
        };
        Delivery {
            seq,
            pending,
            origin,
            kind,
            payload,
        }
    }

    /// Whether this frame came from `session` on `node` (and so must not go back to it).
    pub fn is_from(&self, node: &NodeId, session: u64) -> bool {
        self.origin
            .as_ref()
            .is_some_and(|o| o.session == session && &o.node == node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(kind: Kind) -> Outgoing {
        Outgoing {
            origin: Origin {
                node: NodeId::from("n1"),
                session: 42,
            },
            kind,
            serial: 7,
            payload: Bytes::from_static(b"hi"),
        }
    }

    #[test]
    fn headers_round_trip() {
        let mut nodes = KnownNodes::default();
        for kind in [Kind::Text, Kind::Binary, Kind::Join] {
            let o = outgoing(kind);
            let d = Delivery::from_parts(5, 0, Some(&o.headers()), o.payload.clone(), &mut nodes);
            assert_eq!(d.kind, kind);
            assert_eq!(d.origin, Some(o.origin.clone()));
            assert!(d.is_from(&NodeId::from("n1"), 42));
            assert!(!d.is_from(&NodeId::from("n1"), 43));
            assert!(!d.is_from(&NodeId::from("n2"), 42));
        }
    }

    #[test]
    fn msg_id_is_per_frame_and_stable() {
        let a = outgoing(Kind::Text);
        let mut b = a.clone();
        assert_eq!(a.msg_id(), b.msg_id());
        b.serial += 1;
        assert_ne!(a.msg_id(), b.msg_id());
        assert_eq!(
            a.headers().get(NATS_MESSAGE_ID).map(|v| v.as_str()),
            Some("n1.42.7")
        );
    }

    #[test]
    fn foreign_messages_have_no_origin() {
        let d = Delivery::from_parts(
            1,
            0,
            None,
            Bytes::from_static(b"hello"),
            &mut KnownNodes::default(),
        );
        assert_eq!((d.kind, d.origin), (Kind::Text, None));
        let d = Delivery::from_parts(
            1,
            0,
            None,
            Bytes::from_static(&[0xff, 0]),
            &mut KnownNodes::default(),
        );
        assert_eq!(d.kind, Kind::Binary);
        assert!(!d.is_from(&NodeId::from("n1"), 0));
    }

    /// The same node's frames share one id; more nodes than the cache holds
    /// still get the right ones.
    #[test]
    fn known_nodes_are_named_once() {
        let mut nodes = KnownNodes::default();
        let a = nodes.get("a");
        assert!(std::ptr::eq(a.as_str(), nodes.get("a").as_str()));
        for name in ["b", "c", "d", "e", "f", "a", "g"] {
            assert_eq!(nodes.get(name).as_str(), name);
        }
    }

    #[test]
    fn node_ids_differ() {
        assert_ne!(NodeId::generate(), NodeId::generate());
    }
}
