//! The server-wide `--max-memory` budget for incomplete frames and messages
//! being reassembled (issue 9, item 1): unfinished frames cannot take the
//! server's memory, the session that asks past the budget is closed with
//! 1013, and nothing already held by others is disturbed.

mod common;

use common::*;

const MIB: usize = 1 << 20;

/// A masked binary frame of `len` bytes split into (all but the last byte, the last byte).
fn frame_in_two(len: usize, fill: u8) -> (Vec<u8>, Vec<u8>) {
    let mut f = masked(0x82, &vec![fill; len]);
    let last = f.split_off(f.len() - 1);
    (f, last)
}

#[tokio::test]
async fn unfinished_frames_are_bounded_server_wide() {
    let srv = TestServer::start(&[
        "--metrics",
        "127.0.0.1:0",
        "--max-memory",
        "1536KiB",
        "--max-message",
        "1MiB",
    ]);
    let mut reader = RawClient::connect(srv.addr).await;
    reader.join("reader", "budget").await;
    let mut a = RawClient::connect(srv.addr).await;
    a.join("a", "budget").await;
    // reader sees a's header (live or as history): both are members now.
    let (_, h) = reader.frame().await.unwrap();
    assert!(String::from_utf8_lossy(&h).contains("\"a\""));

    // a holds almost a whole 1 MiB frame, the server holds it for a.
    let (a_most, a_last) = frame_in_two(MIB, 0xAA);
    a.send(&a_most).await;
    let held = srv
        .metric_until("mles_partial_bytes", |v| v >= (MIB - 64) as u64)
        .await;
    assert!(
        held <= (MIB + 64) as u64,
        "1 MiB frame held as {held} bytes"
    );

    // b, another member, trying the same passes the budget: only b is closed.
    let mut b = RawClient::connect(srv.addr).await;
    b.join("b", "budget").await;
    let (b_most, _) = frame_in_two(MIB, 0xBB);
    b.send(&b_most).await;
    let (code, why) = b.expect_close().await;
    assert_eq!(code, 1013, "{why}");
    assert!(why.contains("memory"), "{why}");
    assert_eq!(
        srv.metric_until("mles_budget_refusals_total", |v| v >= 1)
            .await,
        1
    );

    // a's frame was untouched: it completes and is relayed whole.
    a.send(&a_last).await;
    loop {
        let (b0, p) = reader.frame().await.expect("a's frame arrives");
        if b0 == 0x82 {
            assert_eq!(p.len(), MIB);
            assert!(p.iter().all(|&x| x == 0xAA));
            break;
        }
    }
    // Everything is given back, so the next big frame fits again.
    srv.metric_until("mles_partial_bytes", |v| v == 0).await;
    let mut c = RawClient::connect(srv.addr).await;
    c.join("c", "budget").await;
    let (c_most, c_last) = frame_in_two(MIB, 0xCC);
    c.send(&c_most).await;
    c.send(&c_last).await;
    loop {
        let (b0, p) = reader.frame().await.expect("c's frame arrives");
        if b0 == 0x82 {
            assert!(p.len() == MIB && p[0] == 0xCC);
            break;
        }
    }
}

#[tokio::test]
async fn fragmented_messages_count_against_the_budget() {
    let srv = TestServer::start(&[
        "--metrics",
        "127.0.0.1:0",
        "--max-memory",
        "512KiB",
        "--max-message",
        "4MiB",
    ]);
    let mut a = RawClient::connect(srv.addr).await;
    a.join("frag", "budget").await;
    // Complete fragments of one unfinished message: nothing is partial at
    // the frame level, everything is in reassembly.
    a.send(&masked(0x02, &vec![1; 200 << 10])).await;
    for _ in 0..4 {
        a.send(&masked(0x00, &vec![2; 200 << 10])).await;
    }
    let (code, why) = a.expect_close().await;
    assert_eq!(code, 1013, "{why}");
    srv.metric_until("mles_partial_bytes", |v| v == 0).await;
}

/// `stuck`, which has read nothing, is closed by the budget (1013,
/// memory) and what was queued for it is freed.
async fn closed_for_memory(srv: &TestServer, stuck: &mut RawClient) {
    assert!(
        srv.metric_until("mles_budget_refusals_total", |v| v >= 1)
            .await
            >= 1
    );
    let (code, why) = stuck.expect_close().await;
    assert_eq!(code, 1013, "{why}");
    assert!(why.contains("memory"), "{why}");
    assert_eq!(srv.metric_until("mles_queued_bytes", |v| v == 0).await, 0);
}

