//! TLS for the server: one rustls `ServerConfig` shared by every shard, whose
//! certificate comes from PEM files (reloaded on change or SIGHUP, see
//! `files.rs`) or from an ACME CA through rustls-acme (see `acme.rs`).
//!
//! The `ServerConfig` is built once and never replaced: its certificate
//! resolver is what changes, so a reload or an ACME renewal needs no restart
//! and drops no connection. The whole process uses one rustls crypto
//! provider, `ring`.
//!
//! This module owns the handshake and the background threads that keep the
//! certificate fresh; it knows nothing of HTTP or WebSocket.

mod acme;
mod files;
mod inspect;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{Acceptor, ResolvesServerCert};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use crate::config::{Config, TlsChoice};

pub use acme::AcmeStatus;
pub use files::ReloadStats;
pub use inspect::CertInfo;

/// How long a client has for the whole TLS handshake. Long enough for a slow
/// mobile link (a few round trips of a second each), short enough that
/// half-open connections do not pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The only application protocol spoken over TLS.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why TLS could not be set up (at start, or on a reload that keeps the old certificate).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// A PEM file is malformed.
    #[error("{path} is not valid PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    /// The certificate file holds no certificate.
    #[error("no certificate found in {0}")]
    NoCertificate(PathBuf),
    /// The key file holds no private key.
    #[error("no private key found in {0}")]
    NoPrivateKey(PathBuf),
    /// The private key is of a kind rustls cannot sign with.
    #[error("unsupported private key in {path}: {source}")]
    UnsupportedKey {
        path: PathBuf,
        source: rustls::Error,
    },
    /// The private key does not belong to the first certificate of the chain.
    #[error("private key {key} does not match certificate {cert}: {source}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    /// A root in the `--acme-ca-root` file is not a usable trust anchor.
    #[error("bad CA root in {path}: {source}")]
    BadCaRoot {
        path: PathBuf,
        source: rustls::Error,
    },
    /// The ACME cache directory cannot be created or used.
    #[error("ACME cache directory {path}: {source}")]
    Cache { path: PathBuf, source: io::Error },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A background thread (ACME driver, file watcher) could not be started.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        name: &'static str,
        source: io::Error,
    },
}

