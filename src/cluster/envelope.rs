//! What a stored frame carries besides its payload: its kind and its origin.
//!
//! Sans-IO. A frame in the stream is the client's payload unchanged plus NATS
//! headers: `Mles-Kind` (text, binary, or a join header, which is text),
//! `Mles-Node` and `Mles-Session` (who sent it, so no node echoes it back to
//! its sender) and `Nats-Msg-Id` (so a publish retried after a NATS failover
//! is stored once). A message published by something other than mles (say
//! `nats pub mles.ch.general hi`) has no origin and reaches every member.
//!
//! When a node's members send faster than one round trip to NATS, the
//! frames that queued meanwhile go into the stream as one message, a
//! *batch* ([`Unit`]): `Mles-Kind: batch`, the node in `Mles-Node`, and a
//! payload of records, each the frame's kind (one byte: 0 text, 1 binary,
//! 2 join), its session (8 bytes) and its length (4 bytes), little-endian,
//! then the frame. A batch takes one place in the stream's order and in its
//! per-channel retention, so the stream keeps at least `--limit` frames.

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

/// `Mles-Kind` of a batch.
const BATCH: &str = "batch";

/// A batch record's bytes besides its frame: kind, session, length.
pub const RECORD_OVERHEAD: usize = 1 + 8 + 4;

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

    fn code(self) -> u8 {
        match self {
            Kind::Text => 0,
            Kind::Binary => 1,
            Kind::Join => 2,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        [Kind::Text, Kind::Binary, Kind::Join]
            .into_iter()
            .find(|k| k.code() == code)
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

/// One message for the stream: a lone frame as it is (its payload, its
/// headers), or a batch of several frames of one node. Built once and kept
/// as it is through every retry, so that its message id always names the
/// same frames.
#[derive(Debug, Clone)]
pub struct Unit {
    pub payload: Bytes,
    pub headers: HeaderMap,
    /// The sessions whose frames it carries, each once, in order.
    pub senders: Vec<u64>,
    /// The frames' payload bytes (what their channel counts as queued).
    pub bytes: usize,
}

impl Unit {
    /// The message for `frames` (at least one, all from this node).
    pub fn new(frames: &[Outgoing]) -> Unit {
        let bytes = frames.iter().map(|f| f.payload.len()).sum();
        let mut senders: Vec<u64> = Vec::with_capacity(1);
        for f in frames {
            if !senders.contains(&f.origin.session) {
                senders.push(f.origin.session);
            }
        }
        let [first, rest @ ..] = frames else {
            panic!("a unit of no frames");
        };
        if rest.is_empty() {
            return Unit {
                payload: first.payload.clone(),
                headers: first.headers(),
                senders,
                bytes,
            };
        }
        let mut payload = Vec::with_capacity(bytes + RECORD_OVERHEAD * frames.len());
        for f in frames {
            payload.push(f.kind.code());
            payload.extend_from_slice(&f.origin.session.to_le_bytes());
            let len = u32::try_from(f.payload.len()).expect("frames are far below 4 GiB");
            payload.extend_from_slice(&len.to_le_bytes());
            payload.extend_from_slice(&f.payload);
        }
        let mut headers = HeaderMap::new();
        headers.insert(KIND, BATCH);
        headers.insert(NODE, first.origin.node.as_str());
        // Every frame is in one unit only, so its first frame's id names it;
        // the count keeps it apart from that frame's id alone all the same.
        let id = format!("{}+{}", first.msg_id(), frames.len());
        headers.insert(NATS_MESSAGE_ID, id.as_str());
        Unit {
            payload: Bytes::from(payload),
            headers,
            senders,
            bytes,
        }
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

/// One frame read back from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// `None` for a message that did not come from mles.
    pub origin: Option<Origin>,
    pub kind: Kind,
    pub payload: Bytes,
}

impl Frame {
    /// Whether this frame came from `session` on `node` (and so must not go back to it).
    pub fn is_from(&self, node: &NodeId, session: u64) -> bool {
        self.origin
            .as_ref()
            .is_some_and(|o| o.session == session && &o.node == node)
    }
}

/// A message read back from the stream: one frame, or a batch's frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream sequence: the message's place in its channel's one order.
    pub seq: u64,
    /// Messages of this channel after this one already in the stream (0: caught up).
    pub pending: u64,
    /// Its frames, in order (one unless it is a batch).
    pub frames: Vec<Frame>,
}

impl Delivery {
    /// Reads kind and origin from the headers; a message without them is text
    /// when its payload is UTF-8 (else binary) and has no origin. A batch
    /// that cannot be read (not written by mles) is one such frame.
    pub fn from_parts(
        seq: u64,
        pending: u64,
        headers: Option<&HeaderMap>,
        payload: Bytes,
        nodes: &mut KnownNodes,
    ) -> Delivery {
        let get = |name: HeaderName| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let tag = get(KIND);
        if let (Some(BATCH), Some(node)) = (tag, get(NODE)) {
            if let Some(frames) = records(&payload, &nodes.get(node)) {
                return Delivery {
                    seq,
                    pending,
                    frames,
                };
            }
            tracing::warn!(
                seq,
                "cluster: a batch that cannot be read; delivered as it is"
            );
        }
        let kind = tag.and_then(Kind::from_tag).unwrap_or_else(|| {
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
            frames: vec![Frame {
                origin,
                kind,
                payload,
            }],
        }
    }
}

/// A batch's frames, sharing its payload; `None` unless it is a whole
/// number of well-formed records, at least one.
fn records(payload: &Bytes, node: &NodeId) -> Option<Vec<Frame>> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let head = payload.get(at..at + RECORD_OVERHEAD)?;
        let kind = Kind::from_code(head[0])?;
        let session = u64::from_le_bytes(head[1..9].try_into().ok()?);
        let len = u32::from_le_bytes(head[9..13].try_into().ok()?) as usize;
        let start = at + RECORD_OVERHEAD;
        let end = start.checked_add(len).filter(|&e| e <= payload.len())?;
        frames.push(Frame {
            origin: Some(Origin {
                node: node.clone(),
                session,
            }),
            kind,
            payload: payload.slice(start..end),
        });
        at = end;
    }
    (!frames.is_empty()).then_some(frames)
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
            let [d] = &d.frames[..] else {
                panic!("one frame")
            };
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
        let one = |payload| {
            let d = Delivery::from_parts(1, 0, None, payload, &mut KnownNodes::default());
            d.frames.into_iter().next().unwrap()
        };
        let d = one(Bytes::from_static(b"hello"));
        assert_eq!((d.kind, d.origin), (Kind::Text, None));
        let d = one(Bytes::from_static(&[0xff, 0]));
        assert_eq!(d.kind, Kind::Binary);
        assert!(!d.is_from(&NodeId::from("n1"), 0));
    }

    /// A lone frame goes as it is (payload and headers, as a foreign tool
    /// sees it); several go as one batch that reads back as the same frames,
    /// each with its own sender and kind, in order.
    #[test]
    fn a_batch_reads_back_as_its_frames() {
        let frames: Vec<Outgoing> = [
            (Kind::Text, 42, "a"),
            (Kind::Join, 43, ""),
            (Kind::Binary, 42, "\u{0}c"),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (kind, session, payload))| Outgoing {
            origin: Origin {
                node: NodeId::from("n1"),
                session,
            },
            kind,
            serial: 7 + i as u64,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        })
        .collect();
        let lone = Unit::new(&frames[..1]);
        assert_eq!(lone.payload, frames[0].payload);
        assert_eq!(lone.headers, frames[0].headers());
        assert_eq!((lone.senders.as_slice(), lone.bytes), (&[42][..], 1));

        let batch = Unit::new(&frames);
        assert_eq!((batch.senders.as_slice(), batch.bytes), (&[42, 43][..], 3));
        assert_eq!(
            batch.headers.get(NATS_MESSAGE_ID).map(|v| v.as_str()),
            Some("n1.42.7+3")
        );
        let mut nodes = KnownNodes::default();
        let d = Delivery::from_parts(
            9,
            2,
            Some(&batch.headers),
            batch.payload.clone(),
            &mut nodes,
        );
        assert_eq!((d.seq, d.pending), (9, 2));
        let got: Vec<_> = d
            .frames
            .iter()
            .map(|f| (f.kind, f.origin.clone().unwrap(), f.payload.clone()))
            .collect();
        let sent: Vec<_> = frames
            .iter()
            .map(|f| (f.kind, f.origin.clone(), f.payload.clone()))
            .collect();
        assert_eq!(got, sent);
    }

    /// Something on the subject that says it is a batch but is not one
    /// (cut short, a bad kind, empty) is delivered as one foreign frame,
    /// whole, not dropped or read past its end.
    #[test]
    fn a_batch_that_cannot_be_read_is_one_foreign_frame() {
        let mut headers = HeaderMap::new();
        headers.insert(KIND, BATCH);
        headers.insert(NODE, "n1");
        let good = {
            let mut r = vec![0u8];
            r.extend_from_slice(&1u64.to_le_bytes());
            r.extend_from_slice(&2u32.to_le_bytes());
            r.extend_from_slice(b"hi");
            r
        };
        let mut bad_kind = good.clone();
        bad_kind[0] = 9;
        for payload in [
            good[..good.len() - 1].to_vec(),
            bad_kind,
            Vec::new(),
            good[..5].to_vec(),
        ] {
            let payload = Bytes::from(payload);
            let d = Delivery::from_parts(
                1,
                0,
                Some(&headers),
                payload.clone(),
                &mut KnownNodes::default(),
            );
            let [f] = &d.frames[..] else {
                panic!("one frame")
            };
            assert_eq!(f.payload, payload);
        }
        let d = Delivery::from_parts(
            1,
            0,
            Some(&headers),
            Bytes::from(good),
            &mut KnownNodes::default(),
        );
        assert_eq!(d.frames[0].payload, "hi");
        assert!(d.frames[0].is_from(&NodeId::from("n1"), 1));
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
