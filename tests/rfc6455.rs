//! RFC 6455 details beyond the basic framing tests (issue 9, item 6), and the
//! header frame's bounds: what a strict reading of the RFC refuses and what
//! of a header is kept.

mod common;

use common::*;

#[tokio::test]
async fn http_1_0_upgrade_is_refused() {
    let srv = TestServer::start(&[]);
    let req = upgrade_request(srv.addr, "Sec-WebSocket-Protocol: mles-websocket\r\n")
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    let resp = http_raw(srv.addr, &req).await;
    assert!(resp.contains(" 400 "), "{resp}");
    assert!(resp.contains("needs HTTP/1.1"), "{resp}");
    assert!(!resp.contains(" 101 "), "{resp}");
}

#[tokio::test]
async fn key_that_is_not_base64_of_16_bytes_is_refused() {
    let srv = TestServer::start(&[]);
    let good = "dGhlIHNhbXBsZSBub25jZQ==";
    for bad in [
        "!!!!!!!!!!!!!!!!!!!!!!!!",
        "dGhlIHNhbXBsZSBub25jZSBi",
        "dGhlIHNhbXBsZSBub25jZR==",
    ] {
        let req = upgrade_request(srv.addr, "Sec-WebSocket-Protocol: mles-websocket\r\n")
            .replace(good, bad);
        let resp = http_raw(srv.addr, &req).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{bad}: {resp}");
        assert!(resp.contains("Sec-WebSocket-Key"), "{bad}: {resp}");
    }
}

/// A masked frame whose length uses a longer form than it needs.
fn with_long_length(b0: u8, payload: &[u8], sixteen_bit: bool) -> Vec<u8> {
    let mask = [9, 8, 7, 6];
    let mut v = vec![b0];
    if sixteen_bit {
        v.push(0x80 | 126);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    } else {
        v.push(0x80 | 127);
        v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

#[tokio::test]
async fn lengths_not_in_shortest_form_close_with_1002() {
    let srv = TestServer::start(&[]);
    for sixteen_bit in [true, false] {
        let mut raw = RawClient::connect(srv.addr).await;
        raw.join("long-length", &format!("rfc-{sixteen_bit}")).await;
        raw.send(&with_long_length(0x82, b"hello", sixteen_bit))
            .await;
        let (code, why) = raw.expect_close().await;
        assert_eq!(code, 1002, "{why}");
        assert!(why.contains("shortest"), "{why}");
    }
}

#[tokio::test]
async fn unknown_header_fields_are_neither_relayed_nor_stored() {
    let srv = TestServer::start(&[]);
    let mut first = srv.connect().await;
    first
        .send_text(r#"{"uid":"a","channel":"fields","note":"kept nowhere","n":[1,2,3]}"#)
        .await;
    // b joins after a: a's header reaches b as history, b's reaches a live.
    let mut b = srv.connect().await;
    b.send_text(r#"{"uid":"b","channel":"fields","big":"xxxxxxxx"}"#)
        .await;
    let stored: serde_json::Value = serde_json::from_str(&b.recv_text().await).unwrap();
    assert_eq!(stored, serde_json::json!({"uid":"a","channel":"fields"}));
    let live: serde_json::Value = serde_json::from_str(&first.recv_text().await).unwrap();
    assert_eq!(live, serde_json::json!({"uid":"b","channel":"fields"}));
}

#[tokio::test]
async fn header_frame_over_the_cap_closes_with_1009() {
    let srv = TestServer::start(&[]);
    let pad = "p".repeat(8192);
    let big = format!(r#"{{"uid":"a","channel":"c","pad":"{pad}"}}"#);
    let mut raw = RawClient::connect(srv.addr).await;
    raw.send(&masked(0x81, big.as_bytes())).await;
    let (code, why) = raw.expect_close().await;
    assert_eq!(code, 1009, "{why}");
    assert!(why.contains("header"), "{why}");
}

#[tokio::test]
async fn oversized_header_is_refused_from_its_length_alone() {
    let srv = TestServer::start(&[]);
    let mut raw = RawClient::connect(srv.addr).await;
    // Only the head of a 1 MiB text frame (under --max-message): the server
    // must not wait for a payload it would hold unauthenticated.
    let mut head = vec![0x81, 0x80 | 127];
    head.extend_from_slice(&(1u64 << 20).to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    raw.send(&head).await;
    let (code, why) = raw.expect_close().await;
    assert_eq!(code, 1009, "{why}");
    // The same through fragments: the total counts.
    let mut raw = RawClient::connect(srv.addr).await;
    raw.send(&masked(0x01, &[b' '; 8000])).await;
    let mut head = vec![0x80, 0x80 | 126];
    head.extend_from_slice(&1000u16.to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    raw.send(&head).await;
    assert_eq!(raw.expect_close().await.0, 1009);
}
