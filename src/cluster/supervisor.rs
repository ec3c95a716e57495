//! The node's NATS connection and the task that keeps the link truthful:
//! connecting (in the background, retrying for ever), setting up the
//! stream and the registry bucket, and [`LinkState`] following what the
//! connection does. [`Cluster::start`](super::link::Cluster::start) runs it
//! on the link's own thread.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, Event};
use futures_util::StreamExt;
use tokio::sync::{Notify, watch};

use super::envelope::NodeId;
use super::link::{LinkState, RETRY_FIRST, RETRY_MAX, STREAM_MAX_CONSUMERS, StartError};
use super::registry::{self, Prober, Registry};
use super::settings::{ClusterSettings, UrlCredentials};
use super::subject::{all_channels, live_channels};

/// What the connection callback last said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ConnEvent {
    Waiting,
    Connected,
    Disconnected(String),
    /// A connection attempt failed (the client retries).
    Failing,
}

/// Connects in the background: returns at once, the client keeps trying.
pub(super) async fn connect(
    settings: &ClusterSettings,
    node: &NodeId,
    conn: watch::Sender<ConnEvent>,
) -> Result<Client, StartError> {
    connect_options(settings, node, conn)
        .await?
        .connect(server_addrs(settings)?)
        .await
        .map_err(|e| StartError::Client(e.to_string()))
}

fn server_addrs(settings: &ClusterSettings) -> Result<Vec<async_nats::ServerAddr>, StartError> {
    settings
        .servers
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|e: std::io::Error| StartError::Client(e.to_string()))
        })
        .collect()
}

/// Who we are to NATS and how we prove it: the credentials, the CA, the
/// connection name.
async fn base_options(
    settings: &ClusterSettings,
    node: &NodeId,
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
    // The client crate reads no credentials from server URLs itself.
    options = match settings.url_credentials() {
        Some(UrlCredentials::UserAndPassword(user, pass)) => options.user_and_password(user, pass),
        Some(UrlCredentials::Token(token)) => options.token(token),
        None => options,
    };
    Ok(options
        .name(format!("mles {node}"))
        .connection_timeout(Duration::from_secs(5)))
}