/// Outbound queues count against `--max-memory` too: a member that stops
/// reading is closed (1013, memory) once its queue passes what the budget
/// allows, long before its own `--max-queue`, and its queue is freed; a
/// member that reads gets every frame.
#[tokio::test]
async fn outbound_queues_count_against_the_budget() {
    let srv = TestServer::start(&[
        "--metrics",
        "127.0.0.1:0",
        "--max-memory",
        "4MiB",
        "--max-queue",
        "256MiB",
        "--max-message",
        "256KiB",
    ]);
    // A small receive buffer of its own: loopback autotuning would let the
    // kernel take up to 32 MiB (tcp_rmem) of what is sent to it.
    let mut stuck = RawClient::connect_with_recv_buffer(srv.addr, 64 << 10).await;
    stuck.join("stuck", "queues").await;
    let mut reader = srv.join("reader", "queues").await;
    let mut publisher = srv.join("publisher", "queues").await;
    // The reader sees the publisher's join: all three are members.
    while header_uid(&reader.recv_text().await).as_deref() != Some("publisher") {}
    const FRAMES: usize = 160;
    let chunk = vec![7u8; 200 << 10];
    // 32 MiB: far more than the kernel's buffers on both ends of `stuck` hold.
    // In lock step with the reader, so that its queue never holds more
    // than one frame and `stuck`'s is the one the budget closes (sent
    // freely, a reader slowed by a loaded machine could be the largest
    // queue at the tick that settles the budget, and be closed instead).
    for _ in 0..FRAMES {
        publisher.send_binary(&chunk).await;
        assert_eq!(reader.recv_binary().await.len(), 200 << 10);
    }
    // `stuck` reads nothing until the budget has closed it (a reading
    // client would drain its queue before the next tick settles it).
    closed_for_memory(&srv, &mut stuck).await;
}

/// Frames of 1,000 bytes in [`long_history_under_a_small_budget`].
const LONG_HISTORY: usize = 16_000;

/// A server whose channel holds about 16 MB of history (16,000 frames of
/// 1,000 bytes) under a 4 MiB `--max-memory`.
async fn long_history_under_a_small_budget() -> (TestServer, Client) {
    let srv = TestServer::start(&[
        "--metrics",
        "127.0.0.1:0",
        "--max-memory",
        "4MiB",
        "--history-total",
        "64MiB",
        "--history-bytes",
        "64MiB",
        "--limit",
        "16001",
    ]);
    let mut publisher = srv.join("publisher", "replay").await;
    let frame = vec![7u8; 1000];
    for _ in 0..LONG_HISTORY {
        publisher.send_binary(&frame).await;
    }
    srv.metric_until("mles_history_bytes", |v| v >= (LONG_HISTORY * 1000) as u64)
        .await;
    (srv, publisher)
}

/// A joiner shares the channel's history while it writes it out
/// (`History::replay`): only its copy of the newest piece is its own. So a
/// joiner that reads, however slowly, a history four times the budget is
/// not closed for memory: it is charged a piece, not the history. (It was
/// charged the whole copy, and closed at the first tick that found it
/// unwritten.)
#[tokio::test]
async fn a_joiner_reading_a_history_larger_than_the_budget_is_not_closed() {
    let (srv, _publisher) = long_history_under_a_small_budget().await;
    let mut joiner = RawClient::connect_with_recv_buffer(srv.addr, 64 << 10).await;
    joiner.join("joiner", "replay").await;
    // A tick has charged the joiner's queue (its own copy, unwritten behind
    // the rest) while almost all of the history waits for it.
    srv.metric_until("mles_queued_bytes", |v| v > 0).await;
    assert_eq!(srv.metric("mles_budget_refusals_total").await, 0);
    let mut binary = 0;
    while binary < LONG_HISTORY {
        let (b0, _) = joiner.frame().await.expect("the history, not a close");
        assert_ne!(b0 & 0x0F, 0x8, "closed after {binary} frames");
        if b0 & 0x0F == 0x2 {
            binary += 1;
        }
    }
    assert_eq!(srv.metric("mles_budget_refusals_total").await, 0);
}

/// What the channel evicts while a joiner has not written it is the
/// joiner's alone, and counts against `--max-memory`: a joiner that reads
/// nothing while the channel moves on by a whole history (of tiny frames,
/// so that its live queue stays far under the budget) is closed (1013,
/// memory) and its memory freed, and the channel's history is whole for
/// the next joiner.
#[tokio::test]
async fn a_history_evicted_under_a_joiner_counts_against_the_budget() {
    let (srv, mut publisher) = long_history_under_a_small_budget().await;
    let mut stuck = RawClient::connect_with_recv_buffer(srv.addr, 64 << 10).await;
    stuck.join("stuck", "replay").await;
    // The channel moves on: 16,001 frames of one byte replace the history.
    const TINY: usize = 16_001;
    for _ in 0..TINY {
        publisher.send_binary(b"x").await;
    }
    closed_for_memory(&srv, &mut stuck).await;
    // The history itself was not touched: a reader gets all of it (but
    // the oldest, which its own header replaced within `--limit`).
    let mut late = srv.join("late", "replay").await;
    let mut binary = 0;
    while binary < TINY - 1 {
        if late.next().await.is_binary() {
            binary += 1;
        }
    }
}
