//! The header frame and authentication (PROTOCOL.md §2, §3).

mod common;

use common::*;

async fn refused(srv: &TestServer, frame: Vec<u8>) -> (u16, String) {
    let mut raw = RawClient::connect(srv.addr).await;
    raw.send(&frame).await;
    raw.expect_close().await
}

#[tokio::test]
async fn malformed_headers_close_with_1002() {
    let srv = TestServer::start(&[]);
    for (frame, reason) in [
        (masked(0x82, br#"{"uid":"a","channel":"c"}"#), "text"),
        (masked(0x81, b"not json"), "JSON"),
        (masked(0x81, b"[1,2]"), "JSON"),
        (masked(0x81, br#"{"uid":"a"}"#), "uid and channel"),
        (masked(0x81, br#"{"uid":7,"channel":"c"}"#), "strings"),
        (
            masked(0x81, br#"{"uid":"a","channel":"c","auth":12}"#),
            "strings",
        ),
    ] {
        let (code, why) = refused(&srv, frame).await;
        assert_eq!(code, 1002, "{why}");
        assert!(why.contains(reason), "{why:?} should mention {reason}");
    }
}

#[tokio::test]
async fn empty_or_oversized_fields_close_with_1008() {
    let srv = TestServer::start(&[]);
    let (code, why) = refused(&srv, masked(0x81, br#"{"uid":"","channel":"c"}"#)).await;
    assert_eq!((code, why.contains("empty")), (1008, true), "{why}");
    let long = format!(r#"{{"uid":"a","channel":"{}"}}"#, "c".repeat(1025));
    let (code, why) = refused(&srv, masked(0x81, long.as_bytes())).await;
    assert_eq!((code, why.contains("1024")), (1008, true), "{why}");
}

#[tokio::test]
async fn control_characters_in_uid_or_channel_close_with_1008() {
    let srv = TestServer::start(&[]);
    for raw in [
        r#"{"uid":"\u0000peer\u0000ws://x/","channel":"c"}"#,
        r#"{"uid":"a","channel":"c\nd"}"#,
        r#"{"uid":"\u001b[2J","channel":"c"}"#,
    ] {
        let (code, why) = refused(&srv, masked(0x81, raw.as_bytes())).await;
        assert_eq!(
            (code, why.contains("control")),
            (1008, true),
            "{raw}: {why}"
        );
    }
}

#[tokio::test]
async fn refused_session_stores_and_relays_nothing() {
    let srv = TestServer::start(&[]);
    let mut a = srv.join("a", "quiet").await;
    let (code, _) = refused(&srv, masked(0x81, br#"{"uid":"","channel":"quiet"}"#)).await;
    assert_eq!(code, 1008);
    let mut b = srv.join("b", "quiet").await;
    // b's history holds only a's header; a sees b's header and nothing else.
    assert_eq!(header_uid(&b.recv_text().await).as_deref(), Some("a"));
    assert_eq!(header_uid(&a.recv_text().await).as_deref(), Some("b"));
    a.send_text("marker").await;
    assert_eq!(b.recv_text().await, "marker");
}

#[tokio::test]
async fn auth_without_key_must_match_the_plain_hash() {
    let srv = TestServer::start(&[]);
    let mut ok = srv.connect().await;
    ok.send_text(r#"{"uid":"alice","channel":"example","auth":"9b3b95527f7c2d80"}"#)
        .await;
    let mut bob = srv.join("bob", "example").await;
    let relayed = bob.recv_text().await;
    assert_eq!(header_uid(&relayed).as_deref(), Some("alice"));
    assert!(
        !relayed.contains("auth"),
        "auth is never relayed or stored: {relayed}"
    );
    let seen = ok.recv_text().await;
    assert_eq!(header_uid(&seen).as_deref(), Some("bob"));

    let (code, why) = refused(
        &srv,
        masked(
            0x81,
            br#"{"uid":"alice","channel":"x","auth":"9b3b95527f7c2d80"}"#,
        ),
    )
    .await;
    assert_eq!((code, why.as_str()), (1008, "auth failed"));
}

#[tokio::test]
async fn mles_key_makes_auth_mandatory_with_the_test_vectors() {
    let srv = TestServer::start_with_key(&[], Some("secret"));
    let (code, why) = refused(
        &srv,
        masked(0x81, br#"{"uid":"alice","channel":"example"}"#),
    )
    .await;
    assert_eq!((code, why.as_str()), (1008, "auth required"));
    let (code, _) = refused(
        &srv,
        masked(
            0x81,
            br#"{"uid":"alice","channel":"example","auth":"9b3b95527f7c2d80"}"#,
        ),
    )
    .await;
    assert_eq!(code, 1008, "the keyless hash is wrong when MLES_KEY is set");

    let mut alice = srv.connect().await;
    alice
        .send_text(r#"{"uid":"alice","channel":"example","auth":"AFA46B8689DAE7A5"}"#)
        .await;
    let mut observer = srv.connect().await;
    let obs = mles::protocol::auth::hash_parts(&[b"observer", b"example", b"secret"]);
    observer
        .send_text(&format!(
            r#"{{"uid":"observer","channel":"example","auth":"{obs:x}"}}"#
        ))
        .await;
    assert_eq!(
        header_uid(&observer.recv_text().await).as_deref(),
        Some("alice")
    );

    let k3y = TestServer::start_with_key(&[], Some("k3y"));
    let mut bob = k3y.connect().await;
    bob.send_text(r#"{"uid":"bob","channel":"general","auth":"0082dab779bb281d62"}"#)
        .await;
    let mut eve = k3y.connect().await;
    let e = mles::protocol::auth::hash_parts(&[b"eve", b"general", b"k3y"]);
    eve.send_text(&format!(
        r#"{{"uid":"eve","channel":"general","auth":"{e:x}"}}"#
    ))
    .await;
    assert_eq!(header_uid(&eve.recv_text().await).as_deref(), Some("bob"));
}

#[tokio::test]
async fn no_header_in_time_closes_with_1008() {
    let srv = TestServer::start(&["--header-timeout", "300ms"]);
    let mut raw = RawClient::connect(srv.addr).await;
    let (code, why) = raw.expect_close().await;
    assert_eq!((code, why.as_str()), (1008, "no header frame in time"));
}
