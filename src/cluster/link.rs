//! The node's one connection to NATS, and what rides on it: the stream, the
//! publishes into it, and the per-channel feeds out of it.
//!
//! The connection lives on its own thread ("mles-cluster") so that no shard
//! carries its I/O; shards hold a cheap [`Cluster`] handle and await publishes
//! and feeds from their own runtimes. The link is [`LinkState::Down`] at
//! start: it keeps connecting in the background and is `Up` only once NATS
//! answers *and* the stream and registry bucket exist, so callers can refuse
//! joins (1013) with the reason in the meantime. It goes `Down` when the
//! connection drops and comes back by itself, without a restart.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::{Client, Subject};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::envelope::{NodeId, Outgoing, Unit};
use super::feed::Feed;
use super::registry::{Prober, Registry};
use super::settings::ClusterSettings;
use super::subject::channel_subject;
use super::supervisor::{ConnEvent, Supervisor, connect};

/// Whether the node can use the shared log right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Connected, stream and registry in place.
    Up,
    /// Not usable; the reason is what a refused client and the log are told.
    Down(Arc<str>),
}

/// Why a frame did not reach the stream. Its sender must be told.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// NATS `max_payload` is smaller than this message (close 1009).
    #[error("message too large for the cluster log")]
    TooLarge,
    /// No acknowledgement within the publish deadline (close 1013).
    #[error("cluster log unavailable: {0}")]
    Unavailable(String),
}

/// Why the link could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The `--nats-creds` file is unreadable or malformed.
    #[error("--nats-creds {path}: {source}")]
    Creds {
        path: String,
        source: std::io::Error,
    },
    /// The `--nats-ca` file is unreadable or holds no certificate.
    #[error("--nats-ca {0}: no readable PEM certificate")]
    Ca(String),
    /// The thread or runtime for the connection could not be made.
    #[error("cluster thread: {0}")]
    Thread(std::io::Error),
    /// The client refused its options.
    #[error("nats client: {0}")]
    Client(String),
}

/// A cheap, cloneable handle on the node's NATS link.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ClusterSettings,
    node: NodeId,
    client: Client,
    js: jetstream::Context,
    state: watch::Receiver<LinkState>,
    /// See [`Cluster::resync`].
    resync: watch::Receiver<u64>,
    /// See [`Cluster::stream_epoch`].
    epoch: watch::Receiver<u64>,
    /// Asks the supervisor to re-check the stream (a publish found it missing).
    recheck: Arc<Notify>,
    registry: Registry,
    /// Message id serials (see [`Outgoing::msg_id`]).
    serial: std::sync::atomic::AtomicU64,
    shutdown: watch::Sender<bool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The link thread's runtime: publish pipelines run there, so that they
    /// outlive the shards at shutdown and store what they were given.
    runtime: tokio::runtime::Handle,
    /// Publish pipelines running now.
    pipelines: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// The stream's consumer limit. A feed holds a consumer only while it
/// catches up (the history at open, frames it missed), but after a NATS
/// failover every followed channel of every node may catch up at once;
/// nats-server 2.15 gives a stream that sets no limit of its own 1,000
/// consumers (and takes -1 for its default, not for unlimited), which once
/// stopped joins at 1,000 channel-node pairs. An account limit, where set,
/// still applies.
pub const STREAM_MAX_CONSUMERS: i32 = 1 << 30;

/// First and largest pause between tries of a failing publish or setup.
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(50);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(1);

