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
//! - Any other host: `404 Not Found`; no Host, or several: `400` (the
//!   rules of [`crate::http::host`]).
//!
//! It listens on the addresses of `--listen` (the IPs the server serves
//! on) with the redirect port, on its own thread (see
//! [`crate::background`]), and serves nothing else (TLS-ALPN-01 needs no
//! port 80).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::background::{self, HttpSide};
use crate::http::Body;
use crate::http::host::{host_name, request_authority};
use crate::http::response::{plain, text_response};

/// A client gets this long to send its request head; a redirect needs no more.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the http->https redirect listener on every address of `addrs`
/// (`[::]:port` is dual-stack; if IPv6 is unavailable it falls back to
/// `0.0.0.0:port`) and serves them on one thread of its own until
/// `shutdown` becomes true. With port 0 the first address picks a port and
/// the others use the same one. Returns the bound addresses.
pub fn start(
    addrs: &[SocketAddr],
    domains: Vec<String>,
    tls_port: u16,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(Vec<SocketAddr>, JoinHandle<()>)> {
    let mut listeners = Vec::with_capacity(addrs.len());
    let mut bound = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let mut addr = *addr;
        if let (0, Some(first)) = (addr.port(), bound.first()) {
            addr.set_port(SocketAddr::port(first));
        }
        let listener = bind(addr)?;
        bound.push(listener.local_addr()?);
        listeners.push(listener);
    }
    let target = Target {
        domains: domains
            .into_iter()
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
            .collect(),
        tls_port,
    };
    let side = HttpSide {
        handler: Arc::new(move |req: &Request<_>| target.respond(req)),
        header_timeout: HEADER_TIMEOUT,
        keep_alive: false,
    };
    let handle = background::spawn(
        "mles-redirect",
        || background::register(listeners),
        move |listeners| background::serve_http(listeners, side, shutdown),
    )?;
    info!(addrs = ?bound, "http->https redirect listening");
    Ok((bound, handle))
}

/// Where the redirect listens: each IP the server listens on (`--listen`,
/// once each) with the redirect port; `[::]` when there are none.
pub fn addresses(listen: &[SocketAddr], port: u16) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(listen.len());
    for a in listen {
        let a = SocketAddr::new(a.ip(), port);
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        addrs.push(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)));
    }
    addrs
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
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // Dual-stack, whatever net.ipv6.bindv6only says.
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Where redirects point.
#[derive(Debug)]
struct Target {
    /// Lower-case, no trailing dot; empty: any host.
    domains: Vec<String>,
    tls_port: u16,
}

impl Target {
    fn respond<B>(&self, req: &Request<B>) -> Response<Body> {
        let host = match request_authority(req) {
            Ok(host) => host,
            Err(e) => return e.response(),
        };
        let location = host.and_then(|host| self.location(&host_name(host), req.uri()));
        let Some(location) = location else {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        };
        let status = if req.method() == Method::GET || req.method() == Method::HEAD {
            StatusCode::MOVED_PERMANENTLY
        } else {
            StatusCode::PERMANENT_REDIRECT
        };
        let mut resp = text_response(status, format!("moved to {location}\n"));
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
    fn follows_the_listen_addresses() {
        let listen: Vec<SocketAddr> = ["127.0.0.1:443", "[::1]:443", "127.0.0.1:8443"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(
            addresses(&listen, 80),
            ["127.0.0.1:80".parse().unwrap(), "[::1]:80".parse().unwrap()]
        );
        assert_eq!(addresses(&[], 80), ["[::]:80".parse().unwrap()]);
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
