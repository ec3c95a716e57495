//! In-process fan-out through the shard mesh, without sockets: how fast one
//! member's frames reach every other member of a channel, on one shard
//! (everything local) and on two (publish and delivery cross the mesh).
//!
//! Each shard runs on its own thread as the server runs it (a current-thread
//! runtime, a `LocalSet`, `Shard::run_inbox`). `Shard` is `!Send`, so the
//! bench thread drives the shards only through [`Cmd`]s. Members have no
//! socket: a drain task on each shard takes what was queued for them
//! (`Session::take_queued`, standing in for the socket write) and counts it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mles::config::Config;
use mles::protocol::frame::{self, OP_BINARY};
use mles::protocol::header;
use mles::session::{Host, Phase, Session};
use mles::shard::Shard;
use mles::shard::mesh::Mesh;
use mles::shard::router;
use tokio::sync::mpsc as async_mpsc;
use tokio::task::LocalSet;

const CHANNEL: &str = "bench";
/// Members of the channel, across all shards.
const MEMBERS: usize = 100;
/// Frames published per measured batch: large enough that thread wake-ups at
/// the start and end of a batch are small next to the batch itself.
const BATCH: usize = 256;
/// The first byte of a binary server frame: only bench frames are counted
/// (members also receive each later joiner's header, as text).
const BINARY_FIN: u8 = 0x80 | OP_BINARY;

/// What the bench thread asks of a shard thread.
#[derive(Debug)]
enum Cmd {
    /// Join `count` new sessions (uids from `first_uid`) to the channel;
    /// answer once all are members.
    Join {
        first_uid: usize,
        count: usize,
        done: mpsc::Sender<()>,
    },
    /// Drain the members until `deliveries` bench frames arrived, then answer.
    Expect {
        deliveries: usize,
        done: mpsc::Sender<()>,
    },
    /// Publish `frames` copies of `frame` from this shard's first member.
    Publish { frames: usize, frame: Bytes },
}

/// What a shard thread holds besides its shard.
struct ShardSide {
    shard: Rc<Shard>,
    members: RefCell<Vec<Rc<Session>>>,
}

