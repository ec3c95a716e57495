//! Channel memory is bounded and given back (issue 9, item 2): channels
//! without members are forgotten after `--channel-ttl`, the history of all
//! channels together stays under `--history-total`, and the metrics show
//! channels and history bytes.

mod common;

use std::time::Duration;

use common::*;

/// Joins `channel` as `uid`, sends `n` binary frames of `size` bytes, and
/// waits until a second member has them all (so they are in history).
async fn fill(srv: &TestServer, channel: &str, n: usize, size: usize) {
    let mut writer = srv.join("writer", channel).await;
    let mut witness = srv.join("witness", channel).await;
    // Each sees the other's header (history or live) before anything else.
    writer.recv_text().await;
    witness.recv_text().await;
    for i in 0..n {
        writer.send_binary(&vec![i as u8; size]).await;
    }
    for _ in 0..n {
        witness.recv_binary().await;
    }
}

/// What a new member of `channel` gets as history: every frame up to the
/// echo of its own marker, sent by a second client after it joined.
async fn history_of(srv: &TestServer, channel: &str) -> Vec<Vec<u8>> {
    let mut probe = srv.join("probe", channel).await;
    let mut marker = srv.join("marker", channel).await;
    marker.send_text("end-of-history").await;
    let mut got = Vec::new();
    loop {
        match probe.next().await {
            tokio_tungstenite::tungstenite::Message::Binary(b) => got.push(b.to_vec()),
            tokio_tungstenite::tungstenite::Message::Text(t) if t.as_str() == "end-of-history" => {
                return got;
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn channels_without_members_forget_their_history_after_the_ttl() {
    let srv = TestServer::start(&["--metrics", "127.0.0.1:0", "--channel-ttl", "400ms"]);
    fill(&srv, "ephemeral", 3, 1000).await;
    assert!(srv.metric_until("mles_history_bytes", |v| v >= 3000).await >= 3000);
    // Everyone left (the clients of `fill` are dropped): the channel goes.
    srv.metric_until("mles_channels", |v| v == 0).await;
    assert_eq!(srv.metric("mles_history_bytes").await, 0);
    assert!(history_of(&srv, "ephemeral").await.is_empty());
}

#[tokio::test]
async fn a_member_keeps_the_channel_past_the_ttl() {
    let srv = TestServer::start(&["--metrics", "127.0.0.1:0", "--channel-ttl", "300ms"]);
    let mut keeper = srv.join("keeper", "kept").await;
    let mut writer = srv.join("writer", "kept").await;
    writer.recv_text().await;
    keeper.recv_text().await;
    writer.send_binary(b"kept frame").await;
    assert_eq!(keeper.recv_binary().await, b"kept frame");
    drop(writer);
    // Several TTLs pass with keeper a member (the gauge refreshes every tick).
    srv.metric_until("mles_channels", |v| v == 1).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(srv.metric("mles_channels").await, 1);
    }
    assert_eq!(history_of(&srv, "kept").await, [b"kept frame".to_vec()]);
}

#[tokio::test]
async fn history_of_all_channels_stays_under_the_total() {
    // One shard owns every channel, so its share is the whole total.
    let srv = TestServer::start(&[
        "--metrics",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--history-total",
        "100KiB",
    ]);
    for c in ["c1", "c2", "c3", "c4", "c5"] {
        fill(&srv, c, 10, 3000).await;
    }
    // 150 KB were sent into channels left idle: the oldest are forgotten.
    let bytes = srv.metric_until("mles_history_bytes", |_| true).await;
    assert!(bytes <= 100 << 10, "{bytes}");
    assert!(
        history_of(&srv, "c1").await.is_empty(),
        "oldest idle channel forgotten"
    );
    assert_eq!(history_of(&srv, "c5").await.len(), 10, "newest kept whole");
}
