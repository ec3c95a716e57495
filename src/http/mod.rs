//! The HTTP side of a connection: TLS (if configured), HTTP/1.1 through
//! hyper, then either the WebSocket upgrade into a [`SessionTask`] or an
//! ordinary HTTP response.
//!
//! A connection's error ends that connection only and is logged here at debug.
//!
//! - `host`: the Host rules every listener applies (RFC 9112 §3.2)
//! - `response`: the one body type and plain-text builder of every listener
//! - `stall`: the write timeout of HTTP responses
//! - `upgrade`: the WebSocket upgrade
//!
//! Nothing here depends on `statics` but the [`Frontend`] that holds it;
//! `statics` builds on `response` and `host`.

pub mod host;
pub mod response;
pub mod stall;
pub mod upgrade;

use std::convert::Infallible;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use self::stall::{Arming, WriteStall};
use crate::shard::Shard;
use crate::statics::StaticFiles;
use crate::tls::Tls;

pub use response::Body;

/// Time a client has to send its request head.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// What every shard's HTTP side shares: TLS and static files.
pub struct Frontend {
    /// Answers every request that is not a WebSocket upgrade.
    pub statics: StaticFiles,
    /// TLS for every connection, when configured.
    pub tls: Option<Arc<Tls>>,
    /// A response write that makes no progress for this long ends its
    /// connection (see [`stall`]).
    pub write_timeout: Duration,
}

/// Serves one accepted connection until it closes or becomes a session.
pub async fn serve_connection(shard: Rc<Shard>, frontend: Arc<Frontend>, tcp: TcpStream) {
    match frontend.tls.clone() {
        Some(tls) => {
            if let Some(stream) = tls.accept(tcp).await {
                serve_http(shard, frontend, stream).await
            }
        }
        None => serve_http(shard, frontend, tcp).await,
    }
}

async fn serve_http<S>(shard: Rc<Shard>, frontend: Arc<Frontend>, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, arming) = WriteStall::new(io, frontend.write_timeout);
    let svc = service_fn(move |req: Request<Incoming>| {
        let shard = shard.clone();
        let frontend = frontend.clone();
        let arming = arming.clone();
        async move { Ok::<_, Infallible>(route::<WriteStall<S>>(req, shard, frontend, arming).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

async fn route<S>(
    req: Request<Incoming>,
    shard: Rc<Shard>,
    frontend: Arc<Frontend>,
    arming: Arming,
) -> Response<Body>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Err(e) = host::request_authority(&req) {
        return e.response();
    }
    if upgrade::is_websocket(&req) {
        let res = upgrade::accept::<S>(req, shard);
        // The stream becomes a session's (which starts only after this
        // response is written); a refused upgrade stays HTTP, timed.
        if res.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            arming.disarm();
        }
        return res;
    }
    frontend.statics.serve(&req).await
}
