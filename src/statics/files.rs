//! Files under `<wwwroot>/<domain>/` (or `<wwwroot>/` in local mode).
//!
//! Owns everything that touches the file system: resolving a sanitized path
//! without leaving the site root, the open-files semaphore, reading (whole
//! or streamed) and the compressed-variant cache. All file system calls run
//! on tokio's blocking pool, never on a shard thread.
//!
//! Large files (over [`COMPRESS_LIMIT`], or over the cache bound) are
//! streamed uncoded in [`CHUNK`]-sized reads: compressing them would cost
//! CPU per request with nowhere to keep the result, and large static files
//! are mostly media that is compressed already. Uncoded, they keep a
//! `Content-Length` and can answer `Range`.

use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Body;
use super::compress::{CompressionCache, Fingerprint, compress};
use super::negotiate::{Encoding, negotiate};
use super::path::{RelPath, directory_location, has_hidden_or_odd_component, host_name, sanitize};
use super::range::{RangeRequest, parse_range};
use super::response::{Meta, accept_encoding, empty, full, plain};
use super::validators::if_range_holds;

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

/// Bytes per blocking read when streaming: a few syscalls per MiB, and at
/// most one chunk buffered per streaming response.
const CHUNK: usize = 128 << 10;

/// Why a request gets no file.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// Nothing (visible) at that path, or it is outside the root.
    #[error("not found")]
    NotFound,
    /// The path cannot name a file.
    #[error("bad request path")]
    BadPath,
    /// No open-file permit in time, or the OS is out of descriptors.
    #[error("busy")]
    Busy,
    /// Anything else from the OS; logged.
    #[error("i/o error: {0}")]
    Io(io::Error),
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Refusal {
        match e.kind() {
            io::ErrorKind::NotFound
            | io::ErrorKind::NotADirectory
            | io::ErrorKind::PermissionDenied
            | io::ErrorKind::IsADirectory
            | io::ErrorKind::InvalidInput => return Refusal::NotFound,
            _ => {}
        }
        match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENAMETOOLONG) | Some(libc::ENXIO) => Refusal::NotFound,
            Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOMEM) => Refusal::Busy,
            _ => Refusal::Io(e),
        }
    }
}

impl Refusal {
    fn response(self) -> Response<Body> {
        match self {
            Refusal::NotFound => plain(StatusCode::NOT_FOUND, "not found\n"),
            Refusal::BadPath => plain(StatusCode::BAD_REQUEST, "bad request path\n"),
            Refusal::Busy => {
                let mut res = plain(StatusCode::SERVICE_UNAVAILABLE, "busy, retry shortly\n");
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                res
            }
            Refusal::Io(e) => {
                tracing::warn!(error = %e, "static file");
                plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
            }
        }
    }
}

/// Runs file system work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Refusal::Io(io::Error::other(e)))?
}

/// An open regular file below a site root.
struct Opened {
    file: File,
    /// Canonical path (symlinks resolved).
    path: PathBuf,
    fingerprint: Fingerprint,
}

enum Resolved {
    File(Opened),
    /// A directory asked for without its trailing slash.
    Directory(PathBuf),
}

/// Resolves `rel` below `site` and opens it, refusing anything whose real
/// path (after symlinks) leaves the site or passes through a hidden name.
///
/// The check is on the canonical path, which is then opened with
/// `O_NOFOLLOW`; swapping a directory for a symlink in between would need
/// write access to the site, which is trusted.
fn open_beneath(site: &Path, rel: &RelPath) -> Result<Resolved, Refusal> {
    let root = fs::canonicalize(site)?;
    let beneath = |p: &Path| {
        p.strip_prefix(&root)
            .is_ok_and(|r| !has_hidden_or_odd_component(r))
    };
    let mut target = fs::canonicalize(root.join(&rel.path))?;
    if !beneath(&target) {
        return Err(Refusal::NotFound);
    }
    if fs::metadata(&target)?.is_dir() {
        if !rel.trailing_slash {
            return Ok(Resolved::Directory(rel.path.clone()));
        }
        target = fs::canonicalize(target.join("index.html"))?;
        if !beneath(&target) {
            return Err(Refusal::NotFound);
        }
    } else if rel.trailing_slash {
        return Err(Refusal::NotFound);
    }
    // O_NONBLOCK: opening a FIFO that slipped in must not hang a thread.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&target)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Refusal::NotFound);
    }
    let fingerprint = Fingerprint {
        len: meta.len(),
        modified: meta.modified().unwrap_or(UNIX_EPOCH),
        changed_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        ino: meta.ino(),
        dev: meta.dev(),
    };
    Ok(Resolved::File(Opened {
        file,
        path: target,
        fingerprint,
    }))
}

/// Reads `len` bytes at `offset`; a file that shrank meanwhile is an error.
fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf.freeze())
}

/// A body that reads `len` bytes from `offset` in chunks on the blocking
/// pool, holding the open-file permit until it is done or dropped.
fn stream_body(file: File, offset: u64, len: u64, permit: OwnedSemaphorePermit) -> Body {
    let state = (Arc::new(file), offset, len, permit);
    let chunks =
        futures_util::stream::try_unfold(state, |(file, offset, left, permit)| async move {
            if left == 0 {
                return Ok(None);
            }
            let n = left.min(CHUNK as u64);
            let f = Arc::clone(&file);
            let chunk = tokio::task::spawn_blocking(move || read_at(&f, offset, n as usize))
                .await
                .map_err(io::Error::other)??;
            Ok(Some((
                hyper::body::Frame::data(chunk),
                (file, offset + n, left - n, permit),
            )))
        });
    StreamBody::new(chunks).boxed_unsync()
}

