//! Every rule of PROTOCOL.md §3–5 the owner decides, one test each.

use std::time::{Duration, Instant};

use super::*;
use crate::channel::LocalSequencer;
use crate::protocol::header;

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

fn link(uid: &str, session: SessionId) -> Join {
    Join {
        kind: MemberKind::Link,
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
fn a_duplicate_uid_probes_the_incumbent_and_is_refused_if_it_answers() {
    let (mut o, t) = (owner(), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    let mut out = Vec::new();
    o.join(client("a", sid(2, 1)), t, &mut out);
    assert_eq!(
        out,
        [Action::Probe {
            session: sid(1, 1),
            key,
            uid: "a".into()
        }]
    );
    out.clear();
    o.join(client("a", sid(3, 1)), t, &mut out);
    assert_eq!(
        out,
        [Action::Refused {
            session: sid(3, 1),
            close: close::DUPLICATE
        }],
        "a third one while the probe runs is refused at once"
    );
    out.clear();
    o.probe_result(key, &"a".into(), sid(1, 1), true, t, &mut out);
    assert_eq!(
        out,
        [Action::Refused {
            session: sid(2, 1),
            close: close::DUPLICATE
        }]
    );
    assert_eq!(o.channel("ch").unwrap().holder("a"), Some(sid(1, 1)));
}

#[test]
fn a_half_open_incumbent_is_replaced() {
    let (mut o, t) = (owner(), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    let mut out = Vec::new();
    o.join(client("a", sid(2, 1)), t, &mut out);
    out.clear();
    o.probe_result(key, &"a".into(), sid(1, 1), false, t, &mut out);
    assert_eq!(joined_key(&out, sid(2, 1)), key);
    let ch = o.channel("ch").unwrap();
    assert_eq!(ch.holder("a"), Some(sid(2, 1)));
    assert_eq!(ch.member_shards(), &[2]);
    assert_eq!(o.take_tally().probe_replaced, 1);
    // The old session's leave, arriving later, changes nothing.
    out.clear();
    o.leave(key, &"a".into(), sid(1, 1), t, &mut out);
    assert!(out.is_empty());
    assert_eq!(o.channel("ch").unwrap().holder("a"), Some(sid(2, 1)));
}

#[test]
fn a_probe_racing_the_incumbents_leave_admits_once() {
    let (mut o, t) = (owner(), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    join(&mut o, "b", sid(1, 2), t);
    let mut out = Vec::new();
    o.join(client("a", sid(2, 1)), t, &mut out);
    out.clear();
    o.leave(key, &"a".into(), sid(1, 1), t, &mut out);
    assert_eq!(
        joined_key(&out, sid(2, 1)),
        key,
        "admitted when the incumbent left"
    );
    out.clear();
    o.probe_result(key, &"a".into(), sid(1, 1), false, t, &mut out);
    assert!(out.is_empty(), "the late answer is stale: {out:?}");
    assert_eq!(o.channel("ch").unwrap().holder("a"), Some(sid(2, 1)));
}

#[test]
fn a_stale_probe_answer_does_not_decide_a_newer_join() {
    let (mut o, t) = (owner(), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    let mut out = Vec::new();
    o.join(client("a", sid(2, 1)), t, &mut out);
    o.probe_result(key, &"a".into(), sid(1, 1), false, t, &mut out);
    // sid(2,1) now holds "a"; a newcomer probes it.
    o.join(client("a", sid(3, 1)), t, &mut out);
    out.clear();
    o.probe_result(key, &"a".into(), sid(1, 1), false, t, &mut out);
    assert!(out.is_empty(), "answer about an older incumbent: {out:?}");
    o.probe_result(key, &"a".into(), sid(2, 1), true, t, &mut out);
    assert_eq!(
        out,
        [Action::Refused {
            session: sid(3, 1),
            close: close::DUPLICATE
        }]
    );
}

#[test]
fn leaving_updates_members_and_the_last_client_ends_the_links() {
    let (mut o, t) = (owner(), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    let mut out = Vec::new();
    o.join(link("peer", sid(0, 9)), t, &mut out);
    assert_eq!(history_of(&out, sid(0, 9)), [Bytes::from("hdr-a")]);
    assert!(delivers(&out).is_empty(), "a link's join relays no header");
    let ch = o.channel("ch").unwrap();
    assert_eq!((ch.members(), ch.clients()), (2, 1));
    out.clear();
    o.leave(key, &"nobody".into(), sid(1, 1), t, &mut out);
    o.leave(key, &"a".into(), sid(2, 2), t, &mut out);
    assert!(out.is_empty(), "only the holder's leave counts");
    o.leave(key, &"a".into(), sid(1, 1), t, &mut out);
    assert_eq!(
        out,
        [Action::Refused {
            session: sid(0, 9),
            close: close::CHANNEL_EMPTY
        }]
    );
    assert_eq!(o.channel("ch").unwrap().member_shards(), &[0]);
    // A link that connects after every client left is turned away.
    out.clear();
    o.join(link("peer2", sid(0, 10)), t, &mut out);
    assert_eq!(
        out,
        [Action::Refused {
            session: sid(0, 10),
            close: close::CHANNEL_EMPTY
        }]
    );
    // The next client starts the links again.
    out.clear();
    o.join(client("c", sid(1, 3)), t, &mut out);
    assert!(out.iter().any(|a| matches!(a, Action::StartLinks { .. })));
}

#[test]
fn only_empty_idle_channels_expire_and_their_keys_go_stale() {
    let (mut o, t0) = (owner(), Instant::now());
    let idle = Duration::from_secs(30 * 24 * 3600);
    let key = join(&mut o, "a", sid(1, 1), t0);
    assert_eq!(o.expire(t0 + idle * 2, idle), 0, "members keep a channel");
    let mut out = Vec::new();
    o.leave(key, &"a".into(), sid(1, 1), t0, &mut out);
    assert_eq!(o.expire(t0 + idle / 2, idle), 0, "not idle long enough");
    assert_eq!(o.expire(t0 + idle, idle), 1);
    assert!(o.channel("ch").is_none() && o.is_empty());
    // A new channel takes the slot with a new key; the old key reaches nothing.
    let mut out = Vec::new();
    o.join(
        Join {
            channel: "other".into(),
            ..client("z", sid(1, 5))
        },
        t0,
        &mut out,
    );
    let new_key = joined_key(&out, sid(1, 5));
    assert_eq!(new_key as u32, key as u32, "slot reused");
    assert_ne!(new_key, key);
    out.clear();
    o.publish(key, sid(1, 1), Bytes::from("stale"), false, t0, &mut out);
    assert!(out.is_empty());
    assert!(!o.channel("other").unwrap().history().contains(b"stale"));
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

#[test]
fn a_deferred_sequencer_admits_when_the_header_comes_back_ordered() {
    let mut o = Owner::new(0, 4, FRAMES, BYTES, Deferred::default());
    let t = Instant::now();
    let mut out = Vec::new();
    o.join(client("a", sid(1, 1)), t, &mut out);
    assert!(out.is_empty(), "waiting for the claim");
    let (key, _, _) = o.sequencer.claims[0].clone();
    o.join(client("a", sid(2, 1)), t, &mut out);
    assert_eq!(
        out,
        [Action::Refused {
            session: sid(2, 1),
            close: close::DUPLICATE
        }],
        "a claim in flight counts for the duplicate check"
    );
    out.clear();
    o.claimed(key, "a", sid(1, 1), true, t, &mut out);
    assert!(out.is_empty(), "waiting for the header's order");
    let (_, origin, frame) = o.sequencer.orders.remove(0);
    // Another node's frame ordered before a's header is part of a's history.
    let remote = Ordered {
        seq: 1,
        origin: Origin {
            node: 7,
            session: 42,
        },
        frame: Bytes::from("remote"),
    };
    o.ordered(key, remote, t, &mut out);
    o.ordered(
        key,
        Ordered {
            seq: 2,
            origin,
            frame,
        },
        t,
        &mut out,
    );
    assert_eq!(history_of(&out, sid(1, 1)), [Bytes::from("remote")]);
    out.clear();
    // A frame a publishes comes back ordered, then goes out without it.
    o.publish(key, sid(1, 1), Bytes::from("x"), false, t, &mut out);
    assert!(out.is_empty());
    let (_, origin, frame) = o.sequencer.orders.remove(0);
    o.ordered(
        key,
        Ordered {
            seq: 3,
            origin,
            frame,
        },
        t,
        &mut out,
    );
    assert_eq!(delivers(&out), [(1, Some(sid(1, 1)), Bytes::from("x"))]);
    out.clear();
    o.leave(key, &"a".into(), sid(1, 1), t, &mut out);
    assert_eq!(o.sequencer.released, [Arc::<str>::from("a")]);
    // A claim refused elsewhere closes the joiner as a duplicate.
    o.join(client("b", sid(1, 2)), t, &mut out);
    o.claimed(key, "b", sid(1, 2), false, t, &mut out);
    assert_eq!(
        out,
        [Action::Refused {
            session: sid(1, 2),
            close: close::DUPLICATE
        }]
    );
}

#[test]
fn an_abandoned_join_is_closed_and_its_claim_released() {
    let mut o = Owner::new(0, 4, FRAMES, BYTES, Deferred::default());
    let t = Instant::now();
    let mut out = Vec::new();
    // Abandoned while claiming: closed, nothing to release, the uid is free again.
    o.join(client("a", sid(1, 1)), t, &mut out);
    let (key, _, _) = o.sequencer.claims[0].clone();
    o.abandon(key, sid(1, 1), close::CLUSTER_UNAVAILABLE, &mut out);
    assert_eq!(
        out,
        [Action::Refused {
            session: sid(1, 1),
            close: close::CLUSTER_UNAVAILABLE
        }]
    );
    assert!(o.sequencer.released.is_empty());
    out.clear();
    // Abandoned once claimed, its header never ordered: the claim is released.
    o.join(client("a", sid(1, 2)), t, &mut out);
    o.claimed(key, "a", sid(1, 2), true, t, &mut out);
    o.abandon(key, sid(1, 2), close::CLUSTER_UNAVAILABLE, &mut out);
    assert_eq!(o.sequencer.released, [Arc::<str>::from("a")]);
    out.clear();
    // A member is closed and leaves as usual; a stranger changes nothing.
    o.join(client("b", sid(1, 3)), t, &mut out);
    o.claimed(key, "b", sid(1, 3), true, t, &mut out);
    let (_, origin, frame) = o.sequencer.orders.pop().unwrap();
    o.ordered(
        key,
        Ordered {
            seq: 1,
            origin,
            frame,
        },
        t,
        &mut out,
    );
    out.clear();
    o.abandon(key, sid(1, 3), close::TOO_BIG, &mut out);
    assert_eq!(
        out,
        [Action::Refused {
            session: sid(1, 3),
            close: close::TOO_BIG
        }]
    );
    out.clear();
    o.abandon(key, sid(3, 9), close::TOO_BIG, &mut out);
    assert!(out.is_empty());
}