impl ShardSide {
    fn handle(self: &Rc<Self>, cmd: Cmd) {
        match cmd {
            Cmd::Join {
                first_uid,
                count,
                done,
            } => {
                let mut joining = Vec::with_capacity(count);
                for i in first_uid..first_uid + count {
                    let s = self.shard.new_session();
                    s.begin_join();
                    let raw = format!(r#"{{"uid":"u{i}","channel":"{CHANNEL}"}}"#);
                    let h = header::parse(raw.as_bytes()).expect("a valid header");
                    self.shard.join(s.id, h);
                    joining.push(s);
                }
                let me = self.clone();
                tokio::task::spawn_local(async move {
                    // Setup only, not measured: poll gently until the owner has answered.
                    while joining.iter().any(|s| s.phase() != Phase::Member) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    me.members.borrow_mut().extend(joining);
                    done.send(()).expect("the bench thread waits for this");
                });
            }
            Cmd::Expect { deliveries, done } => {
                let me = self.clone();
                tokio::task::spawn_local(async move {
                    let mut got = 0;
                    loop {
                        for m in me.members.borrow().iter() {
                            got += m
                                .take_queued()
                                .iter()
                                .filter(|f| f[0] == BINARY_FIN)
                                .count();
                        }
                        if got >= deliveries {
                            break;
                        }
                        // Lets run_inbox handle what the mesh brought meanwhile.
                        tokio::task::yield_now().await;
                    }
                    assert_eq!(got, deliveries, "more frames than published");
                    done.send(()).expect("the bench thread waits for this");
                });
            }
            Cmd::Publish { frames, frame } => {
                let members = self.members.borrow();
                let from = members.first().expect("the publisher's shard has members");
                let key = from.key().expect("a member has a channel key");
                for _ in 0..frames {
                    self.shard.publish(key, from.id, frame.clone(), false);
                }
            }
        }
    }
}

/// `n` shard threads whose sessions are all members of one channel.
struct Cluster {
    cmds: Vec<async_mpsc::UnboundedSender<Cmd>>,
    threads: Vec<JoinHandle<()>>,
    /// Members on each shard.
    members: Vec<usize>,
    /// The shard that publishes: not the channel's owner, when there is a choice.
    publisher: usize,
    frame: Bytes,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        let mut limits = Config::local(n).limits;
        // Nothing may be dropped as a slow consumer while a batch is in flight.
        limits.max_queue = usize::MAX / 2;
        let (mesh, inboxes) = Mesh::new(n);
        let mut cmds = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for (id, inbox) in inboxes.into_iter().enumerate() {
            let (tx, mut rx) = async_mpsc::unbounded_channel::<Cmd>();
            let (mesh, limits) = (mesh.clone(), limits.clone());
            let t = std::thread::Builder::new()
                .name(format!("bench-shard-{id}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a current-thread runtime builds");
                    LocalSet::new().block_on(&rt, async move {
                        let shard = Shard::new(id as u16, mesh, limits);
                        let s = shard.clone();
                        tokio::task::spawn_local(async move { s.run_inbox(inbox).await });
                        let side = Rc::new(ShardSide {
                            shard,
                            members: RefCell::default(),
                        });
                        // Ends when the Cluster drops its senders.
                        while let Some(cmd) = rx.recv().await {
                            side.handle(cmd);
                        }
                    });
                })
                .expect("a shard thread starts");
            cmds.push(tx);
            threads.push(t);
        }
        let members: Vec<usize> = (0..n)
            .map(|i| MEMBERS / n + usize::from(i < MEMBERS % n))
            .collect();
        let (done, joined) = mpsc::channel();
        let mut first_uid = 0;
        for (tx, &count) in cmds.iter().zip(&members) {
            let cmd = Cmd::Join {
                first_uid,
                count,
                done: done.clone(),
            };
            tx.send(cmd).expect("the shard thread runs");
            first_uid += count;
        }
        for _ in 0..n {
            joined
                .recv_timeout(Duration::from_secs(10))
                .expect("every member joins");
        }
        let owner = router::owner(CHANNEL, n) as usize;
        Cluster {
            cmds,
            threads,
            members,
            publisher: (owner + 1) % n,
            frame: frame::encode(OP_BINARY, &[0u8; 64]),
        }
    }

    /// Deliveries of one batch: every member but the publisher gets every frame.
    fn deliveries(&self) -> usize {
        BATCH * (self.members.iter().sum::<usize>() - 1)
    }

    /// Publishes one batch and returns how long until every member had all of it.
    fn batch(&self) -> Duration {
        let (done, finished) = mpsc::channel();
        for (i, tx) in self.cmds.iter().enumerate() {
            let receivers = self.members[i] - usize::from(i == self.publisher);
            let cmd = Cmd::Expect {
                deliveries: BATCH * receivers,
                done: done.clone(),
            };
            tx.send(cmd).expect("the shard thread runs");
        }
        let start = Instant::now();
        let cmd = Cmd::Publish {
            frames: BATCH,
            frame: self.frame.clone(),
        };
        self.cmds[self.publisher]
            .send(cmd)
            .expect("the shard thread runs");
        for _ in 0..self.cmds.len() {
            finished
                .recv_timeout(Duration::from_secs(10))
                .expect("every member gets every frame");
        }
        start.elapsed()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cmds.clear();
        for t in self.threads.drain(..) {
            t.join().expect("a shard thread ends cleanly");
        }
    }
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    for shards in [1, 2] {
        let cluster = Cluster::start(shards);
        g.throughput(Throughput::Elements(cluster.deliveries() as u64));
        g.bench_function(
            BenchmarkId::new(format!("{MEMBERS}_members"), format!("{shards}_shards")),
            |b| b.iter_custom(|iters| (0..iters).map(|_| cluster.batch()).sum()),
        );
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = fanout
}
criterion_main!(benches);