async fn connect_options(
    settings: &ClusterSettings,
    node: &NodeId,
    conn: watch::Sender<ConnEvent>,
) -> Result<ConnectOptions, StartError> {
    let conn = Arc::new(conn);
    Ok(base_options(settings, node)
        .await?
        .retry_on_initial_connect()
        .max_reconnects(None)
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
                        not_while_connected(&conn, ConnEvent::Disconnected(format!("NATS: {e}")));
                    }
                    // While connecting, a failed attempt: explained once an
                    // outage by `explain_failures`, not at every retry.
                    Event::ClientError(e) => {
                        if not_while_connected(&conn, ConnEvent::Failing) {
                            tracing::debug!(error = %e, "NATS connection attempt failed");
                        } else {
                            tracing::warn!(error = %e, "NATS client error");
                        }
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

/// Sets `event` unless the connection is up (an error about something
/// else); whether it did.
fn not_while_connected(conn: &watch::Sender<ConnEvent>, event: ConnEvent) -> bool {
    conn.send_if_modified(|c| {
        if *c == ConnEvent::Connected {
            false
        } else {
            *c = event;
            true
        }
    })
}

/// Says why NATS cannot be reached, once an outage. The client's events
/// name only the kind of a failed connection ("IO error"), so the first
/// failure of an outage is tried again on a connection of our own, whose
/// error says what went wrong (nothing listening, a certificate not
/// trusted, credentials refused). It is logged, and kept as the link's
/// reason for being down while it is.
async fn explain_failures(
    settings: ClusterSettings,
    node: NodeId,
    mut conn: watch::Receiver<ConnEvent>,
    state: watch::Sender<LinkState>,
) {
    let mut explained = false;
    while conn.changed().await.is_ok() {
        let failing = match *conn.borrow_and_update() {
            ConnEvent::Connected => {
                explained = false;
                false
            }
            ConnEvent::Failing => true,
            _ => false,
        };
        if !failing || explained {
            continue;
        }
        explained = true;
        let Some(why) = diagnose(&settings, &node).await else {
            continue;
        };
        tracing::warn!(servers = ?settings.servers_for_log(), error = %why, "cannot connect to NATS; retrying");
        let reason: Arc<str> = Arc::from(format!("NATS: {why}"));
        state.send_if_modified(|s| {
            let down = matches!(s, LinkState::Down(_)) && *conn.borrow() != ConnEvent::Connected;
            if down {
                *s = LinkState::Down(reason.clone());
            }
            down
        });
    }
}

/// One connection attempt to each server, as the client makes them; the
/// last one's error in full, or `None` if one succeeds (NATS is back).
async fn diagnose(settings: &ClusterSettings, node: &NodeId) -> Option<String> {
    let attempt = async {
        base_options(settings, node)
            .await
            .ok()?
            .reconnect_delay_callback(|_| Duration::ZERO)
            .connect(server_addrs(settings).ok()?)
            .await
            .err()
            .map(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .ok()
        .flatten()
}

/// Keeps the stream and bucket in place and the state truthful.
pub(super) struct Supervisor {
    pub(super) settings: ClusterSettings,
    pub(super) node: NodeId,
    pub(super) client: Client,
    pub(super) js: jetstream::Context,
    pub(super) registry: Registry,
    pub(super) state: watch::Sender<LinkState>,
    pub(super) conn: watch::Receiver<ConnEvent>,
    pub(super) recheck: Arc<Notify>,
    pub(super) resync: Arc<watch::Sender<u64>>,
    /// See [`Cluster::stream_epoch`](super::link::Cluster::stream_epoch).
    pub(super) epoch: watch::Sender<u64>,
    /// When the stream we set up or last saw was created (Unix ns).
    pub(super) identity: Option<i128>,
    /// The same for the registry's bucket.
    pub(super) bucket_identity: Option<i128>,
    /// A stream advisory (created, deleted) says to look at the stream now.
    pub(super) stream_changed: Arc<Notify>,
}

/// How often a node that is up looks at the stream to see that it is still
/// the one it knows (between the stream advisories that say so at once).
const STREAM_CHECK: Duration = Duration::from_secs(5);

impl Supervisor {
    pub(super) async fn run(
        mut self,
        prober: Arc<dyn Prober>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let registry = self.registry.clone();
        let advisories = watch_stream(
            self.client.clone(),
            self.settings.stream_name(),
            self.resync.clone(),
            self.stream_changed.clone(),
        );
        let explain = explain_failures(
            self.settings.clone(),
            self.node.clone(),
            self.conn.clone(),
            self.state.clone(),
        );
        let background = async move {
            tokio::join!(
                registry::serve_probes(registry.clone(), prober),
                registry::refresh_forever(registry),
                advisories,
                explain,
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
            // Up until the connection drops or the stream or bucket is found
            // gone; the stream is looked at meanwhile.
            let bucket = self.registry.bucket_stream();
            loop {
                let look = tokio::select! {
                    event = self.conn.wait_for(|c| *c != ConnEvent::Connected) => {
                        let reason = match event.as_deref() {
                            Ok(ConnEvent::Disconnected(r)) => r.clone(),
                            _ => String::from("disconnected from NATS"),
                        };
                        tracing::warn!(%reason, "cluster link down");
                        self.state.send_replace(LinkState::Down(Arc::from(reason.as_str())));
                        break;
                    }
                    _ = self.recheck.notified() => {
                        tracing::info!("cluster: checking the stream and bucket again");
                        needs_setup = true;
                        break;
                    }
                    look = look_at_stream(&self.js, &self.settings, &bucket, &self.stream_changed) => look,
                };
                if matches!(look, (Look::Gone, _) | (_, Look::Gone)) {
                    needs_setup = true;
                    break;
                }
                if let Look::Created(created) = look.0 {
                    self.saw_stream(created);
                }
                if let Look::Created(created) = look.1 {
                    self.saw_bucket(created).await;
                }
            }
        }
    }

    /// Creates (or updates to our flags) the stream and the registry bucket.
    async fn setup(&mut self) -> Result<(), String> {
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
        let info = self
            .js
            .create_or_update_stream(config)
            .await
            .map_err(|e| format!("NATS stream {}: {e}", s.stream_name()))?;
        self.registry.setup().await?;
        self.saw_stream(info.created.unix_timestamp_nanos());
        match created(&self.js, &self.registry.bucket_stream()).await {
            Look::Created(bucket) => self.saw_bucket(bucket).await,
            Look::Gone | Look::NoAnswer => {
                return Err(format!(
                    "NATS bucket {}: not found after setup",
                    self.registry.bucket_stream()
                ));
            }
        }
        Ok(())
    }

    /// The bucket as it is now was created at `created`: if it is not the one
    /// this node knew, NATS lost the entries of the pairs this node holds.
    async fn saw_bucket(&mut self, created: i128) {
        let known = self.bucket_identity.replace(created);
        if known.is_some_and(|known| known != created) {
            tracing::warn!(
                bucket = %self.registry.bucket_stream(),
                "cluster: the registry's bucket was created anew (NATS lost it or it was deleted); writing this node's entries again"
            );
            self.registry.restore().await;
        }
    }

    /// The stream as it is now was created at `created`: if that is not the
    /// stream this node knew, its numbering started again, and every feed
    /// must start again from its first frame.
    fn saw_stream(&mut self, created: i128) {
        if self.identity.is_some_and(|known| known != created) {
            tracing::warn!(
                stream = %self.settings.stream_name(),
                "cluster: the stream was created anew (NATS lost it or it was deleted); channels go on from its first frame, the history kept on the nodes stays"
            );
            self.epoch.send_modify(|n| *n += 1);
        }
        self.identity = Some(created);
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

/// What [`look_at_stream`] found.
enum Look {
    /// The stream (or bucket), created at this time (Unix ns).
    Created(i128),
    /// No such stream: set it up again.
    Gone,
    /// Not an answer about the stream (a timeout, a reconnect).
    NoAnswer,
}

/// Looks at the stream and the bucket once an advisory says the stream
/// changed, or after [`STREAM_CHECK`]: when each was created, or that one is
/// gone.
async fn look_at_stream(
    js: &jetstream::Context,
    settings: &ClusterSettings,
    bucket: &str,
    changed: &Notify,
) -> (Look, Look) {
    tokio::select! {
        _ = changed.notified() => {}
        () = tokio::time::sleep(STREAM_CHECK) => {}
    }
    (
        created(js, &settings.stream_name()).await,
        created(js, bucket).await,
    )
}

/// When the JetStream stream `name` was created.
async fn created(js: &jetstream::Context, name: &str) -> Look {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::GetStreamErrorKind;
    match js.get_stream(name).await {
        Ok(stream) => Look::Created(stream.cached_info().created.unix_timestamp_nanos()),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                tracing::warn!(
                    stream = name,
                    "cluster: the stream is gone; setting it up again"
                );
                Look::Gone
            }
            _ => Look::NoAnswer,
        },
    }
}

/// Follows the stream's advisories: a new leader bumps `resync` (frames the
/// old one stored but had not republished yet reach no feed live); the
/// stream created or deleted has the supervisor look at it at once.
async fn watch_stream(
    client: Client,
    stream: String,
    resync: Arc<watch::Sender<u64>>,
    changed: Arc<Notify>,
) {
    let subject = format!("$JS.EVENT.ADVISORY.STREAM.*.{stream}");
    let mut advisories = match client.subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cluster: cannot watch the stream's advisories; feeds rely on gaps, quiet and periodic checks");
            return std::future::pending().await;
        }
    };
    while let Some(msg) = advisories.next().await {
        let kind = msg.subject.split('.').nth(4).unwrap_or_default();
        match kind {
            "LEADER_ELECTED" => {
                tracing::info!(%stream, "cluster: stream leader elected; feeds check for missed frames");
                resync.send_modify(|n| *n += 1);
            }
            "CREATED" | "DELETED" => changed.notify_one(),
            _ => {}
        }
    }
    std::future::pending().await
}
