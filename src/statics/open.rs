//! Resolving and opening a file below a site root, and reading it (whole,
//! or streamed in chunks), all on tokio's blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::OwnedSemaphorePermit;

use super::Body;
use super::compress::{Fingerprint, StreamEncoder};
use super::path::{RelPath, has_hidden_or_odd_component};
use crate::http::response::plain;

/// Bytes per blocking read when streaming: a few syscalls per MiB, and at
/// most one chunk buffered per streaming response.
const CHUNK: usize = 128 << 10;

/// Why a request gets no file.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
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
    /// The plain-text response for this refusal; I/O errors are logged here.
    pub fn response(self) -> Response<Body> {
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
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Refusal::Io(io::Error::other(e)))?
}

/// An open regular file below a site root.
pub struct Opened {
    pub file: File,
    /// Canonical path (symlinks resolved).
    pub path: PathBuf,
    pub fingerprint: Fingerprint,
}

/// What a request path turned out to name.
pub enum Resolved {
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
pub fn open_beneath(site: &Path, rel: &RelPath) -> Result<Resolved, Refusal> {
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
pub fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf.freeze())
}

/// A body that reads `len` bytes from `offset` in chunks on the blocking
/// pool, coded by `encoder` when there is one, holding the open-file permit
/// until it is done or dropped.
pub fn stream_body(
    file: File,
    offset: u64,
    len: u64,
    permit: OwnedSemaphorePermit,
    encoder: Option<StreamEncoder>,
) -> Body {
    let state = (Arc::new(file), offset, len, encoder, permit);
    let chunks = futures_util::stream::try_unfold(
        state,
        |(file, offset, left, encoder, permit)| async move {
            if left == 0 {
                return Ok(None);
            }
            let f = Arc::clone(&file);
            let (chunk, offset, left, encoder) =
                tokio::task::spawn_blocking(move || next_piece(&f, offset, left, encoder))
                    .await
                    .map_err(io::Error::other)??;
            Ok(Some((
                hyper::body::Frame::data(chunk),
                (file, offset, left, encoder, permit),
            )))
        },
    );
    StreamBody::new(chunks).boxed_unsync()
}

/// The next non-empty piece of a streamed body: one chunk of the file, or
/// as many as the coder needs to produce output (all of the rest at the end).
fn next_piece(
    file: &File,
    mut offset: u64,
    mut left: u64,
    mut encoder: Option<StreamEncoder>,
) -> io::Result<(Bytes, u64, u64, Option<StreamEncoder>)> {
    loop {
        let n = left.min(CHUNK as u64);
        let chunk = read_at(file, offset, n as usize)?;
        offset += n;
        left -= n;
        let Some(mut coder) = encoder else {
            return Ok((chunk, offset, left, None));
        };
        let out = coder.push(&chunk)?;
        if left == 0 {
            let mut all = BytesMut::from(&out[..]);
            all.extend_from_slice(&coder.finish()?);
            return Ok((all.freeze(), offset, 0, None));
        }
        if !out.is_empty() {
            return Ok((out, offset, left, Some(coder)));
        }
        encoder = Some(coder);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
