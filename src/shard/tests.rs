//! A shard driven without sockets: backpressure and supervision.

use std::cell::RefCell;
use std::sync::atomic::AtomicBool;
use std::task::Wake;

use super::dispatch::COPY_TO_SHARD_MAX;
use super::*;
use crate::config::Config;
use crate::protocol::header;
use crate::session::{Host, Phase};

struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A channel name that shard `owner` of 2 owns.
fn owned_by(owner: u16) -> String {
    (0..)
        .map(|i| format!("ch{i}"))
        .find(|c| router::owner(c, 2) == owner)
        .expect("some name hashes to each shard")
}

fn local<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

#[test]
fn deliveries_to_a_slow_member_shard_pause_publishers_until_it_drains() {
    local(async {
        let (mesh, rxs) = Mesh::with_limit(2, 64 * 1024);
        let shard = Shard::new(0, mesh.clone(), Config::local(2).limits);
        let s = shard.clone();
        tokio::task::spawn_local(async move { s.resume_paused().await });
        let channel = owned_by(0);
        // A publisher on shard 0 (the owner), and a member on shard 1, whose
        // inbox nobody drains: a shard that has fallen behind.
        let publisher = shard.new_session();
        publisher.begin_join();
        let raw = format!(r#"{{"uid":"p","channel":"{channel}"}}"#);
        shard.join(publisher.id, header::parse(raw.as_bytes()).unwrap());
        assert_eq!(publisher.phase(), Phase::Member);
        let key = publisher.key().unwrap();
        let remote: SessionId = (1 << 48) | 1;
        shard.submit(
            0,
            ShardMsg::Join {
                channel: channel.as_str().into(),
                uid: "r".into(),
                session: remote,
                kind: MemberKind::Client,
                header: Bytes::from_static(b"hdr"),
            },
        );
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        assert!(!shard.must_pause(&waker));
        let mut sent = 0;
        while !shard.must_pause(&waker) {
            shard.publish(key, publisher.id, Bytes::from(vec![7u8; 1024]), false);
            sent += 1;
            assert!(sent < 1000, "never paused");
        }
        assert!(mesh.backlog(1) >= 64 * 1024);
        assert!(sent >= 60, "paused only once the inbox was over its limit");
        // Still congested: nothing wakes the publisher.
        tokio::task::yield_now().await;
        assert!(!flag.0.load(Ordering::SeqCst));
        // The slow shard catches up: the publisher is woken, without polling.
        while let Ok(m) = rxs[1].rx.try_recv() {
            mesh.taken(1, &m);
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(flag.0.load(Ordering::SeqCst), "resumed");
        assert!(!shard.must_pause(&waker));
    });
}

#[test]
fn small_frames_reach_another_shard_as_a_copy_of_their_own() {
    local(async {
        let (mesh, rxs) = Mesh::new(2);
        let shard = Shard::new(0, mesh.clone(), Config::local(2).limits);
        let channel = owned_by(0);
        let join = |uid: &str| {
            let s = shard.new_session();
            s.begin_join();
            let raw = format!(r#"{{"uid":"{uid}","channel":"{channel}"}}"#);
            shard.join(s.id, header::parse(raw.as_bytes()).unwrap());
            assert_eq!(s.phase(), Phase::Member);
            s
        };
        let (publisher, here) = (join("p"), join("h"));
        let key = publisher.key().unwrap();
        shard.submit(
            0,
            ShardMsg::Join {
                channel: channel.as_str().into(),
                uid: "r".into(),
                session: (1 << 48) | 1,
                kind: MemberKind::Client,
                header: Bytes::from_static(b"hdr"),
            },
        );
        here.take_queued();
        while rxs[1].rx.try_recv().is_ok() {}
        let sent_to_shard_1 = || loop {
            match rxs[1].rx.try_recv().expect("a delivery for shard 1") {
                ShardMsg::Deliver { frame, .. } => break frame,
                _ => continue,
            }
        };
        for (size, copied) in [(COPY_TO_SHARD_MAX, true), (COPY_TO_SHARD_MAX + 1, false)] {
            shard.publish(key, publisher.id, Bytes::from(vec![7u8; size]), false);
            let local = here.take_queued().pop().expect("delivered here");
            let remote = sent_to_shard_1();
            assert_eq!(local, remote);
            assert_eq!(local.as_ptr() != remote.as_ptr(), copied, "{size} bytes");
        }
    });
}

#[test]
fn a_panicking_shard_handler_trips_the_failure_and_handles_nothing_more() {
    local(async {
        let (mesh, _rxs) = Mesh::new(1);
        let mut limits = Config::local(1).limits;
        limits.hook_channel = Some("boom".into());
        let shard = Shard::new(0, mesh.clone(), limits);
        let s = shard.new_session();
        s.begin_join();
        let h = header::parse(br#"{"uid":"panic-shard","channel":"boom"}"#).unwrap();
        shard.join(s.id, h);
        let why = mesh.failure.reason().expect("tripped");
        assert!(why.contains("handler panicked"), "{why}");
        assert!(!shard.pumping.get(), "the pump guard was released");
        // Later messages are not handled by a shard in an unknown state.
        let other = shard.new_session();
        other.begin_join();
        shard.join(
            other.id,
            header::parse(br#"{"uid":"a","channel":"x"}"#).unwrap(),
        );
        assert_eq!(other.phase(), Phase::Joining);
    });
}

/// A sequencer that answers later, as a shared log would.
struct Deferred(Rc<RefCell<Vec<(ChannelKey, crate::channel::Origin, Bytes)>>>);

impl Sequencer for Deferred {
    fn order(
        &mut self,
        key: ChannelKey,
        _channel: &Arc<str>,
        _last_seq: u64,
        origin: crate::channel::Origin,
        frame: Bytes,
    ) -> Option<Ordered> {
        self.0.borrow_mut().push((key, origin, frame));
        None
    }

    fn claim(&mut self, _: ChannelKey, _: &Arc<str>, _: &Arc<str>, _: SessionId) -> Option<bool> {
        Some(true)
    }

    fn release(&mut self, _: &Arc<str>, _: &Arc<str>) {}
}

#[test]
fn a_shard_with_a_deferred_sequencer_delivers_what_comes_back_ordered() {
    local(async {
        let (mesh, _rxs) = Mesh::new(1);
        let log = Rc::new(RefCell::new(Vec::new()));
        let seq = Box::new(Deferred(log.clone()));
        let shard = Shard::with_sequencer(0, mesh, Config::local(1).limits, seq);
        let join = |uid: &str| {
            let s = shard.new_session();
            s.begin_join();
            let raw = format!(r#"{{"uid":"{uid}","channel":"c"}}"#);
            shard.join(s.id, header::parse(raw.as_bytes()).unwrap());
            s
        };
        let a = join("a");
        assert_eq!(a.phase(), Phase::Joining, "its header is in the log");
        let (key, origin, frame) = log.borrow_mut().remove(0);
        shard.ordered(
            key,
            Ordered {
                seq: 1,
                origin,
                frame,
            },
        );
        assert_eq!(a.phase(), Phase::Member);
        let b = join("b");
        let (_, origin, frame) = log.borrow_mut().remove(0);
        shard.ordered(
            key,
            Ordered {
                seq: 2,
                origin,
                frame,
            },
        );
        assert_eq!(b.phase(), Phase::Member);
        a.take_queued();
        b.take_queued();
        shard.publish(key, a.id, Bytes::from_static(b"x"), false);
        assert!(b.take_queued().is_empty(), "not before the log orders it");
        let (_, origin, frame) = log.borrow_mut().remove(0);
        shard.ordered(
            key,
            Ordered {
                seq: 3,
                origin,
                frame,
            },
        );
        assert_eq!(b.take_queued(), [Bytes::from_static(b"x")]);
        assert!(a.take_queued().is_empty(), "not back to its publisher");
    });
}
