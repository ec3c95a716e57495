//! One channel as this node sees the shared log: its frames in stream order
//! (the retained history first, then live), and a pipeline that stores the
//! frames of this node's members.
//!
//! A [`ChannelLog`] is opened with a channel's first local member and dropped
//! with its last, so a node consumes only the channels it has members on. It
//! reports through [`LogEvent`]s on a channel the owner drains; it never
//! touches sessions itself.
//!
//! The publish pipeline stores one message at a time (see [`pipeline`] for
//! why): the frame queued first, with the frames queued after it while the
//! one before was in flight as one batch ([`Unit`]). When its ack fails (a
//! NATS failover), the message is retried with its message id, so it is not
//! stored twice and not lost silently: one that still fails by the deadline
//! is reported as [`LogEvent::Lost`] for each of its senders to be closed.
//! Closing the log does not cut the pipeline short: what it was given is
//! still stored.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_nats::Subject;
use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::envelope::{Delivery, Kind, Origin, Outgoing, RECORD_OVERHEAD, Unit};
use super::feed::Next;
use super::link::{Cluster, LinkState, PublishError};

/// At most this many frames go into the stream as one message, and at most
/// this many bytes of them (or `--max-message`, if smaller; a larger frame
/// goes alone). A batch takes one place of the stream's per-channel
/// retention, so these also bound how much more than `--limit` frames the
/// stream keeps.
pub const BATCH_FRAMES: usize = 128;
pub const BATCH_BYTES: usize = 32 << 10;

/// Frames the publish queue keeps room for while it is drained and the
/// pipeline still runs (its last frame in flight; none once it stops).
const IDLE_ROOM: usize = 4;

/// What the log tells the channel's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// The next frame in the channel's one order.
    Frame(Delivery),
    /// Every frame stored before the log opened has been delivered: the
    /// history is loaded and joiners may be admitted.
    CaughtUp,
    /// A frame of `session` did not reach the stream: close that session.
    Lost { session: u64, error: PublishError },
    /// The live feed fell so far behind that the stream may have dropped
    /// frames (its per-channel retention) before this node read them: this
    /// node's copy of the channel may have a gap. The feed has stopped.
    Behind,
    /// The stream was created anew: the frames that follow are numbered
    /// from 1 again (what was delivered before stays delivered).
    Restarted,
}

/// Where a log reports: its tag (the owner's name for the channel) and an event.
pub type LogSink = mpsc::UnboundedSender<(u64, LogEvent)>;

/// A channel's feed and publish pipeline. Dropping it stops the feed at
/// once (events already sent stay in the sink); the pipeline first stores
/// what it was given, then ends: a member that sends and leaves (the last
/// one closing the log) still has its frames stored.
pub struct ChannelLog {
    cluster: Cluster,
    subject: Subject,
    events: Events,
    outbox: Arc<Outbox>,
    queued: Arc<AtomicUsize>,
    feed: JoinHandle<()>,
}

impl Drop for ChannelLog {
    fn drop(&mut self) {
        // A pipeline still running stores what it was given, then ends.
        self.feed.abort();
    }
}

impl ChannelLog {
    /// Opens `channel` and follows it after stream sequence `after` (0: load
    /// the whole retained history). Spawns the feed's task on the current
    /// runtime, and a publish pipeline on the link's whenever frames are
    /// queued and none runs; their events go to `sink`, tagged with `tag`,
    /// in order.
    pub fn open(
        cluster: &Cluster,
        channel: &str,
        after: u64,
        tag: u64,
        sink: LogSink,
    ) -> ChannelLog {
        let epoch = *cluster.stream_epoch().borrow();
        Self::open_at(cluster, channel, (after, epoch), tag, sink)
    }

    /// As [`ChannelLog::open`], `after` a sequence of the stream of that
    /// [`Cluster::stream_epoch`] (`(sequence, epoch)`): a stream created anew
    /// since is read from its first frame, after [`LogEvent::Restarted`].
    pub fn open_at(
        cluster: &Cluster,
        channel: &str,
        after: (u64, u64),
        tag: u64,
        sink: LogSink,
    ) -> ChannelLog {
        let subject = cluster.subject(channel);
        let events = Events { tag, sink };
        let feed = tokio::spawn(follow(
            cluster.clone(),
            subject.clone(),
            after,
            events.clone(),
        ));
        ChannelLog {
            cluster: cluster.clone(),
            subject,
            events,
            outbox: Arc::default(),
            queued: Arc::new(AtomicUsize::new(0)),
            feed,
        }
    }

