//! Peer links between servers (PROTOCOL.md §7, README "Peer servers"), with
//! two and three servers: one-way, mutual, chain, ring. Every test counts
//! each (publisher, seq) at every subscriber: exactly once, in order,
//! nothing echoed, and no link ever shown as a person.

mod common;
mod tlsutil;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

/// A server with metrics, its own peer uid, and `peers`. Its history holds
/// every frame of a test: a member admitted after frames began to pass (its
/// join still on its way) gets them from history instead of live.
fn server(name: &str, listen: Option<u16>, peers: &[String], key: Option<&str>) -> TestServer {
    let listen = listen.map(|p| format!("127.0.0.1:{p}"));
    let mut args = vec![
        "--limit",
        "10000",
        "--metrics",
        "127.0.0.1:0",
        "--peer-uid",
        name,
        "--shards",
        "2",
    ];
    if let Some(l) = &listen {
        args.extend(["--listen", l]);
    }
    for p in peers {
        args.extend(["--peer", p]);
    }
    TestServer::start_with_key(&args, key)
}

fn url(port: u16) -> String {
    format!("ws://127.0.0.1:{port}/")
}

/// Waits until `cond` holds for the metric `name` summed over `servers`.
async fn await_metric(servers: &[&TestServer], name: &str, cond: impl Fn(u64) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut sum = 0;
        for s in servers {
            sum += s.metric(name).await;
        }
        if cond(sum) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stuck at {sum}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every server has exactly `links[i]` synced links.
async fn await_links(servers: &[&TestServer], links: &[u64]) {
    for (s, &n) in servers.iter().zip(links) {
        await_metric(&[s], "mles_peer_links", |v| v == n).await;
    }
}

/// A client of the counting tests.
struct Member {
    uid: String,
    client: Client,
}

async fn member(srv: &TestServer, uid: &str, channel: &str) -> Member {
    Member {
        uid: uid.to_string(),
        client: srv.join(uid, channel).await,
    }
}

/// Every member publishes `n` frames `uid:seq` (then `uid:end`); every member
/// must get every other member's frames exactly once and in order, never
/// its own, and no header but those of real members (`people`).
async fn exchange(members: Vec<Member>, n: usize, people: &[&str]) -> Vec<Member> {
    let uids: Vec<String> = members.iter().map(|m| m.uid.clone()).collect();
    let mut tasks = Vec::new();
    for m in members {
        let uid = m.uid.clone();
        let others: Vec<String> = uids.iter().filter(|u| **u != uid).cloned().collect();
        let people: HashSet<String> = people.iter().map(|s| s.to_string()).collect();
        // Sending and receiving at once, so no socket buffer fills up.
        let (mut tx, mut rx) = futures_util::StreamExt::split(m.client.ws);
        let send = {
            let uid = uid.clone();
            tokio::spawn(async move {
                for i in 0..n {
                    tx.send(Message::text(format!("{uid}:{i}"))).await.unwrap();
                }
                tx.send(Message::text(format!("{uid}:end"))).await.unwrap();
                tx
            })
        };
        let me = uid.clone();
        let recv = tokio::spawn(async move {
            let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
            let mut ended = HashSet::new();
            while ended.len() < others.len() {
                let m = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut rx))
                    .await
                    .unwrap_or_else(|_| panic!("{me}: stalled; ended {ended:?}"))
                    .expect("open")
                    .expect("no error");
                let Message::Text(t) = m else { continue };
                if let Some(h) = header_uid(&t) {
                    assert!(people.contains(&h), "{me} was shown a join of {h:?}");
                    continue;
                }
                let (from, seq) = t.rsplit_once(':').expect("uid:seq");
                assert_ne!(from, me, "{me} got its own frame back: {t}");
                if seq == "end" {
                    assert!(ended.insert(from.to_string()), "{me}: {t} twice");
                    continue;
                }
                assert!(!ended.contains(from), "{me}: {t} after {from}:end");
                seen.entry(from.to_string())
                    .or_default()
                    .push(seq.parse().unwrap());
            }
            (rx, seen)
        });
        tasks.push((uid, send, recv));
    }
    let mut back = Vec::new();
    for (uid, send, recv) in tasks {
        let tx = send.await.unwrap();
        let (rx, seen) = recv.await.unwrap();
        for other in uids.iter().filter(|u| **u != uid) {
            let got = seen.get(other).cloned().unwrap_or_default();
            assert_eq!(
                got,
                (0..n).collect::<Vec<_>>(),
                "{uid} got {other}'s frames wrong ({} of {n})",
                got.len()
            );
        }
        back.push(Member {
            uid,
            client: Client {
                ws: tx.reunite(rx).unwrap(),
            },
        });
    }
    back
}

