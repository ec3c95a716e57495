//! Peer links (PROTOCOL.md §7): the server itself joins each of its channels
//! on every configured peer server, with a header that says `"peer": true`
//! (and `auth` from `--peer-key` or `MLES_KEY`).
//!
//! A link is a task on the channel's owner shard plus a socket-less member
//! session of kind `OwnLink`: frames of local members reach it like any
//! member and go to the peer; frames from the peer are published into the
//! channel with `origin` = the link, so they never go back over it (split
//! horizon), and nothing is dropped for its content. Control messages
//! (sync, routes) travel as Pings both ways and are handled by the owner
//! (`channel::links`): they end each side's history replay, so a resync adds
//! only what is new, and they refuse a link that would close a cycle.
//!
//! A lost or refused link reconnects with back-off; the back-off starts
//! afresh only once a connection was accepted (the peer's sync arrived, or
//! the link stayed up a while), and a failure is logged once until then.

use std::future::poll_fn;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::channel::links::MAGIC;
use crate::protocol::SUBPROTOCOL;
use crate::protocol::auth::hash_parts;
use crate::protocol::close;
use crate::protocol::frame::{self, OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT};
use crate::session::{Host, Session};
use crate::shard::{LinkStarter, Shard};

/// First pause after a failed or lost link; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Connect + TLS + upgrade must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A link to a peer that sends no sync (a server without control messages)
/// counts as accepted once it stayed up this long: a refused join is closed
/// at once, so a few seconds tell the two apart.
const ACCEPTED_AFTER: Duration = Duration::from_secs(5);

/// The peers every channel is linked to, shared by all shards.
#[derive(Debug)]
pub struct PeerConfig {
    /// `ws://` or `wss://` URLs.
    pub urls: Vec<String>,
    /// The uid this server's links present to peers.
    pub uid: String,
    /// Key the links' `auth` is computed with (`--peer-key`, else `MLES_KEY`).
    pub key: Option<Vec<u8>>,
    /// Trust for `wss://` peers.
    pub tls: Arc<rustls::ClientConfig>,
}

impl PeerConfig {
    /// Builds the TLS client side: public roots, or only those in `ca` (PEM).
    pub fn new(
        urls: Vec<String>,
        uid: String,
        key: Option<Vec<u8>>,
        ca: Option<&Path>,
    ) -> Result<PeerConfig, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("--peer-ca {}: {e}", path.display()))?;
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| format!("--peer-ca {}: {e}", path.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = crate::tls::install_crypto_provider();
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(PeerConfig {
            urls,
            uid,
            key,
            tls: Arc::new(tls),
        })
    }
}

/// What the shards call when a channel they own wants links (it has a
/// client, or an accepted link from another server): one link task per
/// peer, on that shard.
pub fn link_starter(cfg: Arc<PeerConfig>) -> LinkStarter {
    Arc::new(move |shard: &Rc<Shard>, channel: Arc<str>| {
        for url in &cfg.urls {
            let key = (channel.clone(), url.clone());
            let running = RUNNING.with_borrow(|r| r.get(&key).cloned());
            match running {
                // Still retrying from before: retry now rather than start a second link.
                Some(again) => again.notify_one(),
                None => {
                    let again = Rc::new(tokio::sync::Notify::new());
                    RUNNING.with_borrow_mut(|r| r.insert(key.clone(), again.clone()));
                    let task = run_link(shard.clone(), cfg.clone(), key, again);
                    tokio::task::spawn_local(task);
                }
            }
        }
    })
}

/// A link task's handle: wakes it from its back-off.
type Again = Rc<tokio::sync::Notify>;

thread_local! {
    /// The link tasks of this shard, by (channel, peer URL): at most one each.
    static RUNNING: std::cell::RefCell<ahash::AHashMap<(Arc<str>, String), Again>> =
        Default::default();
}

/// Forgets a link task when it ends, however it ends.
struct Running((Arc<str>, String));

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.with_borrow_mut(|r| r.remove(&self.0));
    }
}

