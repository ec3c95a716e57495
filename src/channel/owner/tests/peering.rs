//! Peer links (PROTOCOL.md §7): history and sync, resync, routes and
//! cycles, and the links a peer's link starts.

use super::*;
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
