//! Cluster mode end to end (issue 11): several mles nodes on one NATS
//! JetStream behave as one server. Real nats-server processes
//! (tests/common/nats.rs), real mles nodes (in-process, or the built binary
//! where a node must die by SIGKILL), real WebSocket clients.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::nats::{NatsCluster, NatsServer};
use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// A NATS failover (leader election, consumer re-creation) takes seconds.
const FAILOVER: Duration = Duration::from_secs(60);

/// An in-process mles node on `nats` (a seed list), ready to take joins.
async fn node(nats: &[String]) -> TestServer {
    // A history far longer than any test's burst, so that a node that has
    // to catch up from the stream (after a NATS server or node is killed)
    // always finds what it missed there instead of closing its members
    // ("cluster feed fell behind", which has its own test).
    node_with(nats, &["--limit", "5000"]).await
}

/// An in-process mles node on `nats` with the flags `extra`, ready to take joins.
async fn node_with(nats: &[String], extra: &[&str]) -> TestServer {
    let mut args = vec!["--shards", "2"];
    for url in nats {
        args.extend(["--nats", url.as_str()]);
    }
    args.extend_from_slice(extra);
    let s = TestServer::start(&args);
    s.cluster_up().await;
    s
}

/// Alice on node `a` and Bob on node `b`, joined to `channel`, each having
/// had the other's join header (live or as history, whichever came first).
async fn alice_and_bob(a: &TestServer, b: &TestServer, channel: &str) -> (Client, Client) {
    let mut alice = a.join("alice", channel).await;
    let mut bob = b.join("bob", channel).await;
    assert_eq!(header_uids(&mut alice, 1).await, ["bob"]);
    assert_eq!(header_uids(&mut bob, 1).await, ["alice"]);
    (alice, bob)
}

async fn nodes(nats: &[String], n: usize) -> Vec<TestServer> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(node(nats).await);
    }
    v
}

/// The next data frame as text, waiting up to `wait` (pings skipped, and
/// they do not restart the wait).
async fn recv_within(c: &mut Client, wait: Duration) -> String {
    try_recv_within(c, wait).await.expect("a message in time")
}

/// As [`recv_within`], `None` if nothing came in time.
async fn try_recv_within(c: &mut Client, wait: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let m = tokio::time::timeout_at(deadline, c.ws.next())
            .await
            .ok()?
            .expect("stream not ended")
            .expect("no protocol error");
        match m {
            Message::Text(t) => return Some(t.to_string()),
            Message::Binary(b) => return Some(String::from_utf8(b.to_vec()).unwrap()),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected data, got {other:?}"),
        }
    }
}

/// Watches the stream from outside mles, to order a test's steps: a join is
/// decided once its header is stored, before every node has seen it.
struct Witness {
    js: async_nats::jetstream::Context,
}

impl Witness {
    async fn new(nats: &str) -> Witness {
        let client = tokio::time::timeout(WAIT, async_nats::connect(nats))
            .await
            .expect("witness connects in time")
            .expect("witness connects");
        Witness {
            js: async_nats::jetstream::new(client),
        }
    }

    /// Waits until `channel` holds `n` frames in the stream.
    async fn stored(&self, channel: &str, n: usize) {
        let deadline = std::time::Instant::now() + FAILOVER;
        let mut last = 0;
        while std::time::Instant::now() < deadline {
            last = self.contents(channel).await.len();
            if last >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{channel}: {n} frames not stored in time (last seen: {last})");
    }

    /// Waits until `channel` holds a frame with this payload.
    async fn holds(&self, channel: &str, payload: &str) {
        let deadline = std::time::Instant::now() + FAILOVER;
        while std::time::Instant::now() < deadline {
            if self
                .contents(channel)
                .await
                .iter()
                .any(|(_, p)| p == payload)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{channel}: {payload:?} not stored in time");
    }

    /// Every frame `channel` holds in the stream: (stream sequence, payload);
    /// a batch's frames share its sequence.
    async fn contents(&self, channel: &str) -> Vec<(u64, String)> {
        use async_nats::jetstream::consumer::pull::OrderedConfig;
        let subject = mles::cluster::subject::channel_subject("mles", channel);
        let config = OrderedConfig {
            filter_subject: subject,
            ..Default::default()
        };
        let consumer = self
            .js
            .create_consumer_on_stream(config, "mles-channels")
            .await
            .expect("witness consumer");
        let mut left = consumer.cached_info().num_pending;
        let mut msgs = consumer.messages().await.expect("witness messages");
        let mut out = Vec::new();
        while left > 0 {
            let m = tokio::time::timeout(WAIT, msgs.next())
                .await
                .expect("stored frame in time")
                .expect("stream goes on")
                .expect("stored frame");
            let seq = m.info().expect("jetstream message").stream_sequence;
            let m = m.message;
            let d = mles::cluster::Delivery::from_parts(
                seq,
                0,
                m.headers.as_ref(),
                m.payload,
                &mut Default::default(),
            );
            for f in d.frames {
                out.push((seq, String::from_utf8_lossy(&f.payload).into_owned()));
            }
            left -= 1;
        }
        out
    }
}

/// Joins `uid`, reads the `history` frames it must get first, and waits
/// until its header is stored (so whoever joins next comes after it).
async fn join_with_history(
    w: &Witness,
    s: &TestServer,
    uid: &str,
    channel: &str,
    history: usize,
) -> (Client, Vec<String>) {
    let mut c = s.join(uid, channel).await;
    let mut h = Vec::new();
    for _ in 0..history {
        h.push(recv_within(&mut c, FAILOVER).await);
    }
    w.stored(channel, history + 1).await;
    (c, h)
}

/// Publishers and subscribers spread over three nodes: join headers reach
/// everyone, every frame reaches every other member exactly once and never
/// its sender, and all members see one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_members_see_everything_once_in_one_order() {
    let nats = NatsServer::start();
    let w = Witness::new(&nats.url).await;
    let nodes = nodes(std::slice::from_ref(&nats.url), 3).await;
    const MEMBERS: usize = 6;
    const FRAMES: usize = 25;

    let mut clients: Vec<Client> = Vec::new();
    for i in 0..MEMBERS {
        let uid = format!("u{i}");
        // History: the earlier members' join headers, in join order.
        let (c, history) = join_with_history(&w, &nodes[i % 3], &uid, "spread", i).await;
        let uids: Vec<String> = history.iter().filter_map(|h| header_uid(h)).collect();
        assert_eq!(uids, (0..i).map(|j| format!("u{j}")).collect::<Vec<_>>());
        for prev in clients.iter_mut() {
            assert_eq!(
                header_uid(&prev.recv_text().await),
                Some(uid.clone()),
                "live join header"
            );
        }
        clients.push(c);
    }

    // Everyone publishes at once.
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for k in 0..FRAMES {
                c.send_text(&format!("u{i}-{k}")).await;
            }
            let mut got = Vec::new();
            for _ in 0..(MEMBERS - 1) * FRAMES {
                got.push(recv_within(&mut c, FAILOVER).await);
            }
            (i, got)
        }));
    }
    let mut seen: HashMap<usize, Vec<String>> = HashMap::new();
    for t in tasks {
        let (i, got) = t.await.unwrap();
        seen.insert(i, got);
    }
    assert_once_in_order_one_order(&seen, MEMBERS, FRAMES);
}