/// Keeps `channel` linked to the peer at `url` until shutdown, or until the
/// channel no longer wants links (closed with 1000). `again` cuts a back-off short.
async fn run_link(
    shard: Rc<Shard>,
    cfg: Arc<PeerConfig>,
    key: (Arc<str>, String),
    again: Rc<tokio::sync::Notify>,
) {
    let _running = Running(key.clone());
    let (channel, url) = key;
    let mut backoff = FIRST_BACKOFF;
    // A failure is logged once (warn) until a connection is accepted again.
    let mut reported = false;
    while !shard.is_shutting_down() {
        let ended = match tokio::time::timeout(CONNECT_TIMEOUT, connect(&cfg, &url)).await {
            Ok(Ok(Conn::Plain(ws))) => linked(&shard, &cfg, &channel, &url, ws).await,
            Ok(Ok(Conn::Tls(ws))) => linked(&shard, &cfg, &channel, &url, ws).await,
            Ok(Err(e)) => Ended::failed(e),
            Err(_) => Ended::failed("connect timed out".to_string()),
        };
        if ended.accepted {
            backoff = FIRST_BACKOFF;
            reported = false;
        }
        let Some(error) = ended.error else {
            // Closed on purpose (the channel no longer wants links), unless
            // the shard asked for the link again meanwhile: its call found
            // this task still running and left a permit instead of a task.
            if futures_util::FutureExt::now_or_never(again.notified()).is_some() {
                continue;
            }
            break;
        };
        if reported {
            tracing::debug!(peer = %url, channel = %channel, %error, "peer link failed again");
        } else {
            tracing::warn!(peer = %url, channel = %channel, %error, "peer link failed; retrying with back-off");
            reported = true;
        }
        if shard.is_shutting_down() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(backoff)) => {}
            _ = again.notified() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `d` give or take a quarter, at random: two servers that link to each
/// other retry out of step, so a refused redundant link and the one that
/// stays settle instead of racing again and again.
fn jittered(d: Duration) -> Duration {
    let r = ahash::RandomState::new().hash_one(std::time::Instant::now());
    let quarter = d / 4;
    d - quarter + quarter.mul_f64((r % 1000) as f64 / 500.0)
}

/// How one connection of a link ended.
struct Ended {
    /// The peer accepted the join (its sync arrived, or the link stayed up).
    accepted: bool,
    /// Why it was lost or refused; `None`: ended on purpose (no local client left).
    error: Option<String>,
}

impl Ended {
    fn failed(error: String) -> Ended {
        Ended {
            accepted: false,
            error: Some(error),
        }
    }
}

// One per link connection attempt and moved straight into `linked`: the
// size difference between the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Conn {
    Plain(WebSocketStream<TcpStream>),
    Tls(WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn connect(cfg: &PeerConfig, url: &str) -> Result<Conn, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let uri = req.uri().clone();
    let host = uri
        .host()
        .ok_or("peer URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tls = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let check = |resp: &tokio_tungstenite::tungstenite::handshake::client::Response| {
        if resp
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes())
            == Some(SUBPROTOCOL.as_bytes())
        {
            Ok(())
        } else {
            Err("peer did not accept the mles-websocket subprotocol".to_string())
        }
    };
    if tls {
        let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(cfg.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (ws, resp) = tokio_tungstenite::client_async(req, stream)
            .await
            .map_err(|e| e.to_string())?;
        check(&resp)?;
        Ok(Conn::Tls(ws))
    } else {
        let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
            .await
            .map_err(|e| e.to_string())?;
        check(&resp)?;
        Ok(Conn::Plain(ws))
    }
}

/// Leaves the channel when the link ends, however it ends.
struct Membership<'a> {
    shard: &'a Shard,
    session: Rc<Session>,
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        self.shard.ended(&self.session);
    }
}

/// Relays between the channel and a connected peer until the link ends.
async fn linked<S>(
    shard: &Rc<Shard>,
    cfg: &PeerConfig,
    channel: &Arc<str>,
    url: &str,
    ws: WebSocketStream<S>,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = tokio::time::Instant::now();
    let mut progress = Progress::default();
    let error = relay(shard, cfg, channel, url, ws, &mut progress)
        .await
        .err();
    // A link refused with 1008 (closing a cycle, from either end) was never
    // accepted, though it synced first: its back-off keeps growing.
    Ended {
        accepted: !progress.refused && (progress.synced || started.elapsed() >= ACCEPTED_AFTER),
        error,
    }
}

