//! Starting and stopping the whole server: listeners, shard threads, the
//! shutdown signal, and joining with a deadline. A shard failure (see
//! `shard::mesh::Failure`) stops the server and makes [`run`] fail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::Config;
use crate::health::Readiness;
use crate::http::Frontend;
use crate::redirect;
use crate::shard::LinkStarter;
use crate::shard::listener::{self, ListenError};
use crate::shard::mesh::{BACKLOG_LIMIT, Mesh};
use crate::shard::runtime::{self, SHUTDOWN_GRACE, ShardStart};
use crate::tls::{Tls, TlsError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address is unusable (in use, not local, no permission).
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// Cluster mode could not start (credentials, CA, thread).
    #[error("cluster mode: {0}")]
    Cluster(crate::cluster::StartError),
    /// A shard thread or its runtime could not be created.
    #[error("cannot start shard thread: {0}")]
    Thread(std::io::Error),
    /// A bound listener could not be registered with its shard's runtime.
    #[error("cannot register a listener: {0}")]
    Register(std::io::Error),
    /// The static-file root is unusable (missing, not a directory).
    #[error("cannot serve static files: {0}")]
    Statics(std::io::Error),
    /// TLS could not be set up (unreadable or mismatched files, bad CA root, cache).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The peer links' TLS trust could not be set up.
    #[error("{0}")]
    Peer(String),
    /// The metrics listener could not start.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The http->https redirect listener could not start.
    #[error("cannot start the redirect listener on port {port}: {source}")]
    Redirect { port: u16, source: std::io::Error },
}

/// Why [`run`] ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] StartError),
    /// The runtime or the signal handlers of the main thread could not be set up.
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    /// A shard failed (a shard-level panic); the server was stopped.
    #[error("stopped after a shard failure: {0}")]
    ShardFailed(String),
}

/// A running server.
pub struct ServerHandle {
    /// Cluster mode: the link to the shared log.
    cluster: Option<crate::cluster::Cluster>,
    mesh: Arc<Mesh>,
    addrs: Vec<SocketAddr>,
    redirect_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    /// Shard threads, then the redirect and admin threads if any.
    threads: Vec<JoinHandle<()>>,
    tls: Option<Arc<Tls>>,
    readiness: Arc<Readiness>,
}

impl ServerHandle {
    /// The conditions `/readyz` reports; a backend started after the shards
    /// registers its own here.
    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.readiness
    }

    /// The addresses actually bound (ephemeral ports resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The redirect listener's address, with `--redirect`.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect_addr
    }

    /// The metrics listener's address, with `--metrics`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// TLS state (certificate reload, ACME status), when configured.
    pub fn tls(&self) -> Option<&Arc<Tls>> {
        self.tls.as_ref()
    }

    /// Cluster mode: the link to the shared log (its state, for readiness checks).
    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.cluster.as_ref()
    }

    /// The first shard failure, once one happened (the server is then stopping).
    pub fn failure(&self) -> Option<String> {
        self.mesh.failure.reason()
    }

    /// Starts graceful shutdown: stop accepting, Close 1001 to every session.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Shuts down and waits for the shard threads, at most the grace period plus a margin.
    /// Returns false if some thread did not finish in time.
    pub fn stop(self) -> bool {
        self.shutdown();
        let deadline = Instant::now() + SHUTDOWN_GRACE + Duration::from_secs(2);
        for t in &self.threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Some(tls) = &self.tls {
            tls.join();
        }
        // Last: the shards no longer use it.
        if let Some(c) = &self.cluster {
            c.shutdown();
        }
        let all = self.threads.iter().all(|t| t.is_finished());
        for t in self.threads {
            if t.is_finished() {
                let _ = t.join();
            }
        }
        all
    }
}

