//! A subscriber that stops reading is closed with 1013 and slows nobody (DESIGN.md, "Backpressure").

mod common;

use common::*;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_stalled_subscriber_is_closed_and_the_others_get_everything() {
    const N: usize = 8000;
    const SIZE: usize = 4096; // 32 MB in all, far over the queue bound
    let srv = TestServer::start(&["--max-queue", "256KiB", "--limit", "10"]);
    let mut stalled = RawClient::connect(srv.addr).await; // never reads until the end
    stalled.join("stalled", "bp").await;
    let mut good = srv.join("good", "bp").await;
    let mut publisher = srv.join("pub", "bp").await;
    assert_eq!(recv_header_uids(&mut good, 2).await, ["pub", "stalled"]);
    let before = rss_kib();
    // The publisher stays at most WINDOW frames ahead of the good subscriber,
    // so only the stalled one falls behind.
    const WINDOW: usize = 32;
    let mut payload = vec![0x5Au8; SIZE];
    let mut next = 0;
    for n in 0..N {
        payload[..8].copy_from_slice(&(n as u64).to_be_bytes());
        publisher.send_binary(&payload).await;
        while next + WINDOW <= n {
            let b = good.recv_binary().await;
            assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), next as u64);
            next += 1;
        }
    }
    while next < N {
        let b = good.recv_binary().await;
        assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), next as u64);
        next += 1;
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 200 * 1024,
        "process memory grew by {grown} KiB for a 32 MB stream"
    );
    // The stalled one now reads: some frames, then the 1013 close.
    let (code, why) = stalled.expect_close().await;
    assert_eq!(code, 1013, "{why}");
}
