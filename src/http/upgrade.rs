//! The WebSocket upgrade (RFC 6455 §4.2) with the Mles subprotocol check
//! (PROTOCOL.md §1), handing the raw stream to a session task.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::limits::ConnGuard;
use super::response::{empty, plain};
use super::stall::WriteStall;
use super::{Admission, Body};
use crate::protocol::SUBPROTOCOL;
use crate::reactor::RawSocket;
use crate::session::SessionTask;
use crate::session::echo::EchoHost;

/// Whether the request asks for a WebSocket upgrade at all.
pub fn is_websocket<B>(req: &Request<B>) -> bool {
    has_token(req.headers(), header::UPGRADE, "websocket")
}

fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// RFC 6455 §4.1: the key is the base64 encoding of 16 bytes, so exactly 24
/// characters ending in `==`. The strict decoder also refuses non-zero
/// trailing bits, so a key has one spelling only.
pub fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && data_encoding::BASE64
            .decode(key)
            .is_ok_and(|k| k.len() == 16)
}

/// Checks an upgrade request; on success answers 101 and starts the session
/// once hyper hands over the connection (`S` under its [`WriteStall`],
/// which the session drops: it no longer times writes). The session takes
/// over the connection's `admission`, so it stays counted for the session's life.
pub fn accept<S: SessionStream, H: super::Sessions>(
    mut req: Request<Incoming>,
    shard: Rc<H>,
    admission: &Admission,
) -> Response<Body> {
    let h = req.headers();
    // RFC 6455 §4.1: the opening handshake is an HTTP/1.1 (or later) GET.
    if req.version() < http::Version::HTTP_11 {
        return plain(
            StatusCode::BAD_REQUEST,
            "websocket upgrade needs HTTP/1.1\n",
        );
    }
    if req.method() != http::Method::GET || !has_token(h, header::CONNECTION, "upgrade") {
        return plain(
            StatusCode::BAD_REQUEST,
            "websocket upgrade needs GET with Connection: upgrade\n",
        );
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut r = plain(
            StatusCode::UPGRADE_REQUIRED,
            "websocket version 13 required\n",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = h
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| is_valid_key(k.as_bytes()))
    else {
        return plain(
            StatusCode::BAD_REQUEST,
            "missing or invalid Sec-WebSocket-Key\n",
        );
    };
    if !has_token(h, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL) {
        return plain(
            StatusCode::BAD_REQUEST,
            "missing subprotocol mles-websocket\n",
        );
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let conn = admission.guard.take();
    let fd = admission.fd;
    tokio::task::spawn_local(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        let parts = match upgraded.downcast::<TokioIo<WriteStall<S>>>() {
            Ok(p) => p,
            Err(_) => return tracing::warn!("upgraded connection is not the accepted stream type"),
        };
        // Copy what hyper read ahead and drop its buffer now: `read_buf` may be a
        // slice of hyper's read buffer, which must not stay pinned for the session's life.
        let hyper::upgrade::Parts { io, read_buf, .. } = parts;
        let io = io.into_inner().into_inner();
        let session = shard.new_session();
        session.set_socket(fd, S::PLAIN);
        // The session gets a task of its own, sized to the session (and its
        // admission) rather than to this handshake future; this one ends here.
        if shard.limits().conformance_echo {
            let host = Rc::new(EchoHost::new(shard, &session));
            let task = SessionTask::new(io, session, host, &read_buf);
            tokio::task::spawn_local(Admitted { task, _conn: conn });
            return;
        }
        let task = SessionTask::new(io, session, shard.clone(), &read_buf);
        S::start(&*shard, Admitted { task, _conn: conn });
    });
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let rh = r.headers_mut();
    rh.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    rh.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    rh.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    rh.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    r
}

/// A stream a session can run on, and how its task is started.
pub trait SessionStream: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// The stream is the TCP socket itself (no TLS), so the shard may write
    /// frames to the socket directly.
    const PLAIN: bool;

    fn start<H: super::Sessions>(host: &H, task: Admitted<SessionTask<Self, H>>);
}

/// Plain sessions go to their host (the shard runs them without a tokio
/// task each, [`crate::reactor::tasks`]).
impl SessionStream for RawSocket {
    const PLAIN: bool = true;

    fn start<H: super::Sessions>(host: &H, task: Admitted<SessionTask<Self, H>>) {
        host.start_plain(task);
    }
}

impl SessionStream for TlsStream<TcpStream> {
    const PLAIN: bool = false;

    fn start<H: super::Sessions>(_: &H, task: Admitted<SessionTask<Self, H>>) {
        tokio::task::spawn_local(task);
    }
}

/// A session's task with its connection's admission, given back when the
/// session ends. A struct rather than an async block: an async block keeps
/// both the captured values and the locals they are moved into, which
/// doubled the future (and under tokio took every session's task cell from
/// 256 to 512 bytes: tokio aligns task cells to 128 bytes).
pub struct Admitted<F> {
    task: F,
    _conn: Option<ConnGuard>,
}

impl<F: Future + Unpin> Future for Admitted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        Pin::new(&mut self.get_mut().task).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_session_task_stays_small() {
        // Plain sessions are stored side by side (`reactor::tasks`): every
        // byte here is a byte per session (BENCHMARKS.md, per-session memory).
        // The task holds its host behind an `Rc`: the shard here, as in the server.
        type Plain = Admitted<SessionTask<RawSocket, crate::shard::Shard>>;
        let n = std::mem::size_of::<Option<Plain>>();
        assert!(n <= 112, "{n}");
    }

    #[test]
    fn keys_must_be_base64_of_16_bytes() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(is_valid_key(b"AAAAAAAAAAAAAAAAAAAAAA=="));
        for bad in [
            &b""[..],
            b"dGhlIHNhbXBsZSBub25jZQ=",
            // 24 characters, but not base64 (or not of 16 bytes).
            b"!!!!!!!!!!!!!!!!!!!!!!!!",
            b"dGhlIHNhbXBsZSBub25jZQ  ",
            b"dGhlIHNhbXBsZSBub25jZSBi",
            b"dGhlIHNhbXBsZSBub25jZ===",
            // Non-zero padding bits: another spelling of a 16-byte key.
            b"dGhlIHNhbXBsZSBub25jZR==",
        ] {
            assert!(!is_valid_key(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
