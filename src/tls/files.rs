//! Certificate-file mode: the chain and key from PEM files, a resolver whose
//! certificate can be swapped, and the watcher thread that reloads it when
//! the files change (polled) or on SIGHUP.
//!
//! A reload that fails (half-written file, key that does not match) keeps the
//! certificate in use and logs why; it never touches live connections.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::signal::unix::Signal;
use tokio::sync::watch;
use tracing::{info, warn};

use super::TlsError;
use super::inspect::Served;

/// How often the watcher looks at the files' metadata. A renewal tool
/// rewrites them a few times a year; two seconds is quick enough for an
/// operator watching the log and costs two `stat` calls.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The certificate files and the certificate currently served from them.
#[derive(Debug)]
pub(crate) struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    reloaded: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// What the served certificate says, for logs and metrics.
    served: Arc<Served>,
}

/// Reloads of the certificate files since start (watcher, SIGHUP and
/// [`super::Tls::reload_now`] together).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStats {
    /// Reloads that swapped a certificate in.
    pub reloaded: u64,
    /// Reloads that failed and kept the previous certificate.
    pub failed: u64,
    /// Why the latest failed reload failed.
    pub last_error: Option<String>,
}

impl FileCert {
    /// Loads the files; any problem is an error (the server does not start).
    pub(crate) fn load(
        cert: PathBuf,
        key: PathBuf,
        provider: Arc<CryptoProvider>,
        served: Arc<Served>,
    ) -> Result<FileCert, TlsError> {
        let current = read_certified_key(&cert, &key, &provider)?;
        served.record(&current.cert[0], "start");
        Ok(FileCert {
            served,
            cert,
            key,
            provider,
            current: RwLock::new(Arc::new(current)),
            reloaded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    pub(crate) fn paths(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }

    /// Reads the files again and swaps the certificate in; on error the old one stays.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        self.reload_because("reload")
    }

    fn reload_because(&self, trigger: &'static str) -> Result<(), TlsError> {
        match read_certified_key(&self.cert, &self.key, &self.provider) {
            Ok(fresh) => {
                self.served.record(&fresh.cert[0], trigger);
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
                self.reloaded.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
                self.failed.fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    pub(crate) fn stats(&self) -> ReloadStats {
        ReloadStats {
            reloaded: self.reloaded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Reloads and logs the outcome; `why` says what triggered it.
    fn reload_logged(&self, why: &'static str) {
        match self.reload_because(why) {
            Ok(()) => info!(cert = %self.cert.display(), trigger = why, "certificate reloaded"),
            Err(error) => {
                warn!(%error, trigger = why, "certificate reload failed; still serving the previous certificate")
            }
        }
    }

    /// What changes when either file is rewritten, replaced or re-linked.
    fn stamp(&self) -> [Option<FileStamp>; 2] {
        [FileStamp::of(&self.cert), FileStamp::of(&self.key)]
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// Modification time, size and identity of a file (following symlinks, so a
/// re-pointed `live/` link counts as a change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Reads a PEM chain and key and checks that they belong together.
fn read_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let pem_error = |path: &Path, e: rustls_pki_types::pem::Error| TlsError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    };

    let cert_pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }

    let key_pem = read(key)?;
    let key_der = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(der) => der,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsError::NoPrivateKey(key.to_owned()));
        }
        Err(e) => return Err(pem_error(key, e)),
    };
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| TlsError::UnsupportedKey {
            path: key.to_owned(),
            source,
        })?;

    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // ring can always tell; an "unknown" answer is not a mismatch.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(source) => Err(TlsError::KeyMismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        }),
    }
}

/// Starts the thread that reloads `files` when they change or on SIGHUP,
/// until `shutdown` becomes true. SIGHUP is registered before this returns.
pub(crate) fn spawn_watcher(
    files: Arc<FileCert>,
    shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, TlsError> {
    let thread_error = |source| TlsError::Thread {
        name: "certificate watcher",
        source,
    };
    crate::background::spawn(
        "mles-tls-watch",
        || Ok(super::listen_for_hangup()),
        move |hangup| watch_files(files, hangup, shutdown),
    )
    .map_err(thread_error)
}

async fn watch_files(
    files: Arc<FileCert>,
    mut hangup: Option<Signal>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seen = files.stamp();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        tokio::select! {
            _ = tick.tick() => {
                // Stamp before reading: a write that lands during the read
                // changes the stamp again and is picked up next tick.
                let now = files.stamp();
                if now != seen {
                    seen = now;
                    files.reload_logged("files changed");
                }
            }
            Some(()) = super::next_signal(&mut hangup) => {
                seen = files.stamp();
                files.reload_logged("SIGHUP");
            }
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
