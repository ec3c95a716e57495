//! Peer links (PROTOCOL.md §7): the server itself joins each of its channels
//! on every configured peer server, as an ordinary client.
//!
//! A link is a task on the channel's owner shard plus a socket-less member
//! session: frames of local members reach it like any member and go to the
//! peer; frames from the peer are published into the channel with `origin`
//! = the link, so they never go back over it, and with de-duplication, so
//! the history a peer replays on (re)connect adds nothing twice and mutual
//! links cannot loop. On joining, the link gets the channel's history and
//! sends it to the peer: a resync. A lost link reconnects with back-off.

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

use crate::protocol::SUBPROTOCOL;
use crate::protocol::frame::{self, OP_BINARY, OP_CLOSE, OP_TEXT};
use crate::session::{Host, Session};
use crate::shard::{LinkStarter, Shard};

/// First pause after a failed or lost link; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Connect + TLS + upgrade must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The peers every channel is linked to, shared by all shards.
#[derive(Debug)]
pub struct PeerConfig {
    /// `ws://` or `wss://` URLs.
    pub urls: Vec<String>,
    /// The uid this server's links present to peers.
    pub uid: String,
    /// Trust for `wss://` peers.
    pub tls: Arc<rustls::ClientConfig>,
}

impl PeerConfig {
    /// Builds the TLS client side: public roots, or only those in `ca` (PEM).
    pub fn new(urls: Vec<String>, uid: String, ca: Option<&Path>) -> Result<PeerConfig, String> {
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
            tls: Arc::new(tls),
        })
    }
}

/// What the shards call when a channel they own gets its first client: one
/// link task per peer, on that shard.
pub fn link_starter(cfg: Arc<PeerConfig>) -> LinkStarter {
    Arc::new(move |shard: &Rc<Shard>, channel: Arc<str>| {
        for url in &cfg.urls {
            let task = run_link(shard.clone(), cfg.clone(), channel.clone(), url.clone());
            tokio::task::spawn_local(task);
        }
    })
}

/// Keeps `channel` linked to the peer at `url` until shutdown, or until the
/// channel has no local clients left.
pub async fn run_link(shard: Rc<Shard>, cfg: Arc<PeerConfig>, channel: Arc<str>, url: String) {
    let mut backoff = FIRST_BACKOFF;
    while !shard.is_shutting_down() {
        let result = match tokio::time::timeout(CONNECT_TIMEOUT, connect(&cfg, &url)).await {
            Ok(Ok(conn)) => {
                backoff = FIRST_BACKOFF; // connected: a later loss starts the back-off afresh
                match conn {
                    Conn::Plain(ws) => linked(&shard, &cfg, &channel, &url, ws).await,
                    Conn::Tls(ws) => linked(&shard, &cfg, &channel, &url, ws).await,
                }
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err("connect timed out".to_string()),
        };
        match result {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(peer = %url, channel = %channel, error = %e, "peer link failed")
            }
        }
        if shard.is_shutting_down() {
            break;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
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

/// Relays between the channel and a connected peer. `Ok` when the link was
/// closed because its channel has no local clients left; `Err` when it was
/// lost and should reconnect.
async fn linked<S>(
    shard: &Rc<Shard>,
    cfg: &PeerConfig,
    channel: &Arc<str>,
    url: &str,
    mut ws: WebSocketStream<S>,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // "peer": the other server de-duplicates what this link sends (PROTOCOL.md §7).
    let header =
        serde_json::json!({ "uid": cfg.uid, "channel": &**channel, "peer": true }).to_string();
    ws.send(Message::text(header))
        .await
        .map_err(|e| e.to_string())?;
    let m = Membership {
        shard,
        session: shard.new_session(),
    };
    m.session.begin_join();
    shard.join_link(m.session.id, channel.clone(), link_uid(url));
    tracing::info!(peer = %url, channel = %channel, "peer link up");
    loop {
        tokio::select! {
            msg = ws.next() => {
                let f = match msg {
                    Some(Ok(Message::Text(t))) => frame::encode(OP_TEXT, t.as_bytes()),
                    Some(Ok(Message::Binary(b))) => frame::encode(OP_BINARY, &b),
                    Some(Ok(Message::Close(c))) => return Err(format!("peer closed the link: {c:?}")),
                    Some(Ok(_)) => {
                        m.session.touch_rx();
                        continue;
                    }
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("peer ended the connection".to_string()),
                };
                m.session.touch_rx();
                if let Some(key) = m.session.key() {
                    shard.publish(key, m.session.id, f, true);
                }
            }
            frames = queued(&m.session) => {
                for f in frames {
                    let payload = f.slice(f.len() - frame::payload_of(&f).len()..);
                    let msg = match f[0] & 0x0F {
                        OP_TEXT => Message::Text(Utf8Bytes::try_from(payload).map_err(|e| e.to_string())?),
                        OP_BINARY => Message::Binary(payload),
                        OP_CLOSE => {
                            let _ = ws.close(None).await;
                            return match m.session.close_code() {
                                // The channel emptied (CHANNEL_EMPTY): the link is no longer needed.
                                1000 => Ok(()),
                                // Shutdown (1001), or a peer too slow for the queue bound (1013).
                                code => Err(format!("link closed locally ({code})")),
                            };
                        }
                        _ => continue, // our own keepalive pings: the peer pings us itself
                    };
                    ws.feed(msg).await.map_err(|e| e.to_string())?;
                }
                ws.flush().await.map_err(|e| e.to_string())?;
            }
        }
    }
}

/// The member uid of the link to `url`: NUL-prefixed, so no client uid
/// collides with it and the owner can tell links from clients.
pub fn link_uid(url: &str) -> Arc<str> {
    format!("\0peer\0{url}").into()
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
