//! A small fake Mles server for the harness's tests: relays to every other
//! member with a history of the last 200 frames, or injects one fault.
//! [`mles`] starts the real server for the tests that need it.

#![allow(dead_code)]

pub mod mles;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

/// History limit of the fake server (frames, headers included).
pub const LIMIT: usize = 200;

/// What the fake server does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: a correct relay.
    None,
    /// The n-th binary frame of each channel (from 1) is not delivered live.
    Drop(u64),
    /// The n-th binary frame of each channel is delivered after the (n+1)-th.
    Reorder(u64),
    /// The n-th binary frame of each channel is delivered twice.
    Duplicate(u64),
    /// From the n-th binary frame of each channel on, the first two
    /// consecutive frames from different senders reach half of the members
    /// (every second one in join order) the other way round: each sender's
    /// own order stays intact, but the members no longer share one order.
    SplitOrder(u64),
    /// History replay leaves out its oldest entry.
    HistoryShort,
    /// Refuses every upgrade with 400, as for a missing subprotocol.
    Refuse,
    /// Not a fault: the first joiner of each channel is admitted only
    /// together with the second, after it, so the channel's log starts
    /// with the second joiner's header. A server with several shards or
    /// nodes may order two joins sent in quick succession either way.
    SecondJoinFirst,
}

struct Member {
    id: u64,
    tx: mpsc::UnboundedSender<Message>,
}

#[derive(Default)]
struct Channel {
    members: Vec<Member>,
    history: VecDeque<Message>,
    binaries: u64,
    held: Option<Message>,
    /// `SplitOrder`: the frame held back for half of the members, its sender.
    split_held: Option<(u64, Message)>,
    split_done: bool,
    /// `SecondJoinFirst`: the first joiner, waiting for the second.
    waiting: Option<(Member, Message)>,
    joins: u64,
}

impl Channel {
    fn remember(&mut self, m: Message) {
        if self.history.len() == LIMIT {
            self.history.pop_front();
        }
        self.history.push_back(m);
    }

    /// Sends `header` to the members, the history to the joiner, and makes
    /// it a member.
    fn admit(&mut self, joiner: Member, header: Message, fault: Fault) {
        for m in &self.members {
            let _ = m.tx.send(header.clone());
        }
        let skip = usize::from(fault == Fault::HistoryShort);
        for h in self.history.iter().skip(skip) {
            let _ = joiner.tx.send(h.clone());
        }
        self.remember(header);
        self.members.push(joiner);
    }
}

type State = Arc<Mutex<HashMap<String, Channel>>>;

/// A running fake server; stops when dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    pub url: String,
    /// Connections accepted so far.
    pub accepted: Arc<std::sync::atomic::AtomicU64>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl FakeServer {
    /// Starts on an ephemeral loopback port.
    pub fn start(fault: Fault) -> FakeServer {
        Self::start_inner(fault, None)
    }

    /// Starts a wss:// server with a fresh self-signed certificate for
    /// 127.0.0.1; returns it and the certificate as PEM.
    pub fn start_tls(fault: Fault) -> (FakeServer, String) {
        let ck = rcgen::generate_simple_self_signed(vec![String::from("127.0.0.1")]).unwrap();
        let cert = ck.cert.der().clone();
        let key =
            rustls_pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let mut server = Self::start_inner(fault, Some(acceptor));
        server.url = format!("wss://{}/", server.addr);
        (server, ck.cert.pem())
    }

    fn start_inner(fault: Fault, tls: Option<tokio_rustls::TlsAcceptor>) -> FakeServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = State::default();
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = accepted.clone();
        rt.spawn(async move {
            let mut next_id = 0;
            while let Ok((s, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                next_id += 1;
                let state = state.clone();
                match tls.clone() {
                    None => {
                        tokio::spawn(session(s, state, fault, next_id));
                    }
                    Some(acceptor) => {
                        tokio::spawn(async move {
                            if let Ok(s) = acceptor.accept(s).await {
                                session(s, state, fault, next_id).await;
                            }
                        });
                    }
                }
            }
        });
        FakeServer {
            addr,
            url: format!("ws://{addr}/"),
            accepted,
            rt: Some(rt),
        }
    }
}

fn offers_mles(req: &Request) -> bool {
    req.headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == "mles-websocket"))
}

