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
            id: cid("a")
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
    o.probe_result(key, &cid("a"), sid(1, 1), true, t, &mut out);
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
    o.probe_result(key, &cid("a"), sid(1, 1), false, t, &mut out);
    assert_eq!(joined_key(&out, sid(2, 1)), key);
    let ch = o.channel("ch").unwrap();
    assert_eq!(ch.holder("a"), Some(sid(2, 1)));
    assert_eq!(ch.member_shards(), &[2]);
    assert_eq!(o.take_tally().probe_replaced, 1);
    // The old session's leave, arriving later, changes nothing.
    out.clear();
    o.leave(key, &cid("a"), sid(1, 1), t, &mut out);
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
    o.leave(key, &cid("a"), sid(1, 1), t, &mut out);
    assert_eq!(
        joined_key(&out, sid(2, 1)),
        key,
        "admitted when the incumbent left"
    );
    out.clear();
    o.probe_result(key, &cid("a"), sid(1, 1), false, t, &mut out);
    assert!(out.is_empty(), "the late answer is stale: {out:?}");
    assert_eq!(o.channel("ch").unwrap().holder("a"), Some(sid(2, 1)));
}

#[test]
fn a_stale_probe_answer_does_not_decide_a_newer_join() {
    let (mut o, t) = (owner(), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    let mut out = Vec::new();
    o.join(client("a", sid(2, 1)), t, &mut out);
    o.probe_result(key, &cid("a"), sid(1, 1), false, t, &mut out);
    // sid(2,1) now holds "a"; a newcomer probes it.
    o.join(client("a", sid(3, 1)), t, &mut out);
    out.clear();
    o.probe_result(key, &cid("a"), sid(1, 1), false, t, &mut out);
    assert!(out.is_empty(), "answer about an older incumbent: {out:?}");
    o.probe_result(key, &cid("a"), sid(2, 1), true, t, &mut out);
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
    o.leave(key, &cid("nobody"), sid(1, 1), t, &mut out);
    o.leave(key, &cid("a"), sid(2, 2), t, &mut out);
    assert!(out.is_empty(), "only the holder's leave counts");
    o.leave(key, &cid("a"), sid(1, 1), t, &mut out);
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
    o.leave(key, &cid("a"), sid(1, 1), t0, &mut out);
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
    o.claimed(key, &cid("a"), sid(1, 1), true, t, &mut out);
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
    o.leave(key, &cid("a"), sid(1, 1), t, &mut out);
    assert_eq!(o.sequencer.released, [Arc::<str>::from("a")]);
    // A claim refused elsewhere closes the joiner as a duplicate.
    o.join(client("b", sid(1, 2)), t, &mut out);
    o.claimed(key, &cid("b"), sid(1, 2), false, t, &mut out);
    assert_eq!(
        out,
        [Action::Refused {
            session: sid(1, 2),
            close: close::DUPLICATE
        }]
    );
}

// ---- peer links (PROTOCOL.md §7) ----

use crate::channel::links::Control;

fn incoming(uid: &str, session: SessionId) -> Join {
    Join {
        kind: MemberKind::Link,
        header: Bytes::new(),
        ..client(uid, session)
    }
}

fn controls(out: &[Action]) -> Vec<(SessionId, Control)> {
    out.iter()
        .filter_map(|a| match a {
            Action::LinkControl { session, payload } => Some((
                *session,
                Control::parse(payload).expect("a control payload"),
            )),
            _ => None,
        })
        .collect()
}

/// The frames delivered to `shard`; every delivery must skip the link `from`.
fn to_shard(out: &[Action], shard: u16, from: SessionId) -> Vec<String> {
    let d = delivers(out);
    assert!(d.iter().all(|x| x.1 == Some(from)), "{d:?}");
    d.iter()
        .filter(|x| x.0 == shard)
        .map(|x| String::from_utf8(x.2.to_vec()).unwrap())
        .collect()
}

fn sync(node: u64, routes: &[u64]) -> Bytes {
    Control {
        sync: true,
        node,
        routes: routes.to_vec(),
    }
    .encode()
}

#[test]
fn a_link_gets_the_history_then_a_sync_and_its_own_history_is_aligned() {
    let (mut o, t) = (owner().with_node(1), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    let mut out = Vec::new();
    o.publish(key, sid(1, 1), Bytes::from("m1"), false, t, &mut out);
    out.clear();
    let l = sid(2, 7);
    o.join(incoming("peer-b", l), t, &mut out);
    assert_eq!(history_of(&out, l), ["hdr-a", "m1"].map(Bytes::from));
    assert!(
        delivers(&out).is_empty(),
        "a link's join is shown to no one"
    );
    let sync_at = out
        .iter()
        .position(|a| matches!(a, Action::LinkControl { .. }))
        .unwrap();
    let joined_at = out
        .iter()
        .position(|a| matches!(a, Action::Joined { .. }))
        .unwrap();
    assert!(sync_at > joined_at, "the sync follows the history");
    assert_eq!(
        controls(&out),
        [(
            l,
            Control {
                sync: true,
                node: 1,
                routes: vec![]
            }
        )]
    );
    // The peer's history: one frame we have, one identical to it, one new.
    out.clear();
    for f in ["m1", "m1", "p1"] {
        o.publish(key, l, Bytes::from(f), false, t, &mut out);
    }
    assert!(out.is_empty(), "held until the peer's sync");
    o.link_control(key, l, &sync(2, &[]), t, &mut out);
    assert_eq!(
        to_shard(&out, 1, l),
        ["m1", "p1"],
        "the second m1 is a frame of its own; nothing goes back to the link"
    );
    assert_eq!(o.take_tally().links, 1);
    // Live frames from the link go out at once, never back to it.
    out.clear();
    o.publish(key, l, Bytes::from("p2"), false, t, &mut out);
    assert_eq!(to_shard(&out, 1, l), ["p2"]);
    // And the client's frames reach the link.
    out.clear();
    o.publish(key, sid(1, 1), Bytes::from("m2"), false, t, &mut out);
    let mut shards: Vec<u16> = delivers(&out).iter().map(|d| d.0).collect();
    shards.sort();
    assert_eq!(shards, [1, 2]);
}

#[test]
fn a_peer_that_sends_no_sync_is_resynced_after_a_wait() {
    let (mut o, t) = (owner().with_node(1), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    let l = sid(2, 7);
    let mut out = Vec::new();
    o.join(incoming("old-server", l), t, &mut out);
    o.publish(key, l, Bytes::from("hdr-a"), false, t, &mut out);
    o.publish(key, l, Bytes::from("theirs"), false, t, &mut out);
    out.clear();
    o.tick(t + Duration::from_millis(100), &mut out);
    assert!(out.is_empty());
    o.tick(t + Duration::from_secs(3), &mut out);
    assert_eq!(to_shard(&out, 1, l), ["theirs"]);
    assert!(out.contains(&Action::OpenLink { session: l }));
    // Nothing is waited for any more; a link that leaves before its sync
    // is forgotten too.
    out.clear();
    o.tick(t + Duration::from_secs(6), &mut out);
    assert!(out.is_empty());
    let l2 = sid(2, 8);
    o.join(incoming("other-server", l2), t, &mut out);
    o.leave(
        key,
        &(MemberKind::Link, "other-server".into()),
        l2,
        t,
        &mut out,
    );
    out.clear();
    o.tick(t + Duration::from_secs(9), &mut out);
    assert!(out.is_empty());
    assert_eq!(o.take_tally().links, 0);
}

#[test]
fn a_restarted_peers_history_is_kept_as_older_and_not_sent_live() {
    let (mut o, t) = (owner().with_node(1), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    let l = sid(2, 7);
    let mut out = Vec::new();
    o.join(incoming("peer-b", l), t, &mut out);
    o.publish(key, l, Bytes::from("before"), false, t, &mut out);
    out.clear();
    o.link_control(key, l, &sync(2, &[]), t, &mut out);
    assert!(delivers(&out).is_empty());
    assert_eq!(
        o.channel("ch").unwrap().history().snapshot(),
        ["before", "hdr-a"].map(Bytes::from)
    );
}

#[test]
fn of_a_mutual_pair_the_link_that_synced_last_is_refused_and_never_opened() {
    for (me, peer) in [(1u64, 2u64), (3, 2)] {
        let (mut o, t) = (owner().with_node(me), Instant::now());
        let key = join(&mut o, "a", sid(1, 1), t);
        let (own, theirs) = (sid(0, 1), sid(2, 1));
        let mut out = Vec::new();
        o.join(link("ws://peer/", own), t, &mut out);
        o.link_control(key, own, &sync(peer, &[]), t, &mut out);
        assert!(out.contains(&Action::OpenLink { session: own }));
        o.join(incoming("peer", theirs), t, &mut out);
        out.clear();
        // The peer reaches this node through its end of our link.
        o.link_control(key, theirs, &sync(peer, &[me]), t, &mut out);
        assert_eq!(
            out,
            [Action::Refused {
                session: theirs,
                close: close::PEER_CYCLE
            }],
            "node {me}"
        );
        let tally = o.take_tally();
        assert_eq!((tally.links, tally.cycles_refused), (1, 1), "node {me}");
        // A refused link carries nothing more.
        out.clear();
        o.publish(key, theirs, Bytes::from("loop"), false, t, &mut out);
        assert!(out.is_empty(), "node {me}: {out:?}");
    }
}

#[test]
fn routes_reach_the_other_links_and_a_ring_is_refused_where_it_closes() {
    let (mut o, t) = (owner().with_node(1), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    let (to_b, from_c) = (sid(0, 1), sid(2, 1));
    let mut out = Vec::new();
    o.join(link("ws://b/", to_b), t, &mut out);
    o.link_control(key, to_b, &sync(2, &[]), t, &mut out);
    out.clear();
    o.join(incoming("c", from_c), t, &mut out);
    assert_eq!(
        controls(&out),
        [(
            from_c,
            Control {
                sync: true,
                node: 1,
                routes: vec![2]
            }
        )],
        "c learns that b is reached through this node"
    );
    out.clear();
    // b learns about a node 4 behind it: c hears of it too.
    let update = Control {
        sync: false,
        node: 2,
        routes: vec![4],
    };
    o.link_control(key, to_b, &update.encode(), t, &mut out);
    assert_eq!(
        controls(&out),
        [(
            from_c,
            Control {
                sync: false,
                node: 1,
                routes: vec![2, 4]
            }
        )]
    );
    out.clear();
    // c's sync says b is reachable through c as well: a ring; c's link goes.
    o.link_control(key, from_c, &sync(3, &[2]), t, &mut out);
    assert!(out.contains(&Action::Refused {
        session: from_c,
        close: close::PEER_CYCLE
    }));
    assert!(!out.contains(&Action::OpenLink { session: from_c }));
    assert!(controls(&out).is_empty(), "nothing new to tell b");
}

#[test]
fn a_link_to_a_server_with_the_same_node_id_is_refused() {
    let (mut o, t) = (owner().with_node(5), Instant::now());
    let key = join(&mut o, "a", sid(1, 1), t);
    let l = sid(2, 7);
    let mut out = Vec::new();
    o.join(incoming("twin", l), t, &mut out);
    out.clear();
    o.link_control(key, l, &sync(5, &[]), t, &mut out);
    assert_eq!(
        out,
        [Action::Refused {
            session: l,
            close: close::PEER_CYCLE
        }]
    );
    assert_eq!(o.take_tally().links, 0);
}

/// Joins `uid` to `channel`, publishes `frames` frames of `size` bytes, and
/// (with `leave`) leaves again; returns the channel's key.
fn fill(
    o: &mut Owner<LocalSequencer>,
    channel: &str,
    session: SessionId,
    frames: usize,
    size: usize,
    leave: bool,
    t: Instant,
) -> ChannelKey {
    let mut out = Vec::new();
    o.join(
        Join {
            channel: channel.into(),
            header: Bytes::new(),
            ..client("u", session)
        },
        t,
        &mut out,
    );
    let key = joined_key(&out, session);
    for _ in 0..frames {
        o.publish(
            key,
            session,
            Bytes::from(vec![7u8; size]),
            false,
            t,
            &mut out,
        );
    }
    if leave {
        o.leave(key, &cid("u"), session, t, &mut out);
    }
    key
}

#[test]
fn history_budget_forgets_idle_channels_least_recently_active_first() {
    let t0 = Instant::now();
    let s = Duration::from_secs(1);
    let mut o = Owner::new(0, 4, 100, 100_000, LocalSequencer).with_history_budget(1000);
    fill(&mut o, "old", sid(1, 1), 3, 100, true, t0);
    fill(&mut o, "mid", sid(1, 2), 3, 100, true, t0 + s);
    fill(&mut o, "live", sid(1, 3), 3, 100, false, t0 + 2 * s);
    assert_eq!(o.total_history_bytes(), 900);
    // Two more frames on "new" pass the budget: "old" goes, whole.
    fill(&mut o, "new", sid(1, 4), 2, 100, true, t0 + 3 * s);
    assert!(
        o.channel("old").is_none(),
        "least recently active idle channel"
    );
    // (The empty header counts as a frame of 0 bytes.)
    assert_eq!(o.channel("mid").unwrap().history().len(), 4);
    assert_eq!(o.total_history_bytes(), 800);
    assert_eq!(o.len(), 3);
}

#[test]
fn history_budget_trims_live_channels_when_no_idle_one_is_left() {
    let t0 = Instant::now();
    let s = Duration::from_secs(1);
    let mut o = Owner::new(0, 4, 100, 100_000, LocalSequencer).with_history_budget(1000);
    fill(&mut o, "a", sid(1, 1), 5, 100, false, t0);
    fill(&mut o, "b", sid(1, 2), 6, 100, false, t0 + s);
    // 1100 bytes, no idle channel: the least recently active loses its
    // oldest frames until all are at 90% of the budget.
    assert_eq!(o.total_history_bytes(), 900);
    assert_eq!(o.channel("a").unwrap().history().len(), 3);
    assert_eq!(
        o.channel("b").unwrap().history().len(),
        7,
        "6 and the header"
    );
    assert_eq!(o.len(), 2, "live channels are never forgotten");
}

#[test]
fn expiry_gives_back_the_history_bytes() {
    let t0 = Instant::now();
    let mut o = owner();
    fill(&mut o, "gone", sid(1, 1), 2, 10, true, t0);
    assert_eq!(o.total_history_bytes(), 20);
    assert_eq!(
        o.expire(t0 + Duration::from_secs(60), Duration::from_secs(60)),
        1
    );
    assert_eq!(o.total_history_bytes(), 0);
}

#[test]
fn a_synced_link_from_a_peer_starts_our_links_and_its_leave_ends_them() {
    // B in a chain A->B->C with no client of its own.
    let (mut o, t) = (owner().with_node(2), Instant::now());
    let (from_a, to_c) = (sid(1, 1), sid(2, 2));
    let mut out = Vec::new();
    o.join(incoming("peer-a", from_a), t, &mut out);
    let key = joined_key(&out, from_a);
    assert!(
        !out.iter().any(|a| matches!(a, Action::StartLinks { .. })),
        "not before the link is synced (it may yet be refused)"
    );
    out.clear();
    o.link_control(key, from_a, &sync(1, &[]), t, &mut out);
    assert!(out.contains(&Action::StartLinks {
        key,
        channel: "ch".into()
    }));
    out.clear();
    o.join(link("peer-b", to_c), t, &mut out);
    assert_eq!(joined_key(&out, to_c), key, "our own link is admitted");
    out.clear();
    o.leave(
        key,
        &(MemberKind::Link, "peer-a".into()),
        from_a,
        t,
        &mut out,
    );
    assert!(out.contains(&Action::Refused {
        session: to_c,
        close: close::CHANNEL_EMPTY
    }));
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
    o.claimed(key, &cid("a"), sid(1, 2), true, t, &mut out);
    o.abandon(key, sid(1, 2), close::CLUSTER_UNAVAILABLE, &mut out);
    assert_eq!(o.sequencer.released, [Arc::<str>::from("a")]);
    out.clear();
    // A member is closed and leaves as usual; a stranger changes nothing.
    o.join(client("b", sid(1, 3)), t, &mut out);
    o.claimed(key, &cid("b"), sid(1, 3), true, t, &mut out);
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

#[test]
fn a_forgotten_channel_closes_its_members_and_starts_afresh() {
    let mut o = Owner::new(0, 4, FRAMES, BYTES, Deferred::default());
    let t = Instant::now();
    let mut out = Vec::new();
    o.join(client("a", sid(1, 1)), t, &mut out);
    let (key, _, _) = o.sequencer.claims[0].clone();
    o.claimed(key, &cid("a"), sid(1, 1), true, t, &mut out);
    let (_, origin, frame) = o.sequencer.orders.pop().unwrap();
    let o1 = Ordered {
        seq: 1,
        origin,
        frame,
    };
    o.ordered(key, o1, t, &mut out);
    // b is still claiming when the channel is forgotten.
    o.join(client("b", sid(2, 1)), t, &mut out);
    out.clear();
    o.forget(key, close::CLUSTER_BEHIND, &mut out);
    out.sort_by_key(|a| match a {
        Action::Refused { session, .. } => *session,
        _ => u64::MAX,
    });
    assert_eq!(
        out,
        [
            Action::Refused {
                session: sid(1, 1),
                close: close::CLUSTER_BEHIND
            },
            Action::Refused {
                session: sid(2, 1),
                close: close::CLUSTER_BEHIND
            }
        ]
    );
    assert_eq!(o.sequencer.released, [Arc::<str>::from("a")]);
    assert!(o.channel("ch").is_none(), "forgotten, history and all");
    assert_eq!(o.total_history_bytes(), 0);
    // A later join starts a new channel.
    out.clear();
    o.join(client("a", sid(1, 2)), t, &mut out);
    assert_ne!(o.sequencer.claims.last().unwrap().0, key);
}
