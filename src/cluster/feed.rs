//! One channel's frames in stream order, as one node follows them.
//!
//! A live feed holds no JetStream consumer. The stream republishes every
//! frame it stores to the channel's live subject ([`live_subject`]) with the
//! frame's stream sequence and the sequence of the channel's frame before
//! it, and the feed listens there with a plain NATS subscription: NATS then
//! keeps an interest entry per followed channel and node instead of a
//! consumer (about 140 KB each on nats-server 2.15, BENCHMARKS.md).
//!
//! Plain NATS delivery is at most once, so the feed never trusts it alone:
//! a frame whose predecessor is not the last frame handed out shows a gap,
//! and the feed reads what it missed from the stream with a short-lived
//! ordered consumer (a *catch-up*) before it goes on. A catch-up also loads
//! the history when the feed opens, and runs whenever a loss could have
//! left nothing behind it to show: after a reconnect, after a stream leader
//! election (which bumps [`Cluster::resync`]), and once a channel has been
//! quiet for [`QUIET`] after a frame (the frame after it may have been lost,
//! say by a subscription that overflowed, with no later frame to reveal the
//! gap).
//!
//! The rules (what a live frame means, when a catch-up may follow a drop)
//! are sans-IO, in [`cursor`](super::cursor).

use std::pin::Pin;
use std::time::Duration;

use async_nats::header::{NATS_LAST_SEQUENCE, NATS_SEQUENCE};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use async_nats::{Message, Subject, Subscriber};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::cursor::{Cursor, Step, may_follow_a_drop};
use super::envelope::{Delivery, KnownNodes};
use super::link::{Cluster, FollowError, LinkState};
use super::subject::live_subject;

/// A channel quiet this long after a frame gets one check of the stream for
/// a later frame its feed may have missed. Shorter finds a lost last frame
/// sooner; each check is one request to the stream leader.
pub const QUIET: Duration = Duration::from_secs(1);

/// An idle catch-up's pull requests expire after this.
const CATCH_UP_EXPIRES: Duration = Duration::from_secs(10);

const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// What [`Feed::next`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The channel's next frame.
    Frame(Delivery),
    /// The feed fell so far behind that the stream may have dropped frames
    /// before this node read them: this node's copy may have a gap. The
    /// feed should not be read again.
    Behind,
    /// The stream was created anew ([`Cluster::stream_epoch`]): the frames
    /// that follow are the new stream's, from its first, numbered from 1.
    Restarted,
}

/// A catch-up wanted but not open yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Ask the stream for the channel's last frame; catch up if it is newer.
    Tail,
    /// Catch up from the cursor; `checks` as [`CatchUp::checks`].
    From { checks: bool },
}

struct CatchUp {
    frames: Ordered,
    /// Whether its frames are checked with [`may_follow_a_drop`] (all but
    /// the history load at open: a history shortened by retention is just
    /// a shorter history).
    checks: bool,
    /// Its consumer, deleted when the catch-up ends: NATS would keep an
    /// ordered consumer for 30 s after its last pull, ~140 KB each.
    consumer: String,
    js: jetstream::Context,
    stream: String,
}

impl Drop for CatchUp {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (js, stream, consumer) = (
            self.js.clone(),
            std::mem::take(&mut self.stream),
            std::mem::take(&mut self.consumer),
        );
        rt.spawn(async move {
            if let Err(e) = js.delete_consumer_from_stream(&consumer, &stream).await {
                tracing::debug!(%consumer, error = %e, "cluster: catch-up consumer not deleted (NATS drops it when idle)");
            }
        });
    }
}

/// One channel's frames in stream order (see the module doc).
pub struct Feed {
    cluster: Cluster,
    subject: Subject,
    live: Subscriber,
    cursor: Cursor,
    catch_up: Option<Box<CatchUp>>,
    want: Option<Want>,
    initial_pending: u64,
    /// Any change (a disconnect and reconnect) may have cost live frames.
    state: watch::Receiver<LinkState>,
    resync: watch::Receiver<u64>,
    epoch: watch::Receiver<u64>,
    /// Set when the epoch changed, until [`Next::Restarted`] is handed out.
    restarted: bool,
    quiet: Pin<Box<Sleep>>,
    quiet_armed: bool,
    nodes: KnownNodes,
}