/// Binds every listener and starts the shards; returns once they accept.
pub fn start(config: Config) -> Result<ServerHandle, StartError> {
    let nofile = listener::raise_nofile_limit();
    tracing::debug!(nofile, "open-file limit");
    let (shutdown, shutdown_rx) = watch::channel(false);
    let statics =
        Arc::new(crate::statics::StaticFiles::new(&config.statics).map_err(StartError::Statics)?);
    let (mut by_shard, addrs) =
        listener::bind_all(&config.listen, config.shards, config.limits.send_buffer)?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    // Dropping `shutdown` on an early return stops whatever already started.
    let tls = Tls::start(&config, shutdown_rx.clone())?;
    // Ready: the listeners accept and, with TLS, a certificate is served.
    // Other parts (a cluster backend) add their conditions the same way.
    let readiness = Arc::new(Readiness::new());
    let listening = readiness.flag("listeners");
    if let Some(tls) = &tls {
        let tls = tls.clone();
        readiness.check("certificate", move || tls.has_certificate());
    }
    let mut threads = Vec::with_capacity(config.shards + 1);
    let mut redirect_addr = None;
    if let Some(port) = config.redirect_port {
        let (bound, thread) = redirect::start(
            &redirect::addresses(&config.listen, port),
            config.statics.domains.clone(),
            config.tls_port,
            shutdown_rx.clone(),
        )
        .map_err(|source| StartError::Redirect { port, source })?;
        redirect_addr = bound.first().copied();
        threads.push(thread);
    }
    let frontend = Arc::new(Frontend::new(
        statics.clone(),
        tls.clone(),
        &config.connections,
        config.write_timeout,
    ));
    let links: Option<LinkStarter> = if config.peers.is_empty() {
        None
    } else {
        let cfg = crate::peer::PeerConfig::new(
            config.peers.clone(),
            config.peer_uid.clone(),
            config.peer_key.clone(),
            config.peer_ca.as_deref(),
        )
        .map_err(StartError::Peer)?;
        Some(crate::peer::link_starter(Arc::new(cfg)))
    };
    let inbox_limit = config.limits.inbox_limit.unwrap_or(BACKLOG_LIMIT);
    let (mesh, inboxes) = Mesh::with_limit(config.shards, inbox_limit);
    mesh.memory.set_limit(config.limits.max_memory);
    let cluster = match &config.cluster {
        Some(settings) => {
            let prober = Arc::new(crate::shard::ShardProber { mesh: mesh.clone() });
            let c = crate::cluster::Cluster::start(settings.clone(), prober)
                .map_err(StartError::Cluster)?;
            tracing::info!(nats = ?settings.servers_for_log(), node = %c.node(), "cluster mode: connecting to NATS");
            // Without the shared log a node can take no joins: not ready.
            let link = c.clone();
            readiness.check("nats connected", move || {
                link.state() == crate::cluster::LinkState::Up
            });
            Some(c)
        }
        None => None,
    };
    let mut metrics_addr = None;
    if let Some(addr) = config.metrics {
        let admin = crate::admin::Admin {
            mesh: mesh.clone(),
            frontend: frontend.clone(),
            statics: statics.clone(),
            readiness: readiness.clone(),
        };
        let (bound, thread) = crate::admin::start(addr, admin, shutdown_rx.clone())
            .map_err(|source| StartError::Metrics { addr, source })?;
        metrics_addr = Some(bound);
        threads.push(thread);
    }
    let runtimes = (0..config.shards)
        .map(|_| runtime::build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(StartError::Thread)?;
    let registered = runtimes
        .iter()
        .zip(by_shard.iter_mut())
        .map(|(rt, l)| runtime::register(rt, std::mem::take(l)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(StartError::Register)?;
    for (((id, inbox), rt), listeners) in inboxes
        .into_iter()
        .enumerate()
        .zip(runtimes)
        .zip(registered)
    {
        let start = ShardStart {
            id: id as u16,
            cpu: (!config.cpus.is_empty()).then(|| config.cpus[id % config.cpus.len()]),
            listeners,
            inbox,
            mesh: mesh.clone(),
            limits: config.limits.clone(),
            frontend: frontend.clone(),
            links: links.clone(),
            sequencer: None,
            cluster: cluster.clone(),
            shutdown: shutdown_rx.clone(),
        };
        match runtime::spawn(start, rt) {
            Ok(t) => threads.push(t),
            Err(e) => {
                shutdown.send_replace(true);
                return Err(StartError::Thread(e));
            }
        }
    }
    tracing::info!(shards = config.shards, addrs = ?addrs, "listening");
    listening.set(true);
    Ok(ServerHandle {
        cluster,
        mesh,
        readiness,
        addrs,
        redirect_addr,
        metrics_addr,
        shutdown,
        threads,
        tls,
    })
}

/// Runs until SIGINT or SIGTERM, then shuts down gracefully; a shard
/// failure stops it too, with an error.
pub fn run(config: Config) -> Result<(), RunError> {
    // Everything this thread needs (its runtime, the signal handlers) is set
    // up before the listeners open: once they accept, a flood of connections
    // may take every free file descriptor.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Signals)?;
    let (mut term, mut int, mut hup) = rt
        .block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                // SIGHUP reloads certificate files (the tls module listens too); it never terminates.
                signal(SignalKind::hangup())?,
            ))
        })
        .map_err(RunError::Signals)?;
    let handle = start(config)?;
    let mesh = handle.mesh.clone();
    let failed = rt.block_on(async {
        loop {
            tokio::select! {
                _ = term.recv() => break tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => break tracing::info!("SIGINT: shutting down"),
                _ = hup.recv() => tracing::info!("SIGHUP received"),
                _ = mesh.failure.wait() => break,
            }
        }
        mesh.failure.reason()
    });
    if !handle.stop() {
        tracing::warn!("some shards did not stop in time");
    }
    match failed {
        Some(why) => Err(RunError::ShardFailed(why)),
        None => Ok(()),
    }
}
