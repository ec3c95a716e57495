//! The admin listener (`--metrics ADDR`): `GET /metrics` answers the
//! per-shard counters in Prometheus text format; everything else is 404.
//!
//! It runs on its own thread with its own current-thread runtime, apart from
//! the shards, and reads their counters without stopping them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::shard::mesh::Mesh;

/// A scrape must send its request head within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` and serves metrics on a thread of its own until `shutdown` is true.
pub fn start(
    addr: SocketAddr,
    mesh: Arc<Mesh>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = {
        let _entered = runtime.enter();
        TcpListener::from_std(std_listener)?
    };
    let handle = std::thread::Builder::new()
        .name("mles-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.wait_for(|stop| *stop) => break,
                        accepted = listener.accept() => match accepted {
                            Ok((tcp, _)) => {
                                tokio::spawn(serve(tcp, mesh.clone()));
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "admin accept failed");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        },
                    }
                }
            })
        })?;
    tracing::info!(addr = %local, "metrics at /metrics");
    Ok((local, handle))
}

async fn serve(tcp: tokio::net::TcpStream, mesh: Arc<Mesh>) {
    let svc = service_fn(move |req: Request<Incoming>| {
        let mesh = mesh.clone();
        async move { Ok::<_, Infallible>(answer(&req, &mesh)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "admin connection failed");
    }
}

fn answer<B>(req: &Request<B>, mesh: &Mesh) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(mesh.metrics.render()),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found\n"),
        ),
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}
