//! The half-open probe must not kick a live client whose ping waits behind
//! data it is still reading (issue 9, item 4): liveness is measured by TCP
//! progress, not by the ping's place in the queue.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;

/// The probe's 2 s of silence and 2 s for an answer are the protocol
/// itself, so this test waits for them on purpose.
#[tokio::test]
async fn a_slow_reader_behind_its_backlog_keeps_its_uid() {
    let srv = TestServer::start(&["--max-queue", "256MiB"]);
    let mut victim = RawClient::connect(srv.addr).await;
    victim.join("victim", "backlog").await;
    let mut publisher = srv.join("publisher", "backlog").await;
    // The victim reads nothing yet: a backlog of 48 MiB fills the kernel's
    // buffers on both sides and leaves the rest queued in the server.
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..48 {
        publisher.send_binary(&chunk).await;
    }
    // Silent for over 2 s, the victim then reads steadily (about 2 MB/s),
    // never sending anything, so no pong can come back in time.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut tcp = victim.tcp;
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0usize;
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    });
    // The same uid joins again: the probe must find the victim alive.
    let mut newcomer = srv.join("victim", "backlog").await;
    let (code, why) = newcomer.expect_close().await;
    assert_eq!(code, 1008, "{why}");
    assert!(why.contains("already joined"), "{why}");
    assert!(!reader.is_finished(), "the victim was not closed");
    reader.abort();
}
