//! The NATS side of cluster mode against real nats-server processes: the
//! link's state, publishes, channel feeds (history then live, one order),
//! retention, message-id de-duplication, the (channel, uid) registry with
//! cross-node probes, and a NATS server killed under an R3 stream.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use bytes::Bytes;
use common::free_port;
use common::nats::{NatsCluster, NatsServer};
use mles::cluster::link::{BoxFuture, STREAM_MAX_CONSUMERS};
use mles::cluster::subject::member_key;
use mles::cluster::{
    ChannelLog, Claim, Cluster, ClusterSettings, Delivery, Frame, Kind, LinkState, LogEvent, Next,
    Origin, Outgoing, Prober, PublishError, Unit,
};

/// Generous: a NATS failover (leader election, feed re-creation) takes seconds.
const LONG: Duration = Duration::from_secs(60);

/// Answers probes from a table: (channel, uid, session) -> alive; absent = gone.
#[derive(Default)]
struct TableProber {
    alive: Mutex<HashMap<(String, String, u64), bool>>,
    /// What `taken_over` was told, in order.
    taken: Mutex<Vec<(String, String, u64)>>,
}

impl TableProber {
    fn set(&self, channel: &str, uid: &str, session: u64, alive: bool) {
        self.alive
            .lock()
            .unwrap()
            .insert((channel.into(), uid.into(), session), alive);
    }
}

impl Prober for TableProber {
    fn probe(&self, channel: String, uid: String, session: u64) -> BoxFuture<bool> {
        let alive = self
            .alive
            .lock()
            .unwrap()
            .get(&(channel, uid, session))
            .copied()
            .unwrap_or(false);
        Box::pin(async move { alive })
    }

    fn taken_over(&self, channel: String, uid: String, session: u64) {
        self.taken.lock().unwrap().push((channel, uid, session));
    }
}

fn settings(urls: Vec<String>, replicas: usize, limit: usize) -> ClusterSettings {
    ClusterSettings::new(urls, None, None, replicas, "t".into(), limit, 1 << 20).unwrap()
}

fn link(urls: Vec<String>, replicas: usize, limit: usize) -> (Cluster, Arc<TableProber>) {
    // RUST_LOG=mles=debug,async_nats=debug cargo test ... shows what the link did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let prober = Arc::new(TableProber::default());
    let c = Cluster::start(settings(urls, replicas, limit), prober.clone()).expect("link starts");
    (c, prober)
}

async fn up(c: &Cluster) {
    tokio::time::timeout(LONG, c.up())
        .await
        .expect("link up in time");
}

fn frame(c: &Cluster, session: u64, serial: u64, kind: Kind, payload: &str) -> Outgoing {
    Outgoing {
        origin: Origin {
            node: c.node().clone(),
            session,
        },
        kind,
        serial,
        payload: Bytes::from(payload.to_string()),
    }
}

async fn next_message(feed: &mut mles::cluster::Feed) -> Delivery {
    match tokio::time::timeout(LONG, feed.next())
        .await
        .expect("a frame in time")
    {
        Next::Frame(d) => d,
        Next::Behind => panic!("the feed fell behind"),
        Next::Restarted => panic!("the stream was created anew"),
    }
}

/// A message of one frame (as [`Cluster::publish`] stores them).
struct Lone {
    seq: u64,
    pending: u64,
    frame: Frame,
}

impl std::ops::Deref for Lone {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        &self.frame
    }
}

/// The feed's next message, which must be a lone frame.
async fn next(feed: &mut mles::cluster::Feed) -> Lone {
    let mut d = next_message(feed).await;
    assert_eq!(d.frames.len(), 1, "a lone frame");
    Lone {
        seq: d.seq,
        pending: d.pending,
        frame: d.frames.remove(0),
    }
}

/// The feed's next `n` frames, whatever messages carry them (a channel log
/// batches what queues while a message is in flight).
async fn next_frames(feed: &mut mles::cluster::Feed, n: usize) -> Vec<Frame> {
    let mut frames = Vec::new();
    while frames.len() < n {
        frames.extend(next_message(feed).await.frames);
    }
    assert_eq!(frames.len(), n, "no more than asked for");
    frames
}

/// The stream of `c` as NATS describes it now.
async fn stream_info(c: &Cluster) -> async_nats::jetstream::stream::Info {
    let js = async_nats::jetstream::new(c.client().clone());
    let mut stream = js.get_stream(c.settings().stream_name()).await.unwrap();
    stream.info().await.unwrap().clone()
}

