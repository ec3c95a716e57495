//! Joining, history and relaying on the wire (PROTOCOL.md §4, §5).

mod common;

use common::*;

#[tokio::test]
async fn header_history_and_relay_between_two_members() {
    let srv = TestServer::start(&[]);
    let mut alice = srv.join("alice", "example").await;
    let mut carol = srv.join("carol", "example").await;
    assert_eq!(
        header_uid(&carol.recv_text().await).as_deref(),
        Some("alice"),
        "history: alice's header"
    );
    assert_eq!(
        header_uid(&alice.recv_text().await).as_deref(),
        Some("carol"),
        "live: carol's header"
    );
    alice.send_text("hello").await;
    alice.send_binary(&[1, 2, 3]).await;
    assert_eq!(carol.recv_text().await, "hello");
    assert_eq!(carol.recv_binary().await, vec![1, 2, 3]);

    let mut bob = srv.join("bob", "example").await;
    assert_eq!(recv_header_uids(&mut bob, 2).await, ["alice", "carol"]);
    assert_eq!(bob.recv_text().await, "hello");
    assert_eq!(bob.recv_binary().await, vec![1, 2, 3]);
    assert_eq!(header_uid(&alice.recv_text().await).as_deref(), Some("bob"));
    assert_eq!(header_uid(&carol.recv_text().await).as_deref(), Some("bob"));

    bob.send_text("hi all").await;
    assert_eq!(alice.recv_text().await, "hi all");
    assert_eq!(carol.recv_text().await, "hi all");
    // Never back to the sender: the next thing Bob sees is Alice's reply.
    alice.send_binary(b"reply").await;
    assert_eq!(bob.recv_binary().await, b"reply".to_vec());
}

#[tokio::test]
async fn channels_are_independent() {
    let srv = TestServer::start(&[]);
    let mut a1 = srv.join("a", "one").await;
    let mut b1 = srv.join("b", "one").await;
    let mut a2 = srv.join("a", "two").await;
    let mut b2 = srv.join("b", "two").await;
    assert_eq!(header_uid(&a1.recv_text().await).as_deref(), Some("b"));
    assert_eq!(header_uid(&a2.recv_text().await).as_deref(), Some("b"));
    b1.send_text("for one").await;
    b2.send_text("for two").await;
    assert_eq!(a1.recv_text().await, "for one");
    assert_eq!(a2.recv_text().await, "for two");
}

/// Several publishers, on whatever shards their connections land, publish at
/// once; every subscriber sees one identical sequence with nothing lost.
#[tokio::test]
async fn concurrent_publishers_yield_one_total_order() {
    const PUBS: usize = 6;
    const SUBS: usize = 4;
    const EACH: usize = 300;
    let srv = TestServer::start(&["--shards", "4", "--limit", "5000"]);
    let mut subs = Vec::new();
    for i in 0..SUBS {
        subs.push(srv.join(&format!("sub{i}"), "order").await);
    }
    let mut pubs = Vec::new();
    for i in 0..PUBS {
        pubs.push(srv.join(&format!("pub{i}"), "order").await);
    }
    // Every subscriber must have seen every publisher's header before we start.
    let mut seqs: Vec<Vec<String>> = vec![Vec::new(); SUBS];
    let mut tasks = Vec::new();
    for (i, mut p) in pubs.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for n in 0..EACH {
                p.send_text(&format!("p{i}-{n}")).await;
            }
            p
        }));
    }
    let mut readers = Vec::new();
    for (i, mut s) in subs.into_iter().enumerate() {
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < PUBS * EACH {
                let t = s.recv_text().await;
                if !t.starts_with('{') {
                    got.push(t);
                }
            }
            (i, got)
        }));
    }
    // Keep the publishers open until everything is read: dropping a socket
    // with unread data resets it, and a reset discards what the server has not read yet.
    let mut keep = Vec::new();
    for t in tasks {
        keep.push(t.await.unwrap());
    }
    for r in readers {
        let (i, got) = r.await.unwrap();
        seqs[i] = got;
    }
    for s in &seqs[1..] {
        assert_eq!(s, &seqs[0], "all subscribers see the same order");
    }
    for p in 0..PUBS {
        let mine: Vec<usize> = seqs[0]
            .iter()
            .filter_map(|m| {
                m.strip_prefix(&format!("p{p}-"))
                    .map(|n| n.parse().unwrap())
            })
            .collect();
        assert_eq!(
            mine,
            (0..EACH).collect::<Vec<_>>(),
            "publisher {p}: nothing lost, in order"
        );
    }
}

/// A member joining while a publisher is sending sees history then live,
/// with no gap and no duplicate between the two.
#[tokio::test]
async fn late_joiner_sees_history_then_live_without_gap_or_duplicate() {
    const N: usize = 3000;
    let srv = TestServer::start(&["--limit", "100"]);
    let mut publisher = srv.join("pub", "stream").await;
    let mut anchor = srv.join("anchor", "stream").await;
    let _ = publisher.recv_text().await; // anchor's header
    let sender = tokio::spawn(async move {
        for n in 0..N {
            publisher.send_text(&n.to_string()).await;
        }
        publisher
    });
    // Join once the stream is well under way.
    loop {
        let t = anchor.recv_text().await;
        if t.parse::<usize>().is_ok_and(|n| n >= N / 3) {
            break;
        }
    }
    let mut late = srv.join("late", "stream").await;
    let mut seen = Vec::new();
    let mut headers = 0;
    while seen.last() != Some(&(N - 1)) {
        let t = late.recv_text().await;
        match t.parse::<usize>() {
            Ok(n) => seen.push(n),
            Err(_) => headers += 1,
        }
    }
    sender.await.unwrap();
    assert!(headers <= 2);
    let first = seen[0];
    assert!(
        first > 0,
        "history is bounded by --limit, so it starts after 0"
    );
    assert_eq!(
        seen,
        (first..N).collect::<Vec<_>>(),
        "contiguous: no gap, no duplicate"
    );
}

