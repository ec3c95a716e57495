//! Ordinary (non-upgrade) HTTP requests: static files per domain, or the
//! built-in web client when no `wwwroot` is configured.
//!
//! The hyper service hands every non-upgrade request to
//! [`StaticFiles::serve`]; WebSocket upgrades never come here. One
//! `StaticFiles` is shared by all shards (`Arc`), so everything in it is
//! `Send + Sync`; file system work runs on the blocking pool.
//!
//! - `path`: request path and Host -> a path below a site root (pure)
//! - `negotiate`, `range`, `validators`: header logic (pure)
//! - `compress`: coding bodies, the bounded cache of compressed variants
//! - `files`: per request: site, representation, 304/206, the file limit
//! - `open`: resolving below a root, opening, reading, streaming (blocking pool)
//! - `media`: media type, compressibility and cache lifetime by file name
//! - `response`: error responses and representation headers
//! - `webclient`: the compiled-in chat client (`web/`)

mod compress;
mod files;
mod media;
mod negotiate;
mod open;
mod path;
mod range;
pub(crate) mod response;
mod validators;
mod webclient;

use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};

use crate::config::StaticSettings;

/// Response body type for everything the HTTP side serves.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, std::io::Error>;

pub use files::PERMIT_WAIT;

/// Answers ordinary HTTP requests; see the module documentation.
pub struct StaticFiles {
    site: Site,
}

enum Site {
    Files(files::FileServer),
    Client(webclient::WebClient),
}

impl StaticFiles {
    /// Checks that `wwwroot` (when set) is a directory, and prepares the
    /// open-files limit and the compression cache, or the web client.
    pub fn new(settings: &StaticSettings) -> std::io::Result<StaticFiles> {
        let site = match &settings.wwwroot {
            Some(root) => Site::Files(files::FileServer::new(
                root,
                &settings.domains,
                settings.file_limit,
                settings.compression_cache_bytes,
            )?),
            None => Site::Client(webclient::WebClient::new()),
        };
        Ok(StaticFiles { site })
    }

    /// Answers any non-upgrade HTTP request (GET/HEAD; others 405).
    pub async fn serve<B>(&self, req: &Request<B>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut res = response::plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            res.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        match &self.site {
            Site::Files(f) => f.serve(req).await,
            Site::Client(c) => c.serve(req),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn shared_across_shards() {
        assert_send_sync::<StaticFiles>();
    }
}
