//! The WebSocket upgrade (RFC 6455 §4.2) with the Mles subprotocol check
//! (PROTOCOL.md §1), handing the raw stream to a session task.

use std::rc::Rc;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Body, text};
use crate::protocol::SUBPROTOCOL;
use crate::session::SessionTask;
use crate::shard::Shard;

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

/// Checks an upgrade request; on success answers 101 and starts the session
/// once hyper hands over the connection.
pub fn accept<S>(mut req: Request<Incoming>, shard: Rc<Shard>) -> Response<Body>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let h = req.headers();
    if req.method() != http::Method::GET || !has_token(h, header::CONNECTION, "upgrade") {
        return text(
            StatusCode::BAD_REQUEST,
            "websocket upgrade needs GET with Connection: upgrade\n",
        );
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut r = text(
            StatusCode::UPGRADE_REQUIRED,
            "websocket version 13 required\n",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).filter(|k| k.len() == 24) else {
        return text(
            StatusCode::BAD_REQUEST,
            "missing or invalid Sec-WebSocket-Key\n",
        );
    };
    if !has_token(h, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL) {
        return text(
            StatusCode::BAD_REQUEST,
            "missing subprotocol mles-websocket\n",
        );
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::task::spawn_local(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        let parts = match upgraded.downcast::<TokioIo<S>>() {
            Ok(p) => p,
            Err(_) => return tracing::warn!("upgraded connection is not the accepted stream type"),
        };
        let session = shard.new_session();
        SessionTask::new(parts.io.into_inner(), session, shard, &parts.read_buf).await
    });
    let mut r = Response::new(super::full(bytes::Bytes::new()));
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