/// TLS for all shards: one shared `ServerConfig` with a swappable certificate.
pub struct Tls {
    /// Regular connections: ALPN `http/1.1`, the current certificate.
    config: Arc<ServerConfig>,
    /// ACME only: TLS-ALPN-01 challenge connections (ALPN `acme-tls/1`).
    challenge: Option<Arc<ServerConfig>>,
    /// Certificate-file mode only: what [`Tls::reload_now`] reloads.
    files: Option<Arc<files::FileCert>>,
    /// ACME mode only: what the driver has done so far.
    acme_status: Option<Arc<acme::StatusCell>>,
    /// The background thread (ACME driver or file watcher); it ends on shutdown.
    background: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// What the served certificate says (names, expiry).
    served: Arc<inspect::Served>,
    /// Handshakes that failed or timed out (ACME validations not counted).
    handshake_failures: AtomicU64,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("acme", &self.challenge.is_some())
            .field("files", &self.files.as_ref().map(|f| f.paths()))
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Builds TLS for the configured mode (`Ok(None)` for [`TlsChoice::Plain`]).
    ///
    /// Starts what runs in the background on its own thread: the single ACME
    /// driver for the process, or the certificate-file watcher + SIGHUP
    /// reload. It ends when `shutdown` becomes true (or its sender is
    /// dropped). SIGHUP is handled in both modes (in ACME mode only logged),
    /// so the signal never terminates a TLS server.
    ///
    /// Unreadable or mismatched files at start, a bad CA root file or an
    /// unusable cache directory are errors. The caller's runtimes need the
    /// time driver (`accept` has a timeout).
    pub fn start(
        config: &Config,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Option<Arc<Tls>>, TlsError> {
        let provider = install_crypto_provider();
        let served = Arc::new(inspect::Served::new(&config.statics.domains));
        match &config.tls {
            TlsChoice::Plain => Ok(None),
            TlsChoice::Files { cert, key } => {
                let files = Arc::new(files::FileCert::load(
                    cert.clone(),
                    key.clone(),
                    provider.clone(),
                    served.clone(),
                )?);
                let config = server_config(&provider, files.clone(), ALPN_HTTP11, true)?;
                let watcher = files::spawn_watcher(files.clone(), shutdown)?;
                Ok(Some(Arc::new(Tls {
                    config,
                    challenge: None,
                    files: Some(files),
                    acme_status: None,
                    background: std::sync::Mutex::new(Some(watcher)),
                    served,
                    handshake_failures: AtomicU64::new(0),
                })))
            }
            TlsChoice::Acme(settings) => {
                let driver = acme::start(settings, provider.clone(), served.clone(), shutdown)?;
                let config = server_config(&provider, driver.resolver, ALPN_HTTP11, true)?;
                let challenge = server_config(
                    &provider,
                    driver.challenge_resolver,
                    rustls_acme::acme::ACME_TLS_ALPN_NAME,
                    false,
                )?;
                Ok(Some(Arc::new(Tls {
                    config,
                    challenge: Some(challenge),
                    files: None,
                    acme_status: Some(driver.status),
                    background: std::sync::Mutex::new(Some(driver.thread)),
                    served,
                    handshake_failures: AtomicU64::new(0),
                })))
            }
        }
    }

    /// Runs the TLS handshake on an accepted TCP connection, within
    /// [`HANDSHAKE_TIMEOUT`].
    ///
    /// Returns `None` (after logging at debug) when the handshake fails or
    /// times out, and for ACME TLS-ALPN-01 challenge connections, which it
    /// completes itself.
    pub async fn accept(&self, tcp: TcpStream) -> Option<TlsStream<TcpStream>> {
        // The peer address is only for debug logs; skip the syscall otherwise.
        let peer = if tracing::enabled!(tracing::Level::DEBUG) {
            tcp.peer_addr().ok()
        } else {
            None
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(tcp)).await {
            Ok(Ok(Some(tls))) => Some(tls),
            Ok(Ok(None)) => {
                debug!(?peer, "answered an ACME TLS-ALPN-01 challenge");
                None
            }
            Ok(Err(error)) => {
                self.handshake_failures.fetch_add(1, Ordering::Relaxed);
                debug!(?peer, %error, "tls handshake failed");
                None
            }
            Err(_) => {
                self.handshake_failures.fetch_add(1, Ordering::Relaxed);
                debug!(?peer, "tls handshake timed out");
                None
            }
        }
    }

    async fn handshake(&self, tcp: TcpStream) -> io::Result<Option<TlsStream<TcpStream>>> {
        let Some(challenge) = &self.challenge else {
            return tokio_rustls::TlsAcceptor::from(self.config.clone())
                .accept(tcp)
                .await
                .map(Some);
        };
        // ACME: read the ClientHello first; a TLS-ALPN-01 validation gets the
        // challenge certificate, everything else the current one.
        let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await?;
        if rustls_acme::is_tls_alpn_challenge(&start.client_hello()) {
            let mut tls = start.into_stream(challenge.clone()).await?;
            // The validator only needs the handshake; close politely.
            let _ = tls.shutdown().await;
            return Ok(None);
        }
        start.into_stream(self.config.clone()).await.map(Some)
    }

    /// Reloads the certificate files now (what SIGHUP does). On error the old
    /// certificate stays in use. Without certificate files this does nothing.
    pub fn reload_now(&self) -> Result<(), TlsError> {
        match &self.files {
            Some(files) => files.reload(),
            None => Ok(()),
        }
    }

    /// Certificate-file reloads so far (`None` outside certificate-file mode).
    pub fn reload_stats(&self) -> Option<ReloadStats> {
        self.files.as_ref().map(|f| f.stats())
    }

    /// What the ACME driver has done so far (`None` outside ACME mode).
    pub fn acme_status(&self) -> Option<AcmeStatus> {
        self.acme_status.as_ref().map(|s| s.get())
    }

    /// Whether a certificate is being served (certificate files: always,
    /// since they are loaded before the server starts; ACME: once the first
    /// one is deployed).
    pub fn has_certificate(&self) -> bool {
        self.acme_status().is_none_or(|s| s.has_certificate())
    }

    /// Appends this TLS state's metrics (Prometheus text format): seconds of
    /// certificate validity left per domain, failed handshakes, and in ACME
    /// mode failed orders.
    pub fn render_metrics(&self, out: &mut String) {
        use crate::metrics::{family, label_value, sample};
        let left = self.served.seconds_left();
        if !left.is_empty() {
            let name = "mles_tls_certificate_expiry_seconds";
            family(
                out,
                name,
                "gauge",
                "Seconds until the served certificate expires, per domain (0: expired or not covered).",
            );
            for (domain, secs) in left {
                let labels = format!("domain=\"{}\"", label_value(&domain));
                sample(out, name, &labels, secs.max(0));
            }
        }
        let name = "mles_tls_handshake_failures_total";
        family(
            out,
            name,
            "counter",
            "TLS handshakes that failed or timed out.",
        );
        sample(
            out,
            name,
            "",
            self.handshake_failures.load(Ordering::Relaxed),
        );
        if let Some(status) = self.acme_status() {
            let name = "mles_acme_order_failures_total";
            family(out, name, "counter", "ACME certificate orders that failed.");
            sample(out, name, "", status.order_failures);
            let name = "mles_acme_failures_total";
            family(
                out,
                name,
                "counter",
                "Failed ACME steps of any kind (orders, cache reads and writes).",
            );
            sample(out, name, "", status.failures);
        }
    }

    /// Waits for the background thread to end (it ends once shutdown is
    /// signalled). Returns at once when it was already joined.
    pub fn join(&self) {
        let handle = self
            .background
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Installs `ring` as the process's rustls crypto provider (tolerating one
/// installed before, as tests do) and returns the provider our configs use.
pub fn install_crypto_provider() -> Arc<CryptoProvider> {
    // Err means a provider is already installed; ours is built explicitly below anyway.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config: TLS 1.3 and 1.2 only, one ALPN protocol; session
/// tickets on for regular connections (`tickets`), not for ACME validators.
fn server_config(
    provider: &Arc<CryptoProvider>,
    resolver: Arc<dyn ResolvesServerCert>,
    alpn: &[u8],
    tickets: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![alpn.to_vec()];
    // Stateless resumption saves returning clients a full handshake; the
    // ticket keys rotate in memory and never touch disk.
    if tickets {
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    }
    Ok(Arc::new(config))
}

/// Registers for SIGHUP on the runtime entered (so the signal no longer
/// terminates the process). `None`, after a warning, when that is impossible.
fn listen_for_hangup() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(sig) => Some(sig),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP");
            None
        }
    }
}

/// The next delivery of `sig`; never, when there is none.
async fn next_signal(sig: &mut Option<Signal>) -> Option<()> {
    match sig {
        Some(sig) => sig.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    /// The shards share one `Tls` through `Arc` across threads.
    #[test]
    fn tls_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::Tls>();
    }
}
