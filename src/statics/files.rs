//! Files under `<wwwroot>/<domain>/` (or `<wwwroot>/` in local mode).
//!
//! Owns the per-request decisions: which site (Host), which representation
//! (coding, range), whether the client's copy is current, and the
//! open-files semaphore and compressed-variant cache shared by all shards.
//! File system calls are in `open.rs` and run on tokio's blocking pool,
//! never on a shard thread.
//!
//! Compressible files up to [`COMPRESS_LIMIT`] (and the cache bound) are
//! compressed whole once and served from the cache. Larger compressible
//! files are compressed while they stream, at a faster level, anew for each
//! request (there is nowhere to keep the result): such responses have no
//! `Content-Length` (chunked). A `Range` request is always answered from
//! the uncoded bytes, and so is everything that is not compressible
//! (media is mostly compressed already).

use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Body;
use super::compress::{CompressionCache, Fingerprint, StreamEncoder, compress};
use super::media::{cache_control, content_type, is_compressible};
use super::negotiate::{Encoding, negotiate};
use super::open::{Opened, Refusal, Resolved, blocking, open_beneath, read_at, stream_body};
use super::path::{PathError, directory_location, sanitize};
use super::range::{RangeRequest, parse_range};
use super::response::{Meta, accept_encoding};
use super::validators::if_range_holds;
use crate::http::host::{host_name, target_authority};
use crate::http::response::{empty, full, plain};

/// How long a request waits for an open-file permit before it gets 503.
/// Long enough to ride out a burst, short enough that a client retries
/// rather than a connection piling up behind a full server.
pub const PERMIT_WAIT: Duration = Duration::from_millis(100);

/// Files up to this size may be compressed (and cached compressed).
pub const COMPRESS_LIMIT: u64 = 1 << 20;

/// Below this size compression is not worth a header and a cache entry.
const COMPRESS_MIN: u64 = 256;

/// Uncoded bodies up to this size are read in one go; larger ones stream.
const READ_WHOLE_LIMIT: u64 = 256 << 10;

/// A strong entity tag: a hash of the file's fingerprint plus the coding.
fn etag(fingerprint: &Fingerprint, encoding: Encoding) -> HeaderValue {
    let mut h = siphasher::sip::SipHasher13::new();
    fingerprint.hash(&mut h);
    let v = format!("\"{:016x}{}\"", h.finish(), encoding.etag_suffix());
    HeaderValue::from_str(&v).expect("hex is ASCII")
}

/// Serves the files of one `wwwroot`.
pub struct FileServer {
    /// Canonical `wwwroot`.
    root: PathBuf,
    /// Lower-cased; empty in local mode (`root` is the site).
    domains: Vec<String>,
    permits: Arc<Semaphore>,
    cache: CompressionCache,
    /// Requests answered 503 because no open-file permit came in time.
    busy: AtomicU64,
}

