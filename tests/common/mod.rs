//! Shared helpers for integration tests: a real server on an ephemeral port,
//! a real WebSocket client (tokio-tungstenite), and a raw-socket client for
//! framing tests. Every wait has a timeout.
#![allow(dead_code)]

pub mod nats;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use mles::config::{Cli, Config};
use mles::server::ServerHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for any single awaited condition.
pub const WAIT: Duration = Duration::from_secs(15);

/// A server started in-process on 127.0.0.1:0 (4 shards unless `--shards` is given).
pub struct TestServer {
    pub addr: SocketAddr,
    handle: Option<ServerHandle>,
}

impl TestServer {
    pub fn start(args: &[&str]) -> TestServer {
        Self::start_with_key(args, None)
    }

    pub fn start_with_key(args: &[&str], key: Option<&str>) -> TestServer {
        // RUST_LOG=debug cargo test ... shows the server's logs for a failing test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut v = vec!["mles"];
        if !args.contains(&"--listen") {
            v.extend(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--shards") {
            v.extend(["--shards", "4"]);
        }
        v.extend_from_slice(args);
        let cli = Cli::try_parse_from(v).expect("test arguments parse");
        let config =
            Config::from_cli(cli, key.map(String::from)).expect("test configuration is valid");
        let handle = mles::server::start(config).expect("server starts");
        TestServer {
            addr: handle.local_addrs()[0],
            handle: Some(handle),
        }
    }

    /// Waits until the node's cluster link is up (started with `--nats`).
    pub async fn cluster_up(&self) {
        let c = self
            .handle
            .as_ref()
            .unwrap()
            .cluster()
            .expect("started with --nats");
        tokio::time::timeout(nats::NATS_READY * 2, c.up())
            .await
            .expect("cluster link up in time");
    }

    /// The metrics listener, when started with `--metrics`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.handle.as_ref().unwrap().metrics_addr()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Opens a WebSocket with the mles subprotocol (no header sent yet).
    pub async fn connect(&self) -> Client {
        let mut req = self.ws_url().into_client_request().unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("mles-websocket"),
        );
        let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")
            .expect("handshake succeeds");
        assert_eq!(
            resp.headers().get("sec-websocket-protocol").unwrap(),
            "mles-websocket"
        );
        Client { ws }
    }

    /// Connects and sends the header frame for (uid, channel).
    pub async fn join(&self, uid: &str, channel: &str) -> Client {
        let mut c = self.connect().await;
        c.send_text(&header(uid, channel)).await;
        c
    }

    /// The server's first shard failure, if one happened.
    pub fn failure(&self) -> Option<String> {
        self.handle.as_ref().unwrap().failure()
    }

