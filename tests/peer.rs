//! Peer links between servers (PROTOCOL.md §7).

mod common;
mod tlsutil;

use common::*;

/// A free loopback port (for two servers that must name each other).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads text frames until `want` arrives; returns everything before it.
async fn until(c: &mut Client, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let t = c.recv_text().await;
        if t == want {
            return seen;
        }
        seen.push(t);
    }
}

/// Reads until the header of `uid` arrives.
async fn until_uid(c: &mut Client, uid: &str) {
    while header_uid(&c.recv_text().await).as_deref() != Some(uid) {}
}

#[tokio::test]
async fn a_linked_server_carries_the_channel_both_ways() {
    let b = TestServer::start(&[]);
    let peer = format!("ws://{}/", b.addr);
    let a = TestServer::start(&["--peer", &peer, "--peer-uid", "server-a"]);
    let mut x = a.join("x", "shared").await;
    let mut y = b.join("y", "shared").await;
    // y sees the link join B (as history or live, depending on timing).
    until_uid(&mut y, "server-a").await;
    x.send_text("from a").await;
    // Before it, y may get x's header, relayed over the link.
    let before = until(&mut y, "from a").await;
    assert!(
        before.iter().all(|t| header_uid(t).as_deref() == Some("x")),
        "{before:?}"
    );
    y.send_text("from b").await;
    // x also sees y's header, relayed over the link.
    let before = until(&mut x, "from b").await;
    assert!(
        before.iter().any(|t| header_uid(t).as_deref() == Some("y")),
        "{before:?}"
    );
    // Exactly once each way: the next frames are the markers.
    x.send_text("marker a").await;
    assert_eq!(y.recv_text().await, "marker a");
    y.send_text("marker b").await;
    assert_eq!(x.recv_text().await, "marker b");
}

#[tokio::test]
async fn mutually_linked_servers_do_not_loop_or_duplicate() {
    let port_b = free_port();
    let a = TestServer::start(&[
        "--peer",
        &format!("ws://127.0.0.1:{port_b}/"),
        "--peer-uid",
        "server-a",
    ]);
    let listen_b = format!("127.0.0.1:{port_b}");
    let b = TestServer::start(&[
        "--listen",
        &listen_b,
        "--peer",
        &format!("ws://{}/", a.addr),
        "--peer-uid",
        "server-b",
    ]);
    let mut x = a.join("x", "loop").await;
    let mut y = b.join("y", "loop").await;
    // Wait until both links are up: each side has seen the other's link header.
    until_uid(&mut x, "server-b").await;
    until_uid(&mut y, "server-a").await;
    for i in 0..20 {
        x.send_text(&format!("x{i}")).await;
        y.send_text(&format!("y{i}")).await;
    }
    x.send_text("x-end").await;
    y.send_text("y-end").await;
    let at_y: Vec<String> = until(&mut y, "x-end")
        .await
        .into_iter()
        .filter(|t| t.starts_with('x'))
        .collect();
    let at_x: Vec<String> = until(&mut x, "y-end")
        .await
        .into_iter()
        .filter(|t| t.starts_with('y'))
        .collect();
    assert_eq!(
        at_y,
        (0..20).map(|i| format!("x{i}")).collect::<Vec<_>>(),
        "each of x's frames once, in order"
    );
    assert_eq!(
        at_x,
        (0..20).map(|i| format!("y{i}")).collect::<Vec<_>>(),
        "each of y's frames once, in order"
    );
    // Nothing echoes back to its sender: the next frame x sees is a fresh one from y.
    y.send_text("after").await;
    let rest = until(&mut x, "after").await;
    assert!(
        rest.iter().all(|t| !t.starts_with('x')),
        "echoed back: {rest:?}"
    );
}