impl FileServer {
    /// Fails when `wwwroot` is missing or not a directory; a missing site
    /// directory of a domain is only logged (it may appear later).
    pub fn new(
        wwwroot: &Path,
        domains: &[String],
        file_limit: usize,
        cache_bytes: usize,
    ) -> io::Result<FileServer> {
        let root = fs::canonicalize(wwwroot)
            .map_err(|e| io::Error::new(e.kind(), format!("wwwroot {}: {e}", wwwroot.display())))?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("wwwroot {} is not a directory", root.display()),
            ));
        }
        for d in domains {
            if !root.join(d).is_dir() {
                tracing::warn!(domain = %d, root = %root.display(), "no site directory for this domain yet");
            }
        }
        Ok(FileServer {
            root,
            domains: domains.to_vec(),
            permits: Arc::new(Semaphore::new(file_limit.max(1))),
            cache: CompressionCache::new(cache_bytes),
            busy: AtomicU64::new(0),
        })
    }

    /// The site directory for the request's host (the absolute-form
    /// target's authority, else Host), `None` for an unknown host.
    fn site<B>(&self, req: &Request<B>) -> Option<PathBuf> {
        if self.domains.is_empty() {
            return Some(self.root.clone());
        }
        let name = host_name(target_authority(req)?);
        self.domains
            .iter()
            .find(|d| **d == name)
            .map(|d| self.root.join(d))
    }

    /// Answers a GET or HEAD; every failure is a short plain-text response.
    pub async fn serve<B>(&self, req: &Request<B>) -> Response<Body> {
        self.try_serve(req).await.unwrap_or_else(|refusal| {
            if matches!(refusal, Refusal::Busy) {
                self.busy.fetch_add(1, Ordering::Relaxed);
            }
            refusal.response()
        })
    }

    /// Requests refused with 503 so far (open-file limit or descriptors exhausted).
    pub fn busy_total(&self) -> u64 {
        self.busy.load(Ordering::Relaxed)
    }

    async fn try_serve<B>(&self, req: &Request<B>) -> Result<Response<Body>, Refusal> {
        let site = self.site(req).ok_or(Refusal::NotFound)?;
        let rel = sanitize(req.uri().path()).map_err(|e| match e {
            PathError::Bad => Refusal::BadPath,
            PathError::Hidden => Refusal::NotFound,
        })?;
        let permit = match tokio::time::timeout(
            PERMIT_WAIT,
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => p,
            _ => return Err(Refusal::Busy),
        };
        match blocking(move || open_beneath(&site, &rel)).await? {
            Resolved::Directory(dir) => Ok(redirect(&dir, req.uri().query())),
            Resolved::File(opened) => self.respond(req, opened, permit).await,
        }
    }

    async fn respond<B>(
        &self,
        req: &Request<B>,
        opened: Opened,
        permit: OwnedSemaphorePermit,
    ) -> Result<Response<Body>, Refusal> {
        let headers = req.headers();
        let head = req.method() == Method::HEAD;
        let fp = opened.fingerprint;
        let mime = mime_guess::from_path(&opened.path).first_or_octet_stream();
        let compressible = is_compressible(&mime);
        let mut meta = Meta {
            content_type: content_type(&mime),
            etag: etag(&fp, Encoding::Identity),
            last_modified: Some(fp.modified),
            cache_control: cache_control(&mime),
            encoding: Encoding::Identity,
            vary: compressible,
            ranges: true,
        };
        // A usable Range asks for the uncoded bytes; otherwise negotiate.
        let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
            Some(r) if req.method() == Method::GET => {
                let if_range = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok());
                let etag = meta.etag.to_str().expect("etags are ASCII");
                if if_range.is_none_or(|v| if_range_holds(v, etag, meta.last_modified)) {
                    parse_range(r, fp.len)
                } else {
                    RangeRequest::Full
                }
            }
            _ => RangeRequest::Full,
        };
        if compressible && range == RangeRequest::Full && fp.len >= COMPRESS_MIN {
            meta.encoding = negotiate(accept_encoding(headers));
            meta.etag = etag(&fp, meta.encoding);
        }
        if meta.is_fresh(headers) {
            return Ok(meta.not_modified());
        }
        let cacheable = fp.len <= COMPRESS_LIMIT.min(self.cache.capacity() as u64);
        if meta.encoding != Encoding::Identity && cacheable {
            let body = self.compressed(opened, meta.encoding, permit).await?;
            let len = body.len() as u64;
            return Ok(meta.response(StatusCode::OK, len, if head { empty() } else { full(body) }));
        }
        if meta.encoding != Encoding::Identity {
            let body = if head {
                empty()
            } else {
                let encoder = StreamEncoder::new(meta.encoding).map_err(Refusal::Io)?;
                stream_body(opened.file, 0, fp.len, permit, encoder)
            };
            return Ok(meta.streamed(body));
        }
        let (status, offset, len) = match range {
            RangeRequest::Full => (StatusCode::OK, 0, fp.len),
            RangeRequest::Part { start, end } => {
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            RangeRequest::Unsatisfiable => {
                let mut res = plain(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
                let v = HeaderValue::from_str(&format!("bytes */{}", fp.len))
                    .expect("digits are ASCII");
                res.headers_mut().insert(header::CONTENT_RANGE, v);
                return Ok(res);
            }
        };
        let body = if head {
            empty()
        } else if len <= READ_WHOLE_LIMIT {
            let file = opened.file;
            full(blocking(move || Ok(read_at(&file, offset, len as usize)?)).await?)
        } else {
            stream_body(opened.file, offset, len, permit, None)
        };
        let mut res = meta.response(status, len, body);
        if status == StatusCode::PARTIAL_CONTENT {
            let v = format!("bytes {}-{}/{}", offset, offset + len - 1, fp.len);
            res.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&v).expect("digits are ASCII"),
            );
        }
        Ok(res)
    }

    /// The file compressed with `encoding`, from the cache or made now (and
    /// then cached). The permit is given back as soon as the file is read.
    /// Concurrent cold requests for one file may each compress it (the last
    /// one's result stays); that only happens while the cache is cold, and
    /// waiting on each other would need a map of pending work.
    async fn compressed(
        &self,
        opened: Opened,
        encoding: Encoding,
        permit: OwnedSemaphorePermit,
    ) -> Result<Bytes, Refusal> {
        if let Some(body) = self.cache.get(&opened.path, encoding, &opened.fingerprint) {
            return Ok(body);
        }
        let Opened {
            file,
            path,
            fingerprint,
        } = opened;
        let body = blocking(move || {
            let data = read_at(&file, 0, fingerprint.len as usize)?;
            drop((file, permit));
            Ok(Bytes::from(compress(&data, encoding)?))
        })
        .await?;
        self.cache.insert(path, encoding, fingerprint, body.clone());
        Ok(body)
    }
}

/// 301 to the directory's URL with its trailing slash, so that relative
/// links in its index.html resolve below it.
fn redirect(dir: &Path, query: Option<&str>) -> Response<Body> {
    let mut location = directory_location(dir);
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    let mut res = plain(StatusCode::MOVED_PERMANENTLY, "moved\n");
    res.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("percent-encoded paths and URI queries are ASCII"),
    );
    res
}