#[tokio::test]
async fn one_way_links_carry_every_frame_once_both_ways() {
    let pb = free_port();
    let b = server("b", Some(pb), &[], None);
    let a = server("a", None, &[url(pb)], None);
    // A client on B holding A's link uid blocks nothing: links and clients
    // have separate namespaces.
    let squatter = member(&b, "a", "one").await;
    let ms = vec![member(&a, "x", "one").await, member(&b, "y", "one").await];
    await_links(&[&a, &b], &[1, 1]).await;
    let mut ms = ms;
    ms.push(squatter);
    exchange(ms, 200, &["x", "y", "a"]).await;
}

#[tokio::test]
async fn mutual_links_keep_one_and_never_loop_even_in_a_burst() {
    let (pa, pb) = (free_port(), free_port());
    let a = server("a", Some(pa), &[url(pb)], None);
    let b = server("b", Some(pb), &[url(pa)], None);
    let ms = vec![
        member(&a, "x", "both").await,
        member(&b, "y", "both").await,
        member(&b, "z", "both").await,
    ];
    // One of the two links is refused as redundant; one carries the channel.
    await_metric(&[&a, &b], "mles_peer_cycles_refused_total", |n| n >= 1).await;
    await_links(&[&a, &b], &[1, 1]).await;
    exchange(ms, 1000, &["x", "y", "z"]).await;
    // No storm: each server published each frame once (1000 × 3 members,
    // plus the ends, plus three headers), nothing more once all is quiet.
    let published = a.metric("mles_frames_published_total").await
        + b.metric("mles_frames_published_total").await;
    assert!(
        published <= 2 * (3 * 1001 + 3),
        "{published} frames published"
    );
}

#[tokio::test]
async fn a_chain_carries_every_frame_to_every_server_once() {
    let (pb, pc) = (free_port(), free_port());
    let c = server("c", Some(pc), &[], None);
    let b = server("b", Some(pb), &[url(pc)], None);
    let a = server("a", None, &[url(pb)], None);
    let ms = vec![
        member(&a, "xa", "chain").await,
        member(&b, "xb", "chain").await,
        member(&c, "xc", "chain").await,
    ];
    await_links(&[&a, &b, &c], &[1, 2, 1]).await;
    exchange(ms, 200, &["xa", "xb", "xc"]).await;
}

#[tokio::test]
async fn a_chain_passes_frames_through_a_server_without_clients() {
    let (pb, pc) = (free_port(), free_port());
    let c = server("c", Some(pc), &[], None);
    let b = server("b", Some(pb), &[url(pc)], None);
    let a = server("a", None, &[url(pb)], None);
    // B has no client: A's link alone has it link the channel on to C.
    let ms = vec![
        member(&a, "xa", "through").await,
        member(&c, "xc", "through").await,
    ];
    await_links(&[&a, &b, &c], &[1, 2, 1]).await;
    drop(exchange(ms, 200, &["xa", "xc"]).await);
    // The clients are gone: A closes its link, and then B closes its own.
    await_links(&[&a, &b, &c], &[0, 0, 0]).await;
}

#[tokio::test]
async fn a_ring_is_refused_where_it_closes_and_the_rest_carries_every_frame_once() {
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let a = server("a", Some(pa), &[url(pb)], None);
    let b = server("b", Some(pb), &[url(pc)], None);
    let c = server("c", Some(pc), &[url(pa)], None);
    // A's client brings up A→B, which brings up B→C, which brings up C→A:
    // that one closes the ring and is refused.
    let xa = member(&a, "xa", "ring").await;
    await_metric(&[&a, &c], "mles_peer_cycles_refused_total", |n| n >= 2).await;
    await_links(&[&a, &b, &c], &[1, 2, 1]).await;
    let xb = member(&b, "xb", "ring").await;
    let xc = member(&c, "xc", "ring").await;
    exchange(vec![xa, xb, xc], 200, &["xa", "xb", "xc"]).await;
}

