//! The built-in chat client, served when there is no `wwwroot`.
//!
//! Its HTML, CSS and JavaScript (`web/`) are compiled into the binary and
//! compressed once at start-up; nothing is read from disk or fetched from
//! elsewhere at run time. Only `/` and the two files it links are served.

use std::hash::Hasher;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};

use super::Body;
use super::compress::compress;
use super::negotiate::{Encoding, PREFERENCE, negotiate};
use super::response::{Meta, accept_encoding};
use crate::http::response::{empty, full, plain};

/// Scripts and styles only from this server; WebSocket connections to any
/// ws/wss URL (older browsers do not let `'self'` cover ws: of the origin).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    /// Uncoded first, then one per entry of [`PREFERENCE`].
    variants: Vec<(Encoding, Bytes, HeaderValue)>,
}

impl Asset {
    fn new(path: &'static str, content_type: &'static str, source: &'static str) -> Asset {
        let mut h = siphasher::sip::SipHasher13::new();
        h.write(source.as_bytes());
        let hash = h.finish();
        let tag = |e: Encoding| {
            HeaderValue::from_str(&format!("\"c{hash:016x}{}\"", e.etag_suffix()))
                .expect("hex is ASCII")
        };
        let mut variants = vec![(
            Encoding::Identity,
            Bytes::from_static(source.as_bytes()),
            tag(Encoding::Identity),
        )];
        for e in PREFERENCE {
            let body = compress(source.as_bytes(), e).expect("compressing into memory cannot fail");
            variants.push((e, Bytes::from(body), tag(e)));
        }
        Asset {
            path,
            content_type,
            variants,
        }
    }
}

/// The compiled-in client.
pub struct WebClient {
    assets: Vec<Asset>,
}

impl WebClient {
    pub fn new() -> WebClient {
        WebClient {
            assets: vec![
                Asset::new(
                    "/",
                    "text/html; charset=utf-8",
                    include_str!("web/index.html"),
                ),
                Asset::new(
                    "/client.js",
                    "text/javascript; charset=utf-8",
                    include_str!("web/client.js"),
                ),
                Asset::new(
                    "/client.css",
                    "text/css; charset=utf-8",
                    include_str!("web/client.css"),
                ),
            ],
        }
    }

    pub fn serve<B>(&self, req: &Request<B>) -> Response<Body> {
        let Some(asset) = self.assets.iter().find(|a| a.path == req.uri().path()) else {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        };
        let encoding = negotiate(accept_encoding(req.headers()));
        let (encoding, body, etag) = asset
            .variants
            .iter()
            .find(|v| v.0 == encoding)
            .expect("every coding has a variant");
        let meta = Meta {
            content_type: HeaderValue::from_static(asset.content_type),
            etag: etag.clone(),
            last_modified: None,
            // It changes when the binary does: always revalidate (cheap, 304).
            cache_control: HeaderValue::from_static("no-cache"),
            encoding: *encoding,
            vary: true,
            ranges: false,
        };
        if meta.is_fresh(req.headers()) {
            return meta.not_modified();
        }
        let head = req.method() == Method::HEAD;
        let mut res = meta.response(
            StatusCode::OK,
            body.len() as u64,
            if head { empty() } else { full(body.clone()) },
        );
        res.headers_mut().insert(
            http::header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        res.headers_mut().insert(
            http::header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        res
    }
}

impl Default for WebClient {
    fn default() -> WebClient {
        WebClient::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn links_match_served_paths() {
        let html = include_str!("web/index.html");
        assert!(html.contains("src=\"/client.js\""));
        assert!(html.contains("href=\"/client.css\""));
        let js = include_str!("web/client.js");
        assert!(js.contains("\"mles-websocket\""));
    }
}
