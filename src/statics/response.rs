//! The headers every representation carries (type, validators, caching,
//! coding). Plain-text answers come from `crate::http::response`.

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use super::negotiate::Encoding;
use super::validators::{none_match_hits, not_modified_since};
use crate::http::response::{Body, NOSNIFF, empty};

/// What is known about the representation chosen for a request before its
/// bytes are read: enough to answer a conditional request.
pub struct Meta {
    pub content_type: HeaderValue,
    /// Quoted strong entity tag of this representation (coding included).
    pub etag: HeaderValue,
    pub last_modified: Option<SystemTime>,
    pub cache_control: HeaderValue,
    pub encoding: Encoding,
    /// The resource has compressed variants: caches must key on Accept-Encoding.
    pub vary: bool,
    /// `Range` is honoured for this resource.
    pub ranges: bool,
}

impl Meta {
    /// True when the client's copy is current (304): `If-None-Match` decides
    /// when present, `If-Modified-Since` only otherwise (RFC 9110 §13.2.2).
    pub fn is_fresh(&self, headers: &HeaderMap) -> bool {
        let etag = self.etag.to_str().expect("etags are built from ASCII");
        if headers.contains_key(header::IF_NONE_MATCH) {
            return headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| none_match_hits(v, etag));
        }
        match (
            headers
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok()),
            self.last_modified,
        ) {
            (Some(since), Some(modified)) => not_modified_since(since, modified),
            _ => false,
        }
    }

    /// A response with the validator and caching headers, and no body yet.
    fn headers(&self, status: StatusCode, body: Body) -> Response<Body> {
        let mut res = Response::new(body);
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(header::ETAG, self.etag.clone());
        if let Some(m) = self.last_modified {
            let date =
                HeaderValue::from_str(&httpdate::fmt_http_date(m)).expect("HTTP dates are ASCII");
            h.insert(header::LAST_MODIFIED, date);
        }
        h.insert(header::CACHE_CONTROL, self.cache_control.clone());
        if self.vary {
            h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        }
        res
    }

    /// 304 Not Modified.
    pub fn not_modified(&self) -> Response<Body> {
        self.headers(StatusCode::NOT_MODIFIED, empty())
    }

    /// A response whose body is `len` bytes of the representation (or none
    /// for HEAD; `Content-Length` still tells its size).
    pub fn response(&self, status: StatusCode, len: u64, body: Body) -> Response<Body> {
        let mut res = self.streamed(body);
        *res.status_mut() = status;
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        res
    }

    /// A 200 whose length is not known in advance (coded while it streams).
    pub fn streamed(&self, body: Body) -> Response<Body> {
        let mut res = self.headers(StatusCode::OK, body);
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, self.content_type.clone());
        h.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
        h.insert(
            header::ACCEPT_RANGES,
            HeaderValue::from_static(if self.ranges { "bytes" } else { "none" }),
        );
        if self.encoding != Encoding::Identity {
            h.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(self.encoding.token()),
            );
        }
        res
    }
}

/// The `Accept-Encoding` values of a request, as text.
pub fn accept_encoding(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
}
