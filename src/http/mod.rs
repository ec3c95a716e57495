//! The HTTP side of a connection: TLS (if configured), HTTP/1.1 through
//! hyper, then either the WebSocket upgrade into a `SessionTask` or an
//! ordinary HTTP response.
//!
//! Before any of that, a connection is admitted ([`limits`]) under its
//! client's address, which with `--proxy-protocol` comes from the PROXY
//! header ([`proxy`]); a refused connection is closed unread.
//!
//! A connection's error ends that connection only and is logged here at debug.
//!
//! - `host`: the Host rules every listener applies (RFC 9112 §3.2)
//! - `response`: the one body type and plain-text builder of every listener
//! - `stall`: the write timeout of HTTP responses
//! - `upgrade`: the WebSocket upgrade
//!
//! Nothing here depends on `statics`: it builds on `response` and `host`,
//! and the [`Frontend`] knows it only as the [`Pages`] that answer every
//! request that is not an upgrade.

pub mod host;
pub mod limits;
pub mod proxy;
pub mod response;
pub mod stall;
pub mod upgrade;

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncRead;
use tokio::net::TcpStream;

use self::stall::{Arming, WriteStall};
use crate::config::ConnectionSettings;
use crate::reactor::RawSocket;
use crate::session::SessionTask;
use crate::session::{Host, Session};
use crate::tls::Tls;
use limits::{ConnGuard, ConnLimits};
pub use upgrade::{Admitted, SessionStream};

pub use response::Body;

/// What a plain-HTTP client refused by a connection limit reads; TLS
/// clients only see the connection close.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
Retry-After: 10\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\n\
too many connections\n";

/// What answers every request that is not a WebSocket upgrade: the static
/// files or the web client (`statics::StaticFiles`, which builds on this
/// module, so it stays out of it).
pub trait Pages: Send + Sync {
    /// The response to `req`.
    fn serve<'a>(
        &'a self,
        req: &'a Request<Incoming>,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + 'a>>;
}

/// What every shard's HTTP side shares: TLS, static files, admission.
pub struct Frontend {
    /// Answers every request that is not a WebSocket upgrade.
    pub pages: Arc<dyn Pages>,
    /// TLS for every connection, when configured.
    pub tls: Option<Arc<Tls>>,
    /// Open connections against `--max-connections*`.
    pub conns: Arc<ConnLimits>,
    /// Time for the PROXY header and the request head.
    pub request_timeout: Duration,
    /// Connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// A response write that makes no progress for this long ends its
    /// connection (see [`stall`]).
    pub write_timeout: Duration,
}

impl Frontend {
    pub fn new(
        pages: Arc<dyn Pages>,
        tls: Option<Arc<Tls>>,
        c: &ConnectionSettings,
        write_timeout: Duration,
    ) -> Frontend {
        Frontend {
            pages,
            tls,
            write_timeout,
            conns: ConnLimits::new(c.limits),
            request_timeout: c.request_timeout,
            proxy_protocol: c.proxy_protocol,
        }
    }
}

/// What the HTTP side knows of one connection: its admission, held by the
/// HTTP connection and handed to its session when it upgrades (so it is
/// given back when whichever ends last ends), and its TCP socket.
pub struct Conn {
    pub guard: Cell<Option<ConnGuard>>,
    pub fd: RawFd,
}

pub type Admission = Rc<Conn>;

/// Where upgraded connections go: a host that makes sessions (the shard).
/// HTTP knows only this, so it sits below the shard.
pub trait Sessions: Host + Sized + 'static {
    /// A new session, registered with its host.
    fn new_session(&self) -> Rc<Session>;

    /// Starts a plain session's task: a tokio task unless the host runs
    /// them itself.
    fn start_plain(&self, task: Admitted<SessionTask<RawSocket, Self>>) {
        tokio::task::spawn_local(task);
    }
}

/// Serves one accepted connection from `peer` (as `accept` returned it: no
/// `getpeername` per connection) until it closes or becomes a session.
/// Plain connections run on the shard's own readiness loop
/// ([`crate::reactor`]); TLS ones under tokio's.
pub async fn serve_connection<H: Sessions>(
    shard: Rc<H>,
    frontend: Arc<Frontend>,
    tcp: OwnedFd,
    peer: SocketAddr,
) {
    let fd = tcp.as_raw_fd();
    match frontend.tls.clone() {
        Some(tls) => {
            let std = std::net::TcpStream::from(tcp);
            let mut tcp = match TcpStream::from_std(std) {
                Ok(t) => t,
                Err(e) => return tracing::debug!(%peer, error = %e, "cannot register a connection"),
            };
            let Some(admission) = admit(&frontend, &mut tcp, fd, peer).await else {
                return;
            };
            if let Some(stream) = tls.accept(tcp).await {
                serve_http(shard, frontend, stream, admission).await
            }
        }
        None => {
            let mut tcp = match RawSocket::new(tcp) {
                Ok(t) => t,
                Err(e) => return tracing::debug!(%peer, error = %e, "cannot register a connection"),
            };
            if let Some(admission) = admit(&frontend, &mut tcp, fd, peer).await {
                serve_http(shard, frontend, tcp, admission).await
            }
        }
    }
}

/// Reads the PROXY header when configured and counts the connection under
/// its client's address; `None` when it is refused (and already answered).
async fn admit<S: AsyncRead + Unpin>(
    frontend: &Frontend,
    tcp: &mut S,
    fd: RawFd,
    peer: SocketAddr,
) -> Option<Admission> {
    let client = if frontend.proxy_protocol {
        match tokio::time::timeout(frontend.request_timeout, proxy::read_header(tcp)).await {
            Ok(Ok(source)) => source.unwrap_or(peer),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection refused");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "no PROXY header in time");
                return None;
            }
        }
    } else {
        peer
    };
    match frontend.conns.admit(client.ip()) {
        Ok(guard) => Some(Rc::new(Conn {
            guard: Cell::new(Some(guard)),
            fd,
        })),
        Err(refused) => {
            tracing::debug!(%client, %refused, "connection refused");
            if frontend.tls.is_none() {
                // Best effort and never waiting: a refusal must cost less than the connection.
                let _ = crate::session::socket::send(fd, &[std::io::IoSlice::new(REFUSED)]);
            }
            None
        }
    }
}

async fn serve_http<S, H: Sessions>(
    shard: Rc<H>,
    frontend: Arc<Frontend>,
    io: S,
    admission: Admission,
) where
    S: SessionStream,
{
    let timeout = frontend.request_timeout;
    let (io, arming) = WriteStall::new(io, frontend.write_timeout);
    let svc = service_fn(move |req: Request<Incoming>| {
        let shard = shard.clone();
        let frontend = frontend.clone();
        let admission = admission.clone();
        let arming = arming.clone();
        async move {
            let res = route::<S, H>(req, shard, frontend, admission, arming).await;
            Ok::<_, Infallible>(res)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

async fn route<S, H: Sessions>(
    req: Request<Incoming>,
    shard: Rc<H>,
    frontend: Arc<Frontend>,
    admission: Admission,
    arming: Arming,
) -> Response<Body>
where
    S: SessionStream,
{
    if let Err(e) = host::request_authority(&req) {
        return e.response();
    }
    if upgrade::is_websocket(&req) {
        let res = upgrade::accept::<S, H>(req, shard, &admission);
        // The stream becomes a session's (which starts only after this
        // response is written); a refused upgrade stays HTTP, timed.
        if res.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            arming.disarm();
        }
        return res;
    }
    frontend.pages.serve(&req).await
}