/// Waits (at most [`LONG`]) until `done` says so, asking every 20 ms.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    tokio::time::timeout(LONG, async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not in time"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_then_live_in_one_order_with_origins() {
    let nats = NatsServer::start();
    let (a, _) = link(vec![nats.url.clone()], 1, 200);
    let (b, _) = link(vec![nats.url.clone()], 1, 200);
    up(&a).await;
    up(&b).await;
    let subject = a.subject("room 1");

    // Frames from two nodes, interleaved.
    let mut seqs = Vec::new();
    for i in 0..6u64 {
        let (node, kind) = if i % 2 == 0 {
            (&a, Kind::Text)
        } else {
            (&b, Kind::Binary)
        };
        let f = frame(node, 1, i, kind, &format!("m{i}"));
        seqs.push(node.publish(&subject, &f).await.expect("publish"));
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // A feed opened now loads the history first (pending counts down to 0)...
    let mut feed = b.follow(&b.subject("room 1"), 0).await.expect("follow");
    assert_eq!(feed.initial_pending(), 6);
    for i in 0..6u64 {
        let d = next(&mut feed).await;
        assert_eq!(d.seq, seqs[i as usize]);
        assert_eq!(d.pending, 5 - i);
        assert_eq!(d.payload, format!("m{i}").as_bytes());
        let from_a = i % 2 == 0;
        assert_eq!(d.kind, if from_a { Kind::Text } else { Kind::Binary });
        assert!(d.is_from(if from_a { a.node() } else { b.node() }, 1));
        assert!(!d.is_from(if from_a { b.node() } else { a.node() }, 1));
    }
    // ...then live frames, and a join header keeps its kind.
    let seq = a
        .publish(
            &subject,
            &frame(&a, 2, 0, Kind::Join, r#"{"uid":"x","channel":"room 1"}"#),
        )
        .await
        .unwrap();
    let d = next(&mut feed).await;
    assert_eq!((d.seq, d.kind, d.pending), (seq, Kind::Join, 0));

    // A feed opened after a known sequence gets only what follows it.
    let mut later = a.follow(&subject, seqs[3]).await.unwrap();
    assert_eq!(later.initial_pending(), 3);
    assert_eq!(next(&mut later).await.seq, seqs[4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_separate_for_any_name() {
    let nats = NatsServer::start();
    let (c, _) = link(vec![nats.url.clone()], 1, 200);
    up(&c).await;
    let names = [
        "a", "a.b", "a b", "*", ">", "a.*", "日本", "_2E", "a_2Eb", "tab\t",
    ];
    for (i, name) in names.iter().enumerate() {
        let f = frame(&c, 1, i as u64, Kind::Text, name);
        c.publish(&c.subject(name), &f)
            .await
            .expect("any channel name publishes");
    }
    for name in names {
        let mut feed = c.follow(&c.subject(name), 0).await.unwrap();
        assert_eq!(
            feed.initial_pending(),
            1,
            "{name:?} sees only its own frame"
        );
        assert_eq!(next(&mut feed).await.payload, name.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_is_the_history_limit_and_retries_are_stored_once() {
    let nats = NatsServer::start();
    let (c, _) = link(vec![nats.url.clone()], 1, 5);
    up(&c).await;
    let subject = c.subject("bounded");
    for i in 0..8u64 {
        c.publish(&subject, &frame(&c, 1, i, Kind::Text, &format!("m{i}")))
            .await
            .unwrap();
    }
    // The same frame again (a retry after a failover) is not stored twice...
    let retry = frame(&c, 1, 7, Kind::Text, "m7");
    let first_seq = 8;
    assert_eq!(c.publish(&subject, &retry).await.unwrap(), first_seq);
    // ...but identical bytes from another sender are a new frame.
    let other = frame(&c, 2, 7, Kind::Text, "m7");
    assert_eq!(c.publish(&subject, &other).await.unwrap(), 9);

    let mut feed = c.follow(&subject, 0).await.unwrap();
    assert_eq!(feed.initial_pending(), 5);
    let got: Vec<Bytes> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(next(&mut feed).await.payload.clone());
        }
        v
    };
    assert_eq!(got, ["m4", "m5", "m6", "m7", "m7"].map(Bytes::from));
}

/// A batch retried after a failover (the same unit, so the same message
/// id) is stored once; a batch that starts with the same frame but holds
/// more is another message, as is that frame sent alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_is_stored_once() {
    let nats = NatsServer::start();
    let (c, _) = link(vec![nats.url.clone()], 1, 200);
    up(&c).await;
    let subject = c.subject("batched");
    let frames: Vec<Outgoing> = (0..3)
        .map(|i| frame(&c, 1, i, Kind::Text, &format!("m{i}")))
        .collect();
    let batch = Unit::new(&frames[..2]);
    let seq = c.store(&subject, &batch).await.unwrap();
    assert_eq!(c.store(&subject, &batch).await.unwrap(), seq, "a retry");
    let longer = Unit::new(&frames);
    assert_eq!(c.store(&subject, &longer).await.unwrap(), seq + 1);
    assert_eq!(c.publish(&subject, &frames[0]).await.unwrap(), seq + 2);
    let mut feed = c.follow(&subject, 0).await.unwrap();
    let got: Vec<Bytes> = next_frames(&mut feed, 6)
        .await
        .into_iter()
        .map(|f| f.payload)
        .collect();
    assert_eq!(got, ["m0", "m1", "m0", "m1", "m2", "m0"].map(Bytes::from));
    assert_eq!(stream_info(&c).await.state.messages, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_at_start_refuses_then_recovers_without_restart() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut s = settings(vec![url], 1, 200);
    s.publish_deadline = Duration::from_millis(300);
    let c = Cluster::start(s, Arc::new(TableProber::default())).expect("starts without NATS");
    match c.state() {
        LinkState::Down(reason) => assert!(!reason.is_empty()),
        LinkState::Up => panic!("up without NATS"),
    }
    let subject = c.subject("x");
    let err = c
        .publish(&subject, &frame(&c, 1, 0, Kind::Text, "lost?"))
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Unavailable(_)), "{err:?}");
    assert!(c.registry().claim("x", "alice", 1).await.is_err());

    let _nats = NatsServer::start_on(port);
    up(&c).await;
    assert_eq!(
        c.publish(&subject, &frame(&c, 1, 1, Kind::Text, "now"))
            .await,
        Ok(1)
    );
    assert_eq!(
        c.registry().claim("x", "alice", 1).await,
        Ok(Claim::Claimed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goes_down_when_nats_dies_and_back_up_when_it_returns() {
    let port = free_port();
    let mut nats = NatsServer::start_on(port);
    let (c, _) = link(vec![nats.url.clone()], 1, 200);
    up(&c).await;
    let mut state = c.watch_state();
    nats.kill();
    tokio::time::timeout(LONG, state.wait_for(|s| *s != LinkState::Up))
        .await
        .expect("noticed in time")
        .unwrap();
    let _nats = NatsServer::start_on(port);
    up(&c).await;
    c.publish(&c.subject("x"), &frame(&c, 1, 0, Kind::Text, "back"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uid_is_held_once_across_nodes_and_freed_by_probe_or_death() {
    let nats = NatsServer::start();
    let (a, a_prober) = link(vec![nats.url.clone()], 1, 200);
    let (b, b_prober) = link(vec![nats.url.clone()], 1, 200);
    up(&a).await;
    up(&b).await;

    assert_eq!(
        a.registry().claim("ch", "alice", 7).await,
        Ok(Claim::Claimed)
    );
    assert_eq!(a.registry().held(), 1);
    // A live holder on node a keeps it.
    a_prober.set("ch", "alice", 7, true);
    let taken_by_a = Ok(Claim::Taken {
        node: a.node().to_string(),
    });
    assert_eq!(b.registry().claim("ch", "alice", 1).await, taken_by_a);
    // Other uids and channels are independent.
    assert_eq!(b.registry().claim("ch", "bob", 1).await, Ok(Claim::Claimed));
    assert_eq!(
        b.registry().claim("ch2", "alice", 1).await,
        Ok(Claim::Claimed)
    );

    // The holder's session went half-open and failed its probe: taken over.
    a_prober.set("ch", "alice", 7, false);
    assert_eq!(
        b.registry().claim("ch", "alice", 2).await,
        Ok(Claim::Claimed)
    );
    b_prober.set("ch", "alice", 2, true);
    // a's late release does not free b's claim.
    a.registry().release("ch", "alice").await;
    assert_eq!(a.registry().held(), 0);
    assert_eq!(
        a.registry().claim("ch", "alice", 3).await,
        Ok(Claim::Taken {
            node: b.node().to_string()
        })
    );
    // b's release does.
    b.registry().release("ch", "alice").await;
    assert_eq!(
        a.registry().claim("ch", "alice", 3).await,
        Ok(Claim::Claimed)
    );

    // A node that dies holding a uid frees it at once: nobody answers its probes.
    a_prober.set("ch", "alice", 3, true);
    assert_eq!(b.registry().claim("ch", "alice", 4).await, taken_by_a);
    a.shutdown();
    assert_eq!(
        b.registry().claim("ch", "alice", 4).await,
        Ok(Claim::Claimed)
    );
}

/// Held entries are re-written so they never age out: the same value at a
/// new revision, still released by their holder afterwards; an entry taken
/// over behind the holder's back is let go, not written back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_entries_are_refreshed_and_still_released() {
    let nats = NatsServer::start();
    let (a, prober) = link(vec![nats.url.clone()], 1, 200);
    up(&a).await;
    let js = async_nats::jetstream::new(a.client().clone());
    let kv = js
        .get_key_value(a.settings().members_bucket())
        .await
        .unwrap();
    let alice = member_key("ch", "alice");
    assert_eq!(
        a.registry().claim("ch", "alice", 7).await,
        Ok(Claim::Claimed)
    );
    let first = kv.entry(&alice).await.unwrap().expect("written");
    a.registry().refresh().await;
    let second = kv.entry(&alice).await.unwrap().expect("still there");
    assert!(second.revision > first.revision, "re-written");
    assert_eq!(&second.value[..], format!("{} 7", a.node()).as_bytes());
    a.registry().release("ch", "alice").await;
    assert_eq!(a.registry().held(), 0);
    let gone = kv.entry(&alice).await.unwrap();
    assert!(
        gone.is_none_or(|e| e.operation != Operation::Put),
        "released at its refreshed revision"
    );

    // Taken by another node meanwhile: let go, and the session told.
    let bob = member_key("ch", "bob");
    assert_eq!(a.registry().claim("ch", "bob", 8).await, Ok(Claim::Claimed));
    kv.put(&bob, Bytes::from_static(b"other 1")).await.unwrap();
    a.registry().refresh().await;
    assert_eq!(a.registry().held(), 0, "not ours any more");
    let now = kv.entry(&bob).await.unwrap().expect("kept");
    assert_eq!(&now.value[..], b"other 1");
    assert_eq!(
        *prober.taken.lock().unwrap(),
        [("ch".into(), "bob".into(), 8)]
    );

    // Aged out (or deleted) with nobody taking it: written again, still ours.
    let carol = member_key("ch", "carol");
    assert_eq!(
        a.registry().claim("ch", "carol", 9).await,
        Ok(Claim::Claimed)
    );
    kv.delete(&carol).await.unwrap();
    a.registry().refresh().await;
    assert_eq!(a.registry().held(), 1);
    let back = kv.entry(&carol).await.unwrap().expect("written again");
    assert_eq!(back.operation, Operation::Put);
    assert_eq!(&back.value[..], format!("{} 9", a.node()).as_bytes());
    assert_eq!(prober.taken.lock().unwrap().len(), 1, "nobody else told");
}

/// Two racing claims for one pair: exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_have_one_winner() {
    let nats = NatsServer::start();
    let (a, a_prober) = link(vec![nats.url.clone()], 1, 200);
    let (b, b_prober) = link(vec![nats.url.clone()], 1, 200);
    up(&a).await;
    up(&b).await;
    for round in 0..20u64 {
        let uid = format!("u{round}");
        a_prober.set("race", &uid, round, true);
        b_prober.set("race", &uid, round, true);
        let (ra, rb) = tokio::join!(
            a.registry().claim("race", uid.as_str(), round),
            b.registry().claim("race", uid.as_str(), round)
        );
        let wins = [ra.unwrap(), rb.unwrap()]
            .iter()
            .filter(|c| **c == Claim::Claimed)
            .count();
        assert_eq!(wins, 1, "round {round}");
    }
}

/// An R3 stream on three NATS servers; the server the publisher is connected
/// to is killed mid-stream. Every frame is acknowledged (retries included),
/// and a follower on another server gets each exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_stream_survives_a_nats_server_killed_mid_stream() {
    let mut nats = NatsCluster::start(3);
    let urls = nats.urls();
    let (publisher, _) = link(vec![urls[0].clone(), urls[1].clone()], 3, 1000);
    let (follower, _) = link(vec![urls[2].clone(), urls[1].clone()], 3, 1000);
    up(&publisher).await;
    up(&follower).await;
    let subject = publisher.subject("r3");
    let mut feed = follower.follow(&follower.subject("r3"), 0).await.unwrap();

    const N: u64 = 300;
    const KILL_AT: u64 = 100;
    let mut acked = Vec::new();
    for i in 0..N {
        if i == KILL_AT {
            let connected = publisher.client().server_info().port;
            let victim = nats
                .by_addr(&connected.to_string())
                .expect("the publisher's server is one of ours");
            victim.kill();
        }
        let f = frame(&publisher, 1, i, Kind::Text, &format!("m{i}"));
        acked.push(
            publisher
                .publish(&subject, &f)
                .await
                .expect("acknowledged despite the kill"),
        );
    }
    let mut got = Vec::new();
    while got.len() < N as usize {
        let d = next(&mut feed).await;
        got.push((d.seq, d.payload.clone()));
    }
    let expected: Vec<(u64, Bytes)> = acked
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, Bytes::from(format!("m{i}"))))
        .collect();
    assert_eq!(got, expected, "no loss, no duplicate, no reorder");
}

type Events = tokio::sync::mpsc::UnboundedReceiver<(u64, LogEvent)>;

/// Opens a log on its own event channel (tag 7).
fn open_log(c: &Cluster, channel: &str, after: u64) -> (ChannelLog, Events) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (ChannelLog::open(c, channel, after, 7, tx), rx)
}

async fn event(rx: &mut Events) -> LogEvent {
    let (tag, e) = tokio::time::timeout(LONG, rx.recv())
        .await
        .expect("an event in time")
        .expect("log open");
    assert_eq!(tag, 7);
    e
}

/// Two nodes publish into one channel through their pipelines at once: both
/// see every frame once, in the same order; a log opened later loads the
/// same sequence as history and then says it caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_logs_on_two_nodes_see_one_order() {
    let nats = NatsServer::start();
    let (a, _) = link(vec![nats.url.clone()], 1, 1000);
    let (b, _) = link(vec![nats.url.clone()], 1, 1000);
    up(&a).await;
    up(&b).await;
    let (log_a, mut rx_a) = open_log(&a, "shared room", 0);
    let (log_b, mut rx_b) = open_log(&b, "shared room", 0);
    assert_eq!(event(&mut rx_a).await, LogEvent::CaughtUp, "empty channel");
    assert_eq!(event(&mut rx_b).await, LogEvent::CaughtUp);

    const N: usize = 200;
    for i in 0..N {
        log_a.publish(1, Kind::Text, Bytes::from(format!("a{i}")));
        log_b.publish(1, Kind::Binary, Bytes::from(format!("b{i}")));
    }
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    let frames = |v: &[Delivery]| v.iter().map(|d| d.frames.len()).sum::<usize>();
    while frames(&seen_a) < 2 * N {
        match event(&mut rx_a).await {
            LogEvent::Frame(d) => seen_a.push(d),
            other => panic!("{other:?}"),
        }
    }
    while frames(&seen_b) < 2 * N {
        match event(&mut rx_b).await {
            LogEvent::Frame(d) => seen_b.push(d),
            other => panic!("{other:?}"),
        }
    }
    // `pending` is each consumer's own count; the order is what must match.
    let order = |v: &[Delivery]| -> Vec<(u64, Bytes)> {
        v.iter()
            .flat_map(|d| d.frames.iter().map(|f| (d.seq, f.payload.clone())))
            .collect()
    };
    assert!(order(&seen_a) == order(&seen_b), "one order on both nodes");
    for (who, node) in [("a", &a), ("b", &b)] {
        let mine: Vec<String> = seen_a
            .iter()
            .flat_map(|d| &d.frames)
            .filter(|d| d.is_from(node.node(), 1))
            .map(|d| String::from_utf8(d.payload.to_vec()).unwrap())
            .collect();
        let sent: Vec<String> = (0..N).map(|i| format!("{who}{i}")).collect();
        assert_eq!(mine, sent, "each sender's frames once, in its order");
    }
    // A frame may come back live before its ack reaches the pipeline.
    eventually("every publish acknowledged", || async {
        log_a.queued_bytes() == 0
    })
    .await;

    let (_late, mut rx_late) = open_log(&a, "shared room", 0);
    let mut history = Vec::new();
    loop {
        match event(&mut rx_late).await {
            LogEvent::Frame(d) => history.push(d.seq),
            LogEvent::CaughtUp => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(history, seen_a.iter().map(|d| d.seq).collect::<Vec<_>>());

    // Re-opened after a known message, a log resumes right after it.
    let last = seen_a.len() - 1;
    let (_resumed, mut rx_resumed) = open_log(&b, "shared room", seen_a[last - 2].seq);
    let mut tail = Vec::new();
    loop {
        match event(&mut rx_resumed).await {
            LogEvent::Frame(d) => tail.push(d.seq),
            LogEvent::CaughtUp => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(tail, [seen_a[last - 1].seq, seen_a[last].seq]);
}

/// With NATS gone past the deadline, a queued frame is reported lost for its
/// sender, never dropped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_cannot_be_stored_is_reported() {
    let mut nats = NatsServer::start();
    let mut s = settings(vec![nats.url.clone()], 1, 200);
    s.publish_deadline = Duration::from_millis(500);
    let c = Cluster::start(s, Arc::new(TableProber::default())).unwrap();
    up(&c).await;
    let (log, mut rx) = open_log(&c, "doomed", 0);
    assert_eq!(event(&mut rx).await, LogEvent::CaughtUp);
    let mut state = c.watch_state();
    nats.kill();
    tokio::time::timeout(LONG, state.wait_for(|s| *s != LinkState::Up))
        .await
        .unwrap()
        .unwrap();
    log.publish(9, Kind::Text, Bytes::from_static(b"into the void"));
    match event(&mut rx).await {
        LogEvent::Lost { session, error } => {
            assert_eq!(session, 9);
            assert!(matches!(error, PublishError::Unavailable(_)), "{error:?}");
        }
        other => panic!("{other:?}"),
    }
}

/// The one frame of an ordered message.
fn only(mut frames: impl Iterator<Item = mles::channel::Ordered>) -> mles::channel::Ordered {
    let o = frames.next().expect("a frame");
    assert!(frames.next().is_none(), "only one");
    o
}

async fn seq_event(
    events: &mut mles::cluster::sequencer::SeqEvents,
) -> mles::cluster::sequencer::SeqEvent {
    tokio::time::timeout(LONG, events.next())
        .await
        .expect("an event in time")
        .expect("open")
}

/// A link up on `nats` and an owner shard's cluster sequencer on it.
async fn sequencer_on(
    nats: &NatsServer,
) -> (
    Cluster,
    mles::cluster::sequencer::ClusterSequencer,
    mles::cluster::sequencer::SeqEvents,
) {
    let (c, _) = link(vec![nats.url.clone()], 1, 200);
    up(&c).await;
    let (seq, events) = mles::cluster::sequencer::ClusterSequencer::new(c.clone());
    (c, seq, events)
}

/// The owner's sequencer in cluster mode: it follows a channel only while
/// someone holds a claim on it, maps origins (own sessions are local), and a
/// log opened again resumes without handing over a frame twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sequencer_follows_only_held_channels_and_resumes_exactly() {
    use mles::channel::{Origin as OwnerOrigin, Sequencer};
    use mles::cluster::sequencer::{ClaimOutcome, SeqEvent};
    use mles::protocol::frame::{self, OP_TEXT};

    let nats = NatsServer::start();
    let (_c, mut seq, mut events) = sequencer_on(&nats).await;
    let (key, ch, uid): (u64, Arc<str>, Arc<str>) = (1, "room".into(), "a".into());

    assert_eq!(seq.following(), 0);
    assert_eq!(seq.claim(key, &ch, &uid, 5), None, "answered later");
    assert_eq!(seq.following(), 1, "the first claim opens the log");
    let outcome = loop {
        if let SeqEvent::Claimed {
            outcome, session, ..
        } = seq_event(&mut events).await
        {
            assert_eq!(session, 5);
            break outcome;
        }
    };
    assert_eq!(outcome, ClaimOutcome::Free);
    seq.settled(key, &outcome);

    let hi = frame::encode(OP_TEXT, b"hi");
    assert!(
        seq.order(key, &ch, 0, OwnerOrigin::local(5), hi.clone())
            .is_none()
    );
    let d = loop {
        if let SeqEvent::Log {
            event: LogEvent::Frame(d),
            ..
        } = seq_event(&mut events).await
        {
            break d;
        }
    };
    let o = only(seq.ordered(key, d.clone(), 1).expect("new frame"));
    assert_eq!((o.seq, o.origin, o.frame), (1, OwnerOrigin::local(5), hi));
    assert!(seq.ordered(key, d, 2).is_none(), "never handed over twice");

    seq.release(&ch, &uid);
    assert_eq!(seq.following(), 0, "the last holder closes the log");

    // Another node's frame while nobody here follows, then a new claim: the
    // log resumes after "hi", with the other node's frame and nothing older.
    let (other, _) = link(vec![nats.url.clone()], 1, 200);
    up(&other).await;
    other
        .publish(
            &other.subject("room"),
            &frame(&other, 9, 0, Kind::Text, "while away"),
        )
        .await
        .unwrap();
    seq.claim(key, &ch, &"b".into(), 6);
    let d = loop {
        if let SeqEvent::Log {
            event: LogEvent::Frame(d),
            ..
        } = seq_event(&mut events).await
        {
            break d;
        }
    };
    let o = only(seq.ordered(key, d, 2).expect("new frame"));
    assert_eq!(o.frame, frame::encode(OP_TEXT, b"while away"));
    assert_ne!(
        o.origin.local_session(),
        Some(9),
        "another node's session is not ours"
    );
}

/// The stream is created anew while a channel is not followed: when it is
/// followed again, its log reads the new stream from its first frame (the
/// old numbering would skip the new stream's first frames).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_followed_after_the_stream_was_created_anew_misses_nothing() {
    use mles::channel::{Origin as OwnerOrigin, Sequencer};
    use mles::cluster::sequencer::{ClusterSequencer, SeqEvent};
    use mles::protocol::frame::{self, OP_TEXT};

    let nats = NatsServer::start();
    let (c, mut seq, mut events) = sequencer_on(&nats).await;
    let (key, ch, uid): (u64, Arc<str>, Arc<str>) = (1, "room".into(), "a".into());
    seq.claim(key, &ch, &uid, 5);
    let next_frame = async |seq: &mut ClusterSequencer, events: &mut _| loop {
        match seq_event(events).await {
            SeqEvent::Claimed { outcome, .. } => seq.settled(key, &outcome),
            SeqEvent::Log {
                event: LogEvent::Frame(d),
                ..
            } => {
                if let Some(o) = seq.ordered(key, d, 1) {
                    return only(o).frame;
                }
            }
            SeqEvent::Log {
                event: LogEvent::Restarted,
                ..
            } => seq.restarted(key),
            _ => {}
        }
    };
    for text in ["one", "two", "three"] {
        let f = frame::encode(OP_TEXT, text.as_bytes());
        seq.order(key, &ch, 0, OwnerOrigin::local(5), f.clone());
        assert_eq!(next_frame(&mut seq, &mut events).await, f);
    }
    seq.release(&ch, &uid);
    assert_eq!(seq.following(), 0);

    // NATS loses the stream; the link sets it up again and says so.
    let mut epoch = c.stream_epoch();
    epoch.borrow_and_update();
    let admin = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    admin
        .delete_stream(c.settings().stream_name())
        .await
        .unwrap();
    tokio::time::timeout(LONG, epoch.changed())
        .await
        .expect("the new stream noticed in time")
        .unwrap();
    // Another node publishes into the new stream (sequence 1).
    let (other, _) = link(vec![nats.url.clone()], 1, 200);
    up(&other).await;
    other
        .publish(
            &other.subject("room"),
            &frame(&other, 9, 0, Kind::Text, "anew"),
        )
        .await
        .unwrap();
    seq.claim(key, &ch, &"b".into(), 6);
    assert_eq!(
        next_frame(&mut seq, &mut events).await,
        frame::encode(OP_TEXT, b"anew")
    );
}

/// The NATS server a follower is connected to dies: its feed moves to
/// another server and goes on where it stopped, nothing lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_survives_the_death_of_its_own_nats_server() {
    let mut nats = NatsCluster::start(3);
    let urls = nats.urls();
    let (publisher, _) = link(vec![urls[1].clone()], 3, 1000);
    let (follower, _) = link(vec![urls[0].clone(), urls[2].clone()], 3, 1000);
    up(&publisher).await;
    up(&follower).await;
    let subject = publisher.subject("moving");
    let mut feed = follower
        .follow(&follower.subject("moving"), 0)
        .await
        .unwrap();
    let mut acked = Vec::new();
    for i in 0..10u64 {
        let f = frame(&publisher, 1, i, Kind::Text, &format!("m{i}"));
        acked.push(publisher.publish(&subject, &f).await.unwrap());
    }
    for s in &acked {
        assert_eq!(next(&mut feed).await.seq, *s);
    }
    let connected = follower.client().server_info().port;
    nats.by_addr(&connected.to_string())
        .expect("one of ours")
        .kill();
    for i in 10..20u64 {
        let f = frame(&publisher, 1, i, Kind::Text, &format!("m{i}"));
        acked.push(publisher.publish(&subject, &f).await.unwrap());
    }
    for s in &acked[10..] {
        assert_eq!(next(&mut feed).await.seq, *s);
    }
}

/// A channel's last local member sends and leaves at once: closing the log
/// must not throw away its frames still queued or in flight; they are
/// stored, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_log_still_stores_what_was_queued() {
    let nats = NatsServer::start();
    let (a, _) = link(vec![nats.url.clone()], 1, 1000);
    let (b, _) = link(vec![nats.url.clone()], 1, 1000);
    up(&a).await;
    up(&b).await;
    const N: usize = 300;
    let (log, _rx) = open_log(&a, "parting words", 0);
    for i in 0..N {
        log.publish(1, Kind::Text, Bytes::from(format!("p{i}")));
    }
    drop(log);
    let mut feed = b.follow(&b.subject("parting words"), 0).await.unwrap();
    let got: Vec<String> = next_frames(&mut feed, N)
        .await
        .into_iter()
        .map(|f| String::from_utf8(f.payload.to_vec()).unwrap())
        .collect();
    let sent: Vec<String> = (0..N).map(|i| format!("p{i}")).collect();
    assert_eq!(got, sent);
}

/// A channel's publish pipeline runs only while it has frames to store: it
/// ends once they are stored, and the next frame starts another, in order
/// after the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_channel_holds_no_publish_pipeline() {
    let nats = NatsServer::start();
    let (a, _) = link(vec![nats.url.clone()], 1, 1000);
    let (b, _) = link(vec![nats.url.clone()], 1, 1000);
    up(&a).await;
    up(&b).await;
    let (log, _rx) = open_log(&a, "now and then", 0);
    assert!(!log.publishing(), "nothing to store yet");
    let mut feed = b.follow(&b.subject("now and then"), 0).await.unwrap();
    for round in 0..3 {
        for i in 0..50 {
            log.publish(1, Kind::Text, Bytes::from(format!("r{round} f{i}")));
        }
        assert!(log.publishing());
        for (i, f) in next_frames(&mut feed, 50).await.into_iter().enumerate() {
            assert_eq!(f.payload, format!("r{round} f{i}"));
        }
        eventually("the pipeline ends", || async { !log.publishing() }).await;
        assert_eq!(log.queued_bytes(), 0);
    }
}

