//! Every rule of PROTOCOL.md §3–5 and §7 the owner decides, one test each.
//!
//! Here: the helpers every file shares, and publishing and history. Then,
//! as the owner's own files: `join` (joins, probes, leaving, a deferred
//! sequencer), `peering` (peer links) and `retention` (budget, expiry).

use std::time::{Duration, Instant};

use super::*;
use crate::channel::LocalSequencer;
use crate::protocol::close;
use crate::protocol::header;

mod join;
mod peering;
mod retention;

const FRAMES: usize = 4;
const BYTES: usize = 1000;

fn owner() -> Owner<LocalSequencer> {
    Owner::new(0, 4, FRAMES, BYTES, LocalSequencer)
}

/// Session `n` on `shard`.
fn sid(shard: u16, n: u64) -> SessionId {
    (u64::from(shard) << 48) | n
}

fn client(uid: &str, session: SessionId) -> Join {
    Join {
        channel: "ch".into(),
        uid: uid.into(),
        session,
        kind: MemberKind::Client,
        header: Bytes::from(format!("hdr-{uid}")),
    }
}

/// A client's member id.
fn cid(uid: &str) -> MemberId {
    (MemberKind::Client, uid.into())
}

fn link(uid: &str, session: SessionId) -> Join {
    Join {
        kind: MemberKind::OwnLink,
        header: Bytes::new(),
        ..client(uid, session)
    }
}

fn joined_key(out: &[Action], session: SessionId) -> ChannelKey {
    out.iter()
        .find_map(|a| match a {
            Action::Joined {
                session: s, key, ..
            } if *s == session => Some(*key),
            _ => None,
        })
        .expect("joined")
}

fn history_of(out: &[Action], session: SessionId) -> Vec<Bytes> {
    out.iter()
        .find_map(|a| match a {
            Action::Joined {
                session: s,
                history,
                ..
            } if *s == session => Some(history.clone()),
            _ => None,
        })
        .expect("joined")
}

fn delivers(out: &[Action]) -> Vec<(u16, Option<SessionId>, Bytes)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Deliver {
                shard, skip, frame, ..
            } => Some((*shard, *skip, frame.clone())),
            _ => None,
        })
        .collect()
}

/// Joins `uid` as a client and returns the channel key.
fn join(o: &mut Owner<LocalSequencer>, uid: &str, session: SessionId, t: Instant) -> ChannelKey {
    let mut out = Vec::new();
    o.join(client(uid, session), t, &mut out);
    joined_key(&out, session)
}

#[test]
fn first_join_gets_empty_history_and_starts_links() {
    let (mut o, t) = (owner(), Instant::now());
    let mut out = Vec::new();
    o.join(client("a", sid(1, 1)), t, &mut out);
    let key = joined_key(&out, sid(1, 1));
    assert_eq!(history_of(&out, sid(1, 1)), Vec::<Bytes>::new());
    assert!(delivers(&out).is_empty(), "no one to relay the header to");
    assert!(out.contains(&Action::StartLinks {
        key,
        channel: "ch".into()
    }));
    let ch = o.channel("ch").unwrap();
    assert_eq!(ch.history().snapshot(), [Bytes::from("hdr-a")]);
    assert_eq!((ch.clients(), ch.member_shards()), (1, &[1u16][..]));
}

#[test]
fn header_goes_to_the_members_and_into_history_after_the_joiners_snapshot() {
    let (mut o, t) = (owner(), Instant::now());
    join(&mut o, "a", sid(1, 1), t);
    let mut out = Vec::new();
    o.join(client("b", sid(2, 1)), t, &mut out);
    assert_eq!(
        delivers(&out),
        [(1, Some(sid(2, 1)), Bytes::from("hdr-b"))],
        "b's header goes to a's shard only"
    );
    assert_eq!(history_of(&out, sid(2, 1)), [Bytes::from("hdr-a")]);
    assert!(!out.iter().any(|a| matches!(a, Action::StartLinks { .. })));
    assert_eq!(
        o.channel("ch").unwrap().history().snapshot(),
        [Bytes::from("hdr-a"), Bytes::from("hdr-b")]
    );
}

