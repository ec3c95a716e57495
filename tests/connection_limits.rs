//! Connection admission (issue 9, item 3): total and per-address caps that
//! refuse before the request is read, the request timeout, and the PROXY
//! protocol's client address.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a refused connection reads before the server closes it; panics if
/// the server instead waits for a request.
async fn refusal(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .expect("a refused connection is closed without waiting for a request")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a fresh connection gets through to a WebSocket session.
async fn admitted(srv: &TestServer) -> bool {
    RawClient::try_connect(srv.addr).await.is_some()
}

/// Waits until `srv` admits a connection again (a closed one is given back
/// when the server notices the close, which is asynchronous).
async fn admitted_eventually(srv: &TestServer) {
    tokio::time::timeout(WAIT, async {
        while !admitted(srv).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a place is given back when a connection closes");
}

#[tokio::test]
async fn idle_connections_from_one_address_are_capped() {
    // One shard: connections are accepted and admitted in the order they
    // were made, so the three idle ones surely hold their places first.
    let srv = TestServer::start(&["--max-connections-per-ip", "3", "--shards", "1"]);
    // Three idle connections that never send a byte hold every place.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    let mut extra = TcpStream::connect(srv.addr).await.unwrap();
    let rest = refusal(&mut extra).await;
    assert!(rest.contains("too many connections"), "{rest:?}");
    assert!(!admitted(&srv).await);
    drop(idle.pop());
    admitted_eventually(&srv).await;
}

#[tokio::test]
async fn refusal_is_a_503_before_any_request() {
    let srv = TestServer::start(&["--max-connections", "1"]);
    let mut held = RawClient::connect(srv.addr).await;
    held.join("holder", "limits").await;
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    let head = refusal(&mut tcp).await;
    assert!(
        head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{head:?}"
    );
    assert!(head.contains("Retry-After: "), "{head:?}");
    // The session still holds its place after the upgrade; leaving frees it.
    drop(held);
    admitted_eventually(&srv).await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_request_timeout() {
    let srv = TestServer::start(&["--request-timeout", "300ms"]);
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    let mut buf = [0u8; 64];
    // Well under the 10 s default: the flag, not the default, closed it.
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("closed after --request-timeout");
    assert!(
        matches!(n, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).contains("408"),
        "{n:?}"
    );
}

fn proxy_v1(source: &str, port: u16) -> String {
    format!("PROXY TCP4 {source} 127.0.0.1 {port} 8080\r\n")
}

/// Connects with a PROXY header in front of the upgrade request; true when
/// the server answers 101.
async fn upgrade_via_proxy(srv: &TestServer, proxy_header: &[u8]) -> Option<TcpStream> {
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    let mut req = proxy_header.to_vec();
    req.extend_from_slice(
        upgrade_request(srv.addr, "Sec-WebSocket-Protocol: mles-websocket\r\n").as_bytes(),
    );
    tcp.write_all(&req).await.ok()?;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("an answer in time")
        .ok()?;
    buf[..n].starts_with(b"HTTP/1.1 101").then_some(tcp)
}

#[tokio::test]
async fn proxy_protocol_clients_are_counted_by_their_own_address() {
    let srv = TestServer::start(&["--proxy-protocol", "--max-connections-per-ip", "1"]);
    // Two clients behind one balancer (all from 127.0.0.1) each get their place ...
    let a = upgrade_via_proxy(&srv, proxy_v1("192.0.2.1", 1000).as_bytes()).await;
    assert!(a.is_some(), "first client admitted");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[192, 0, 2, 2, 127, 0, 0, 1, 0x07, 0xD0, 0x1F, 0x90]);
    let b = upgrade_via_proxy(&srv, &v2).await;
    assert!(b.is_some(), "second client (PROXY v2) admitted");
    // ... while a second connection of the first client is refused.
    let again = upgrade_via_proxy(&srv, proxy_v1("192.0.2.1", 1001).as_bytes()).await;
    assert!(
        again.is_none(),
        "per-client cap applies to the PROXY source"
    );
    // Without a PROXY header the connection is closed unanswered.
    let mut plain = TcpStream::connect(srv.addr).await.unwrap();
    plain
        .write_all(
            upgrade_request(srv.addr, "Sec-WebSocket-Protocol: mles-websocket\r\n").as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(refusal(&mut plain).await, "");
}

#[test]
fn connection_limits_and_timeout_must_be_positive() {
    use clap::Parser;
    use mles::config::{Cli, Config, ConfigError};
    for args in [
        ["--max-connections", "0"],
        ["--max-connections-per-ip", "0"],
        ["--request-timeout", "0s"],
    ] {
        let cli = Cli::try_parse_from(["mles"].into_iter().chain(args)).unwrap();
        let err = Config::from_cli(cli, None).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::ZeroCount(_) | ConfigError::ZeroDuration(_)
            ),
            "{args:?}: {err}"
        );
        assert!(err.to_string().contains(args[0]), "{err}");
    }
}
