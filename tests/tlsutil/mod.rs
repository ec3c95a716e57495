//! Helpers for the TLS tests: a throw-away CA (rcgen), a TLS listener that
//! hands accepted connections to `Tls::accept` and echoes lines back, and a
//! client that trusts only the given roots.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use mles::config::{Cli, Config};
use mles::tls::Tls;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Every await in these tests is bounded by this.
pub const STEP: Duration = Duration::from_secs(10);

/// A test certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert: CertificateDer<'static>,
    pub pem: String,
}

/// A leaf certificate and its key, as PEM and DER.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        roots
    }
}

impl Leaf {
    /// Writes the chain and key where the server reads them.
    pub fn write(&self, cert: &Path, key: &Path) {
        std::fs::write(cert, &self.cert_pem).unwrap();
        std::fs::write(key, &self.key_pem).unwrap();
    }

    /// Writes both files next to their targets, then renames them over (as renewal tools do).
    pub fn write_atomically(&self, cert: &Path, key: &Path) {
        let tmp_cert = cert.with_extension("new");
        let tmp_key = key.with_extension("new");
        self.write(&tmp_cert, &tmp_key);
        std::fs::rename(&tmp_cert, cert).unwrap();
        std::fs::rename(&tmp_key, key).unwrap();
    }
}

/// A configuration parsed like the command line (`mles <args>`).
pub fn config(args: &[&str]) -> Config {
    let mut argv = vec!["mles"];
    argv.extend_from_slice(args);
    Config::from_cli(Cli::parse_from(argv), None).unwrap()
}

/// Certificate-file configuration.
pub fn files_config(cert: &Path, key: &Path) -> Config {
    config(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
}

/// Accepts on `listener` through `tls.accept` and echoes lines on each TLS
/// connection, the way a shard would run its sessions.
pub fn serve_on(listener: TcpListener, tls: Arc<Tls>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let Some(stream) = tls.accept(tcp).await else {
                    return;
                };
                let (read, mut write) = tokio::io::split(stream);
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    })
}

pub async fn serve(tls: Arc<Tls>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, serve_on(listener, tls))
}

/// A client config trusting only `roots`, offering ALPN `http/1.1`.
pub fn client(roots: RootCertStore) -> Arc<ClientConfig> {
    mles::tls::install_crypto_provider();
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // A resumed session reports the certificate of the session it resumes;
    // these tests look at the certificate each new handshake gets.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Connects and completes a handshake for `name` (sent as SNI unless the config disables it).
pub async fn connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(STEP, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// The end-entity certificate the server presented.
pub fn leaf_of(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// Sends a line and expects it back.
pub async fn echo(stream: &mut TlsStream<TcpStream>, line: &str) {
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; line.len() + 1];
    tokio::time::timeout(STEP, stream.read_exact(&mut buf))
        .await
        .expect("echo timed out")
        .unwrap();
    assert_eq!(buf, format!("{line}\n").as_bytes());
}

/// Polls `check` until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebSocket over TLS (what a browser's `wss://` gives).
pub type Wss = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

/// Opens `wss://name:port/` with the mles subprotocol and sends the header for (uid, channel).
pub async fn wss_join(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
    uid: &str,
    channel: &str,
) -> Wss {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tls = connect(addr, name, config).await.expect("TLS handshake");
    let mut req = format!("wss://{name}:{}/", addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mles-websocket".parse().unwrap());
    let (mut ws, resp) = tokio::time::timeout(STEP, tokio_tungstenite::client_async(req, tls))
        .await
        .expect("upgrade in time")
        .expect("upgrade succeeds");
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "mles-websocket"
    );
    let header = serde_json::json!({"uid": uid, "channel": channel}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::text(header))
        .await
        .unwrap();
    ws
}

/// The next text frame (pings skipped).
pub async fn wss_text(ws: &mut Wss) -> String {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(STEP, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Two members on one channel over wss: history, live header, relay both ways.
pub async fn wss_relay_check(addr: SocketAddr, name: &str, config: Arc<ClientConfig>) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut alice = wss_join(addr, name, config.clone(), "alice", "tls-channel").await;
    let mut bob = wss_join(addr, name, config, "bob", "tls-channel").await;
    assert!(
        wss_text(&mut bob).await.contains("\"alice\""),
        "history: alice's header"
    );
    assert!(
        wss_text(&mut alice).await.contains("\"bob\""),
        "live: bob's header"
    );
    alice.send(Message::text("hello over tls")).await.unwrap();
    assert_eq!(wss_text(&mut bob).await, "hello over tls");
    bob.send(Message::text("hi back")).await.unwrap();
    assert_eq!(wss_text(&mut alice).await, "hi back");
}
