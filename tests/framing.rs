//! RFC 6455 rules on the wire, keepalive and size limits (PROTOCOL.md §5, §6).

mod common;

use common::*;

async fn joined_raw(srv: &TestServer, uid: &str) -> RawClient {
    let mut raw = RawClient::connect(srv.addr).await;
    raw.join(uid, "framing").await;
    raw
}

#[tokio::test]
async fn framing_violations_close_with_their_codes() {
    let srv = TestServer::start(&[]);
    let unmasked = {
        let mut f = vec![0x81, 5];
        f.extend_from_slice(b"hello");
        f
    };
    let mut invalid_utf8 = masked(0x81, &[0xC3, 0x28]);
    invalid_utf8.truncate(invalid_utf8.len());
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", unmasked, 1002),
        ("reserved bit", masked(0x80 | 0x40 | 0x2, b"x"), 1002),
        ("unknown opcode", masked(0x83, b"x"), 1002),
        ("long ping", masked(0x89, &[0u8; 126]), 1002),
        ("fragmented ping", masked(0x09, b"x"), 1002),
        ("lone continuation", masked(0x80, b"x"), 1002),
        ("invalid utf-8", invalid_utf8, 1007),
    ];
    for (name, frame, code) in cases {
        let mut raw = joined_raw(&srv, name).await;
        raw.send(&frame).await;
        let (got, why) = raw.expect_close().await;
        assert_eq!(got, code, "{name}: {why}");
        assert!(!why.is_empty(), "{name}: every close carries a reason");
    }
}

#[tokio::test]
async fn invalid_utf8_in_a_fragmented_text_message_is_1007() {
    let srv = TestServer::start(&[]);
    let mut raw = joined_raw(&srv, "frag").await;
    raw.send(&masked(0x01, &[0xE2, 0x82])).await;
    raw.send(&masked(0x80, &[0x28])).await;
    assert_eq!(raw.expect_close().await.0, 1007);
}

#[tokio::test]
async fn ping_is_answered_with_the_same_payload_and_close_is_echoed() {
    let srv = TestServer::start(&[]);
    let mut raw = joined_raw(&srv, "pinger").await;
    raw.send(&masked(0x89, b"are you there")).await;
    let (b0, p) = raw.frame().await.unwrap();
    assert_eq!((b0, p.as_slice()), (0x8A, &b"are you there"[..]));
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    raw.send(&masked(0x88, &close)).await;
    assert_eq!(raw.expect_close().await.0, 1000);
    assert!(
        raw.frame().await.is_none(),
        "server closes the TCP connection after the close handshake"
    );
}

#[tokio::test]
async fn invalid_close_frames_are_protocol_errors() {
    let srv = TestServer::start(&[]);
    let mut raw = joined_raw(&srv, "c1").await;
    raw.send(&masked(0x88, &[0x03])).await;
    assert_eq!(raw.expect_close().await.0, 1002);
    let mut raw = joined_raw(&srv, "c2").await;
    raw.send(&masked(0x88, &1005u16.to_be_bytes())).await;
    assert_eq!(raw.expect_close().await.0, 1002);
}

#[tokio::test]
async fn messages_over_max_message_close_with_1009() {
    let srv = TestServer::start(&["--max-message", "1KiB"]);
    let mut other = srv.join("other", "framing").await;
    let mut raw = joined_raw(&srv, "big").await;
    let _ = other.recv_text().await; // big's header
    raw.send(&masked(0x82, &[7u8; 1024])).await;
    assert_eq!(
        other.recv_binary().await.len(),
        1024,
        "exactly the limit passes"
    );
    raw.send(&masked(0x82, &[7u8; 1025])).await;
    assert_eq!(raw.expect_close().await.0, 1009);

    let mut frag = joined_raw(&srv, "frag").await;
    frag.send(&masked(0x02, &[1u8; 600])).await;
    frag.send(&masked(0x80, &[1u8; 600])).await;
    assert_eq!(
        frag.expect_close().await.0,
        1009,
        "the limit applies to the whole message"
    );
}

#[tokio::test]
async fn fragmented_messages_are_delivered_whole_with_their_opcode() {
    let srv = TestServer::start(&[]);
    let mut sub = srv.join("sub", "frags").await;
    let mut raw = RawClient::connect(srv.addr).await;
    raw.join("pub", "frags").await;
    let _ = sub.recv_text().await;
    raw.send(&masked(0x01, b"hel")).await;
    raw.send(&masked(0x89, b"interleaved ping")).await;
    raw.send(&masked(0x00, b"lo ")).await;
    raw.send(&masked(0x80, b"world")).await;
    raw.send(&masked(0x02, &[1, 2])).await;
    raw.send(&masked(0x80, &[3])).await;
    assert_eq!(sub.recv_text().await, "hello world");
    assert_eq!(sub.recv_binary().await, vec![1, 2, 3]);
}

#[tokio::test]
async fn server_pings_and_closes_silent_sessions() {
    let srv = TestServer::start(&["--ping-interval", "100ms"]);
    let mut raw = joined_raw(&srv, "silent").await;
    let mut pings = 0;
    let code = loop {
        let (b0, p) = raw.frame().await.expect("frames until the close");
        match b0 {
            0x89 => pings += 1,
            0x88 => {
                break (
                    u16::from_be_bytes([p[0], p[1]]),
                    String::from_utf8_lossy(&p[2..]).to_string(),
                );
            }
            _ => {}
        }
    };
    assert!(pings >= 2, "pings before the timeout: {pings}");
    assert_eq!(code, (1008, "keepalive timeout".to_string()));
}

#[tokio::test]
async fn a_client_answering_pings_stays_connected() {
    let srv = TestServer::start(&["--ping-interval", "100ms"]);
    let mut lively = srv.join("lively", "keep").await;
    // tungstenite answers pings while we read: read until five pings have come and gone.
    let mut pings = 0;
    while pings < 8 {
        let m = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut lively.ws))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if m.is_ping() {
            pings += 1;
        }
        assert!(!m.is_close(), "closed after {pings} pings");
    }
    let mut other = srv.join("other", "keep").await;
    assert_eq!(
        header_uid(&other.recv_text().await).as_deref(),
        Some("lively")
    );
    other.send_text("still member").await;
    assert_eq!(
        header_uid(&lively.recv_text().await).as_deref(),
        Some("other")
    );
    assert_eq!(lively.recv_text().await, "still member");
}
