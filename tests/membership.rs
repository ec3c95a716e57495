//! One session per (uid, channel), and the half-open incumbent probe (PROTOCOL.md §4).

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn duplicate_uid_on_a_channel_is_refused_but_other_channels_are_fine() {
    let srv = TestServer::start(&[]);
    let mut first = srv.join("alice", "dup").await;
    let mut watcher = srv.join("watcher", "dup").await;
    assert_eq!(
        header_uid(&watcher.recv_text().await).as_deref(),
        Some("alice")
    );
    let mut second = srv.join("alice", "dup").await;
    let (code, why) = second.expect_close().await;
    assert_eq!(code, 1008);
    assert!(why.contains("already joined"), "{why}");
    let mut elsewhere = srv.join("alice", "other-channel").await;
    elsewhere.send_text("fine").await;
    // The incumbent is unaffected.
    first.send_text("still me").await;
    assert_eq!(watcher.recv_text().await, "still me");
}

/// The probe waits 2 s of incumbent silence and 2 s for its answer: that
/// time is the protocol itself, so these tests wait for it on purpose.
#[tokio::test]
async fn a_half_open_incumbent_is_replaced() {
    let srv = TestServer::start(&[]);
    let mut dead = RawClient::connect(srv.addr).await;
    dead.join("bob", "probe").await;
    let mut watcher = srv.join("watcher", "probe").await;
    assert_eq!(
        header_uid(&watcher.recv_text().await).as_deref(),
        Some("bob")
    );
    tokio::time::sleep(Duration::from_millis(2100)).await; // incumbent silent > 2 s
    let mut newcomer = srv.join("bob", "probe").await;
    // Admitted after the unanswered ping: history (both earlier headers) then live.
    assert_eq!(recv_header_uids(&mut newcomer, 2).await, ["bob", "watcher"]);
    assert_eq!(
        header_uid(&watcher.recv_text().await).as_deref(),
        Some("bob")
    );
    watcher.send_text("welcome back").await;
    assert_eq!(newcomer.recv_text().await, "welcome back");
    // The old one got a ping and then a close.
    let mut saw_ping = false;
    let code = loop {
        let (b0, p) = dead.frame().await.expect("ping then close");
        if b0 == 0x89 {
            saw_ping = true;
        }
        if b0 == 0x88 {
            break u16::from_be_bytes([p[0], p[1]]);
        }
    };
    assert!(saw_ping);
    assert_eq!(code, 1008);
}

#[tokio::test]
async fn a_live_incumbent_answering_the_ping_keeps_its_uid() {
    let srv = TestServer::start(&[]);
    let mut alive = RawClient::connect(srv.addr).await;
    alive.join("carl", "probe2").await;
    tokio::time::sleep(Duration::from_millis(2100)).await; // silent, but will answer
    let mut newcomer = srv.join("carl", "probe2").await;
    let (b0, p) = alive.frame().await.expect("the probe ping");
    assert_eq!(b0, 0x89);
    alive.send(&masked(0x8A, &p)).await;
    let (code, why) = newcomer.expect_close().await;
    assert_eq!(code, 1008, "{why}");
}

#[tokio::test]
async fn uid_is_free_again_after_leaving() {
    let srv = TestServer::start(&[]);
    let mut watcher = srv.join("w", "again").await;
    let mut a = srv.join("a", "again").await;
    assert_eq!(header_uid(&watcher.recv_text().await).as_deref(), Some("a"));
    a.ws.close(None).await.unwrap();
    // Wait for the close handshake to finish.
    while let Some(Ok(_)) = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut a.ws))
        .await
        .unwrap()
    {}
    // A closed incumbent answers a probe as dead at once: the uid is free.
    let mut again = srv.join("a", "again").await;
    // History: w's header and the old header of a, which stays.
    assert_eq!(recv_header_uids(&mut again, 2).await, ["a", "w"]);
}