    /// Queues a frame of `session` for the stream.
    pub fn publish(&self, session: u64, kind: Kind, payload: Bytes) {
        self.queued.fetch_add(payload.len(), Ordering::Relaxed);
        let frame = Outgoing {
            origin: Origin {
                node: self.cluster.node().clone(),
                session,
            },
            kind,
            serial: self.cluster.next_serial(),
            payload,
        };
        if self.outbox.push(frame) {
            self.cluster.spawn_pipeline(pipeline(
                self.cluster.clone(),
                self.subject.clone(),
                self.outbox.clone(),
                self.events.clone(),
                self.queued.clone(),
            ));
        }
    }

    /// Whether a publish pipeline runs now (frames queued or in flight).
    pub fn publishing(&self) -> bool {
        self.outbox.lock().running
    }

    /// Payload bytes queued or in flight, not yet acknowledged (for backpressure).
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// A sink with its tag.
#[derive(Clone)]
struct Events {
    tag: u64,
    sink: LogSink,
}

impl Events {
    /// False once nobody listens any more.
    fn send(&self, e: LogEvent) -> bool {
        self.sink.send((self.tag, e)).is_ok()
    }
}

async fn follow(cluster: Cluster, subject: Subject, after: (u64, u64), events: Events) {
    let mut pause = std::time::Duration::from_millis(50);
    let mut feed = loop {
        cluster.up().await;
        match Box::pin(cluster.follow_from(&subject, after.0, after.1)).await {
            Ok(f) => break f,
            Err(e) => {
                tracing::debug!(%subject, error = %e, "cluster: cannot open channel feed yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
        }
    };
    let mut caught_up = feed.initial_pending() == 0;
    if caught_up && !events.send(LogEvent::CaughtUp) {
        return;
    }
    loop {
        let d = match feed.next().await {
            Next::Frame(d) => d,
            Next::Behind => {
                tracing::warn!(%subject, "closing the channel's members here");
                let _ = events.send(LogEvent::Behind);
                return;
            }
            Next::Restarted => {
                if !events.send(LogEvent::Restarted) {
                    return;
                }
                continue;
            }
        };
        let last_of_history = !caught_up && d.pending == 0;
        if !events.send(LogEvent::Frame(d)) {
            return;
        }
        if last_of_history {
            caught_up = true;
            if !events.send(LogEvent::CaughtUp) {
                return;
            }
        }
    }
}

/// Stores the outbox's frames, in order, until it is empty; then it ends,
/// and the next frame queued starts another. An idle channel (most of them,
/// most of the time) holds no task for publishing.
///
/// One message is in flight at a time: the next is sent once the one before
/// it is stored. With more in flight a failover reorders them: messages sent
/// to a NATS server that died, or to a stream electing a new leader, fail,
/// while messages sent after them reach the new server or leader and are
/// stored first; retrying the failed ones then stores them after their
/// successors (seen in `one_nats_server_of_three_dies_under_load` with 256
/// frames in flight). JetStream has no per-publisher order to check a
/// pipelined message against (a channel's subject takes every node's
/// frames), so order costs a round trip per message. What queues during
/// that round trip goes as one batch, so a node's publishers are not bounded
/// by one frame per round trip.
async fn pipeline(
    cluster: Cluster,
    subject: Subject,
    frames: Arc<Outbox>,
    events: Events,
    queued: Arc<AtomicUsize>,
) {
    let mut drains = Drains {
        outbox: frames.clone(),
        idle: false,
    };
    let max_bytes = BATCH_BYTES.min(cluster.settings().max_message);
    while let Some(batch) = frames.next(BATCH_FRAMES, max_bytes) {
        let unit = Unit::new(&batch);
        let acked = match send(&cluster, &subject, &unit).await {
            Some(ack) => ack.await.is_ok(),
            None => false,
        };
        queued.fetch_sub(unit.bytes, Ordering::Relaxed);
        if acked {
            continue;
        }
        tracing::debug!(%subject, "cluster: publish failed; retrying");
        // A failover (or NATS down): retried until the deadline; its message
        // id keeps it stored once.
        let lost = match Box::pin(cluster.store(&subject, &unit)).await {
            Ok(_) => continue,
            // Over NATS max_payload (set below `--max-message` plus headers):
            // not stored, so its frames may go alone; only one too large by
            // itself is refused.
            Err(PublishError::TooLarge) if batch.len() > 1 => {
                Box::pin(store_one_by_one(&cluster, &subject, &batch)).await
            }
            Err(error) => unit.senders.iter().map(|&s| (s, error.clone())).collect(),
        };
        for (session, error) in lost {
            tracing::warn!(%subject, session, %error, "frame not stored");
            if !events.send(LogEvent::Lost { session, error }) {
                return;
            }
        }
    }
    drains.idle = true;
}

/// Stores `frames` each as a message of its own; the senders of those that
/// could not be stored.
async fn store_one_by_one(
    cluster: &Cluster,
    subject: &Subject,
    frames: &[Outgoing],
) -> Vec<(u64, PublishError)> {
    let mut lost = Vec::new();
    for f in frames {
        if let Err(e) = cluster
            .store(subject, &Unit::new(std::slice::from_ref(f)))
            .await
        {
            lost.push((f.origin.session, e));
        }
    }
    lost
}

/// The frames a channel's members queued for the stream, from the owner to
/// the channel's publish pipeline, in order. A queue behind a lock rather
/// than an mpsc channel, for memory: tokio's channel allocates a first
/// block of 32 frames (about 2.3 KB) when it is created and keeps the
/// blocks a burst grew it to, for every channel a node follows, while this
/// one holds nothing until a frame is queued, shrinks back to [`IDLE_ROOM`]
/// once drained and to nothing once its pipeline stops. It also says
/// whether a pipeline runs, so that one is started only when there is
/// something to store.
#[derive(Default)]
struct Outbox {
    state: Mutex<OutboxState>,
}

#[derive(Default)]
struct OutboxState {
    frames: VecDeque<Outgoing>,
    /// A pipeline runs: it takes what is queued.
    running: bool,
    /// Nobody takes frames any more.
    abandoned: bool,
}

/// Abandons the outbox when the pipeline that drains it ends other than
/// idle (its events' sink gone, the task dropped), however it ends.
struct Drains {
    outbox: Arc<Outbox>,
    /// Ended because nothing was left to store: the next frame starts
    /// another pipeline.
    idle: bool,
}

impl Drop for Drains {
    fn drop(&mut self) {
        if !self.idle {
            self.outbox.abandon();
        }
    }
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // Nothing in the state can be left half-changed by a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `frame`; `true` if no pipeline runs and one must be started.
    fn push(&self, frame: Outgoing) -> bool {
        let mut state = self.lock();
        if state.abandoned {
            return false;
        }
        state.frames.push_back(frame);
        !std::mem::replace(&mut state.running, true)
    }

    /// The pipeline is gone (it ended or was dropped): what is queued, and
    /// whatever comes later, is dropped instead of kept for nobody.
    fn abandon(&self) {
        let mut state = self.lock();
        state.abandoned = true;
        state.frames = VecDeque::new();
    }

    /// The next frames to store as one message, if any is queued: the
    /// first, and those after it while there are at most `max_frames` of at
    /// most `max_bytes` as a batch. With none queued the pipeline stops
    /// running, under the same lock as [`Outbox::push`] looks at it: a frame
    /// queued after this starts a new one.
    fn next(&self, max_frames: usize, max_bytes: usize) -> Option<Vec<Outgoing>> {
        let mut state = self.lock();
        let Some(first) = state.frames.pop_front() else {
            // Idle, perhaps for the rest of the channel's life.
            state.running = false;
            state.frames = VecDeque::new();
            return None;
        };
        let mut size = RECORD_OVERHEAD + first.payload.len();
        let mut batch = vec![first];
        while let Some(f) = state.frames.front() {
            size += RECORD_OVERHEAD + f.payload.len();
            if batch.len() == max_frames || size > max_bytes {
                break;
            }
            batch.extend(state.frames.pop_front());
        }
        if state.frames.is_empty() {
            state.frames.shrink_to(IDLE_ROOM);
        }
        Some(batch)
    }
}

/// Sends without waiting for the ack; `None` if it could not even be sent
/// (the pipeline then retries it like a failed ack).
async fn send(cluster: &Cluster, subject: &Subject, unit: &Unit) -> Option<PublishAckFuture> {
    if cluster.state() != LinkState::Up {
        return None;
    }
    // Boxed: the send future is large and a pipeline task lives as long as
    // its channel keeps publishing.
    Box::pin(cluster.send(subject, unit)).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::link::BoxFuture;
    use crate::cluster::{ClusterSettings, Prober};

    struct NoProbes;

    impl Prober for NoProbes {
        fn taken_over(&self, _: String, _: String, _: u64) {}

        fn probe(&self, _: String, _: String, _: u64) -> BoxFuture<bool> {
            Box::pin(async { false })
        }
    }

    fn frame(serial: u64) -> Outgoing {
        sized(serial, 0)
    }

    fn sized(serial: u64, len: usize) -> Outgoing {
        Outgoing {
            origin: Origin {
                node: crate::cluster::envelope::NodeId::generate(),
                session: 1,
            },
            kind: Kind::Binary,
            serial,
            payload: Bytes::from(vec![0; len]),
        }
    }

    /// What queued while a message was in flight goes as one batch, in
    /// order, cut at the most frames or bytes a batch takes; a frame too
    /// large to share a batch goes alone, and never waits behind a later one.
    #[test]
    fn frames_queued_meanwhile_go_as_batches() {
        let outbox = Outbox::default();
        let lens = [10, 10, 10, 10, 10, 200, 10, 10];
        for (serial, len) in lens.into_iter().enumerate() {
            outbox.push(sized(serial as u64, len));
        }
        let mut batches = Vec::new();
        while let Some(b) = outbox.next(3, 3 * (RECORD_OVERHEAD + 10)) {
            batches.push(b.iter().map(|f| f.serial).collect::<Vec<_>>());
        }
        assert_eq!(batches, [vec![0, 1, 2], vec![3, 4], vec![5], vec![6, 7]]);
    }

    /// The publish queue keeps order, asks for a pipeline only when none
    /// runs, and holds no memory for frames it does not need: none before
    /// the first, room for [`IDLE_ROOM`] after a burst of 100 has gone out
    /// while its last frame is still in flight, none once idle (tokio's
    /// channel held a 2.3 KB block from the start, and the blocks a burst
    /// grew it to).
    #[test]
    fn the_publish_queue_keeps_order_and_no_room_it_does_not_need() {
        let outbox = Outbox::default();
        assert_eq!(outbox.lock().frames.capacity(), 0);
        assert!(outbox.push(frame(0)), "the first frame starts a pipeline");
        for serial in 1..=100 {
            assert!(!outbox.push(frame(serial)), "one runs already");
        }
        for serial in 0..=100 {
            let one = outbox
                .next(1, usize::MAX)
                .map(|b| b.iter().map(|f| f.serial).collect());
            assert_eq!(one, Some(vec![serial]));
        }
        assert!(
            outbox.lock().running,
            "its last frame in flight: it runs on"
        );
        assert!(outbox.lock().frames.capacity() <= IDLE_ROOM);
        assert!(outbox.next(1, usize::MAX).is_none());
        assert!(!outbox.lock().running, "nothing left: it stopped");
        assert_eq!(outbox.lock().frames.capacity(), 0, "and keeps no room");
        assert!(outbox.push(frame(101)), "the next frame starts another");
    }

    /// A pipeline that ended early (its owner's shard gone) or was dropped
    /// leaves no queue growing for nobody: what waits and what comes later
    /// is dropped, as an mpsc channel's sends fail once its receiver is gone;
    /// one that ended idle leaves the queue open for the next.
    #[test]
    fn frames_for_a_pipeline_that_is_gone_are_dropped() {
        let outbox = Arc::new(Outbox::default());
        let idle = Drains {
            outbox: outbox.clone(),
            idle: true,
        };
        drop(idle);
        assert!(outbox.push(frame(0)));
        let drains = Drains {
            outbox: outbox.clone(),
            idle: false,
        };
        outbox.push(frame(1));
        drop(drains);
        assert!(!outbox.push(frame(2)), "no pipeline for nobody");
        let state = outbox.lock();
        assert!(state.frames.is_empty() && state.frames.capacity() == 0);
    }

    /// The feed task lives as long as its channel is followed, and the
    /// publish pipeline as long as it publishes, so their futures are paid
    /// per channel and node: the rare, large awaits inside them (opening a
    /// feed, a catch-up, a retried publish) are boxed. Unboxed, the feed
    /// task took 6,840 bytes.
    #[tokio::test]
    async fn a_followed_channel_costs_small_tasks() {
        let url = vec!["nats://127.0.0.1:1".to_string()];
        let settings = ClusterSettings::new(url, None, None, 1, "p".into(), 10, 1000).unwrap();
        let cluster = Cluster::start(settings, Arc::new(NoProbes)).unwrap();
        let (sink, _rx) = mpsc::unbounded_channel();
        let events = Events { tag: 1, sink };
        let subject = cluster.subject("x");
        let feed = follow(cluster.clone(), subject.clone(), (0, 0), events.clone());
        let queued = Arc::new(AtomicUsize::new(0));
        let publish = pipeline(cluster.clone(), subject, Arc::default(), events, queued);
        assert!(
            std::mem::size_of_val(&feed) <= 1536,
            "{}",
            std::mem::size_of_val(&feed)
        );
        assert!(
            std::mem::size_of_val(&publish) <= 1024,
            "{}",
            std::mem::size_of_val(&publish)
        );
        cluster.shutdown();
    }
}