/// nats-server 2.15 allows a stream 1,000 consumers unless the stream sets
/// its own limit, and every node follows every channel it has members on
/// with a consumer: the stream carries a limit of its own (joins stopped
/// at 1,000 channel-node pairs before).
#[tokio::test]
async fn the_stream_allows_a_consumer_per_channel_and_node() {
    let nats = NatsServer::start();
    let (c, _) = link(vec![nats.url.clone()], 1, 100);
    up(&c).await;
    let info = stream_info(&c).await;
    assert_eq!(info.config.max_consumers, STREAM_MAX_CONSUMERS);
}

/// A node follows its channels live without a JetStream consumer each (one
/// cost NATS about 140 KB per channel and node): once the history is read,
/// the stream has no consumer left, and live frames still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_channels_hold_no_consumer_once_caught_up() {
    let nats = NatsServer::start();
    let (a, _) = link(vec![nats.url.clone()], 1, 200);
    let (b, _) = link(vec![nats.url.clone()], 1, 200);
    up(&a).await;
    up(&b).await;
    const CHANNELS: usize = 20;
    let subjects: Vec<_> = (0..CHANNELS).map(|i| a.subject(&format!("c{i}"))).collect();
    // Half the channels have a history to load, half are new.
    for (i, subject) in subjects.iter().enumerate().step_by(2) {
        let f = frame(&a, 1, i as u64, Kind::Text, &format!("old {i}"));
        a.publish(subject, &f).await.unwrap();
    }
    let mut feeds = Vec::new();
    for (i, subject) in subjects.iter().enumerate() {
        let mut feed = b.follow(subject, 0).await.unwrap();
        if i % 2 == 0 {
            assert_eq!(next(&mut feed).await.payload, format!("old {i}").as_bytes());
        }
        feeds.push(feed);
    }
    eventually("every history consumer deleted", || async {
        stream_info(&b).await.state.consumer_count == 0
    })
    .await;
    for (i, (subject, feed)) in subjects.iter().zip(&mut feeds).enumerate() {
        let f = frame(&a, 1, 100 + i as u64, Kind::Text, &format!("live {i}"));
        let seq = a.publish(subject, &f).await.unwrap();
        let d = next(feed).await;
        assert_eq!(
            (d.seq, d.payload.clone()),
            (seq, Bytes::from(format!("live {i}")))
        );
    }
}