/// The node's `/readyz` (on `--metrics`) until the body says `want`.
async fn readyz_until(s: &TestServer, want: &str) -> String {
    let addr = s.metrics_addr().expect("started with --metrics");
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + FAILOVER;
    while tokio::time::Instant::now() < deadline {
        last = http_raw(
            addr,
            "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if last.contains(want) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("/readyz never said {want:?}; last: {last}");
}

/// In cluster mode a node is ready only while its NATS link is up: not
/// before NATS is reachable, and not after it goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_while_nats_is_connected() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let s = TestServer::start(&["--shards", "2", "--nats", &url, "--metrics", "127.0.0.1:0"]);
    let waiting = readyz_until(&s, "waiting nats connected").await;
    assert!(waiting.starts_with("HTTP/1.1 503"), "{waiting}");
    assert!(waiting.contains("ok listeners"), "{waiting}");

    let mut nats = NatsServer::start_on(port);
    s.cluster_up().await;
    let ready = readyz_until(&s, "ok nats connected").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    nats.kill();
    let gone = readyz_until(&s, "waiting nats connected").await;
    assert!(gone.starts_with("HTTP/1.1 503"), "{gone}");
}

/// A node whose live feed falls further behind than the stream retains
/// (here `--limit 16`, under a burst from another node) may have missed
/// frames the stream dropped unread: its members are closed with 1013 and
/// the reason, never left with a silent gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_behind_the_retention_tells_its_members() {
    const FRAMES: usize = 3000;
    let nats = NatsServer::start();
    let w = Witness::new(&nats.url).await;
    let urls = [nats.url.clone()];
    let a = node_with(&urls, &["--limit", "16"]).await;
    let b = node_with(&urls, &["--limit", "16"]).await;
    let (mut sub, _) = join_with_history(&w, &a, "sub", "burst", 0).await;
    let (mut publisher, _) = join_with_history(&w, &b, "pub", "burst", 1).await;
    assert_eq!(header_uid(&sub.recv_text().await).as_deref(), Some("pub"));
    let sender = tokio::spawn(async move {
        use futures_util::SinkExt;
        for k in 0..FRAMES {
            // Its own node may close it for the same reason: then stop.
            if publisher
                .ws
                .send(Message::text(format!("f{k}")))
                .await
                .is_err()
            {
                break;
            }
        }
        publisher
    });
    let mut got = Vec::new();
    let mut closed = None;
    // One deadline for the lot: the server's pings must not restart it.
    let deadline = tokio::time::Instant::now() + FAILOVER;
    while got.len() < FRAMES {
        match tokio::time::timeout_at(deadline, sub.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => got.push(t.to_string()),
            Ok(Some(Ok(Message::Close(f)))) => {
                closed = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                break;
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("after {} frames: {other:?}", got.len()),
        }
    }
    let _ = sender.await;
    eprintln!(
        "sub got {} of {FRAMES} frames; closed: {closed:?}",
        got.len()
    );
    let prefix: Vec<String> = (0..got.len()).map(|k| format!("f{k}")).collect();
    assert_eq!(got, prefix, "what arrived has no gap");
    if got.len() < FRAMES {
        let (code, reason) = closed.expect("a close frame");
        assert_eq!(code, 1013, "{reason}");
        assert!(reason.contains("behind"), "{reason}");
    }
}

/// A member sends and closes its connection at once, as the last member
/// of the channel on its node: closing the channel's log there must not
/// throw away its frames still on their way to the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_sends_and_leaves_loses_nothing() {
    let nats = NatsServer::start();
    let w = Witness::new(&nats.url).await;
    let nodes = nodes(std::slice::from_ref(&nats.url), 2).await;
    const FRAMES: usize = 200;
    let (mut bob, _) = join_with_history(&w, &nodes[0], "bob", "parting", 0).await;
    let (mut alice, _) = join_with_history(&w, &nodes[1], "alice", "parting", 1).await;
    assert_eq!(header_uid(&bob.recv_text().await).as_deref(), Some("alice"));
    for k in 0..FRAMES {
        alice.send_text(&format!("a{k}")).await;
    }
    drop(alice);
    for k in 0..FRAMES {
        assert_eq!(recv_within(&mut bob, WAIT).await, format!("a{k}"));
    }
}

