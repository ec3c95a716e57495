//! The HTTP upgrade (PROTOCOL.md §1).

mod common;

use common::*;

#[tokio::test]
async fn upgrade_without_subprotocol_is_refused_with_400() {
    let srv = TestServer::start(&[]);
    let resp = http_raw(
        srv.addr,
        &upgrade_request(srv.addr, "Connection: close\r\n"),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(
        resp.contains("missing subprotocol mles-websocket"),
        "{resp}"
    );
    let resp = http_raw(
        srv.addr,
        &upgrade_request(
            srv.addr,
            "Sec-WebSocket-Protocol: chat\r\nConnection: close\r\n",
        ),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

#[tokio::test]
async fn subprotocol_in_a_list_is_accepted_and_echoed() {
    let srv = TestServer::start(&[]);
    let mut raw = RawClient::connect(srv.addr).await; // offers exactly mles-websocket
    raw.join("a", "c").await;
    let mut tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = upgrade_request(srv.addr, "Sec-WebSocket-Protocol: chat, mles-websocket\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-protocol: mles-websocket\r\n"),
        "{head}"
    );
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "RFC 6455 sample key: {head}"
    );
    assert!(
        !head.contains("sec-websocket-extensions"),
        "no extension is negotiated: {head}"
    );
}

#[tokio::test]
async fn wrong_version_gets_426_and_plain_http_is_answered() {
    let srv = TestServer::start(&[]);
    let req = upgrade_request(
        srv.addr,
        "Sec-WebSocket-Protocol: mles-websocket\r\nConnection: close\r\n",
    )
    .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let resp = http_raw(srv.addr, &req).await;
    assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
    assert!(
        resp.to_lowercase().contains("sec-websocket-version: 13"),
        "{resp}"
    );
    let resp = http_raw(
        srv.addr,
        "GET /nothing-here HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    let resp = http_raw(srv.addr, "garbage\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.1 400") || resp.is_empty(),
        "{resp}"
    );
}

#[tokio::test]
async fn bad_http_does_not_disturb_sessions() {
    let srv = TestServer::start(&[]);
    let mut a = srv.join("a", "calm").await;
    let mut b = srv.join("b", "calm").await;
    assert_eq!(header_uid(&a.recv_text().await).as_deref(), Some("b"));
    for req in [
        "garbage\r\n\r\n",
        "GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        "\0\0\0\0",
    ] {
        let _ = http_raw(srv.addr, req).await;
    }
    b.send_text("still here").await;
    assert_eq!(a.recv_text().await, "still here");
}

#[tokio::test]
async fn accepted_sockets_have_nodelay() {
    use std::os::fd::BorrowedFd;
    // The server sets TCP_NODELAY on its listeners and relies on Linux handing
    // it down to accepted sockets. The server runs in this process, so look at
    // its end of the connection among our own file descriptors.
    let srv = TestServer::start(&[]);
    let mut c = srv.join("nd", "nodelay").await;
    c.send_text("x").await;
    let client_port = match c.ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(t) => t.local_addr().unwrap().port(),
        _ => unreachable!(),
    };
    let mut checked = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(fd) = entry.unwrap().file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: fd is open in this process for the duration of this check
        // (the server keeps the session alive while `c` is connected).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&borrowed);
        let (Ok(local), Ok(peer)) = (sock.local_addr(), sock.peer_addr()) else {
            continue;
        };
        let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) else {
            continue;
        };
        if local == srv.addr && peer.port() == client_port {
            assert!(
                sock.tcp_nodelay().unwrap(),
                "server socket without TCP_NODELAY"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 1, "found the server's end of the connection");
}