#[tokio::test]
async fn identical_frames_from_different_users_all_arrive() {
    let pb = free_port();
    let b = server("b", Some(pb), &[], None);
    let a = server("a", None, &[url(pb)], None);
    let mut alice = a.join("alice", "same").await;
    let mut bob = a.join("bob", "same").await;
    let mut far = b.join("far", "same").await;
    await_links(&[&a, &b], &[1, 1]).await;
    alice.send_text("ok").await;
    bob.send_text("ok").await;
    for _ in 0..3 {
        alice.send_text("ok").await;
    }
    // Each ends with its own marker: alice's and bob's frames may be
    // ordered either way between them.
    alice.send_text("alice done").await;
    bob.send_text("bob done").await;
    let ends = ["alice done", "bob done"];
    let mut oks = 0;
    let mut ended = 0;
    while ended < 2 {
        let t = far.recv_text().await;
        ended += usize::from(ends.contains(&t.as_str()));
        oks += usize::from(t == "ok");
    }
    assert_eq!(oks, 5, "every ok a client sent is relayed");
    // A late joiner on B gets the same history as one on A.
    let mut late_b = b.join("late-b", "same").await;
    let mut late_a = a.join("late-a", "same").await;
    async fn history(c: &mut Client, ends: &[&str]) -> Vec<String> {
        let mut h: Vec<String> = Vec::new();
        while h.iter().filter(|t| ends.contains(&t.as_str())).count() < ends.len() {
            let t = c.recv_text().await;
            if !t.starts_with('{') {
                h.push(t);
            }
        }
        h
    }
    let hb = history(&mut late_b, &ends).await;
    let ha = history(&mut late_a, &ends).await;
    assert_eq!(ha, hb);
}

#[tokio::test]
async fn links_authenticate_with_mles_key_on_both_sides() {
    let pb = free_port();
    let b = server("b", Some(pb), &[], Some("s3cret"));
    let a = server("a", None, &[url(pb)], Some("s3cret"));
    let auth = |uid: &str, ch: &str| {
        format!(
            "{:x}",
            mles::protocol::auth::hash_parts(&[uid.as_bytes(), ch.as_bytes(), b"s3cret"])
        )
    };
    let mut x = a.connect().await;
    let h = serde_json::json!({"uid": "x", "channel": "keyed", "auth": auth("x", "keyed")});
    x.send_text(&h.to_string()).await;
    let mut y = b.connect().await;
    let h = serde_json::json!({"uid": "y", "channel": "keyed", "auth": auth("y", "keyed")});
    y.send_text(&h.to_string()).await;
    await_links(&[&a, &b], &[1, 1]).await;
    let ms = vec![
        Member {
            uid: "x".into(),
            client: x,
        },
        Member {
            uid: "y".into(),
            client: y,
        },
    ];
    exchange(ms, 50, &["x", "y"]).await;
}