#[tokio::test]
async fn history_keeps_the_last_limit_frames() {
    let srv = TestServer::start(&["--limit", "5"]);
    let mut p = srv.join("p", "hist").await;
    let mut w = srv.join("w", "hist").await;
    let _ = p.recv_text().await;
    let _ = w.recv_text().await;
    for n in 0..10 {
        p.send_text(&n.to_string()).await;
    }
    for n in 0..10 {
        assert_eq!(w.recv_text().await, n.to_string());
    }
    let mut late = srv.join("late", "hist").await;
    let mut hist = Vec::new();
    for _ in 0..5 {
        hist.push(late.recv_text().await);
    }
    assert_eq!(hist, vec!["5", "6", "7", "8", "9"]);
    p.send_text("live").await;
    assert_eq!(late.recv_text().await, "live");
}

#[tokio::test]
async fn history_is_bounded_in_bytes() {
    let srv = TestServer::start(&["--history-bytes", "3KiB"]);
    let mut p = srv.join("p", "bytes").await;
    let mut w = srv.join("w", "bytes").await;
    let _ = p.recv_text().await;
    let _ = w.recv_text().await;
    for n in 0..10u8 {
        p.send_binary(&[n; 1000]).await;
    }
    for n in 0..10u8 {
        assert_eq!(w.recv_binary().await[0], n);
    }
    let mut late = srv.join("late", "bytes").await;
    let mut firsts = Vec::new();
    p.send_text("end").await;
    loop {
        match late.next().await {
            tokio_tungstenite::tungstenite::Message::Binary(b) => firsts.push(b[0]),
            tokio_tungstenite::tungstenite::Message::Text(t) if t == "end" => break,
            _ => {}
        }
    }
    assert_eq!(
        firsts,
        vec![7, 8, 9],
        "3 KiB hold the last three 1000-byte frames"
    );
}

#[tokio::test]
async fn dedup_option_drops_frames_identical_to_history() {
    let srv = TestServer::start(&["--dedup"]);
    let mut p = srv.join("p", "dd").await;
    let mut w = srv.join("w", "dd").await;
    let _ = p.recv_text().await;
    let _ = w.recv_text().await;
    p.send_text("same").await;
    p.send_text("same").await;
    p.send_text("other").await;
    assert_eq!(w.recv_text().await, "same");
    assert_eq!(w.recv_text().await, "other");

    let plain = TestServer::start(&[]);
    let mut p = plain.join("p", "dd").await;
    let mut w = plain.join("w", "dd").await;
    let _ = p.recv_text().await;
    let _ = w.recv_text().await;
    p.send_text("same").await;
    p.send_text("same").await;
    assert_eq!(w.recv_text().await, "same");
    assert_eq!(
        w.recv_text().await,
        "same",
        "without --dedup a client may repeat itself"
    );
}

/// A plain subscriber that stops reading until its socket is full (the
/// shard's direct write would block, and the session's task takes over
/// until the socket has room), then reads again, gets every frame once and
/// in order (issue 12).
#[tokio::test]
async fn a_reader_that_pauses_until_its_socket_is_full_gets_everything_in_order() {
    let srv = TestServer::start(&[
        "--shards",
        "2",
        "--max-queue",
        "64MiB",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let mut slow = RawClient::connect(srv.addr).await;
    slow.join("slow", "pause").await;
    let mut publisher = srv.join("publisher", "pause").await;
    // `slow` is a member once it has the publisher's header (live, or in
    // its history if its own join reached the owner later: two joins sent
    // on two connections have no order). Only then may the frames go, or
    // a late join would find the first ones already out of history.
    loop {
        let (b0, p) = slow.frame().await.expect("the publisher's header");
        if b0 == 0x81 && header_uid(&String::from_utf8_lossy(&p)).as_deref() == Some("publisher") {
            break;
        }
    }
    // 24 MiB: more than the send buffer (at most 1 MiB, doubled by Linux)
    // and the reader's receive buffer together, so the rest waits queued.
    const FRAMES: u32 = 1536;
    let mut frame = vec![0u8; 16 << 10];
    for i in 0..FRAMES {
        frame[..4].copy_from_slice(&i.to_be_bytes());
        publisher.send_binary(&frame).await;
    }
    srv.metric_until("mles_queued_bytes", |q| q > 0).await;
    let mut next = 0u32;
    while next < FRAMES {
        let (b0, p) = slow.frame().await.expect("frames arrive");
        if b0 != 0x82 {
            continue;
        }
        assert_eq!(p.len(), 16 << 10);
        assert_eq!(u32::from_be_bytes(p[..4].try_into().unwrap()), next);
        next += 1;
    }
    assert_eq!(srv.metric("mles_slow_consumers_total").await, 0);
}