/// Stop every mles node, start new ones: the history is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_restart_of_every_node() {
    let nats = NatsServer::start();
    let w = Witness::new(&nats.url).await;
    let urls = [nats.url.clone()];
    let first = nodes(&urls, 3).await;
    let (mut alice, _) = join_with_history(&w, &first[0], "alice", "keep", 0).await;
    let (mut bob, _) = join_with_history(&w, &first[1], "bob", "keep", 1).await;
    assert_eq!(header_uid(&alice.recv_text().await).as_deref(), Some("bob"));
    alice.send_text("one").await;
    alice.send_text("two").await;
    assert_eq!(bob.recv_text().await, "one");
    assert_eq!(bob.recv_text().await, "two");
    for n in first {
        assert!(n.stop(), "node stops cleanly");
    }

    let second = nodes(&urls, 3).await;
    let (_carol, history) = join_with_history(&w, &second[2], "carol", "keep", 4).await;
    assert_eq!(header_uid(&history[0]).as_deref(), Some("alice"));
    assert_eq!(header_uid(&history[1]).as_deref(), Some("bob"));
    assert_eq!(&history[2..], ["one", "two"]);
}

/// NATS not there at start: the node starts, refuses joins with 1013 and a
/// reason, and takes joins once NATS is up, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_wait_for_nats_then_work() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let s = TestServer::start(&["--shards", "2", "--nats", &url]);
    let mut early = s.join("alice", "later").await;
    let (code, reason) = early.expect_close().await;
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("cluster"), "the reason says why: {reason}");

    let _nats = NatsServer::start_on(port);
    s.cluster_up().await;
    let w = Witness::new(&url).await;
    let (mut alice, _) = join_with_history(&w, &s, "alice", "later", 0).await;
    let (_bob, history) = join_with_history(&w, &s, "bob", "later", 1).await;
    assert_eq!(header_uid(&history[0]).as_deref(), Some("alice"));
    assert_eq!(header_uid(&alice.recv_text().await).as_deref(), Some("bob"));
}

/// One uid per channel across the whole cluster; other channels and other
/// uids are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_uid_on_another_node_is_refused() {
    let nats = NatsServer::start();
    let w = Witness::new(&nats.url).await;
    let nodes = nodes(std::slice::from_ref(&nats.url), 3).await;
    let (mut alice, _) = join_with_history(&w, &nodes[0], "alice", "dup", 0).await;
    let (mut bob, _) = join_with_history(&w, &nodes[1], "bob", "dup", 1).await;
    assert_eq!(header_uid(&alice.recv_text().await).as_deref(), Some("bob"));

    let mut twin = nodes[2].join("alice", "dup").await;
    let (code, reason) = twin.expect_close().await;
    assert_eq!(code, 1008, "{reason}");
    // The incumbent is unharmed; the same uid on another channel is fine.
    alice.send_text("still here").await;
    assert_eq!(bob.recv_text().await, "still here");
    let (_elsewhere, _) = join_with_history(&w, &nodes[2], "alice", "other", 0).await;
}

/// Nothing is de-duplicated by content: identical payloads from different
/// users (and twice from one) are all delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_payloads_are_all_delivered() {
    let nats = NatsServer::start();
    let w = Witness::new(&nats.url).await;
    let nodes = nodes(std::slice::from_ref(&nats.url), 3).await;
    let (mut carol, _) = join_with_history(&w, &nodes[2], "carol", "same", 0).await;
    let (mut alice, _) = join_with_history(&w, &nodes[0], "alice", "same", 1).await;
    assert_eq!(
        header_uid(&carol.recv_text().await).as_deref(),
        Some("alice")
    );
    let (mut bob, _) = join_with_history(&w, &nodes[1], "bob", "same", 2).await;
    assert_eq!(header_uid(&carol.recv_text().await).as_deref(), Some("bob"));
    assert_eq!(header_uid(&alice.recv_text().await).as_deref(), Some("bob"));
    for _ in 0..2 {
        alice.send_text("same bytes").await;
        bob.send_text("same bytes").await;
    }
    for _ in 0..4 {
        assert_eq!(carol.recv_text().await, "same bytes");
    }
}

/// A member joins while another member on the same node floods the
/// channel, so its header most likely goes into the stream inside a batch
/// of the flood's frames: the joiner gets, as history and then live,
/// exactly the frames around its header in the stream's order (none twice,
/// none missed at the seam), and a member on another node sees that order
/// too. Whatever the batches were, this is what must hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_amid_a_flood_gets_exactly_the_frames_around_its_header() {
    use futures_util::SinkExt;
    const FRAMES: usize = 2000;
    let nats = NatsServer::start();
    let w = Witness::new(&nats.url).await;
    let nodes = nodes(std::slice::from_ref(&nats.url), 2).await;
    let (mut bob, _) = join_with_history(&w, &nodes[1], "bob", "flood", 0).await;
    // Without Nagle's delay, so that the flood reaches the node as it is
    // sent, not in bursts a delayed ack apart.
    let mut alice = connect_url_with(&format!("ws://{}/", nodes[0].addr), true).await;
    alice.send_text(&header("alice", "flood")).await;
    assert_eq!(recv_within(&mut alice, WAIT).await, header("bob", "flood"));
    assert_eq!(header_uid(&bob.recv_text().await).as_deref(), Some("alice"));
    let (half, mut halfway) = tokio::sync::oneshot::channel();
    let flood = tokio::spawn(async move {
        let mut half = Some(half);
        for k in 0..FRAMES {
            alice.ws.send(Message::text(format!("a{k}"))).await.unwrap();
            if k == FRAMES / 10 {
                let _ = half.take().unwrap().send(());
            }
        }
        alice
    });
    (&mut halfway).await.unwrap();
    let mut carol = nodes[0].join("carol", "flood").await;
    let mut alice = flood.await.unwrap();
    w.stored("flood", 2 + FRAMES + 1).await;
    let order: Vec<String> = w
        .contents("flood")
        .await
        .into_iter()
        .map(|(_, payload)| payload)
        .collect();
    let is_carol = |p: &String| header_uid(p).as_deref() == Some("carol");
    let mut for_carol = order.clone();
    for_carol.retain(|p| !is_carol(p));
    let mut got = Vec::new();
    for _ in 0..for_carol.len() {
        got.push(recv_within(&mut carol, FAILOVER).await);
    }
    assert!(
        got == for_carol,
        "the joiner's history and live frames are the order without its header"
    );
    let mut got = Vec::new();
    for _ in 2..order.len() {
        got.push(recv_within(&mut bob, FAILOVER).await);
    }
    assert!(
        got == order[2..],
        "another node's member sees the same order"
    );
    assert!(is_carol(&recv_within(&mut alice, FAILOVER).await));
}