#[tokio::test]
async fn a_link_with_the_wrong_key_is_refused_once_and_backs_off() {
    let pb = free_port();
    let b = server("b", Some(pb), &[], Some("right"));
    let a = TestServer::start(&[
        "--metrics",
        "127.0.0.1:0",
        "--peer",
        &url(pb),
        "--peer-key",
        "wrong",
    ]);
    let _x = a.join("x", "locked").await;
    // Refused joins count as 1008 closes on B; with back-off doubling from
    // 100 ms, two seconds hold at most 5 attempts (a reset per attempt: 20).
    await_metric(&[&b], "mles_sessions_closed_total", |n| n >= 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = b.metric("mles_sessions_closed_total").await;
    assert!((1..=5).contains(&attempts), "{attempts} attempts in 2 s");
    assert_eq!(b.metric("mles_peer_links").await, 0);
}

#[tokio::test]
async fn links_close_when_the_last_client_leaves_and_resync_adds_nothing_twice() {
    let pb = free_port();
    let b = server("b", Some(pb), &[], None);
    let a = server("a", None, &[url(pb)], None);
    let mut watcher = b.join("w", "ebb").await;
    let mut x = a.join("x", "ebb").await;
    await_links(&[&a, &b], &[1, 1]).await;
    x.send_text("first").await;
    while watcher.recv_text().await != "first" {}
    // The last client on A leaves: A closes its link; B's watcher does not
    // keep it open either (links do not keep channels alive).
    x.ws.close(None).await.unwrap();
    drop(x);
    await_links(&[&a, &b], &[0, 0]).await;
    // The next client on A brings the link back; the resync adds nothing
    // either side already has.
    let mut x2 = a.join("x2", "ebb").await;
    await_links(&[&a, &b], &[1, 1]).await;
    x2.send_text("second").await;
    let mut between = Vec::new();
    loop {
        let t = watcher.recv_text().await;
        if t == "second" {
            break;
        }
        between.push(t);
    }
    assert!(!between.iter().any(|t| t == "first"), "{between:?}");
    // x2 got A's history once ("first" once), and nothing echoed from B.
    let mut hist = Vec::new();
    watcher.send_text("from b").await;
    loop {
        let t = x2.recv_text().await;
        if t == "from b" {
            break;
        }
        hist.push(t);
    }
    assert_eq!(hist.iter().filter(|t| *t == "first").count(), 1, "{hist:?}");
    assert!(!hist.iter().any(|t| t == "second"), "{hist:?}");
}

#[tokio::test]
async fn a_restarted_peer_gets_the_history_back_without_replaying_it_live() {
    let pb = free_port();
    let b = server("b", Some(pb), &[], None);
    let a = server("a", None, &[url(pb)], None);
    let mut x = a.join("x", "resync").await;
    let mut y = b.join("y", "resync").await;
    await_links(&[&a, &b], &[1, 1]).await;
    for i in 0..5 {
        x.send_text(&format!("old{i}")).await;
    }
    x.send_text("marker").await;
    while y.recv_text().await != "marker" {}
    // x leaves (A's link closes) and B restarts empty on the same address;
    // a client is on B before A links again.
    x.ws.close(None).await.unwrap();
    drop((x, y));
    await_links(&[&a], &[0]).await;
    assert!(tokio::task::spawn_blocking(move || b.stop()).await.unwrap());
    let b2 = server("b", Some(pb), &[], None);
    let mut early = b2.join("early", "resync").await;
    await_metric(&[&b2], "mles_joins_total", |n| n >= 1).await;
    let mut x2 = a.join("x2", "resync").await;
    await_links(&[&a, &b2], &[1, 1]).await;
    // A late joiner on B gets A's history from the resync...
    let mut late = b2.join("late", "resync").await;
    let mut hist = Vec::new();
    while hist.last().map(String::as_str) != Some("marker") {
        hist.push(late.recv_text().await);
    }
    hist.retain(|t| !t.starts_with('{'));
    assert_eq!(hist, ["old0", "old1", "old2", "old3", "old4", "marker"]);
    // ...but the member that was already there is not sent it live.
    x2.send_text("new").await;
    let mut before_new = Vec::new();
    loop {
        let t = early.recv_text().await;
        if t == "new" {
            break;
        }
        before_new.push(t);
    }
    assert!(
        before_new.iter().all(|t| t.starts_with('{')),
        "old frames replayed live: {before_new:?}"
    );
    // x2 got A's history once and nothing of it again from B.
    early.send_text("hello a").await;
    let mut seen = Vec::new();
    loop {
        let t = x2.recv_text().await;
        if t == "hello a" {
            break;
        }
        seen.push(t);
    }
    for old in ["old0", "old4", "marker"] {
        assert_eq!(seen.iter().filter(|t| *t == old).count(), 1, "{seen:?}");
    }
}

#[tokio::test]
async fn a_wss_peer_is_verified_against_peer_ca() {
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
        "--metrics",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let peer = format!("wss://localhost:{}/", b.addr.port());
    let a = TestServer::start(&[
        "--metrics",
        "127.0.0.1:0",
        "--peer",
        &peer,
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
    await_links(&[&a, &b], &[1, 1]).await;
    x.send_text("over wss").await;
    loop {
        let t = tlsutil::wss_text(&mut y).await;
        if t == "over wss" {
            break;
        }
        assert_eq!(header_uid(&t).as_deref(), Some("x"), "unexpected {t:?}");
    }
    y.send(Message::text("back")).await.unwrap();
    loop {
        let t = x.recv_text().await;
        if t == "back" {
            break;
        }
        assert_eq!(header_uid(&t).as_deref(), Some("y"), "unexpected {t:?}");
    }
}

/// `metric_at`, or 0 while nothing listens at `addr` (a restarting server).
async fn metric_of(addr: &str, name: &str) -> u64 {
    if tokio::net::TcpStream::connect(addr).await.is_err() {
        return 0;
    }
    metric_at(addr.parse().unwrap(), name).await
}

/// The server binary as a separate process, so that it can be killed with SIGKILL.
fn spawn_binary(args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_mles"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the binary runs")
}

/// Reads `uid:seq` text frames from `c` until `uid:end`; headers are skipped.
async fn read_until_end(c: &mut Client, uid: &str) -> Vec<usize> {
    let mut got = Vec::new();
    loop {
        match c.next().await {
            Message::Text(t) => {
                if t.starts_with('{') {
                    continue;
                }
                let (from, seq) = t.rsplit_once(':').unwrap();
                assert_eq!(from, uid, "unexpected {t}");
                if seq == "end" {
                    return got;
                }
                got.push(seq.parse().unwrap());
            }
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_mutual_peer_killed_and_restarted_under_load_loses_and_repeats_nothing() {
    let (pa, pb, pm) = (free_port(), free_port(), free_port());
    let a = server("a", Some(pa), &[url(pb)], None);
    let (listen_b, metrics_b, peer_a) = (
        format!("127.0.0.1:{pb}"),
        format!("127.0.0.1:{pm}"),
        url(pa),
    );
    let b_args = [
        "--listen",
        listen_b.as_str(),
        "--metrics",
        metrics_b.as_str(),
        "--peer",
        peer_a.as_str(),
        "--peer-uid",
        "b",
        "--shards",
        "2",
    ];
    let await_b_links = |n: u64| {
        let m = metrics_b.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            while metric_of(&m, "mles_peer_links").await != n {
                assert!(tokio::time::Instant::now() < deadline, "B never linked");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut b = spawn_binary(&b_args);
    let mut publisher = a.join("p", "load").await;
    let mut s = a.join("s", "load").await;
    let mut r = RawClient::try_connect(listen_b.parse().unwrap()).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while r.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "B never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
        r = RawClient::try_connect(listen_b.parse().unwrap()).await;
    }
    r.unwrap().join("r", "load").await;
    await_links(&[&a], &[1]).await;
    await_b_links(1).await;
    // 50 frames a second from p for 3 s; B is killed after 1 s and restarted.
    const N: usize = 150;
    let (tx, rx) = futures_util::StreamExt::split(publisher.ws);
    let sender = tokio::spawn(async move {
        let mut tx = tx;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for i in 0..N {
            tick.tick().await;
            tx.send(Message::text(format!("p:{i}"))).await.unwrap();
        }
        tx.send(Message::text("p:end")).await.unwrap();
        tx
    });
    let mut first = Vec::new();
    while first.len() < 50 {
        let Message::Text(t) = s.next().await else {
            continue;
        };
        if let Some(seq) = t.strip_prefix("p:") {
            first.push(seq.parse::<usize>().unwrap());
        }
    }
    b.kill().unwrap();
    b.wait().unwrap();
    let mut b2 = spawn_binary(&b_args);
    let mut r2 = loop {
        if let Some(c) = RawClient::try_connect(listen_b.parse().unwrap()).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    r2.join("r2", "load").await;
    await_b_links(1).await;
    let rest = read_until_end(&mut s, "p").await;
    first.extend(rest);
    assert_eq!(first, (0..N).collect::<Vec<_>>(), "s got p's frames wrong");
    // r2 on the restarted B: what it gets (history, then live) has no
    // repeats and keeps p's order, up to the end.
    let mut seen = Vec::new();
    while let Some((b0, p)) = r2.frame().await {
        if b0 & 0x0F != 0x1 || p.starts_with(b"{") {
            continue;
        }
        let t = String::from_utf8(p).unwrap();
        let (_, seq) = t.rsplit_once(':').unwrap();
        if seq == "end" {
            break;
        }
        seen.push(seq.parse::<usize>().unwrap());
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "r2: {seen:?}");
    assert!(!seen.is_empty());
    // Frames from the restarted side reach A once each, and p gets none of its own.
    let mut q = RawClient::connect(listen_b.parse().unwrap()).await;
    q.join("q", "load").await;
    for i in 0..20 {
        q.send(&masked(0x81, format!("q:{i}").as_bytes())).await;
    }
    q.send(&masked(0x81, b"q:end")).await;
    assert_eq!(
        read_until_end(&mut s, "q").await,
        (0..20).collect::<Vec<_>>()
    );
    let tx = sender.await.unwrap();
    publisher.ws = tx.reunite(rx).unwrap();
    publisher.send_text("p:bye").await;
    let mut others = Vec::new();
    loop {
        let Message::Text(t) = publisher.next().await else {
            continue;
        };
        if t == "q:end" {
            break;
        }
        others.push(t.to_string());
    }
    assert!(
        !others.iter().any(|t| t.starts_with("p:")),
        "echo: {others:?}"
    );
    b2.kill().unwrap();
    b2.wait().unwrap();
}