#[test]
fn relayed_header_carries_no_auth() {
    let (mut o, t) = (owner(), Instant::now());
    join(&mut o, "a", sid(1, 1), t);
    let h = header::parse(br#"{"uid":"b","channel":"ch","auth":"9b3b95527f7c2d80"}"#).unwrap();
    let mut out = Vec::new();
    let j = Join {
        header: h.relay.clone(),
        ..client("b", sid(1, 2))
    };
    o.join(j, t, &mut out);
    let (_, _, frame) = &delivers(&out)[0];
    assert_eq!(&frame[..], br#"{"channel":"ch","uid":"b"}"#);
    assert!(!o.channel("ch").unwrap().history().contains(b"auth"));
}

#[test]
fn a_frame_goes_to_every_member_shard_but_not_back_to_its_publisher() {
    let (mut o, t) = (owner(), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    join(&mut o, "b", sid(2, 1), t);
    join(&mut o, "c", sid(2, 2), t);
    let mut out = Vec::new();
    o.publish(key, sid(2, 1), Bytes::from("x"), false, t, &mut out);
    let mut d = delivers(&out);
    d.sort_by_key(|x| x.0);
    assert_eq!(
        d,
        [
            (1, Some(sid(2, 1)), Bytes::from("x")),
            (2, Some(sid(2, 1)), Bytes::from("x"))
        ]
    );
    assert_eq!(o.take_tally().published, 1);
}

#[test]
fn history_is_bounded_in_frames_and_bytes() {
    let (mut o, t) = (owner(), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    let mut out = Vec::new();
    for i in 0..10 {
        o.publish(key, sid(1, 1), Bytes::from(vec![i; 10]), false, t, &mut out);
    }
    out.clear();
    o.join(client("b", sid(1, 2)), t, &mut out);
    let h = history_of(&out, sid(1, 2));
    assert_eq!(h.len(), FRAMES, "--limit frames");
    assert_eq!(h[0], Bytes::from(vec![6u8; 10]), "oldest evicted first");
    for _ in 0..3 {
        o.publish(
            key,
            sid(1, 1),
            Bytes::from(vec![7; 400]),
            false,
            t,
            &mut out,
        );
    }
    let ch = o.channel("ch").unwrap();
    assert!(ch.history().bytes() <= BYTES, "--history-bytes");
    assert_eq!(ch.history().len(), 2);
}

#[test]
fn coalesced_replay_gives_clients_few_buffers_and_links_frames() {
    let (mut o, t) = (owner().with_coalesced_replay(), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    let mut out = Vec::new();
    o.publish(key, sid(1, 1), Bytes::from("m1"), false, t, &mut out);
    o.join(client("b", sid(2, 1)), t, &mut out);
    assert_eq!(history_of(&out, sid(2, 1)), [Bytes::from("hdr-am1")]);
    let l = sid(2, 7);
    o.join(link("peer-b", l), t, &mut out);
    assert_eq!(
        history_of(&out, l),
        ["hdr-a", "m1", "hdr-b"].map(Bytes::from),
        "a link forwards the history frame by frame"
    );
}

#[test]
fn history_comes_strictly_before_live_frames() {
    let (mut o, t) = (owner(), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    let mut out = Vec::new();
    o.publish(key, sid(1, 1), Bytes::from("before"), false, t, &mut out);
    o.join(client("b", sid(2, 1)), t, &mut out);
    o.publish(key, sid(1, 1), Bytes::from("after"), false, t, &mut out);
    let joined = out
        .iter()
        .position(|a| matches!(a, Action::Joined { session, .. } if *session == sid(2, 1)))
        .unwrap();
    let live: Vec<usize> = out
        .iter()
        .enumerate()
        .filter(|(_, a)| matches!(a, Action::Deliver { shard: 2, .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(live.len(), 1, "only `after` is live for b");
    assert!(
        live[0] > joined,
        "Joined is carried out before b's first live frame"
    );
    let h = history_of(&out, sid(2, 1));
    assert_eq!(h, [Bytes::from("hdr-a"), Bytes::from("before")]);
}

#[test]
fn dedup_drops_only_what_history_holds() {
    let (mut o, t) = (owner(), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    let mut out = Vec::new();
    o.publish(key, sid(1, 1), Bytes::from("m"), true, t, &mut out);
    o.publish(key, sid(1, 1), Bytes::from("m"), true, t, &mut out);
    o.publish(key, sid(1, 1), Bytes::from("m"), false, t, &mut out);
    let tally = o.take_tally();
    assert_eq!((tally.published, tally.dedup_dropped), (2, 1));
}

/// A sequencer that answers later, as a shared log would.
#[derive(Default)]
struct Deferred {
    orders: Vec<(ChannelKey, Origin, Bytes)>,
    claims: Vec<(ChannelKey, Arc<str>, SessionId)>,
    released: Vec<Arc<str>>,
}

impl Sequencer for Deferred {
    fn order(
        &mut self,
        key: ChannelKey,
        _channel: &Arc<str>,
        _last_seq: u64,
        origin: Origin,
        frame: Bytes,
    ) -> Option<Ordered> {
        self.orders.push((key, origin, frame));
        None
    }

    fn claim(
        &mut self,
        key: ChannelKey,
        _channel: &Arc<str>,
        uid: &Arc<str>,
        session: SessionId,
    ) -> Option<bool> {
        self.claims.push((key, uid.clone(), session));
        None
    }

    fn release(&mut self, _channel: &Arc<str>, uid: &Arc<str>) {
        self.released.push(uid.clone());
    }
}
