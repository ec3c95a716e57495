//! Joins (§4): duplicates, the probe of a half-open incumbent, leaving,
//! claims and headers a sequencer answers later, abandoned joins.

use super::*;

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

/// A burst of joins waiting on a shared log fills the channel's table of
/// pending joins; once all are admitted (or abandoned) the table is given
/// back, not kept at the burst's size for the channel's life.
#[test]
fn a_burst_of_pending_joins_leaves_no_table_behind() {
    let mut o = Owner::new(0, 4, FRAMES, BYTES, Deferred::default());
    let t = Instant::now();
    let mut out = Vec::new();
    for n in 0..100 {
        o.join(client(&format!("u{n}"), sid(1, n)), t, &mut out);
    }
    let key = o.sequencer.claims[0].0;
    let pending = |o: &Owner<Deferred>| {
        let ch = o.channel("ch").unwrap();
        (ch.pending.len(), ch.pending.capacity())
    };
    assert!(pending(&o).1 >= 100);
    // The last one is abandoned while its claim is out; the rest admitted.
    o.abandon(key, sid(1, 99), close::CLUSTER_UNAVAILABLE, &mut out);
    for (n, (_, uid, session)) in std::mem::take(&mut o.sequencer.claims)
        .into_iter()
        .take(99)
        .enumerate()
    {
        o.claimed(key, &cid(&uid), session, true, t, &mut out);
        let (_, origin, frame) = o.sequencer.orders.remove(0);
        let seq = n as u64 + 1;
        o.ordered(key, Ordered { seq, origin, frame }, t, &mut out);
    }
    assert_eq!(o.channel("ch").unwrap().members.len(), 99);
    assert_eq!(pending(&o), (0, 0));
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
