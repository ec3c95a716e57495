//! ACME mode: one certificate covering every `--domains` name, obtained and
//! renewed through rustls-acme with TLS-ALPN-01 on the TLS port.
//!
//! There is one driver per process: the rustls-acme state stream, polled on
//! its own thread with its own tokio runtime. It loads the cached account
//! and certificate, orders when there is none or renewal is due (at two
//! thirds of the validity), retries failures with back-off (rustls-acme's:
//! 1 s doubling up to about 18 h) and swaps the new certificate into the
//! shared resolver. A failed renewal leaves the current certificate serving.
//!
//! This module never accepts connections; `Tls::accept` routes challenge
//! handshakes to [`Driver::challenge_resolver`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use futures_util::StreamExt;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};
use rustls_acme::caches::DirCache;
use rustls_acme::{AccountCache, CertCache};
use rustls_acme::{AcmeConfig, AcmeState, EventOk, ResolvesServerCertAcme};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::signal::unix::Signal;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::TlsError;
use super::inspect::Served;
use crate::config::AcmeSettings;

/// What the ACME driver has done since start (for logs, tests and health checks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcmeStatus {
    /// Certificates loaded from `--cache` and deployed (0 or 1 per start).
    pub cached_deployed: u64,
    /// Certificates newly ordered from the CA and deployed.
    pub new_deployed: u64,
    /// Failed steps (orders, cache reads or writes); each is logged with its cause.
    pub failures: u64,
    /// Of those, failed certificate orders (the CA refused, validation failed).
    pub order_failures: u64,
    /// The cause of the latest failure.
    pub last_error: Option<String>,
}

impl AcmeStatus {
    /// Whether a certificate is being served.
    pub fn has_certificate(&self) -> bool {
        self.cached_deployed + self.new_deployed > 0
    }
}

/// The driver's status, shared with `Tls`.
#[derive(Debug, Default)]
pub(crate) struct StatusCell(Mutex<AcmeStatus>);