impl Feed {
    /// Follows the channel of `subject` after stream sequence `after` (0: the
    /// whole retained history first). Fails only if NATS cannot be asked.
    pub(super) async fn open(
        cluster: &Cluster,
        subject: &Subject,
        after: u64,
        after_epoch: u64,
    ) -> Result<Feed, FollowError> {
        let mut state = cluster.watch_state();
        state.borrow_and_update();
        let mut resync = cluster.resync();
        resync.borrow_and_update();
        let mut epoch = cluster.stream_epoch();
        let restarted = *epoch.borrow_and_update() != after_epoch;
        let after = if restarted { 0 } else { after };
        // Listen first: a frame stored from now on comes live, or shows up
        // in the history read below (or both: the cursor drops the second).
        let live = cluster
            .client()
            .subscribe(live_subject(&cluster.settings().prefix, subject))
            .await
            .map_err(|e| FollowError(e.to_string()))?;
        let mut feed = Feed {
            cluster: cluster.clone(),
            subject: subject.clone(),
            live,
            cursor: Cursor::new(after),
            catch_up: None,
            want: None,
            initial_pending: 0,
            state,
            resync,
            epoch,
            restarted,
            quiet: Box::pin(tokio::time::sleep(QUIET)),
            // The subscription may take a moment to reach the server that
            // republishes: look at the stream again once it is quiet.
            quiet_armed: true,
            nodes: KnownNodes::default(),
        };
        feed.initial_pending = feed.begin_catch_up(true, false).await?;
        Ok(feed)
    }

    /// Frames already stored when the feed opened (the history to load).
    pub fn initial_pending(&self) -> u64 {
        self.initial_pending
    }

    /// The next frame; waits as long as it takes (NATS outages included).
    pub async fn next(&mut self) -> Next {
        let mut pause = RETRY_FIRST;
        loop {
            if std::mem::take(&mut self.restarted) {
                return Next::Restarted;
            }
            if self.catch_up.is_some() {
                if let Some(next) = self.read_catch_up().await {
                    return next;
                }
                continue;
            }
            if let Some(want) = self.want {
                match self.start_catch_up(want).await {
                    Ok(()) => {
                        self.want = None;
                        pause = RETRY_FIRST;
                    }
                    Err(e) => {
                        tracing::debug!(subject = %self.subject, error = %e, "cluster feed: cannot catch up yet");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(RETRY_MAX);
                    }
                }
                continue;
            }
            if let Some(d) = self.read_live().await {
                return Next::Frame(d);
            }
        }
    }