/// What one connection of a link got to.
#[derive(Default)]
struct Progress {
    /// The peer's sync arrived.
    synced: bool,
    /// It was closed with 1008 by either end.
    refused: bool,
}

async fn relay<S>(
    shard: &Rc<Shard>,
    cfg: &PeerConfig,
    channel: &Arc<str>,
    url: &str,
    mut ws: WebSocketStream<S>,
    progress: &mut Progress,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut header = serde_json::json!({ "uid": cfg.uid, "channel": &**channel, "peer": true });
    if let Some(key) = &cfg.key {
        let auth = hash_parts(&[cfg.uid.as_bytes(), channel.as_bytes(), key]);
        header["auth"] = format!("{auth:016x}").into();
    }
    ws.send(Message::text(header.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    let m = Membership {
        shard,
        session: shard.new_session(),
    };
    m.session.begin_join();
    shard.join_link(m.session.id, channel.clone(), url.into());
    tracing::debug!(peer = %url, channel = %channel, "peer link connected");
    loop {
        // Like a client's session, the link stops reading while the process
        // is congested (TCP backpressure to the peer).
        poll_fn(|cx| {
            if shard.must_pause(cx.waker()) {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        tokio::select! {
            msg = ws.next() => {
                let f = match msg {
                    Some(Ok(Message::Text(t))) => frame::encode(OP_TEXT, t.as_bytes()),
                    Some(Ok(Message::Binary(b))) => frame::encode(OP_BINARY, &b),
                    Some(Ok(Message::Close(c))) => {
                        progress.refused = c.as_ref().is_some_and(|c| u16::from(c.code) == close::PEER_CYCLE.code);
                        return Err(match c {
                            Some(c) => format!("peer closed the link: {} {}", u16::from(c.code), c.reason),
                            None => "peer closed the link".to_string(),
                        });
                    }
                    Some(Ok(Message::Ping(p))) => {
                        m.session.touch_rx();
                        if p.starts_with(MAGIC)
                            && let Some(key) = m.session.key()
                        {
                            if !progress.synced {
                                progress.synced = true;
                                tracing::info!(peer = %url, channel = %channel, "peer link up");
                            }
                            shard.link_control(key, m.session.id, p);
                        }
                        continue;
                    }
                    Some(Ok(_)) => {
                        m.session.touch_rx();
                        continue;
                    }
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("peer ended the connection".to_string()),
                };
                m.session.touch_rx();
                if let Some(key) = m.session.key() {
                    // Never de-duplicated: no frame is dropped for its content (§7).
                    shard.publish(key, m.session.id, f, false);
                }
            }
            frames = queued(&m.session) => {
                for f in frames {
                    let payload = f.slice(f.len() - frame::payload_of(&f).len()..);
                    let msg = match f[0] & 0x0F {
                        OP_TEXT => Message::Text(Utf8Bytes::try_from(payload).map_err(|e| e.to_string())?),
                        OP_BINARY => Message::Binary(payload),
                        // Control messages from the owner; our own keepalive
                        // pings are not sent: the peer pings us itself.
                        OP_PING if payload.starts_with(MAGIC) => Message::Ping(payload),
                        OP_CLOSE => {
                            let _ = ws.close(None).await;
                            let code = m.session.close_code();
                            progress.refused = code == close::PEER_CYCLE.code;
                            return match code {
                                // The channel emptied (CHANNEL_EMPTY): the link is no longer needed.
                                1000 => Ok(()),
                                // Shutdown (1001), a peer too slow for the queue
                                // bound (1013), a link that would close a cycle (1008).
                                code => Err(format!("link closed locally ({code})")),
                            };
                        }
                        _ => continue,
                    };
                    ws.feed(msg).await.map_err(|e| e.to_string())?;
                }
                ws.flush().await.map_err(|e| e.to_string())?;
            }
        }
    }
}

/// The frames queued for a socket-less session, once there are any.
fn queued(s: &Session) -> impl Future<Output = Vec<Bytes>> + '_ {
    poll_fn(move |cx| {
        if s.has_queued() {
            Poll::Ready(s.take_queued())
        } else {
            s.set_waker(cx.waker());
            Poll::Pending
        }
    })
}