impl StatusCell {
    pub(crate) fn get(&self) -> AcmeStatus {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut AcmeStatus)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// The started ACME driver and the resolvers `Tls` builds its configs from.
pub(crate) struct Driver {
    /// Regular handshakes: the current certificate, for configured names only.
    pub(crate) resolver: Arc<dyn ResolvesServerCert>,
    /// TLS-ALPN-01 validation handshakes.
    pub(crate) challenge_resolver: Arc<dyn ResolvesServerCert>,
    pub(crate) status: Arc<StatusCell>,
    pub(crate) thread: JoinHandle<()>,
}

/// Checks the settings, then starts the driver thread. The server can accept
/// at once; handshakes fail until the first certificate is deployed.
pub(crate) fn start(
    settings: &AcmeSettings,
    provider: Arc<CryptoProvider>,
    served: Arc<Served>,
    shutdown: watch::Receiver<bool>,
) -> Result<Driver, TlsError> {
    let contacts = settings.emails.iter().map(|e| {
        if e.starts_with("mailto:") {
            e.clone()
        } else {
            format!("mailto:{e}")
        }
    });
    let base = match &settings.ca_root {
        Some(path) => AcmeConfig::new_with_client_config(
            &settings.domains,
            client_config(path, provider.clone())?,
        ),
        None => AcmeConfig::new_with_provider(&settings.domains, provider.clone()),
    };
    match &settings.cache {
        Some(dir) => prepare_cache(dir)?,
        None => warn!(
            "no --cache: the ACME account and certificate are not kept, every start orders anew \
             (Let's Encrypt rate limits apply)"
        ),
    }
    // Always pass the directory: rustls-acme's own default is Let's Encrypt staging.
    let state = base
        .directory(&settings.directory)
        .contact(contacts)
        .cache(Recording {
            dir: settings.cache.clone().map(DirCache::new),
            served,
        })
        .state();

    let acme_resolver = state.resolver();
    let resolver = Arc::new(KnownNames {
        inner: acme_resolver.clone(),
        domains: settings.domains.clone(),
    });
    let status = Arc::new(StatusCell::default());

    let thread_error = |source| TlsError::Thread {
        name: "ACME driver",
        source,
    };
    info!(domains = ?settings.domains, directory = %settings.directory, "ACME: one certificate for all domains");
    let thread = crate::background::spawn(
        "mles-acme",
        // SIGHUP reloads certificate files; here it must not kill the process.
        || Ok(super::listen_for_hangup()),
        {
            let status = status.clone();
            move |hangup| drive(state, status, hangup, shutdown)
        },
    )
    .map_err(thread_error)?;
    Ok(Driver {
        resolver,
        challenge_resolver: acme_resolver,
        status,
        thread,
    })
}

/// Polls the rustls-acme state until shutdown, logging every event.
async fn drive(
    mut state: AcmeState<std::io::Error, std::io::Error>,
    status: Arc<StatusCell>,
    mut hangup: Option<Signal>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        tokio::select! {
            event = state.next() => match event {
                Some(Ok(ok)) => {
                    match ok {
                        EventOk::DeployedCachedCert => info!("ACME: serving the cached certificate"),
                        EventOk::DeployedNewCert => info!("ACME: new certificate deployed"),
                        EventOk::CertCacheStore => debug!("ACME: certificate stored in the cache"),
                        EventOk::AccountCacheStore => debug!("ACME: account stored in the cache"),
                    }
                    status.update(|s| match ok {
                        EventOk::DeployedCachedCert => s.cached_deployed += 1,
                        EventOk::DeployedNewCert => s.new_deployed += 1,
                        _ => {}
                    });
                }
                Some(Err(error)) => {
                    let cause = error.to_string();
                    warn!(error = %cause, "ACME step failed; retrying with back-off, the current certificate (if any) keeps serving");
                    let order = matches!(
                        error,
                        rustls_acme::EventError::Order(_) | rustls_acme::EventError::NewCertParse(_)
                    );
                    status.update(|s| {
                        s.failures += 1;
                        s.order_failures += u64::from(order);
                        s.last_error = Some(cause);
                    });
                }
                None => return,
            },
            Some(()) = super::next_signal(&mut hangup) => {
                info!("SIGHUP: nothing to reload, ACME certificates renew by themselves");
            }
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// The cache rustls-acme reads and writes certificates through: the
/// `--cache` directory when there is one, and in every case a look at each
/// certificate loaded or stored, which is the one about to be served.
struct Recording {
    dir: Option<DirCache<PathBuf>>,
    served: Arc<Served>,
}

impl Recording {
    /// The leaf of a rustls-acme PEM bundle (private key first, then the chain).
    fn record(&self, pem: &[u8], trigger: &'static str) {
        let leaf = CertificateDer::pem_slice_iter(pem).find_map(Result::ok);
        match leaf {
            Some(der) => self.served.record(&der, trigger),
            None => debug!("ACME: no certificate in the bundle to log"),
        }
    }
}

#[async_trait::async_trait]
impl CertCache for Recording {
    type EC = std::io::Error;

    async fn load_cert(
        &self,
        domains: &[String],
        directory: &str,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let pem = dir.load_cert(domains, directory).await?;
        if let Some(pem) = &pem {
            self.record(pem, "cached");
        }
        Ok(pem)
    }

    async fn store_cert(
        &self,
        domains: &[String],
        directory: &str,
        cert: &[u8],
    ) -> std::io::Result<()> {
        // rustls-acme stores a new certificate right after deploying it.
        self.record(cert, "new");
        match &self.dir {
            Some(dir) => dir.store_cert(domains, directory, cert).await,
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl AccountCache for Recording {
    type EA = std::io::Error;

    async fn load_account(
        &self,
        contact: &[String],
        directory: &str,
    ) -> std::io::Result<Option<Vec<u8>>> {
        match &self.dir {
            Some(dir) => dir.load_account(contact, directory).await,
            None => Ok(None),
        }
    }

    async fn store_account(
        &self,
        contact: &[String],
        directory: &str,
        account: &[u8],
    ) -> std::io::Result<()> {
        match &self.dir {
            Some(dir) => dir.store_account(contact, directory, account).await,
            None => Ok(()),
        }
    }
}

/// The ACME certificate, only for the configured names: an SNI naming
/// another host is refused (no certificate, so the handshake fails); a
/// client that sends no SNI gets the certificate, which covers the first
/// domain (and all the others).
#[derive(Debug)]
struct KnownNames {
    inner: Arc<ResolvesServerCertAcme>,
    domains: Vec<String>,
}

impl ResolvesServerCert for KnownNames {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            let name = name.strip_suffix('.').unwrap_or(name);
            if !self.domains.iter().any(|d| d.eq_ignore_ascii_case(name)) {
                debug!(sni = name, "refusing a handshake for an unknown name");
                return None;
            }
        }
        self.inner.resolve(hello)
    }
}

/// A client config for the ACME directory that trusts only the roots in `path`.
fn client_config(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|source| TlsError::BadCaRoot {
            path: path.to_owned(),
            source,
        })?;
    }
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Makes sure the cache directory exists (created private, 0700) and is
/// writable now, rather than failing after a certificate was issued.
fn prepare_cache(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let cache_error = |source| TlsError::Cache {
        path: dir.to_owned(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            return Err(cache_error(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                warn!(cache = %dir.display(), "the ACME cache holds private keys but is readable by others (chmod 700 it)");
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(cache_error)?;
        }
        Err(e) => return Err(cache_error(e)),
    }
    let probe: PathBuf = dir.join(".mles-write-test");
    std::fs::write(&probe, b"").map_err(cache_error)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
