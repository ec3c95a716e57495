//! A small fake Mles server for the harness's tests (the real server is not
//! used here): relays to every other member with a history of the last 200
//! frames, or injects one fault.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
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
    /// History replay leaves out its oldest entry.
    HistoryShort,
    /// Refuses every upgrade with 400, as for a missing subprotocol.
    Refuse,
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
}

impl Channel {
    fn remember(&mut self, m: Message) {
        if self.history.len() == LIMIT {
            self.history.pop_front();
        }
        self.history.push_back(m);
    }
}

type State = Arc<Mutex<HashMap<String, Channel>>>;

/// A running fake server; stops when dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    pub url: String,
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
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = State::default();
        rt.spawn(async move {
            let mut next_id = 0;
            while let Ok((s, _)) = listener.accept().await {
                next_id += 1;
                tokio::spawn(session(s, state.clone(), fault, next_id));
            }
        });
        FakeServer {
            addr,
            url: format!("ws://{addr}/"),
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

async fn session(stream: TcpStream, state: State, fault: Fault, id: u64) {
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
        let header = Message::text(clean);
        for m in &ch.members {
            let _ = m.tx.send(header.clone());
        }
        let skip = usize::from(fault == Fault::HistoryShort);
        for h in ch.history.iter().skip(skip) {
            let _ = tx.send(h.clone());
        }
        ch.remember(header);
        ch.members.push(Member { id, tx });
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
    for m in ch.members.iter().filter(|m| m.id != from) {
        for f in &out {
            let _ = m.tx.send(f.clone());
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