/// Plain NATS drops what a subscription cannot hold: a node that reads a
/// burst too slowly for its buffer (here 1,024 frames) gets the rest from the
/// stream, every frame once and in order, with or without a frame after
/// the burst to show the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_that_overflows_reads_what_it_dropped_from_the_stream() {
    let nats = NatsServer::start();
    // Messages this small hold one frame each: every frame is a message
    // of its own, as when publishers are no faster than a round trip.
    let mut one_by_one = settings(vec![nats.url.clone()], 1, 5000);
    one_by_one.max_message = 8;
    let a = Cluster::start(one_by_one, Arc::new(TableProber::default())).unwrap();
    let mut small = settings(vec![nats.url.clone()], 1, 5000);
    small.feed_buffer = 1024;
    let b = Cluster::start(small, Arc::new(TableProber::default())).unwrap();
    up(&a).await;
    up(&b).await;
    let subject = a.subject("burst");
    let mut feed = b.follow(&subject, 0).await.unwrap();
    const N: usize = 4000;
    let (log, _rx) = open_log(&a, "burst", 0);
    for i in 0..N {
        log.publish(1, Kind::Text, Bytes::from(format!("b{i}")));
    }
    drop(log);
    // Nothing read until the whole burst is stored: most of it overflows.
    eventually("the burst stored", || async {
        stream_info(&a).await.state.messages >= N as u64
    })
    .await;
    let mut got = Vec::new();
    for _ in 0..N {
        got.push(next(&mut feed).await.payload.clone());
    }
    let sent: Vec<Bytes> = (0..N).map(|i| Bytes::from(format!("b{i}"))).collect();
    assert_eq!(got, sent);
    // A later frame comes live, once.
    let f = frame(&a, 2, 0, Kind::Text, "after");
    let seq = a.publish(&subject, &f).await.unwrap();
    let d = next(&mut feed).await;
    assert_eq!((d.seq, d.payload.clone()), (seq, Bytes::from("after")));
}