/// `text/*` and the structured text types get `charset=utf-8`.
fn is_text(mime: &mime_guess::Mime) -> bool {
    mime.type_() == mime_guess::mime::TEXT
        || matches!(
            mime.suffix().map(|s| s.as_str()),
            Some("json") | Some("xml")
        )
        || matches!(
            mime.essence_str(),
            "application/javascript" | "application/json" | "application/xml"
        )
}

/// Types worth compressing: text, plus uncompressed binary formats.
fn is_compressible(mime: &mime_guess::Mime) -> bool {
    is_text(mime)
        || matches!(
            mime.essence_str(),
            "application/wasm"
                | "image/x-icon"
                | "image/vnd.microsoft.icon"
                | "image/bmp"
                | "font/ttf"
                | "font/otf"
        )
}

fn content_type(mime: &mime_guess::Mime) -> HeaderValue {
    let v = if is_text(mime) {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_string()
    };
    HeaderValue::from_str(&v).expect("MIME types are ASCII")
}

/// HTML names the other resources, so it is revalidated on every use; the
/// rest may be reused for an hour (assets are not fingerprinted, so not
/// longer: a site update shows within the hour at worst).
fn cache_control(mime: &mime_guess::Mime) -> HeaderValue {
    HeaderValue::from_static(if mime.essence_str() == "text/html" {
        "no-cache"
    } else {
        "public, max-age=3600"
    })
}

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
}

impl FileServer {
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
        })
    }

    /// The site directory for the request's host, `None` for an unknown host.
    fn site(&self, headers: &HeaderMap, uri: &Uri) -> Option<PathBuf> {
        if self.domains.is_empty() {
            return Some(self.root.clone());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| uri.host())?;
        let name = host_name(host);
        self.domains
            .iter()
            .find(|d| **d == name)
            .map(|d| self.root.join(d))
    }

    pub async fn serve<B>(&self, req: &Request<B>) -> Response<Body> {
        self.try_serve(req).await.unwrap_or_else(Refusal::response)
    }

    async fn try_serve<B>(&self, req: &Request<B>) -> Result<Response<Body>, Refusal> {
        let site = self
            .site(req.headers(), req.uri())
            .ok_or(Refusal::NotFound)?;
        let rel = sanitize(req.uri().path()).map_err(|e| match e {
            super::path::PathError::Bad => Refusal::BadPath,
            super::path::PathError::Hidden => Refusal::NotFound,
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
        let limit = COMPRESS_LIMIT.min(self.cache.capacity() as u64);
        if compressible && range == RangeRequest::Full && (COMPRESS_MIN..=limit).contains(&fp.len) {
            meta.encoding = negotiate(accept_encoding(headers));
            meta.etag = etag(&fp, meta.encoding);
        }
        if meta.is_fresh(headers) {
            return Ok(meta.not_modified());
        }
        if meta.encoding != Encoding::Identity {
            let body = self.compressed(opened, meta.encoding, permit).await?;
            let len = body.len() as u64;
            return Ok(meta.response(StatusCode::OK, len, if head { empty() } else { full(body) }));
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
            stream_body(opened.file, offset, len, permit)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mime(p: &str) -> mime_guess::Mime {
        mime_guess::from_path(p).first_or_octet_stream()
    }

    #[test]
    fn types() {
        assert_eq!(content_type(&mime("a.html")), "text/html; charset=utf-8");
        assert_eq!(content_type(&mime("a.css")), "text/css; charset=utf-8");
        assert!(
            content_type(&mime("a.js"))
                .to_str()
                .unwrap()
                .ends_with("javascript; charset=utf-8")
        );
        assert_eq!(
            content_type(&mime("a.json")),
            "application/json; charset=utf-8"
        );
        assert_eq!(content_type(&mime("a.svg")), "image/svg+xml; charset=utf-8");
        assert_eq!(content_type(&mime("a.png")), "image/png");
        assert_eq!(content_type(&mime("noext")), "application/octet-stream");
        assert!(is_compressible(&mime("a.js")));
        assert!(is_compressible(&mime("a.wasm")));
        assert!(!is_compressible(&mime("a.png")));
        assert!(!is_compressible(&mime("a.woff2")));
        assert!(!is_compressible(&mime("noext")));
    }

    #[test]
    fn os_errors_map_to_statuses() {
        assert!(matches!(
            Refusal::from(io::Error::from_raw_os_error(libc::EMFILE)),
            Refusal::Busy
        ));
        assert!(matches!(
            Refusal::from(io::Error::from_raw_os_error(libc::ENFILE)),
            Refusal::Busy
        ));
        assert!(matches!(
            Refusal::from(io::Error::from_raw_os_error(libc::ENOENT)),
            Refusal::NotFound
        ));
        assert!(matches!(
            Refusal::from(io::Error::from_raw_os_error(libc::ELOOP)),
            Refusal::NotFound
        ));
        assert!(matches!(
            Refusal::from(io::Error::from_raw_os_error(libc::EIO)),
            Refusal::Io(_)
        ));
    }
}
