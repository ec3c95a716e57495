//! How long history is kept: expiry of idle channels, the history budget,
//! forgetting an incomplete channel.

use super::*;

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