/// The built binary as a node, so it can be killed with SIGKILL.
struct ProcessNode {
    child: Child,
    addr: std::net::SocketAddr,
}

impl ProcessNode {
    fn start(nats: &[String]) -> ProcessNode {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mles"));
        cmd.args(["--listen", "127.0.0.1:0", "--shards", "2"]);
        for url in nats {
            cmd.args(["--nats", url]);
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("mles starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut addr = None;
        // Logs the address, then (once NATS and the stream are there) "cluster link up".
        let deadline = std::time::Instant::now() + FAILOVER;
        loop {
            assert!(std::time::Instant::now() < deadline, "node not up in time");
            let line = lines.next().expect("node logs").unwrap();
            if let Some(rest) = line.split("addrs=[").nth(1) {
                addr = Some(rest.split(']').next().unwrap().parse().unwrap());
            }
            if line.contains("cluster link up") {
                break;
            }
        }
        // Keep draining stderr so the node never blocks on logging.
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        ProcessNode {
            child,
            addr: addr.expect("address logged before the link came up"),
        }
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket with the mles subprotocol to any URL.
async fn connect_url(url: &str) -> Client {
    connect_url_with(url, false).await
}

/// As [`connect_url`], with Nagle's algorithm off if `nodelay`.
async fn connect_url_with(url: &str, nodelay: bool) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mles-websocket".parse().unwrap());
    let connect = tokio_tungstenite::connect_async_with_config(req, None, nodelay);
    let (ws, _) = tokio::time::timeout(WAIT, connect)
        .await
        .expect("connect in time")
        .expect("handshake");
    Client { ws }
}

/// The uids of the next `n` frames, which must be join headers, in the order received.
async fn header_uids(c: &mut Client, n: usize) -> Vec<String> {
    let mut uids = Vec::new();
    for _ in 0..n {
        let t = recv_within(c, WAIT).await;
        uids.push(header_uid(&t).unwrap_or_else(|| panic!("expected a join header, got {t:?}")));
    }
    uids
}

/// Frames each publisher sends at once before the node is killed; after
/// them it sends one every [`PACE`], so the kill lands mid-stream.
const KILL_POINT: usize = 20;
const PACE: Duration = Duration::from_millis(5);

/// Sends `{tag}-0`, `{tag}-1`, ... (`frames` of them; `None`: until its
/// connection dies), saying so on `sent` after [`KILL_POINT`]; once `killed`
/// is set and all are sent, sends `{tag}-end`. Meanwhile it collects what
/// arrives, until `until` has arrived (or, without `frames`, until the
/// connection dies). Returns what it received.
async fn publish_through_a_crash(
    mut c: Client,
    tag: &'static str,
    frames: Option<usize>,
    sent: tokio::sync::mpsc::Sender<()>,
    mut killed: tokio::sync::watch::Receiver<bool>,
    until: Option<String>,
) -> Vec<String> {
    use futures_util::SinkExt;
    let mut got = Vec::new();
    let mut k = 0;
    let mut ended = false;
    let mut pace = tokio::time::interval(PACE);
    let deadline = tokio::time::Instant::now() + FAILOVER;
    loop {
        if ended && until.as_ref().is_some_and(|u| got.contains(u)) {
            return got;
        }
        let more = frames.is_none_or(|n| k < n);
        let can_send = more || (!ended && *killed.borrow());
        let eager = k < KILL_POINT;
        let send = tokio::select! {
            m = tokio::time::timeout_at(deadline, c.ws.next()) => {
                match m {
                    Ok(Some(Ok(Message::Text(t)))) => got.push(t.to_string()),
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                    // Its node died under it.
                    Ok(_) if frames.is_none() => return got,
                    other => panic!("{tag}: connection ended: {other:?}; got {got:?}"),
                }
                false
            }
            _ = std::future::ready(()), if can_send && eager => true,
            _ = pace.tick(), if can_send && !eager => true,
            _ = killed.changed(), if !*killed.borrow() => false,
        };
        if !send {
            continue;
        }
        let text = if more {
            format!("{tag}-{k}")
        } else {
            format!("{tag}-end")
        };
        if c.ws.send(Message::text(text)).await.is_err() {
            assert!(frames.is_none(), "{tag}: its node is alive");
            return got;
        }
        if more {
            k += 1;
            if k == KILL_POINT {
                let _ = sent.send(()).await;
            }
        } else {
            ended = true;
        }
    }
}

/// A node dies by SIGKILL while members on every node publish: the members
/// on the other nodes lose nothing and agree on one order, and the dead
/// node's clients reconnect (same uids) to other nodes and get the full
/// history, which is what the stream holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_costs_nothing_but_a_reconnect() {
    const FRAMES: usize = 60;
    let nats = NatsServer::start();
    let w = Witness::new(&nats.url).await;
    let urls = [nats.url.clone()];
    let mut doomed = ProcessNode::start(&urls);
    let survivors = nodes(&urls, 2).await;
    let doomed_url = format!("ws://{}/", doomed.addr);

    let (mut bob, _) = join_with_history(&w, &survivors[0], "bob", "crash", 0).await;
    let (mut dave, _) = join_with_history(&w, &survivors[1], "dave", "crash", 1).await;
    let mut alice = connect_url(&doomed_url).await;
    alice.send_text(&header("alice", "crash")).await;
    w.stored("crash", 3).await;
    let mut carol = connect_url(&doomed_url).await;
    carol.send_text(&header("carol", "crash")).await;
    w.stored("crash", 4).await;
    // Everyone has seen every join before the load starts.
    assert_eq!(header_uids(&mut bob, 3).await, ["dave", "alice", "carol"]);
    assert_eq!(header_uids(&mut dave, 2).await, ["alice", "carol"]);
    assert_eq!(header_uids(&mut alice, 3).await, ["bob", "dave", "carol"]);
    assert_eq!(header_uids(&mut carol, 3).await, ["bob", "dave", "alice"]);

    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel(3);
    let (killed_tx, killed_rx) = tokio::sync::watch::channel(false);
    let b = tokio::spawn(publish_through_a_crash(
        bob,
        "b",
        Some(FRAMES),
        sent_tx.clone(),
        killed_rx.clone(),
        Some("d-end".into()),
    ));
    let d = tokio::spawn(publish_through_a_crash(
        dave,
        "d",
        Some(FRAMES),
        sent_tx.clone(),
        killed_rx.clone(),
        Some("b-end".into()),
    ));
    // alice publishes until her node dies under her.
    let a = tokio::spawn(publish_through_a_crash(
        alice,
        "a",
        None,
        sent_tx,
        killed_rx.clone(),
        None,
    ));
    for _ in 0..3 {
        sent_rx
            .recv()
            .await
            .expect("each publisher reaches the kill point");
    }
    // Some of alice's frames have reached the others before her node dies.
    w.holds("crash", &format!("a-{}", KILL_POINT - 1)).await;
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    killed_tx.send_replace(true);
    drop(carol);
    let bob_got = b.await.unwrap();
    let dave_got = d.await.unwrap();
    let alice_got = a.await.unwrap();

    // The survivors lose nothing of each other and agree on every frame's place.
    let from = |got: &[String], tag: &str| -> Vec<String> {
        got.iter().filter(|f| f.starts_with(tag)).cloned().collect()
    };
    let sent = |tag: &str| -> Vec<String> {
        (0..FRAMES)
            .map(|k| format!("{tag}-{k}"))
            .chain([format!("{tag}-end")])
            .collect()
    };
    assert_eq!(from(&bob_got, "d-"), sent("d"), "bob got all of dave's");
    assert_eq!(from(&dave_got, "b-"), sent("b"), "dave got all of bob's");
    let shared = |got: &[String]| from(got, "a-");
    assert_eq!(
        shared(&bob_got),
        shared(&dave_got),
        "one order for alice's frames"
    );
    let stored_a = shared(&bob_got);
    let prefix: Vec<String> = (0..stored_a.len()).map(|k| format!("a-{k}")).collect();
    assert_eq!(
        stored_a, prefix,
        "what was stored of alice's frames has no gap"
    );
    assert!(
        stored_a.len() >= KILL_POINT,
        "alice's frames before the kill"
    );
    assert!(
        !alice_got.iter().any(|f| f.starts_with("a-")),
        "alice never got her own frames"
    );

    // Her clients come back on the survivors with the same uids (their old
    // entries' node answers no probe) and get the whole stream as history.
    let stored = w.contents("crash").await;
    let stored: Vec<String> = stored.into_iter().map(|(_, p)| p).collect();
    let (mut alice, history) =
        join_with_history(&w, &survivors[1], "alice", "crash", stored.len()).await;
    assert_eq!(history, stored, "alice's history is the stream");
    let (mut carol, history) =
        join_with_history(&w, &survivors[0], "carol", "crash", stored.len() + 1).await;
    assert_eq!(
        history[..stored.len()],
        stored[..],
        "carol's history is the stream"
    );
    assert_eq!(header_uid(&history[stored.len()]).as_deref(), Some("alice"));
    assert_eq!(
        header_uid(&alice.recv_text().await).as_deref(),
        Some("carol")
    );
    alice.send_text("back").await;
    assert_eq!(carol.recv_text().await, "back");
}

/// Kill one NATS server of three (R3 stream) while members on three nodes
/// publish: no loss, no duplicate, no reorder, for every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nats_server_of_three_dies_under_load() {
    let mut nats = NatsCluster::start(3);
    let urls = nats.urls();
    let w = Witness::new(&urls[1]).await;
    let mut mles = Vec::new();
    for i in 0..3 {
        // Each node starts on a different NATS server, with the others as seeds.
        let mut seeds = urls.clone();
        seeds.rotate_left(i);
        let mut args = vec![
            "--shards".to_string(),
            "2".into(),
            "--nats-replicas".into(),
            "3".into(),
        ];
        for u in &seeds {
            args.extend(["--nats".to_string(), u.clone()]);
        }
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let s = TestServer::start(&args);
        s.cluster_up().await;
        mles.push(s);
    }
    const MEMBERS: usize = 4;
    const FRAMES: usize = 40;
    let mut clients = Vec::new();
    for i in 0..MEMBERS {
        let (c, _) = join_with_history(&w, &mles[i % 3], &format!("u{i}"), "r3", i).await;
        for prev in clients.iter_mut() {
            assert_eq!(
                header_uid(&recv_within(prev, FAILOVER).await),
                Some(format!("u{i}"))
            );
        }
        clients.push(c);
    }
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let mut kill_tx = Some(kill_tx);
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let mut signal = if i == 0 { kill_tx.take() } else { None };
        tasks.push(tokio::spawn(async move {
            for k in 0..FRAMES {
                if k == FRAMES / 3
                    && let Some(s) = signal.take()
                {
                    let _ = s.send(());
                }
                c.send_text(&format!("u{i}-{k}")).await;
            }
            // Collect what arrives in time, so a failure shows what is missing.
            let deadline = tokio::time::Instant::now() + FAILOVER;
            let mut got = Vec::new();
            while got.len() < (MEMBERS - 1) * FRAMES {
                match tokio::time::timeout_at(deadline, c.ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => got.push(t.to_string()),
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                    other => {
                        got.push(format!("END: {other:?}"));
                        break;
                    }
                }
            }
            (i, got)
        }));
    }
    kill_rx.await.unwrap();
    nats.servers[0].kill();
    let mut seen = HashMap::new();
    for t in tasks {
        let (i, got) = t.await.unwrap();
        seen.insert(i, got);
    }
    if !all_once_in_order_one_order(&seen, MEMBERS, FRAMES) {
        let stored = w.contents("r3").await;
        eprintln!("the stream holds {} frames: {stored:?}", stored.len());
        for (i, got) in &seen {
            eprintln!("u{i} got: {got:?}");
        }
    }
    assert_once_in_order_one_order(&seen, MEMBERS, FRAMES);
}

