//! The response body type of every HTTP listener (shards, admin, redirect)
//! and the one builder for short plain-text answers (errors, redirects,
//! health checks). Static files and the upgrade build on these; this module
//! depends on neither.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

/// Response body type for everything this server answers over HTTP: whole
/// bodies and streamed files alike, boxed once so every handler returns one type.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

fn never(e: Infallible) -> std::io::Error {
    match e {}
}

/// A body with these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(never).boxed_unsync()
}

/// A body with nothing in it.
pub fn empty() -> Body {
    Empty::new().map_err(never).boxed_unsync()
}

const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
/// Shared with representation headers (`statics`).
pub const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");

/// A short plain-text response, never cached and never sniffed.
pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    text_response(status, Bytes::from_static(text.as_bytes()))
}

/// Like [`plain`], for text built at run time (a redirect's target, metrics).
pub fn text_response(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(full(text));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, TEXT_PLAIN);
    h.insert(header::CACHE_CONTROL, NO_STORE);
    h.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    res
}

/// 405 with the `Allow` header listing what the resource accepts.
pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut res = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    res
}