    /// One frame of the catch-up, or `None` when there is none to hand out
    /// (a duplicate, the catch-up ended or broke).
    async fn read_catch_up(&mut self) -> Option<Next> {
        let c = self.catch_up.as_mut()?;
        let checks = c.checks;
        let item = tokio::select! {
            item = c.frames.next() => item,
            changed = self.state.changed() => {
                shut_down_if(changed.is_err()).await;
                // Its consumer may have lived on a server that is gone, and
                // the client would take a minute to notice: start again.
                tracing::debug!(subject = %self.subject, "cluster link changed; re-opening the catch-up");
                self.catch_up = None;
                self.want = Some(Want::From { checks });
                return None;
            }
            changed = self.epoch.changed() => {
                shut_down_if(changed.is_err()).await;
                self.restart();
                return None;
            }
        };
        let msg = match item {
            Some(Ok(msg)) => msg,
            other => {
                if let Some(Err(e)) = other {
                    tracing::warn!(subject = %self.subject, error = %e, "cluster catch-up lost; re-opening");
                }
                self.catch_up = None;
                self.want = Some(Want::From { checks });
                return None;
            }
        };
        let (seq, pending) = match msg.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(e) => {
                tracing::warn!(error = %e, "cluster catch-up: message without info");
                return None;
            }
        };
        if pending == 0 {
            // Up to the end of the stream: live frames take over.
            tracing::debug!(subject = %self.subject, seq, "cluster feed caught up");
            self.catch_up = None;
            self.arm_quiet();
        }
        if !self.cursor.stored(seq) {
            return None;
        }
        let retained = self.cluster.settings().history_frames as u64;
        if checks && may_follow_a_drop(pending, retained) {
            tracing::warn!(subject = %self.subject, pending, retained, "cluster feed fell behind the stream's retention");
            self.catch_up = None;
            return Some(Next::Behind);
        }
        let msg = msg.message;
        Some(Next::Frame(Delivery::from_parts(
            seq,
            pending,
            msg.headers.as_ref(),
            msg.payload,
            &mut self.nodes,
        )))
    }

    /// Waits for a live frame, or for a reason to catch up (then `None`).
    async fn read_live(&mut self) -> Option<Delivery> {
        tokio::select! {
            msg = self.live.next() => {
                let Some(msg) = msg else {
                    // The client is gone: nothing will come.
                    return std::future::pending().await;
                };
                let (seq, prev) = republished(&msg)?;
                match self.cursor.live(seq, prev) {
                    Step::Deliver => {
                        self.arm_quiet();
                        Some(Delivery::from_parts(
                            seq,
                            0,
                            msg.headers.as_ref(),
                            msg.payload,
                            &mut self.nodes,
                        ))
                    }
                    Step::Skip => None,
                    Step::Gap => {
                        tracing::debug!(subject = %self.subject, seq, prev, last = self.cursor.last(), "cluster feed: gap; catching up");
                        self.want = Some(Want::From { checks: true });
                        None
                    }
                }
            }
            changed = self.state.changed() => {
                shut_down_if(changed.is_err()).await;
                self.want = Some(Want::Tail);
                None
            }
            changed = self.resync.changed() => {
                shut_down_if(changed.is_err()).await;
                self.want = Some(Want::Tail);
                None
            }
            changed = self.epoch.changed() => {
                shut_down_if(changed.is_err()).await;
                self.restart();
                None
            }
            () = &mut self.quiet, if self.quiet_armed => {
                self.quiet_armed = false;
                self.want = Some(Want::Tail);
                None
            }
        }
    }

    /// The stream was created anew: read it from its first frame (what the
    /// cursor remembers is the old stream's numbering).
    fn restart(&mut self) {
        tracing::debug!(subject = %self.subject, last = self.cursor.last(), "cluster feed: the stream was created anew; reading it from the start");
        self.catch_up = None;
        self.cursor = Cursor::new(0);
        self.want = Some(Want::From { checks: false });
        self.restarted = true;
    }

    fn arm_quiet(&mut self) {
        self.quiet.as_mut().reset(Instant::now() + QUIET);
        self.quiet_armed = true;
    }

    async fn start_catch_up(&mut self, want: Want) -> Result<(), FollowError> {
        self.cluster.up().await;
        self.state.borrow_and_update();
        let checks = match want {
            Want::Tail => true,
            Want::From { checks } => checks,
        };
        self.begin_catch_up(want == Want::Tail, checks).await?;
        Ok(())
    }

    /// Starts reading from the stream after the cursor (`ask_first`: only if
    /// it holds a newer frame); returns how many frames there are to read.
    async fn begin_catch_up(&mut self, ask_first: bool, checks: bool) -> Result<u64, FollowError> {
        if ask_first && !Box::pin(self.newer_stored()).await? {
            return Ok(0);
        }
        let (catch_up, pending) = Box::pin(self.open_catch_up(checks)).await?;
        tracing::debug!(subject = %self.subject, after = self.cursor.last(), pending, checks, "cluster feed catching up");
        if pending > 0 {
            self.catch_up = Some(catch_up);
        }
        Ok(pending)
    }

    /// Whether the stream holds a frame of this channel after the cursor.
    async fn newer_stored(&mut self) -> Result<bool, FollowError> {
        let stream = self
            .cluster
            .jetstream()
            .get_stream_no_info(self.cluster.settings().stream_name())
            .await
            .map_err(|e| FollowError(e.to_string()))?;
        match stream.get_last_raw_message_by_subject(&self.subject).await {
            Ok(m) => {
                tracing::trace!(subject = %self.subject, stored = m.sequence, last = self.cursor.last(), "cluster feed: tail check");
                Ok(m.sequence > self.cursor.last())
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(FollowError(e.to_string())),
        }
    }

    /// A catch-up from the frame after the cursor, and how many frames it
    /// has to deliver.
    async fn open_catch_up(&mut self, checks: bool) -> Result<(Box<CatchUp>, u64), FollowError> {
        let after = self.cursor.last();
        let config = OrderedConfig {
            filter_subject: self.subject.to_string(),
            deliver_policy: if after == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                }
            },
            max_expires: CATCH_UP_EXPIRES,
            // Pull well under what the subscription holds: one that
            // overflows stalls the catch-up until its heartbeats lapse.
            max_batch: i64::try_from(self.cluster.settings().feed_buffer / 4)
                .unwrap_or(i64::MAX)
                .clamp(1, 500),
            ..Default::default()
        };
        let js = self.cluster.jetstream().clone();
        let stream = self.cluster.settings().stream_name();
        let consumer = js
            .create_consumer_on_stream(config, &stream)
            .await
            .map_err(|e| FollowError(e.to_string()))?;
        let (name, pending) = {
            let info = consumer.cached_info();
            (info.name.clone(), info.num_pending)
        };
        let frames = consumer
            .messages()
            .await
            .map_err(|e| FollowError(e.to_string()))?;
        let catch_up = CatchUp {
            frames,
            checks,
            consumer: name,
            js,
            stream,
        };
        Ok((Box::new(catch_up), pending))
    }
}

/// A republished frame's stream sequence and its predecessor's (the
/// sequence of the last frame stored on the same subject before it, 0 if
/// none), from the headers the stream's republish adds; `None` for anything
/// else on the live subject.
fn republished(msg: &Message) -> Option<(u64, u64)> {
    let h = msg.headers.as_ref()?;
    let seq = h.get(NATS_SEQUENCE)?.as_str().parse().ok()?;
    let prev = h.get(NATS_LAST_SEQUENCE)?.as_str().parse().ok()?;
    Some((seq, prev))
}

/// Never returns once the link is shut down (nothing more will come).
async fn shut_down_if(gone: bool) {
    if gone {
        std::future::pending::<()>().await;
    }
}