/// Whether [`assert_once_in_order_one_order`] would pass.
fn all_once_in_order_one_order(
    seen: &HashMap<usize, Vec<String>>,
    members: usize,
    frames: usize,
) -> bool {
    let seen = seen.clone();
    std::panic::catch_unwind(move || assert_once_in_order_one_order(&seen, members, frames)).is_ok()
}

/// Every member got every other member's frames once each, in the sender's
/// order, none of its own, and any two members agree on the order of the
/// frames both received.
fn assert_once_in_order_one_order(
    seen: &HashMap<usize, Vec<String>>,
    members: usize,
    frames: usize,
) {
    let summary: Vec<String> = (0..members)
        .map(|i| {
            let per: Vec<usize> = (0..members)
                .map(|j| {
                    seen[&i]
                        .iter()
                        .filter(|f| f.starts_with(&format!("u{j}-")))
                        .count()
                })
                .collect();
            format!("u{i} got {per:?}, last {:?}", seen[&i].last())
        })
        .collect();
    eprintln!("received per sender: {summary:#?}");
    let tag = |j: usize| format!("u{j}-");
    for (i, got) in seen {
        assert!(
            !got.iter().any(|f| f.starts_with(&tag(*i))),
            "u{i} got its own frame back"
        );
        for j in (0..members).filter(|j| j != i) {
            let from_j: Vec<&str> = got
                .iter()
                .filter(|f| f.starts_with(&tag(j)))
                .map(|s| s.as_str())
                .collect();
            let sent: Vec<String> = (0..frames).map(|k| format!("u{j}-{k}")).collect();
            assert!(
                from_j.iter().copied().eq(sent.iter().map(|s| s.as_str())),
                "u{i}: u{j}'s frames once each, in order"
            );
        }
    }
    for a in 0..members {
        for b in (a + 1)..members {
            let shared = |x: &[String]| -> Vec<String> {
                x.iter()
                    .filter(|f| !f.starts_with(&tag(a)) && !f.starts_with(&tag(b)))
                    .cloned()
                    .collect()
            };
            assert!(
                shared(&seen[&a]) == shared(&seen[&b]),
                "u{a} and u{b} disagree on the order"
            );
        }
    }
}

