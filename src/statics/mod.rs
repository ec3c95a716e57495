//! Ordinary (non-upgrade) HTTP requests: static files per domain, or the
//! built-in web client when no `wwwroot` is configured.
//!
//! The hyper service hands every non-upgrade request to
//! [`StaticFiles::serve`], through the `http::Pages` it implements (so
//! `http` never names this module); WebSocket upgrades never come here. One
//! `StaticFiles` is shared by all shards (`Arc`), so everything in it is
//! `Send + Sync`; file system work runs on the blocking pool.
//!
//! - `path`: request path and Host -> a path below a site root (pure)
//! - `negotiate`, `range`, `validators`: header logic (pure)
//! - `compress`: coding bodies, the bounded cache of compressed variants
//! - `files`: per request: site, representation, 304/206, the file limit
//! - `open`: resolving below a root, opening, reading, streaming (blocking pool)
//! - `media`: media type, compressibility and cache lifetime by file name
//! - `response`: representation headers
//! - `webclient`: the compiled-in chat client (`web/`)
//!
//! Reviewed against maintained crates, which are used where they do the
//! same job: `mime_guess` (types), `httpdate` (dates), `lru` (recency
//! order of the compression cache), `percent-encoding`, `flate2`/`brotli`/
//! `zstd`. What is kept here they lack: tower-http's `ServeDir` has no
//! per-domain sites, no refusal of symlinks out of the root or of hidden
//! files, no open-file bound with 503, and serves compression only from
//! precompressed siblings (no cached or streamed compression);
//! `http-range-header` rejects what browsers may send and RFC 9110 lets a
//! server accept (`Bytes`, spaces around `=`), and maps malformed values
//! to errors where a server should ignore the header and send 200, so
//! `range.rs` (70 lines, unit-tested) stays.

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

use std::future::Future;
use std::pin::Pin;

use http::{Method, Request, Response};

use crate::config::StaticSettings;

pub use crate::http::Body;

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
            return crate::http::response::method_not_allowed("GET, HEAD");
        }
        match &self.site {
            Site::Files(f) => f.serve(req).await,
            Site::Client(c) => c.serve(req),
        }
    }
}

impl crate::http::Pages for StaticFiles {
    fn serve<'a>(
        &'a self,
        req: &'a Request<hyper::body::Incoming>,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + 'a>> {
        Box::pin(StaticFiles::serve(self, req))
    }
}

impl StaticFiles {
    /// Appends the static-file metrics (Prometheus text format).
    pub fn render_metrics(&self, out: &mut String) {
        let busy = match &self.site {
            Site::Files(f) => f.busy_total(),
            Site::Client(_) => 0,
        };
        let name = "mles_static_busy_total";
        crate::metrics::family(
            out,
            name,
            "counter",
            "Static-file requests answered 503 (no open-file slot in time).",
        );
        crate::metrics::sample(out, name, "", busy);
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
