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

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, Event, Subject};
use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::envelope::{NodeId, Outgoing};
use super::feed::Feed;
use super::registry::{self, Prober, Registry};
use super::settings::ClusterSettings;
use super::subject::{all_channels, channel_subject, live_channels};

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
    /// Asks the supervisor to re-check the stream (a publish found it missing).
    recheck: Arc<Notify>,
    registry: Registry,
    /// Message id serials (see [`Outgoing::msg_id`]).
    serial: std::sync::atomic::AtomicU64,
    shutdown: watch::Sender<bool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
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
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

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
                                );
                                (client, js, registry)
                            }
                            Err(e) => {
                                let _ = made_tx.send(Err(e));
                                return;
                            }
                        };
                        let _ = made_tx.send(Ok((client.clone(), js.clone(), registry.clone())));
                        let supervisor = Supervisor {
                            settings,
                            client,
                            js,
                            registry,
                            state: state_tx,
                            conn: conn_rx,
                            recheck,
                            resync,
                        };
                        supervisor.run(prober, shutdown_rx).await;
                    });
                })
                .map_err(StartError::Thread)?
        };
        let (client, js, registry) = made_rx
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
                recheck,
                registry,
                serial: std::sync::atomic::AtomicU64::new(0),
                shutdown,
                thread: Mutex::new(Some(thread)),
            }),
        })
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
        let deadline = Instant::now() + self.inner.settings.publish_deadline;
        let headers = frame.headers();
        let mut pause = RETRY_FIRST;
        let mut last = String::from("not connected to NATS");
        loop {
            if *self.inner.state.borrow() == LinkState::Up {
                let acked = match self.send(subject, frame, &headers).await {
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

    /// Hands one frame to the connection without waiting for its ack, so a
    /// caller can keep several in flight (in order: one connection, one order).
    pub(super) async fn send(
        &self,
        subject: &Subject,
        frame: &Outgoing,
        headers: &async_nats::HeaderMap,
    ) -> Result<PublishAckFuture, jetstream::context::PublishError> {
        let message = PublishMessage::build()
            .payload(frame.payload.clone())
            .headers(headers.clone());
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
        Feed::open(self, subject, after).await
    }

    /// Bumped when live frames may have been lost without a gap to show it
    /// (a stream leader election): feeds check the
    /// stream for frames they missed.
    pub fn resync(&self) -> watch::Receiver<u64> {
        self.inner.resync.clone()
    }

    pub(super) fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// Stops the link and waits for its thread (at most `wait`).
    pub fn shutdown(&self) {
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

/// A channel feed could not be opened.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("cannot follow channel: {0}")]
pub struct FollowError(pub String);

/// What the connection callback last said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ConnEvent {
    Waiting,
    Connected,
    Disconnected(String),
}

/// Connects in the background: returns at once, the client keeps trying.
async fn connect(
    settings: &ClusterSettings,
    node: &NodeId,
    conn: watch::Sender<ConnEvent>,
) -> Result<Client, StartError> {
    let servers: Vec<async_nats::ServerAddr> = settings
        .servers
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|e: std::io::Error| StartError::Client(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    connect_options(settings, node, conn)
        .await?
        .connect(servers)
        .await
        .map_err(|e| StartError::Client(e.to_string()))
}

async fn connect_options(
    settings: &ClusterSettings,
    node: &NodeId,
    conn: watch::Sender<ConnEvent>,
) -> Result<ConnectOptions, StartError> {
    let mut options = match &settings.creds {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| StartError::Creds {
                path: path.display().to_string(),
                source,
            })?,
        None => ConnectOptions::new(),
    };
    if let Some(ca) = &settings.ca {
        options = options.add_root_certificates(ca.clone());
    }
    let conn = Arc::new(conn);
    Ok(options
        .name(format!("mles {node}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        // A NATS outage must not make clients wait for our own pings to notice.
        .ping_interval(Duration::from_secs(10))
        // Reconnect fast: a NATS failover should cost clients seconds, not minutes.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100u64.saturating_mul(1 << attempts.min(4)).min(2_000))
        })
        // Each followed channel is a subscription; one that overflows drops
        // frames, which its feed then reads from the stream.
        .subscription_capacity(settings.feed_buffer)
        .event_callback(move |event| {
            let conn = conn.clone();
            async move {
                match event {
                    Event::Connected => {
                        let _ = conn.send(ConnEvent::Connected);
                    }
                    Event::Disconnected => {
                        let _ = conn.send(ConnEvent::Disconnected("disconnected from NATS".into()));
                    }
                    Event::ServerError(e) => {
                        tracing::warn!(error = %e, "NATS server error");
                        let _ = conn.send_if_modified(|c| {
                            if *c == ConnEvent::Connected {
                                false
                            } else {
                                *c = ConnEvent::Disconnected(format!("NATS: {e}"));
                                true
                            }
                        });
                    }
                    Event::ClientError(e) => {
                        tracing::warn!(error = %e, "NATS client error");
                    }
                    // A subscription overflowed: its feed finds the gap at
                    // its next frame or its quiet check. Not a resync of
                    // every feed: on a loaded node that would be a request
                    // per followed channel.
                    Event::SlowConsumer(sid) => tracing::debug!(sid, "NATS slow consumer"),
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        }))
}

/// Keeps the stream and bucket in place and the state truthful.
struct Supervisor {
    settings: ClusterSettings,
    client: Client,
    js: jetstream::Context,
    registry: Registry,
    state: watch::Sender<LinkState>,
    conn: watch::Receiver<ConnEvent>,
    recheck: Arc<Notify>,
    resync: Arc<watch::Sender<u64>>,
}

impl Supervisor {
    async fn run(mut self, prober: Arc<dyn Prober>, mut shutdown: watch::Receiver<bool>) {
        let registry = self.registry.clone();
        let leaders = watch_leaders(
            self.client.clone(),
            self.settings.stream_name(),
            self.resync.clone(),
        );
        let background = async move {
            tokio::join!(
                registry::serve_probes(registry.clone(), prober),
                registry::refresh_forever(registry),
                leaders,
            );
        };
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {}
            _ = background => {}
            _ = self.supervise() => {}
        }
        self.state
            .send_replace(LinkState::Down(Arc::from("server shutting down")));
    }

    async fn supervise(&mut self) {
        let mut pause = RETRY_FIRST;
        let mut logged_down = false;
        // The stream and bucket outlive our connection: after a reconnect
        // they are still there (a NATS failover), so the link is up again at
        // once. Only the first connection, or a publish or claim that finds
        // them gone (a NATS that lost its data), sets them up again.
        let mut needs_setup = true;
        loop {
            let connected = self
                .conn
                .wait_for(|c| *c == ConnEvent::Connected)
                .await
                .is_ok();
            if !connected {
                return;
            }
            if needs_setup {
                if let Err(reason) = self.setup().await {
                    if !logged_down {
                        tracing::warn!(%reason, "cluster link not ready; retrying");
                        logged_down = true;
                    }
                    self.state
                        .send_replace(LinkState::Down(Arc::from(reason.as_str())));
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX * 2);
                    continue;
                }
                needs_setup = false;
                pause = RETRY_FIRST;
                self.warn_if_payload_too_small();
            }
            logged_down = false;
            if *self.state.borrow() != LinkState::Up {
                tracing::info!(stream = %self.settings.stream_name(), "cluster link up");
                self.state.send_replace(LinkState::Up);
            }
            // Up until the connection drops or the stream or bucket is found gone.
            tokio::select! {
                event = self.conn.wait_for(|c| *c != ConnEvent::Connected) => {
                    let reason = match event.as_deref() {
                        Ok(ConnEvent::Disconnected(r)) => r.clone(),
                        _ => String::from("disconnected from NATS"),
                    };
                    tracing::warn!(%reason, "cluster link down");
                    self.state.send_replace(LinkState::Down(Arc::from(reason.as_str())));
                }
                _ = self.recheck.notified() => {
                    tracing::info!("cluster: checking the stream and bucket again");
                    needs_setup = true;
                }
            }
        }
    }

    /// Creates (or updates to our flags) the stream and the registry bucket.
    async fn setup(&self) -> Result<(), String> {
        let s = &self.settings;
        let config = stream::Config {
            name: s.stream_name(),
            description: Some("mles channels: one subject per channel, its history".into()),
            subjects: vec![all_channels(&s.prefix)],
            max_messages_per_subject: i64::try_from(s.history_frames).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            allow_direct: true,
            max_consumers: STREAM_MAX_CONSUMERS,
            // Every stored frame, with its sequence and its channel's
            // previous one, for the feeds' plain subscriptions.
            republish: Some(stream::Republish {
                source: all_channels(&s.prefix),
                destination: live_channels(&s.prefix),
                headers_only: false,
            }),
            ..Default::default()
        };
        self.js
            .create_or_update_stream(config)
            .await
            .map_err(|e| format!("NATS stream {}: {e}", s.stream_name()))?;
        self.registry.setup().await?;
        Ok(())
    }

    fn warn_if_payload_too_small(&self) {
        let max_payload = self.client.server_info().max_payload;
        // Headers take well under 1 KiB.
        if max_payload < self.settings.max_message.saturating_add(1024) {
            tracing::warn!(
                max_payload,
                max_message = self.settings.max_message,
                "NATS max_payload is below --max-message plus headers: larger messages will be refused with 1009; raise max_payload in the NATS config"
            );
        }
    }
}

/// Bumps `resync` whenever the stream gets a new leader: frames the old one
/// stored but had not republished yet reach no feed live.
async fn watch_leaders(client: Client, stream: String, resync: Arc<watch::Sender<u64>>) {
    let subject = format!("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}");
    let mut elected = match client.subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cluster: cannot watch stream leader elections; feeds rely on gaps and quiet checks");
            return std::future::pending().await;
        }
    };
    while elected.next().await.is_some() {
        tracing::info!(%stream, "cluster: stream leader elected; feeds check for missed frames");
        resync.send_modify(|n| *n += 1);
    }
    std::future::pending().await
}

/// A boxed future, as [`Prober`] returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
