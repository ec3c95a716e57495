//! A subscriber that stops reading is closed with 1013 and slows nobody;
//! its queue stays bounded (docs/PROTOCOL.md, close code 1013).

mod common;

use std::time::Duration;

use common::*;

/// The tests here run one at a time: the first measures the whole test
/// process's memory, which the second's 64 MiB flood would otherwise add
/// to whenever the two overlap (once seen: 19 MB grown for a bound of 16).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _alone = ONE_AT_A_TIME.lock().await;
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

/// Each shard's value of metric `name` at a metrics listener.
async fn by_shard(srv: &TestServer, name: &str) -> Vec<u64> {
    let addr = srv.metrics_addr().unwrap();
    let body = http_raw(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let prefix = format!("{name}{{shard=\"");
    let mut v = Vec::new();
    for l in body.lines().filter(|l| l.starts_with(&prefix)) {
        let n = l.rsplit(' ').next().unwrap().parse().unwrap();
        v.push(n);
    }
    v
}

/// A WebSocket whose connection was accepted by shard `shard`.
async fn connect_on(srv: &TestServer, shard: usize) -> Client {
    for _ in 0..200 {
        let before = by_shard(srv, "mles_connections_accepted_total").await;
        let c = srv.connect().await;
        let after = by_shard(srv, "mles_connections_accepted_total").await;
        if after[shard] > before[shard] {
            return c;
        }
    }
    panic!("no connection landed on shard {shard}");
}

/// A channel name that shard `owner` of 2 owns.
fn owned_by(prefix: &str, owner: u16) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|c| mles::shard::router::owner(c, 2) == owner)
        .unwrap()
}

#[tokio::test]
async fn a_member_shard_that_falls_behind_pauses_the_publisher_until_it_catches_up() {
    let _alone = ONE_AT_A_TIME.lock().await;
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let (flood, stall) = (owned_by("flood", 0), owned_by("stall", 1));
    let srv = TestServer::start(&[
        "--shards",
        "2",
        "--metrics",
        "127.0.0.1:0",
        "--test-hook-channel",
        &stall,
        "--test-inbox-limit",
        "1MiB",
        "--max-queue",
        "512MiB",
    ]);
    // The publisher lives on the channel's owner (shard 0), the subscriber on
    // shard 1: every frame crosses shard 1's inbox as a Deliver.
    let mut sub = connect_on(&srv, 1).await;
    sub.send_text(&header("sub", &flood)).await;
    let mut publisher = connect_on(&srv, 0).await;
    publisher.send_text(&header("pub", &flood)).await;
    assert_eq!(header_uid(&sub.recv_text().await).as_deref(), Some("pub"));
    // Shard 1 stops for 3 s, as a shard that falls behind.
    let mut trigger = srv.connect().await;
    trigger.send_text(&header("stall-shard", &stall)).await;
    // The publisher writes until the server stops reading it.
    const FRAME: usize = 64 * 1024;
    const MOST: usize = 64 << 20;
    let frame = vec![7u8; FRAME];
    let (mut sent, mut cut) = (0, false);
    while sent < MOST {
        let send = publisher.ws.send(Message::binary(frame.clone()));
        match tokio::time::timeout(std::time::Duration::from_millis(500), send).await {
            Ok(r) => {
                r.unwrap();
                sent += FRAME;
            }
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(
        cut && sent < MOST / 3,
        "the publisher wrote {} MiB while a member shard stood still",
        sent >> 20
    );
    // Once shard 1 catches up, the publisher is resumed (signalled, not
    // polled) and the subscriber gets every frame.
    publisher.ws.flush().await.unwrap();
    publisher.send_text("end").await;
    let mut got = 0;
    loop {
        match sub.next().await {
            Message::Binary(b) => {
                assert_eq!(b.len(), FRAME);
                got += FRAME;
            }
            Message::Text(t) if t == "end" => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(got == sent || got == sent + FRAME, "sent {sent}, got {got}");
}