/// A TCP proxy in front of a NATS server that can hold what the client
/// sends (as a server that hangs), then pass it on or cut every connection;
/// later connections go through.
struct Stalling {
    addr: std::net::SocketAddr,
    stalled: Arc<tokio::sync::watch::Sender<bool>>,
    cut: Arc<tokio::sync::Notify>,
}

impl Stalling {
    async fn start(to: std::net::SocketAddr) -> Stalling {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Stalling {
            addr: listener.local_addr().unwrap(),
            stalled: Arc::new(tokio::sync::watch::Sender::new(false)),
            cut: Arc::default(),
        };
        let (stalled, cut) = (proxy.stalled.clone(), proxy.cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(to).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (mut stalled, cut) = (stalled.subscribe(), cut.clone());
                tokio::spawn(async move {
                    let up = async {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            let Ok(n @ 1..) = cr.read(&mut buf).await else {
                                return;
                            };
                            // Held while stalled.
                            if stalled.wait_for(|s| !*s).await.is_err()
                                || sw.write_all(&buf[..n]).await.is_err()
                            {
                                return;
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut sr, &mut cw);
                    // Cut first: `cut` un-stalls only after it notified.
                    tokio::select! {
                        biased;
                        _ = cut.notified() => {}
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        proxy
    }

    fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Holds what clients send from now on.
    fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Passes on what it held, and what comes later.
    fn resume(&self) {
        self.stalled.send_replace(false);
    }

    /// Cuts every connection through it (what they held is lost); later
    /// ones go through.
    fn cut(&self) {
        self.cut.notify_waiters();
        self.resume();
    }
}

/// Node `a` on a NATS server behind a [`Stalling`] proxy, its log of
/// `channel` caught up, and another node's feed of it (straight to NATS).
async fn through_a_proxy(
    channel: &str,
) -> (
    NatsServer,
    Stalling,
    Cluster,
    ChannelLog,
    mles::cluster::Feed,
) {
    let nats = NatsServer::start();
    let proxy = Stalling::start(nats.client_addr).await;
    let (a, _) = link(vec![proxy.url()], 1, 1000);
    let (b, _) = link(vec![nats.url.clone()], 1, 1000);
    up(&a).await;
    up(&b).await;
    let (log, mut rx) = open_log(&a, channel, 0);
    while event(&mut rx).await != LogEvent::CaughtUp {}
    let feed = b.follow(&b.subject(channel), 0).await.unwrap();
    (nats, proxy, a, log, feed)
}

/// Frames sent to a NATS server that stops answering, some still in the
/// client's buffers when the connection is cut: the stream stores every
/// frame in the order it was sent. (With several frames in flight, those
/// left in the client's buffers went out on the new connection and were
/// stored before the lost ones were retried.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_lost_with_a_connection_are_stored_before_later_ones() {
    use std::sync::atomic::Ordering;
    const FRAMES: usize = 16;
    const SIZE: usize = 1_000_000;
    let (_nats, proxy, a, log, mut feed) = through_a_proxy("in order").await;
    let frame = |k: usize| {
        let mut f = format!("f{k:02}").into_bytes();
        f.resize(SIZE, b'.');
        Bytes::from(f)
    };
    log.publish(1, Kind::Binary, frame(0));
    assert_eq!(next(&mut feed).await.payload, frame(0));

    proxy.stall();
    let stats = a.client().statistics();
    let before = stats.out_bytes.load(Ordering::Relaxed);
    for k in 1..=FRAMES {
        log.publish(1, Kind::Binary, frame(k));
    }
    // At least the first is written to a connection that will be cut.
    eventually("a frame written into the stalled connection", || async {
        stats.out_bytes.load(Ordering::Relaxed) - before >= SIZE as u64
    })
    .await;
    proxy.cut();
    for k in 1..=FRAMES {
        let d = next(&mut feed).await;
        assert_eq!(&d.payload[..3], format!("f{k:02}").as_bytes(), "frame {k}");
    }
}

/// What a node's members send while its message before is in flight goes
/// into the stream as one message, and every node reads it back as those
/// frames, in order. (One message in flight per channel, each frame its own
/// message, bounded a publishing node to one frame per round trip.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_queued_while_one_is_in_flight_go_as_one_message() {
    const FRAMES: usize = 20;
    let (_nats, proxy, a, log, mut feed) = through_a_proxy("chatty").await;
    // Nothing NATS acknowledges while stalled: at most one message in
    // flight, everything after it queued.
    proxy.stall();
    for k in 0..FRAMES {
        let kind = if k % 2 == 0 { Kind::Text } else { Kind::Binary };
        log.publish(k as u64 % 3, kind, Bytes::from(format!("f{k}")));
    }
    proxy.resume();
    let mut messages = Vec::new();
    let mut frames = Vec::new();
    while frames.len() < FRAMES {
        let d = next_message(&mut feed).await;
        messages.push(d.frames.len());
        frames.extend(d.frames);
    }
    assert!(
        messages.len() <= 2,
        "one in flight, the rest one batch: {messages:?}"
    );
    for (k, f) in frames.iter().enumerate() {
        assert_eq!(f.payload, format!("f{k}"));
        assert_eq!(f.kind, if k % 2 == 0 { Kind::Text } else { Kind::Binary });
        assert!(
            f.is_from(a.node(), k as u64 % 3),
            "frame {k} names its sender"
        );
    }
    assert_eq!(stream_info(&a).await.state.messages, messages.len() as u64);
    eventually("every frame acknowledged", || async {
        log.queued_bytes() == 0
    })
    .await;
}