#[tokio::test]
async fn a_restarted_server_is_resynced_by_its_peer() {
    let port_b = free_port();
    let listen_b = format!("127.0.0.1:{port_b}");
    let b = TestServer::start(&["--listen", &listen_b]);
    let a = TestServer::start(&[
        "--peer",
        &format!("ws://{listen_b}/"),
        "--peer-uid",
        "server-a",
    ]);
    let mut x = a.join("x", "resync").await;
    let mut y = b.join("y", "resync").await;
    until_uid(&mut y, "server-a").await;
    x.send_text("before restart").await;
    until(&mut y, "before restart").await;
    drop(y);
    // B restarts empty on the same address; A's link reconnects and resends A's history.
    assert!(tokio::task::spawn_blocking(move || b.stop()).await.unwrap());
    let b2 = TestServer::start(&["--listen", &listen_b]);
    let mut late = b2.join("late", "resync").await;
    let got = until(&mut late, "before restart").await;
    assert!(got.iter().all(|t| header_uid(t).is_some()), "{got:?}");
    x.send_text("after").await;
    let between = until(&mut late, "after").await;
    assert!(
        !between.iter().any(|t| t == "before restart"),
        "resync added a duplicate: {between:?}"
    );
    drop(a);
}

#[tokio::test]
async fn a_wss_peer_is_verified_against_peer_ca() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca_pem) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    let ca = tlsutil::TestCa::new("peer CA");
    ca.issue(&["localhost"]).write(&cert, &key);
    std::fs::write(&ca_pem, &ca.pem).unwrap();
    let b = TestServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let peer = format!("wss://localhost:{}/", b.addr.port());
    let a = TestServer::start(&[
        "--peer",
        &peer,
        "--peer-uid",
        "server-a",
        "--peer-ca",
        ca_pem.to_str().unwrap(),
    ]);
    let mut x = a.join("x", "secure").await;
    let mut y = tlsutil::wss_join(
        b.addr,
        "localhost",
        tlsutil::client(ca.roots()),
        "y",
        "secure",
    )
    .await;
    while header_uid(&tlsutil::wss_text(&mut y).await).as_deref() != Some("server-a") {}
    x.send_text("over wss").await;
    loop {
        let t = tlsutil::wss_text(&mut y).await;
        if t == "over wss" {
            break;
        }
        assert!(header_uid(&t).is_some(), "unexpected {t:?}");
    }
    y.send(Message::text("back")).await.unwrap();
    let got = until(&mut x, "back").await;
    assert!(got.iter().all(|t| header_uid(t).is_some()), "{got:?}");
}

#[tokio::test]
async fn links_close_when_the_channel_empties_and_return_with_the_next_client() {
    let b = TestServer::start(&[]);
    let peer = format!("ws://{}/", b.addr);
    let a = TestServer::start(&["--peer", &peer, "--peer-uid", "server-a"]);
    let mut watcher = b.join("w", "ebb").await;
    let mut x = a.join("x", "ebb").await;
    until_uid(&mut watcher, "server-a").await;
    x.send_text("first").await;
    until(&mut watcher, "first").await;
    // The last client on A leaves: A closes its link, so B's member list loses
    // "server-a" and the uid is free again (a new join with it is admitted).
    x.ws.close(None).await.unwrap();
    drop(x);
    let deadline = tokio::time::Instant::now() + WAIT;
    let probe = loop {
        let mut probe = b.join("server-a", "ebb").await;
        match probe.next().await {
            tokio_tungstenite::tungstenite::Message::Text(_) => break probe, // admitted: history arrives
            tokio_tungstenite::tungstenite::Message::Close(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the link never closed"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => panic!("{other:?}"),
        }
    };
    drop(probe);
    // The next client on A brings the link back. Its resync of A's history
    // adds nothing B already has: "first" does not come again.
    let mut x2 = a.join("x2", "ebb").await;
    until_uid(&mut watcher, "server-a").await;
    x2.send_text("second").await;
    let between = until(&mut watcher, "second").await;
    assert!(!between.iter().any(|t| t == "first"), "{between:?}");
}