/// The half-open rule across nodes: an incumbent on another node that has
/// been silent for 2 s is pinged there; no answer, and the newcomer takes
/// the uid over (PROTOCOL.md §4). The 2 s + 2 s are the protocol itself, so
/// this test waits for them on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_incumbent_on_another_node_is_replaced() {
    let nats = NatsServer::start();
    let w = Witness::new(&nats.url).await;
    let nodes = nodes(std::slice::from_ref(&nats.url), 2).await;
    let mut dead = RawClient::connect(nodes[0].addr).await;
    dead.join("bob", "probe").await;
    w.stored("probe", 1).await;
    let (mut watcher, history) = join_with_history(&w, &nodes[0], "watcher", "probe", 1).await;
    assert_eq!(header_uid(&history[0]).as_deref(), Some("bob"));
    tokio::time::sleep(Duration::from_millis(2100)).await; // incumbent silent > 2 s
    let (mut newcomer, history) = join_with_history(&w, &nodes[1], "bob", "probe", 2).await;
    let uids: Vec<_> = history.iter().filter_map(|h| header_uid(h)).collect();
    assert_eq!(uids, ["bob", "watcher"]);
    assert_eq!(
        header_uid(&watcher.recv_text().await).as_deref(),
        Some("bob")
    );
    watcher.send_text("welcome back").await;
    assert_eq!(newcomer.recv_text().await, "welcome back");
    let code = loop {
        let (b0, p) = dead.frame().await.expect("ping then close");
        if b0 == 0x88 {
            break u16::from_be_bytes([p[0], p[1]]);
        }
    };
    assert_eq!(code, 1008);
}

/// ...and one that answers the ping keeps its uid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_incumbent_on_another_node_keeps_its_uid() {
    let nats = NatsServer::start();
    let w = Witness::new(&nats.url).await;
    let nodes = nodes(std::slice::from_ref(&nats.url), 2).await;
    let mut alive = RawClient::connect(nodes[0].addr).await;
    alive.join("carl", "probe2").await;
    w.stored("probe2", 1).await;
    let (_watcher, _) = join_with_history(&w, &nodes[0], "watcher", "probe2", 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await; // silent, but will answer
    let mut newcomer = nodes[1].join("carl", "probe2").await;
    // The watcher's join header came first.
    let (b0, p) = loop {
        let (b0, p) = alive.frame().await.expect("the probe ping");
        if b0 != 0x81 {
            break (b0, p);
        }
    };
    assert_eq!(b0, 0x89);
    alive.send(&masked(0x8A, &p)).await;
    let (code, why) = newcomer.expect_close().await;
    assert_eq!(code, 1008, "{why}");
}

/// A uid that left one node is free at once on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uid_is_free_on_another_node_after_leaving() {
    let nats = NatsServer::start();
    let w = Witness::new(&nats.url).await;
    let nodes = nodes(std::slice::from_ref(&nats.url), 2).await;
    let (mut watcher, _) = join_with_history(&w, &nodes[1], "w", "again", 0).await;
    let (mut a, _) = join_with_history(&w, &nodes[0], "a", "again", 1).await;
    assert_eq!(header_uid(&watcher.recv_text().await).as_deref(), Some("a"));
    a.ws.close(None).await.unwrap();
    while let Some(Ok(_)) = tokio::time::timeout(WAIT, a.ws.next()).await.unwrap() {}
    let (_again, history) = join_with_history(&w, &nodes[1], "a", "again", 2).await;
    let uids: Vec<_> = history.iter().filter_map(|h| header_uid(h)).collect();
    assert_eq!(uids, ["w", "a"]);
}

