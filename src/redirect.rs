//! The plain-HTTP listener (port 80 by default, `-r/--redirect`) that sends
//! every request to the same path on https.
//!
//! - Host is one of the configured domains (any host when none are
//!   configured, as with `--tls-cert` alone): `301 Moved Permanently` for
//!   GET and HEAD, `308 Permanent Redirect` for every other method (308
//!   keeps the method and body; 301 is what every client, old ones included,
//!   follows for plain page loads). `Location` is
//!   `https://<domain>[:<tls_port>]<path>?<query>`, the port only when it is
//!   not 443.
//! - Any other host, or none: `404 Not Found`.
//!
//! It runs on its own thread with its own current-thread runtime, apart
//! from the shards, and serves nothing else (TLS-ALPN-01 needs no port 80).

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
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
use tracing::{debug, info, warn};

/// A client gets this long to send its request head; a redirect needs no more.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after an accept error (EMFILE and friends) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds the http->https redirect listener on `addr` (`[::]:port` is
/// dual-stack; if IPv6 is unavailable it falls back to `0.0.0.0:port`) and
/// serves it on its own thread until `shutdown` becomes true. Returns the
/// bound address (port 0 is allowed, for tests).
pub fn start(
    addr: SocketAddr,
    domains: Vec<String>,
    tls_port: u16,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let std_listener = bind(addr)?;
    let local = std_listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = {
        let _entered = runtime.enter();
        TcpListener::from_std(std_listener)?
    };
    let target = Arc::new(Target {
        domains: domains
            .into_iter()
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
            .collect(),
        tls_port,
    });
    let handle = std::thread::Builder::new()
        .name("mles-redirect".into())
        .spawn(move || runtime.block_on(serve(listener, target, shutdown)))?;
    info!(addr = %local, "http->https redirect listening");
    Ok((local, handle))
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP));
    let socket = match socket {
        Err(e)
            if addr.is_ipv6()
                && addr.ip().is_unspecified()
                && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
        {
            warn!("IPv6 is unavailable; the redirect listens on IPv4 only");
            return bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port())));
        }
        other => other?,
    };
    if addr.is_ipv6() {
        // Dual-stack, whatever net.ipv6.bindv6only says.
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

async fn serve(listener: TcpListener, target: Arc<Target>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let (tcp, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    debug!(%error, "redirect accept failed; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
        };
        let target = target.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let target = target.clone();
                async move { Ok::<_, Infallible>(target.respond(&req)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            if let Err(error) = served {
                debug!(%error, "redirect connection ended with an error");
            }
        });
    }
    debug!("redirect listener stopped");
}

/// Where redirects point.
#[derive(Debug)]
struct Target {
    /// Lower-case, no trailing dot; empty: any host.
    domains: Vec<String>,
    tls_port: u16,
}

impl Target {
    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let location = request_host(req).and_then(|host| self.location(host, req.uri()));
        let Some(location) = location else {
            return plain(StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n"));
        };
        let status = if req.method() == Method::GET || req.method() == Method::HEAD {
            StatusCode::MOVED_PERMANENTLY
        } else {
            StatusCode::PERMANENT_REDIRECT
        };
        let mut resp = plain(status, Bytes::from(format!("moved to {location}\n")));
        let value = header::HeaderValue::from_str(&location)
            .expect("built from a checked host and a parsed URI");
        resp.headers_mut().insert(header::LOCATION, value);
        resp
    }

    /// The https URL for `host` (as sent, port already removed), or `None` when the host is not ours.
    fn location(&self, host: &str, uri: &http::Uri) -> Option<String> {
        let host = host.strip_suffix('.').unwrap_or(host);
        let host = if self.domains.is_empty() {
            if host.is_empty()
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
            {
                return None;
            }
            host.to_ascii_lowercase()
        } else {
            self.domains
                .iter()
                .find(|d| d.eq_ignore_ascii_case(host))?
                .clone()
        };
        let path = match uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => pq.as_str(),
            _ => "/",
        };
        Some(if self.tls_port == 443 {
            format!("https://{host}{path}")
        } else {
            format!("https://{host}:{}{path}", self.tls_port)
        })
    }
}

/// The host a request names: the absolute-form URI's, else the Host header's, without a port.
fn request_host(req: &Request<Incoming>) -> Option<&str> {
    if let Some(host) = req.uri().host() {
        return Some(host);
    }
    let value = req.headers().get(header::HOST)?.to_str().ok()?.trim();
    Some(strip_port(value))
}

/// `example.org:80` -> `example.org`; `[::1]:80` -> `[::1]`.
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

fn plain(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(domains: &[&str], tls_port: u16) -> Target {
        Target {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            tls_port,
        }
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.org:80"), "example.org");
        assert_eq!(strip_port("example.org"), "example.org");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn locations() {
        let uri: http::Uri = "/a/b?x=1&y=2".parse().unwrap();
        let t = target(&["example.org", "www.example.org"], 443);
        assert_eq!(
            t.location("Example.ORG", &uri).as_deref(),
            Some("https://example.org/a/b?x=1&y=2")
        );
        assert_eq!(
            t.location("www.example.org.", &uri).as_deref(),
            Some("https://www.example.org/a/b?x=1&y=2")
        );
        assert_eq!(t.location("evil.example", &uri), None);
        let t = target(&["example.org"], 8443);
        assert_eq!(
            t.location("example.org", &"*".parse().unwrap()).as_deref(),
            Some("https://example.org:8443/")
        );
        let any = target(&[], 443);
        assert_eq!(
            any.location("Host.example", &uri).as_deref(),
            Some("https://host.example/a/b?x=1&y=2")
        );
        assert_eq!(any.location("bad host", &uri), None);
        assert_eq!(any.location("", &uri), None);
    }
}