impl Cluster {
    /// Starts the link on its own thread and returns at once, `Down` until NATS
    /// answers. `prober` answers other nodes' half-open probes for this node's
    /// sessions (PROTOCOL.md §4).
    pub fn start(
        settings: ClusterSettings,
        prober: Arc<dyn Prober>,
    ) -> Result<Cluster, StartError> {
        if let Some(ca) = &settings.ca {
            let pem = std::fs::read_to_string(ca).unwrap_or_default();
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(StartError::Ca(ca.display().to_string()));
            }
        }
        let node = NodeId::generate();
        let (state_tx, state_rx) = watch::channel(LinkState::Down(Arc::from("connecting to NATS")));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let recheck = Arc::new(Notify::new());
        let (resync_tx, resync_rx) = watch::channel(0u64);
        let resync_tx = Arc::new(resync_tx);
        let (epoch_tx, epoch_rx) = watch::channel(0u64);
        // The client's connection task must live on the cluster thread's
        // runtime, so the client is made there and handed back.
        let (made_tx, made_rx) = std::sync::mpsc::sync_channel(1);
        let thread = {
            let settings = settings.clone();
            let node = node.clone();
            let recheck = recheck.clone();
            let resync = resync_tx.clone();
            std::thread::Builder::new()
                .name("mles-cluster".into())
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = made_tx.send(Err(StartError::Thread(e)));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let diagnosis_node = node.clone();
                        let (conn_tx, conn_rx) = watch::channel(ConnEvent::Waiting);
                        let made = connect(&settings, &node, conn_tx).await;
                        let (client, js, registry) = match made {
                            Ok(client) => {
                                let js = jetstream::new(client.clone());
                                let registry = Registry::new(
                                    &settings,
                                    node,
                                    js.clone(),
                                    client.clone(),
                                    recheck.clone(),
                                    prober.clone(),
                                );
                                (client, js, registry)
                            }
                            Err(e) => {
                                let _ = made_tx.send(Err(e));
                                return;
                            }
                        };
                        let _ = made_tx.send(Ok((
                            client.clone(),
                            js.clone(),
                            registry.clone(),
                            tokio::runtime::Handle::current(),
                        )));
                        let supervisor = Supervisor {
                            settings,
                            node: diagnosis_node,
                            client,
                            js,
                            registry,
                            state: state_tx,
                            conn: conn_rx,
                            recheck,
                            resync,
                            epoch: epoch_tx,
                            identity: None,
                            bucket_identity: None,
                            stream_changed: Arc::new(Notify::new()),
                        };
                        supervisor.run(prober, shutdown_rx).await;
                    });
                })
                .map_err(StartError::Thread)?
        };
        let (client, js, registry, runtime) = made_rx
            .recv()
            .map_err(|_| StartError::Client("cluster thread ended at start".into()))??;
        Ok(Cluster {
            inner: Arc::new(Inner {
                settings,
                node,
                client,
                js,
                state: state_rx,
                resync: resync_rx,
                epoch: epoch_rx,
                recheck,
                registry,
                serial: std::sync::atomic::AtomicU64::new(0),
                shutdown,
                thread: Mutex::new(Some(thread)),
                runtime,
                pipelines: Arc::default(),
            }),
        })
    }

    /// Runs a channel's publish pipeline on the link's thread (see
    /// [`Cluster::shutdown`]).
    pub(super) fn spawn_pipeline(&self, pipeline: impl Future<Output = ()> + Send + 'static) {
        let running = self.inner.pipelines.clone();
        running.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.inner.runtime.spawn(async move {
            let _done = Done(running);
            pipeline.await;
        });
    }

    /// This run of this node.
    pub fn node(&self) -> &NodeId {
        &self.inner.node
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.inner.settings
    }

    /// The link's state now.
    pub fn state(&self) -> LinkState {
        self.inner.state.borrow().clone()
    }

    /// A receiver that sees every change of [`LinkState`].
    pub fn watch_state(&self) -> watch::Receiver<LinkState> {
        self.inner.state.clone()
    }

    /// Waits until the link is `Up`.
    pub async fn up(&self) {
        let mut rx = self.inner.state.clone();
        let _ = rx.wait_for(|s| *s == LinkState::Up).await;
    }

    /// The cluster-wide (channel, uid) registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The subject of `channel` (compute once per channel, not per frame).
    pub fn subject(&self, channel: &str) -> Subject {
        Subject::from(channel_subject(&self.inner.settings.prefix, channel))
    }

    /// Stores a frame; returns its stream sequence once NATS acknowledged it.
    ///
    /// Retries (same message id, so the stream keeps one copy) through NATS
    /// failovers until `publish_deadline`; after that the caller must tell the
    /// sender, never drop the frame silently.
    pub async fn publish(&self, subject: &Subject, frame: &Outgoing) -> Result<u64, PublishError> {
        self.store(subject, &Unit::new(std::slice::from_ref(frame)))
            .await
    }

    /// Stores one message (a frame or a batch), as [`Cluster::publish`].
    pub async fn store(&self, subject: &Subject, unit: &Unit) -> Result<u64, PublishError> {
        let deadline = Instant::now() + self.inner.settings.publish_deadline;
        let mut pause = RETRY_FIRST;
        let mut last = String::from("not connected to NATS");
        loop {
            if *self.inner.state.borrow() == LinkState::Up {
                let acked = match self.send(subject, unit).await {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                };
                match acked {
                    Ok(ack) => return Ok(ack.sequence),
                    Err(e) => last = self.classify(e)?,
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PublishError::Unavailable(last));
            }
            let mut state = self.inner.state.clone();
            if *state.borrow() == LinkState::Up {
                // Up but failing (a leader election): back off.
                tokio::time::sleep_until((now + pause).min(deadline)).await;
                pause = (pause * 2).min(RETRY_MAX);
            } else {
                let _ = tokio::time::timeout_at(deadline, state.wait_for(|s| *s == LinkState::Up))
                    .await;
            }
        }
    }

    /// Hands one message to the connection without waiting for its ack.
    pub(super) async fn send(
        &self,
        subject: &Subject,
        unit: &Unit,
    ) -> Result<PublishAckFuture, jetstream::context::PublishError> {
        let message = PublishMessage::build()
            .payload(unit.payload.clone())
            .headers(unit.headers.clone());
        self.inner.js.send_publish(subject.clone(), message).await
    }

    /// Sorts a failed publish: fatal for this frame, or worth a retry (the reason).
    pub(super) fn classify(
        &self,
        e: jetstream::context::PublishError,
    ) -> Result<String, PublishError> {
        match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => Err(PublishError::TooLarge),
            PublishErrorKind::StreamNotFound => {
                self.inner.recheck.notify_one();
                Ok(e.to_string())
            }
            _ => Ok(e.to_string()),
        }
    }

    /// A message id serial unique in this run of this node.
    pub fn next_serial(&self) -> u64 {
        self.inner
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Follows one channel: every frame after stream sequence `after` (0: the
    /// whole retained history), then live frames, in stream order, forever
    /// (see [`Feed`]).
    ///
    /// Fails only when NATS cannot be asked (it is down); after that the feed
    /// survives NATS failovers by itself, resuming where it was.
    pub async fn follow(&self, subject: &Subject, after: u64) -> Result<Feed, FollowError> {
        let epoch = *self.inner.epoch.borrow();
        self.follow_from(subject, after, epoch).await
    }

    /// As [`Cluster::follow`], with `after` a sequence of the stream of
    /// [`Cluster::stream_epoch`] `epoch`: if the stream was created anew
    /// since, the feed starts with [`Next::Restarted`](super::feed::Next)
    /// and reads the new stream from its first frame.
    pub async fn follow_from(
        &self,
        subject: &Subject,
        after: u64,
        epoch: u64,
    ) -> Result<Feed, FollowError> {
        Feed::open(self, subject, after, epoch).await
    }

    /// Bumped when live frames may have been lost without a gap to show it
    /// (a stream leader election): feeds check the
    /// stream for frames they missed.
    pub fn resync(&self) -> watch::Receiver<u64> {
        self.inner.resync.clone()
    }

    /// Bumped when the stream turns out to have been created anew (NATS lost
    /// it, or it was deleted): its sequences start again at 1, so what a
    /// feed or sequencer remembers of the old numbering means nothing.
    pub fn stream_epoch(&self) -> watch::Receiver<u64> {
        self.inner.epoch.clone()
    }

    pub(super) fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// Stops the link and waits for its thread. Publish pipelines still
    /// running (frames members sent before the server stopped) are given
    /// until the publish deadline to store what they hold.
    pub fn shutdown(&self) {
        let deadline = std::time::Instant::now() + self.inner.settings.publish_deadline;
        let running = || {
            self.inner
                .pipelines
                .load(std::sync::atomic::Ordering::Acquire)
        };
        while running() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if running() > 0 {
            tracing::warn!(
                channels = running(),
                "cluster: frames of some channels not stored by the publish deadline; stopping anyway"
            );
        }
        let _ = self.inner.shutdown.send(true);
        let thread = self.inner.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// The raw client, for tests and tools.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

/// Counts a pipeline out when it ends, however it ends.
struct Done(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A channel feed could not be opened.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("cannot follow channel: {0}")]
pub struct FollowError(pub String);

/// A boxed future, as [`Prober`] returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