/// Two deployments on one NATS (`--nats-prefix`): the same channel name and
/// the same uid in both are two channels and two members; nothing crosses,
/// in live frames or in history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_prefixes_share_a_nats_without_sharing_a_frame() {
    let nats = NatsServer::start();
    let url = std::slice::from_ref(&nats.url);
    let blue = [
        node_with(url, &["--nats-prefix", "blue"]).await,
        node_with(url, &["--nats-prefix", "blue"]).await,
    ];
    let green = node_with(url, &["--nats-prefix", "green"]).await;

    let mut alice = blue[0].join("alice", "c").await;
    let mut bob = blue[1].join("bob", "c").await;
    assert_eq!(header_uids(&mut alice, 1).await, ["bob"]);
    // The same uid on the same channel name in the other deployment is not
    // a duplicate.
    let mut green_alice = green.join("alice", "c").await;
    let mut carol = green.join("carol", "c").await;
    assert_eq!(header_uids(&mut green_alice, 1).await, ["carol"]);
    // Each gets the other's header, live or as history, whichever came first.
    assert_eq!(header_uids(&mut carol, 1).await, ["alice"]);
    assert_eq!(header_uids(&mut bob, 1).await, ["alice"]);

    alice.send_text("blue 1").await;
    green_alice.send_text("green 1").await;
    assert_eq!(carol.recv_text().await, "green 1");
    alice.send_text("blue 2").await;
    assert_eq!(recv_within(&mut bob, WAIT).await, "blue 1");
    assert_eq!(recv_within(&mut bob, WAIT).await, "blue 2");

    // A joiner's history has blue's frames only (headers by their uid).
    let mut dave = blue[0].join("dave", "c").await;
    let mut history = Vec::new();
    for _ in 0..4 {
        let t = recv_within(&mut dave, WAIT).await;
        history.push(header_uid(&t).unwrap_or(t));
    }
    history.sort();
    assert_eq!(history, ["alice", "blue 1", "blue 2", "bob"]);
    alice.send_text("blue 3").await;
    assert_eq!(recv_within(&mut dave, WAIT).await, "blue 3");
}

/// A message NATS's `max_payload` cannot take closes its sender with 1009
/// and a reason; the channel and its other members go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_nats_max_payload_closes_its_sender_with_1009() {
    let nats = NatsServer::start_with("max_payload: 64KB");
    nats.await_healthy();
    let url = std::slice::from_ref(&nats.url);
    let (a, b) = (node(url).await, node(url).await);
    let (mut alice, mut bob) = alice_and_bob(&a, &b, "big").await;
    alice.send_binary(&vec![7u8; 100 * 1024]).await;
    let (code, reason) = alice.expect_close().await;
    assert_eq!(code, 1009, "{reason}");
    // Bob stays, and hears what comes next (Alice's own frame never came).
    let mut carol = a.join("carol", "big").await;
    assert_eq!(header_uids(&mut bob, 1).await, ["carol"]);
    carol.send_text("small is fine").await;
    assert_eq!(recv_within(&mut bob, WAIT).await, "small is fine");
}

/// `--history-bytes` bounds what a joiner is sent in cluster mode too: the
/// newest frames that fit, on whichever node the joiner reaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_bytes_bound_a_joiners_history_on_every_node() {
    let nats = NatsServer::start();
    let url = std::slice::from_ref(&nats.url);
    let args = ["--limit", "5000", "--history-bytes", "100"];
    let (a, b) = (node_with(url, &args).await, node_with(url, &args).await);
    let (mut alice, mut bob) = alice_and_bob(&a, &b, "hb").await;
    for i in 0..20 {
        alice
            .send_text(&format!("frame {i:02} {}", "x".repeat(30)))
            .await;
    }
    for i in 0..20 {
        assert!(
            recv_within(&mut bob, WAIT)
                .await
                .starts_with(&format!("frame {i:02}"))
        );
    }
    // 41 bytes each as stored (39 and the frame header): the newest two fit
    // in 100 bytes.
    let mut carol = a.join("carol", "hb").await;
    assert!(recv_within(&mut carol, WAIT).await.starts_with("frame 18"));
    assert!(recv_within(&mut carol, WAIT).await.starts_with("frame 19"));
    // On the other node, Carol's header (33 bytes) has taken frame 18's place.
    let mut dave = b.join("dave", "hb").await;
    assert!(recv_within(&mut dave, WAIT).await.starts_with("frame 19"));
    assert_eq!(header_uids(&mut dave, 1).await, ["carol"]);
    alice.send_text("live").await;
    assert_eq!(header_uids(&mut carol, 1).await, ["dave"]);
    assert_eq!(recv_within(&mut carol, WAIT).await, "live");
    assert_eq!(recv_within(&mut dave, WAIT).await, "live");
}

