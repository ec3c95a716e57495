//! Work that runs beside the shards: the admin and redirect listeners, the
//! ACME driver and the certificate-file watcher each get a named thread of
//! their own with a current-thread tokio runtime, so that none of them
//! takes time from a shard or depends on one.
//!
//! [`spawn`] does the set-up (binding, signal registration) on the caller's
//! thread, so that its errors reach start-up; [`serve_http`] is the accept
//! loop the two small HTTP listeners share.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::Body;

/// Pause after an accept error (EMFILE and friends) before trying again:
/// long enough not to spin, short enough that service resumes promptly.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Builds a current-thread runtime, runs `prepare` inside it on this thread
/// (so tokio objects bound there belong to it, and its errors are this
/// call's), then runs `run(prepared)` on a new thread named `name` until it
/// returns.
pub fn spawn<T, F, Fut>(
    name: &'static str,
    prepare: impl FnOnce() -> io::Result<T>,
    run: F,
) -> io::Result<JoinHandle<()>>
where
    T: Send + 'static,
    F: FnOnce(T) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let prepared = {
        let _entered = runtime.enter();
        prepare()?
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || runtime.block_on(run(prepared)))
}

/// How a small listener answers and how long it waits for request heads.
pub struct HttpSide<H> {
    pub handler: Arc<H>,
    /// A client must send its request head within this time.
    pub header_timeout: Duration,
    /// Whether one connection may carry several requests.
    pub keep_alive: bool,
}

/// Registers std listeners with the runtime entered: call it from
/// [`spawn`]'s `prepare`, so that a failure is a start-up error.
pub fn register(listeners: Vec<std::net::TcpListener>) -> io::Result<Vec<TcpListener>> {
    listeners
        .into_iter()
        .map(|l| {
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        })
        .collect()
}

/// Accepts on every listener and answers each request with `side.handler`
/// until `shutdown` becomes true (or its sender is gone).
pub async fn serve_http<H>(
    listeners: Vec<TcpListener>,
    side: HttpSide<H>,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(&Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
{
    let side = Arc::new(side);
    let mut loops = tokio::task::JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(listener, side.clone()));
    }
    // Stop on true, or when the sender is dropped.
    let _ = shutdown.wait_for(|stop| *stop).await;
    loops.abort_all();
}

async fn accept_loop<H>(listener: TcpListener, side: Arc<HttpSide<H>>)
where
    H: Fn(&Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
{
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                tracing::debug!(%error, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let handler = side.handler.clone();
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(side.header_timeout)
            .keep_alive(side.keep_alive)
            .serve_connection(
                TokioIo::new(tcp),
                service_fn(move |req| {
                    let res = handler(&req);
                    async move { Ok::<_, Infallible>(res) }
                }),
            );
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
}