    /// The value of metric `name` summed over its series (0 if absent);
    /// needs `--metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        metric_at(self.metrics_addr().expect("started with --metrics"), name).await
    }

    /// Waits until metric `name` satisfies `ok` (gauges refresh every timer
    /// tick) and returns its value; panics after [`WAIT`].
    pub async fn metric_until(&self, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
        tokio::time::timeout(WAIT, async {
            loop {
                let v = self.metric(name).await;
                if ok(v) {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name} never reached the expected value"))
    }

    /// Starts graceful shutdown without waiting.
    pub fn begin_shutdown(&self) {
        self.handle.as_ref().unwrap().shutdown();
    }

    /// Shuts down and waits for the shard threads.
    pub fn stop(mut self) -> bool {
        self.handle.take().unwrap().stop()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }
}

/// The value of metric `name` summed over its series at a metrics listener
/// (0 if absent).
pub async fn metric_at(addr: SocketAddr, name: &str) -> u64 {
    let body = http_raw(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await;
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

pub fn header(uid: &str, channel: &str) -> String {
    serde_json::json!({"uid": uid, "channel": channel}).to_string()
}

/// A real WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).await.expect("send text");
    }

    pub async fn send_binary(&mut self, b: &[u8]) {
        self.ws
            .send(Message::binary(b.to_vec()))
            .await
            .expect("send binary");
    }

    /// The next data or close message (pings and pongs are skipped).
    pub async fn next(&mut self) -> Message {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message in time")
                .expect("stream not ended")
                .expect("no protocol error");
            match m {
                Message::Ping(_) | Message::Pong(_) => continue,
                m => return m,
            }
        }
    }

    pub async fn recv_text(&mut self) -> String {
        match self.next().await {
            Message::Text(t) => t.to_string(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    pub async fn recv_binary(&mut self) -> Vec<u8> {
        match self.next().await {
            Message::Binary(b) => b.to_vec(),
            other => panic!("expected binary, got {other:?}"),
        }
    }

    /// Reads (skipping data) until the server's Close; returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

/// A client that speaks raw bytes after a hand-made handshake, for framing tests.
pub struct RawClient {
    pub tcp: TcpStream,
    buf: Vec<u8>,
}

/// The handshake request with the given extra header lines.
pub fn upgrade_request(addr: SocketAddr, extra: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Sends `request` raw and returns the response (head and body) as text: up
/// to its Content-Length, or until the server closes.
pub async fn http_raw(addr: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|n| out.len() >= end + 4 + n) {
                break;
            }
        }
        match tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("response in time")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl RawClient {
    /// Like [`RawClient::connect`], but None when the server resets or closes during the handshake.
    pub async fn try_connect(addr: SocketAddr) -> Option<RawClient> {
        let tcp = TcpStream::connect(addr).await.ok()?;
        Self::upgrade(tcp, addr).await.ok()
    }

    pub async fn connect(addr: SocketAddr) -> RawClient {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Self::upgrade(tcp, addr).await.unwrap()
    }

    /// Connects with a receive buffer fixed at `bytes` before the handshake
    /// (no autotuning): a client that stops reading takes only that much.
    pub async fn connect_with_recv_buffer(addr: SocketAddr, bytes: u32) -> RawClient {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(bytes).unwrap();
        let tcp = sock.connect(addr).await.unwrap();
        Self::upgrade(tcp, addr).await.unwrap()
    }

    /// The WebSocket upgrade over `tcp`; Err with what went wrong.
    async fn upgrade(mut tcp: TcpStream, addr: SocketAddr) -> Result<RawClient, String> {
        let req = upgrade_request(addr, "Sec-WebSocket-Protocol: mles-websocket\r\n");
        tcp.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
                .await
                .map_err(|_| "no 101 in time".to_string())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed during handshake".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(head);
        }
        buf.drain(..end);
        Ok(RawClient { tcp, buf })
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// Sends the header frame for (uid, channel).
    pub async fn join(&mut self, uid: &str, channel: &str) {
        self.send(&masked(0x81, header(uid, channel).as_bytes()))
            .await;
    }

    /// The next server frame: (first byte, payload); None at EOF.
    pub async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let (len, at) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    l => (l as usize, 2),
                };
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are unmasked");
                if len != usize::MAX && self.buf.len() >= at + len {
                    let b0 = self.buf[0];
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((b0, payload));
                }
            }
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("frame in time")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until a Close; returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        while let Some((b0, p)) = self.frame().await {
            if b0 & 0x0F == 0x8 {
                assert!(p.len() >= 2, "close carries a code");
                return (
                    u16::from_be_bytes([p[0], p[1]]),
                    String::from_utf8_lossy(&p[2..]).into_owned(),
                );
            }
        }
        panic!("connection ended without a close frame");
    }
}

/// A masked client frame with first byte `b0` (FIN/RSV/opcode).
pub fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0xA1, 0xB2, 0xC3, 0xD4];
    let mut v = vec![b0];
    match payload.len() {
        0..=125 => v.push(0x80 | payload.len() as u8),
        126..=65535 => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        _ => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

/// The uids of the next `n` frames, which must be header frames, sorted:
/// joins from different connections may reach the channel's owner in either order.
pub async fn recv_header_uids(c: &mut Client, n: usize) -> Vec<String> {
    let mut uids = Vec::new();
    for _ in 0..n {
        let t = c.recv_text().await;
        uids.push(header_uid(&t).unwrap_or_else(|| panic!("expected a header frame, got {t:?}")));
    }
    uids.sort();
    uids
}

/// The uid of a relayed header frame.
pub fn header_uid(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(v.get("uid")?.as_str()?.to_string())
}

/// A free loopback port for a server that others must name before it
/// starts. Taken below the kernel's ephemeral range (32768 and up), so no
/// outgoing connection can take it between this check and the server's
/// bind, and never handed out twice in this process.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    let random = RandomState::new();
    for i in 0u64.. {
        let port = 10_000 + (random.hash_one(i) % 22_000) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    unreachable!()
}
