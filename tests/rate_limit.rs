//! Per-session rate limits (`--rate-limit`, `--rate-limit-bytes`): a
//! session over its limit is closed with 1008 naming the flag; one within it
//! is not disturbed.

mod common;

use common::*;

#[tokio::test]
async fn a_flood_of_messages_is_closed_and_others_keep_going() {
    let srv = TestServer::start(&["--rate-limit", "5"]);
    let mut calm = RawClient::connect(srv.addr).await;
    calm.join("calm", "rated").await;
    let mut flood = RawClient::connect(srv.addr).await;
    flood.join("flood", "rated").await;
    for i in 0..20 {
        flood.send(&masked(0x81, format!("m{i}").as_bytes())).await;
    }
    let (code, why) = flood.expect_close().await;
    assert_eq!(code, 1008, "{why}");
    assert!(why.contains("--rate-limit"), "{why}");
    // The header and four messages fit the burst; calm gets those, in order.
    calm.send(&masked(0x81, b"calm-1")).await;
    let mut seen = Vec::new();
    while let Some((b0, p)) = calm.frame().await {
        if b0 == 0x81 {
            let t = String::from_utf8(p).unwrap();
            if t == "m3" {
                break;
            }
            if !t.starts_with('{') {
                seen.push(t);
            }
        }
    }
    assert_eq!(seen, ["m0", "m1", "m2"]);
}

#[tokio::test]
async fn a_byte_flood_is_closed_but_one_large_message_passes() {
    let srv = TestServer::start(&["--rate-limit-bytes", "1KiB", "--max-message", "8KiB"]);
    let mut a = RawClient::connect(srv.addr).await;
    a.join("bytes", "rated").await;
    let mut b = RawClient::connect(srv.addr).await;
    b.join("reader", "rated").await;
    a.send(&masked(0x82, &[1u8; 8 << 10])).await;
    a.send(&masked(0x82, &[2u8; 8 << 10])).await;
    let (code, why) = a.expect_close().await;
    assert_eq!(code, 1008, "{why}");
    assert!(why.contains("--rate-limit-bytes"), "{why}");
    loop {
        let (b0, p) = b.frame().await.expect("the first message arrives");
        if b0 == 0x82 {
            assert_eq!(p, vec![1u8; 8 << 10]);
            break;
        }
    }
}
