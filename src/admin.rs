//! The admin listener (`--metrics ADDR`), for monitoring and orchestration:
//!
//! - `GET /metrics`: every counter in the Prometheus text format: the
//!   shards' counters and gauges, TLS (certificate expiry per domain, failed
//!   handshakes, ACME failures) and static files (503s).
//! - `GET /healthz`: 200 while the process serves (liveness).
//! - `GET /readyz`: 200 when every readiness condition holds, else 503; the
//!   body lists each condition (`ok listeners`, `waiting certificate`).
//! - Other methods on these paths: 405; other paths: 404.
//!
//! It runs on its own thread (see [`crate::background`]), apart from the
//! shards, and reads their counters without stopping them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use tokio::sync::watch;

use crate::background::{self, HttpSide};
use crate::health::Readiness;
use crate::http::response::{method_not_allowed, plain, text_response};
use crate::http::{Body, Frontend};
use crate::shard::mesh::Mesh;
use crate::statics::StaticFiles;

/// A scrape must send its request head within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const PROMETHEUS_TEXT: header::HeaderValue =
    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");

/// What the admin listener reports on.
pub struct Admin {
    pub mesh: Arc<Mesh>,
    /// TLS, for its metrics.
    pub frontend: Arc<Frontend>,
    /// Static files, for their metrics.
    pub statics: Arc<StaticFiles>,
    pub readiness: Arc<Readiness>,
}

/// Binds `addr` and serves on a thread of its own until `shutdown` is true.
pub fn start(
    addr: SocketAddr,
    admin: Admin,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = std::net::TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let side = HttpSide {
        handler: Arc::new(move |req: &Request<_>| admin.answer(req)),
        header_timeout: HEADER_TIMEOUT,
        keep_alive: true,
    };
    let handle = background::spawn(
        "mles-admin",
        || background::register(vec![listener]),
        move |listeners| background::serve_http(listeners, side, shutdown),
    )?;
    tracing::info!(addr = %local, "metrics at /metrics, health at /healthz and /readyz");
    Ok((local, handle))
}

impl Admin {
    fn answer<B>(&self, req: &Request<B>) -> Response<Body> {
        let path = req.uri().path();
        if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return method_not_allowed("GET, HEAD");
        }
        match path {
            "/metrics" => {
                let mut res = text_response(StatusCode::OK, self.render());
                res.headers_mut()
                    .insert(header::CONTENT_TYPE, PROMETHEUS_TEXT);
                res
            }
            "/healthz" => plain(StatusCode::OK, "ok\n"),
            _ => {
                let (ready, text) = self.readiness.report();
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                text_response(status, text)
            }
        }
    }

    fn render(&self) -> String {
        let mut out = self.mesh.metrics.render();
        if let Some(tls) = &self.frontend.tls {
            tls.render_metrics(&mut out);
        }
        self.statics.render_metrics(&mut out);
        out
    }
}