/// NATS loses the stream and the bucket (a NATS restarted without its
/// store, or an operator's mistake): the nodes set them up again and the
/// channel goes on, nothing sent afterwards lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_lost_in_nats_is_set_up_again() {
    let nats = NatsServer::start();
    let url = std::slice::from_ref(&nats.url);
    let (a, b) = (node(url).await, node(url).await);
    let (mut alice, mut bob) = alice_and_bob(&a, &b, "lost").await;
    for i in 0..5 {
        alice.send_text(&format!("before {i}")).await;
    }
    for i in 0..5 {
        assert_eq!(recv_within(&mut bob, WAIT).await, format!("before {i}"));
    }

    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.delete_stream("mles-channels").await.unwrap();
    js.delete_key_value("mles-members").await.unwrap();

    for i in 0..5 {
        alice.send_text(&format!("after {i}")).await;
    }
    for i in 0..5 {
        let Some(got) = try_recv_within(&mut bob, FAILOVER).await else {
            // Seen twice in full runs beside a CI build, never alone: say
            // whether the frame was stored and what became of its sender.
            let stored = Witness::new(&nats.url).await.contents("lost").await;
            let alice_end = tokio::time::timeout(WAIT, alice.ws.next()).await;
            panic!("after {i} not delivered; stream: {stored:?}; alice: {alice_end:?}");
        };
        assert_eq!(got, format!("after {i}"));
    }
    bob.send_text("still here").await;
    assert_eq!(recv_within(&mut alice, FAILOVER).await, "still here");
    // A newcomer gets the history its node kept, the frames of both
    // streams in their order.
    let mut carol = a.join("carol", "lost").await;
    let mut history = Vec::new();
    for _ in 0..13 {
        let t = recv_within(&mut carol, FAILOVER).await;
        history.push(header_uid(&t).unwrap_or(t));
    }
    let mut want = vec!["alice".to_string(), "bob".to_string()];
    want.extend((0..5).map(|i| format!("before {i}")));
    want.extend((0..5).map(|i| format!("after {i}")));
    want.push("still here".into());
    assert_eq!(history[2..], want[2..]);
    bob.send_text("hello carol").await;
    assert_eq!(recv_within(&mut carol, FAILOVER).await, "hello carol");
    // The uids held when the bucket was lost are held again cluster-wide
    // once their nodes have written them into the new bucket (Alice, Bob,
    // and Carol, who joined since).
    let kv = js.get_key_value("mles-members").await.unwrap();
    let deadline = std::time::Instant::now() + FAILOVER;
    loop {
        let keys: Vec<String> = kv.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
        if keys.len() == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "entries not restored: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut twin = b.join("alice", "lost").await;
    let (code, reason) = twin.expect_close().await;
    assert_eq!(code, 1008, "{reason}");
}

/// A node stopped gracefully (SIGTERM) stores what its members sent before
/// it stopped, though the shards that read it are gone: another node's
/// members get every frame, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopping_stores_what_its_members_sent() {
    const FRAMES: usize = 300;
    let nats = NatsServer::start();
    let url = std::slice::from_ref(&nats.url);
    let (a, b) = (node(url).await, node(url).await);
    let mut bob = b.join("bob", "bye").await;
    let mut alice = RawClient::connect(a.addr).await;
    alice.join("alice", "bye").await;
    assert_eq!(header_uids(&mut bob, 1).await, ["alice"]);
    // Her frames, then one that is not UTF-8: the node reads her frames in
    // order, so her close (1007) says it has taken every frame before it.
    let mut frames = Vec::new();
    for k in 0..FRAMES {
        frames.extend(masked(0x81, format!("a{k}").as_bytes()));
    }
    frames.extend(masked(0x81, &[0xff, 0xfe]));
    alice.send(&frames).await;
    let (code, reason) = alice.expect_close().await;
    assert_eq!(code, 1007, "{reason}");
    // Stopped at once: most of her frames are still on their way to NATS.
    assert!(a.stop(), "node stops cleanly");
    for k in 0..FRAMES {
        assert_eq!(recv_within(&mut bob, WAIT).await, format!("a{k}"));
    }
}

/// The longest channel and uid a header may carry (1 KiB each), of
/// characters that all need escaping in a NATS subject: joins, frames and
/// history work across nodes as for any name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_names_work_across_nodes() {
    let nats = NatsServer::start();
    let url = std::slice::from_ref(&nats.url);
    let (a, b) = (node(url).await, node(url).await);
    let channel = ".* >".repeat(256);
    let (alice_uid, bob_uid) = ("ä".repeat(512), "ö".repeat(512));
    assert_eq!((channel.len(), alice_uid.len()), (1024, 1024));
    let mut alice = a.join(&alice_uid, &channel).await;
    let mut bob = b.join(&bob_uid, &channel).await;
    assert_eq!(header_uids(&mut alice, 1).await[0], bob_uid);
    assert_eq!(header_uids(&mut bob, 1).await[0], alice_uid);
    alice.send_text("long names").await;
    assert_eq!(recv_within(&mut bob, WAIT).await, "long names");
    let mut carol = b.join("carol", &channel).await;
    let mut history = Vec::new();
    for _ in 0..3 {
        let t = recv_within(&mut carol, WAIT).await;
        history.push(header_uid(&t).unwrap_or(t));
    }
    history.sort();
    let mut want = vec![alice_uid, bob_uid, "long names".to_string()];
    want.sort();
    assert_eq!(history, want);
}

/// NATS loses the registry's bucket while Alice is joined on one node, and
/// Alice joins again on another: whichever node's view lands first, the uid
/// ends up joined once (the newcomer refused, or the incumbent closed with
/// 1008 "uid joined on another node" once its node finds its entry taken).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uid_stays_joined_once_when_the_bucket_is_lost() {
    let nats = NatsServer::start();
    let url = std::slice::from_ref(&nats.url);
    let (a, b) = (node(url).await, node(url).await);
    let (mut alice, mut bob) = alice_and_bob(&a, &b, "once").await;

    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    js.delete_key_value("mles-members").await.unwrap();
    // Until node b has set the bucket up again its joins are refused (1013).
    let deadline = std::time::Instant::now() + FAILOVER;
    let twin = loop {
        assert!(std::time::Instant::now() < deadline, "no answer but 1013");
        let mut twin = b.join("alice", "once").await;
        match twin.next().await {
            Message::Close(Some(f)) if u16::from(f.code) == 1013 => continue,
            Message::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 1008, "{}", f.reason);
                break None;
            }
            Message::Text(t) => {
                // Admitted (its history begins): the incumbent must go.
                assert!(header_uid(&t).is_some(), "{t}");
                break Some(twin);
            }
            other => panic!("{other:?}"),
        }
    };
    if twin.is_some() {
        let (code, reason) = alice.expect_close().await;
        assert_eq!(
            (code, reason.as_str()),
            (1008, "uid joined on another node")
        );
    } else {
        alice.send_text("still alice").await;
        assert_eq!(recv_within(&mut bob, WAIT).await, "still alice");
    }
}
