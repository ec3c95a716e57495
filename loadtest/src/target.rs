//! The servers under test: URL, resolved address, TLS, and the loopback
//! source addresses connections are spread over. Opens [`Conn`]s.
//! [`Targets`] holds every `--url` of a run and deals sessions over them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use rustls_pki_types::ServerName;
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

use crate::cli::Common;
use crate::conn::{Conn, Stream};
use crate::rng;

/// A parsed `ws://` or `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// wss://
    pub tls: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port (default 80 / 443).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Parses a WebSocket URL.
pub fn parse_url(s: &str) -> Result<Url> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("ws://") {
        (false, r)
    } else if let Some(r) = s.strip_prefix("wss://") {
        (true, r)
    } else {
        bail!("url {s:?} must start with ws:// or wss://");
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, String::from("/")),
    };
    if authority.contains('@') {
        bail!("url {s:?}: user info is not supported");
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .with_context(|| format!("url {s:?}: unclosed ["))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().with_context(|| format!("url {s:?}: bad port"))?,
            None if after.is_empty() => default_port,
            None => bail!("url {s:?}: junk after ]"),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse().with_context(|| format!("url {s:?}: bad port"))?,
            ),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        bail!("url {s:?}: no host");
    }
    Ok(Url {
        tls,
        host: host.to_string(),
        port,
        path,
    })
}

/// Everything needed to open connections to the server under test.
pub struct Target {
    /// The URL as given.
    pub url: Url,
    /// The address every connection goes to (resolved once).
    pub addr: SocketAddr,
    /// The loopback source addresses sockets are bound to (empty: no bind).
    pub sources: Vec<IpAddr>,
    host_header: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    seed: u64,
    counter: AtomicU64,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("addr", &self.addr)
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Parses and resolves `url`, builds TLS, picks source addresses.
    pub fn new(url: &str, common: &Common) -> Result<Arc<Target>> {
        let url = parse_url(url)?;
        let addr = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", url.host))?
            .next()
            .with_context(|| format!("{} resolves to nothing", url.host))?;
        let default_port = if url.tls { 443 } else { 80 };
        let host = if url.host.contains(':') {
            format!("[{}]", url.host)
        } else {
            url.host.clone()
        };
        let host_header = if url.port == default_port {
            host
        } else {
            format!("{host}:{}", url.port)
        };
        let tls = if url.tls {
            let config = crate::tls::client_config(common.insecure, common.ca_file.as_deref())?;
            let name = ServerName::try_from(url.host.clone())
                .with_context(|| format!("{:?} is not a valid TLS server name", url.host))?;
            Some((TlsConnector::from(config), name))
        } else {
            None
        };
        let sources = match addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() && common.source_addrs > 1 => (1..=common
                .source_addrs)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Arc::new(Target {
            url,
            addr,
            sources,
            host_header,
            tls,
            seed: rng::seed_from_time(),
            counter: AtomicU64::new(0),
        }))
    }

    /// Opens a connection and completes the WebSocket handshake. `idx` picks
    /// the source address; `read_buf` sizes the connection's read buffer.
    pub async fn connect(&self, idx: usize, read_buf: usize) -> Result<Conn> {
        let sock = if self.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .context("socket")?;
        if !self.sources.is_empty() {
            let src = self.sources[idx % self.sources.len()];
            bind_address_no_port(&sock);
            sock.bind(SocketAddr::new(src, 0))
                .with_context(|| format!("bind {src}"))?;
        }
        let tcp = sock
            .connect(self.addr)
            .await
            .with_context(|| format!("connect {}", self.addr))?;
        tcp.set_nodelay(true).context("TCP_NODELAY")?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => Stream::Tls(Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .context("tls handshake")?,
            )),
        };
        let seed = self.seed ^ self.counter.fetch_add(1, Ordering::Relaxed);
        Conn::handshake(stream, &self.host_header, &self.url.path, read_buf, seed).await
    }
}

/// Every server of a run (`--url`, in the order given). Session `idx` goes
/// to server `idx % n`: consecutive sessions land on different servers, so
/// a channel's members are spread over all of them.
#[derive(Debug)]
pub struct Targets {
    list: Vec<Arc<Target>>,
}

impl Targets {
    /// Parses and resolves every `--url`.
    pub fn new(common: &Common) -> Result<Arc<Targets>> {
        if common.urls.is_empty() {
            bail!("no --url given");
        }
        let list = common
            .urls
            .iter()
            .map(|u| Target::new(u, common))
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Targets { list }))
    }

    /// The server session `idx` uses.
    pub fn pick(&self, idx: usize) -> &Arc<Target> {
        &self.list[idx % self.list.len()]
    }

    /// All servers, in `--url` order.
    pub fn all(&self) -> &[Arc<Target>] {
        &self.list
    }

    /// The resolved addresses, comma-separated, for reports.
    pub fn describe(&self) -> String {
        let addrs: Vec<String> = self.list.iter().map(|t| t.addr.to_string()).collect();
        addrs.join(", ")
    }
}

/// Lets the kernel pick the source port at connect time from the full
/// 4-tuple instead of at bind time (which would cap every source address at
/// one ephemeral range for all destinations). Best effort: Linux only.
fn bind_address_no_port(sock: &TcpSocket) {
    #[cfg(target_os = "linux")]
    {
        let one: libc::c_int = 1;
        // SAFETY: valid fd owned by `sock`, pointer to a live c_int and its size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = sock.as_raw_fd();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("ws://127.0.0.1:8080").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 8080, "/")
        );
        let u = parse_url("wss://example.org/chat?x=1").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "example.org", 443, "/chat?x=1")
        );
        let u = parse_url("ws://[::1]:9/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        let u = parse_url("ws://h?q").unwrap();
        assert_eq!(u.path, "/?q");
        assert!(parse_url("http://h").is_err());
        assert!(parse_url("ws://:80").is_err());
        assert!(parse_url("ws://h:x").is_err());
    }
}