async fn session<S>(stream: S, state: State, fault: Fault, id: u64)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The callback's type is fixed by tungstenite.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if !offers_mles(req) || fault == Fault::Refuse {
            let mut e =
                ErrorResponse::new(Some(String::from("subprotocol mles-websocket required")));
            *e.status_mut() = StatusCode::BAD_REQUEST;
            return Err(e);
        }
        resp.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("mles-websocket"),
        );
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let Some(Ok(Message::Text(header))) = source.next().await else {
        return;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(header.as_str()) else {
        return;
    };
    let (Some(uid), Some(channel)) = (v["uid"].as_str(), v["channel"].as_str()) else {
        return;
    };
    let channel = channel.to_string();
    let clean = serde_json::json!({ "uid": uid, "channel": channel }).to_string();
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let mut st = state.lock().unwrap();
        let ch = st.entry(channel.clone()).or_default();
        let joiner = Member { id, tx };
        let header = Message::text(clean);
        ch.joins += 1;
        if fault == Fault::SecondJoinFirst && ch.joins == 1 {
            ch.waiting = Some((joiner, header));
        } else {
            ch.admit(joiner, header, fault);
            if let Some((first, header)) = ch.waiting.take() {
                ch.admit(first, header, fault);
            }
        }
    }
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.feed(m).await.is_err() {
                return;
            }
            while let Ok(m) = rx.try_recv() {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = source.next().await {
        match msg {
            Message::Text(_) | Message::Binary(_) => relay(&state, &channel, id, msg, fault),
            Message::Close(_) => break,
            _ => {}
        }
    }
    let mut st = state.lock().unwrap();
    if let Some(ch) = st.get_mut(&channel) {
        ch.members.retain(|m| m.id != id);
    }
}

fn relay(state: &State, channel: &str, from: u64, msg: Message, fault: Fault) {
    let mut st = state.lock().unwrap();
    let ch = st.get_mut(channel).unwrap();
    ch.remember(msg.clone());
    let mut out = vec![msg];
    if out[0].is_binary() {
        ch.binaries += 1;
        let n = ch.binaries;
        match fault {
            Fault::Drop(k) if n == k => out.clear(),
            Fault::Duplicate(k) if n == k => out.push(out[0].clone()),
            Fault::Reorder(k) if n == k => ch.held = out.pop(),
            Fault::Reorder(k) if n == k + 1 => out.extend(ch.held.take()),
            _ => {}
        }
    }
    if let Fault::SplitOrder(k) = fault
        && out.len() == 1
        && out[0].is_binary()
        && ch.binaries >= k
        && !ch.split_done
    {
        split_order(ch, from, out.pop().expect("one frame"));
        return;
    }
    for m in ch.members.iter().filter(|m| m.id != from) {
        for f in &out {
            let _ = m.tx.send(f.clone());
        }
    }
}

/// `SplitOrder`: the members at odd positions (in join order) get every
/// frame at once; the ones at even positions get the held frame after the
/// next frame of another sender. When the same sender comes first there is
/// nothing to swap yet: both go out in their order and the next frame is
/// held instead.
fn split_order(ch: &mut Channel, from: u64, msg: Message) {
    let odd = |i: &usize| i % 2 == 1;
    match ch.split_held.take() {
        None => {
            for (_, m) in ch.members.iter().enumerate().filter(|(i, _)| odd(i)) {
                if m.id != from {
                    let _ = m.tx.send(msg.clone());
                }
            }
            ch.split_held = Some((from, msg));
        }
        Some((held_from, held)) => {
            // Same sender: deliver in order; the next frame is held instead.
            let swap = held_from != from;
            ch.split_done = swap;
            for (i, m) in ch.members.iter().enumerate() {
                let send = |f: &Message, sender: u64| {
                    if m.id != sender {
                        let _ = m.tx.send(f.clone());
                    }
                };
                if odd(&i) {
                    send(&msg, from);
                } else if swap {
                    send(&msg, from);
                    send(&held, held_from);
                } else {
                    send(&held, held_from);
                    send(&msg, from);
                }
            }
        }
    }
}

/// Parses harness arguments (the binary name is added).
pub fn cli(args: &[&str]) -> mles_loadtest::Cli {
    use clap::Parser;
    let mut argv = vec!["mles-loadtest"];
    argv.extend_from_slice(args);
    mles_loadtest::Cli::try_parse_from(argv).unwrap()
}

/// Runs the `mles-loadtest` binary's short `fanout` (one channel, two
/// subscribers, one publisher at 300/s for half a second, JSON on stdout)
/// against `urls`, giving up after `deadline` seconds.
pub fn run_fanout_binary(urls: &[&str], deadline: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mles-loadtest"));
    cmd.arg("fanout");
    for u in urls {
        cmd.args(["--url", u]);
    }
    cmd.args([
        "--channels",
        "1",
        "--subs",
        "2",
        "--pubs",
        "1",
        "--rate",
        "300",
        "--warmup",
        "0.1",
        "--duration",
        "0.5",
        "--drain",
        "2",
        "--deadline",
        deadline,
        "--json",
        "--quiet",
    ]);
    cmd.output().unwrap()
}
