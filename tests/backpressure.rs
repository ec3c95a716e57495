//! A subscriber that stops reading is closed with 1013 and slows nobody;
//! its queue stays bounded (docs/PROTOCOL.md, close code 1013).

mod common;

use std::time::Duration;

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
    let srv = std::sync::Arc::new(TestServer::start(&[
        "--max-queue",
        "256KiB",
        "--limit",
        "10",
        "--metrics",
        "127.0.0.1:0",
    ]));
    let mut stalled = RawClient::connect(srv.addr).await;
    stalled.join("stalled", "bp").await;
    let mut good = srv.join("good", "bp").await;
    let mut publisher = srv.join("pub", "bp").await;
    assert_eq!(recv_header_uids(&mut good, 2).await, ["pub", "stalled"]);
    // The stalled subscriber reads nothing until the server has closed it as
    // a slow consumer; then it reads at once, so that its Close reaches it
    // within the server's close linger however long the stream still runs.
    let watcher = {
        let srv = srv.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            while srv.metric("mles_slow_consumers_total").await == 0 {
                assert!(tokio::time::Instant::now() < deadline, "never closed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut frames = 0;
            while let Some((b0, p)) = stalled.frame().await {
                if b0 & 0x0F == 0x8 {
                    return (frames, u16::from_be_bytes([p[0], p[1]]));
                }
                frames += 1;
            }
            panic!("connection ended without a close frame after {frames} frames");
        })
    };
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
    let (frames, code) = watcher.await.unwrap();
    assert_eq!(code, 1013);
    // What the stalled one got is what fit its queue and the two kernel
    // socket buffers, not the stream: an unbounded queue would hand it all.
    assert!(
        frames < N / 2,
        "the stalled subscriber got {frames} of {N} frames"
    );
    // Nor does the process keep the stream: an unbounded queue would hold
    // most of its 32 MB.
    assert!(
        grown < (N * SIZE / 2 / 1024) as u64,
        "process memory grew by {grown} KiB for a {} MB stream",
        (N * SIZE) >> 20
    );
    eprintln!("stalled got {frames} frames; memory grew {grown} KiB");
}
