//! Compressing bodies, whole or streamed, and a size-bounded LRU cache of
//! whole compressed bodies.
//!
//! Compression is CPU work: callers run [`compress`] on the blocking pool,
//! never on a shard thread. The cache lock is a std `Mutex` held only for
//! map operations, never across an `.await`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;
use lru::LruCache;

use super::negotiate::Encoding;

/// Compression levels. Bodies are compressed once and then served from the
/// cache, so these lean towards size, but a cold request waits for them.
/// Measured on 1 MiB of minified JavaScript (rustdoc's search index) on
/// one core of the development machine: brotli 7 takes 50 ms (quality 9:
/// 100 ms for 1 % less, 11: 1.5 s for 10 % less); zstd 9 takes 24 ms
/// (12: 60 ms for 1 % less, 19: 390 ms for 8 % less); gzip 9 takes 57 ms.
const BROTLI_QUALITY: i32 = 7;
const BROTLI_WINDOW: i32 = 22;
const ZSTD_LEVEL: i32 = 9;
const GZIP_LEVEL: u32 = 9;

/// Compresses `data` with `encoding` (identity returns a copy).
pub fn compress(data: &[u8], encoding: Encoding) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 3 + 64);
    match encoding {
        Encoding::Identity => out.extend_from_slice(data),
        Encoding::Brotli => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: BROTLI_QUALITY,
                lgwin: BROTLI_WINDOW,
                size_hint: data.len(),
                ..Default::default()
            };
            brotli::BrotliCompress(&mut &data[..], &mut out, &params)?;
        }
        Encoding::Zstd => zstd::stream::copy_encode(data, &mut out, ZSTD_LEVEL)?,
        Encoding::Gzip => {
            let mut w =
                flate2::write::GzEncoder::new(&mut out, flate2::Compression::new(GZIP_LEVEL));
            w.write_all(data)?;
            w.finish()?;
        }
    }
    Ok(out)
}

/// What identifies one version of a file: any change to the content moves
/// at least one of these (rewrites in place change mtime/ctime/size,
/// replacements by rename change the inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    pub len: u64,
    pub modified: SystemTime,
    /// Status change time in nanoseconds: unlike mtime, it cannot be set
    /// back by a user, so `touch -d` cannot hide a change.
    pub changed_ns: i128,
    pub ino: u64,
    pub dev: u64,
}

type Key = (PathBuf, Encoding);

struct Entry {
    fingerprint: Fingerprint,
    body: Bytes,
}

/// The map and its byte count. The `lru` crate keeps the recency order;
/// what it lacks is a bound in bytes rather than entries, kept here.
struct Inner {
    map: LruCache<Key, Entry>,
    bytes: usize,
}

/// Compressed variants of files, at most `capacity` bytes of bodies in all
/// (keys and bookkeeping are not counted: they are small next to bodies).
pub struct CompressionCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl CompressionCache {
    pub fn new(capacity: usize) -> CompressionCache {
        CompressionCache {
            capacity,
            inner: Mutex::new(Inner {
                map: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    /// The largest body this cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map and count consistent
        // (each method updates both before anything can panic), so keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached body for this version of the file, if any (and marks it
    /// recently used). A stale entry (the file changed) is dropped.
    pub fn get(&self, path: &Path, encoding: Encoding, fingerprint: &Fingerprint) -> Option<Bytes> {
        let mut inner = self.lock();
        let key = (path.to_path_buf(), encoding);
        match inner.map.get(&key) {
            Some(e) if e.fingerprint == *fingerprint => Some(e.body.clone()),
            Some(_) => {
                if let Some(stale) = inner.map.pop(&key) {
                    inner.bytes -= stale.body.len();
                }
                None
            }
            None => None,
        }
    }

    /// Stores a body, evicting the least recently used ones to stay within
    /// the bound. A body larger than the whole cache is not stored.
    pub fn insert(&self, path: PathBuf, encoding: Encoding, fingerprint: Fingerprint, body: Bytes) {
        if body.len() > self.capacity {
            return;
        }
        let mut inner = self.lock();
        let key = (path, encoding);
        if let Some(old) = inner.map.pop(&key) {
            inner.bytes -= old.body.len();
        }
        while inner.bytes + body.len() > self.capacity {
            let (_, oldest) = inner
                .map
                .pop_lru()
                .expect("bytes > 0 means some entry is left");
            inner.bytes -= oldest.body.len();
        }
        inner.bytes += body.len();
        inner.map.put(key, Entry { fingerprint, body });
    }

    /// Bytes of bodies held now.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// Streaming levels, for files too large to compress whole and cache
/// (over `COMPRESS_LIMIT`): every request compresses afresh, so these
/// favour speed. Each is several times faster than the whole-body level
/// above and within 10-15 % of its size on text.
const STREAM_BROTLI_QUALITY: u32 = 4;
const STREAM_ZSTD_LEVEL: i32 = 3;
const STREAM_GZIP_LEVEL: u32 = 6;

/// Compresses a body piece by piece: each [`StreamEncoder::push`] returns
/// what the coder has ready (possibly nothing), [`StreamEncoder::finish`]
/// the rest. CPU work: call it on the blocking pool.
pub enum StreamEncoder {
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
}

impl StreamEncoder {
    /// `None` for identity, which needs no coder.
    pub fn new(encoding: Encoding) -> io::Result<Option<StreamEncoder>> {
        Ok(Some(match encoding {
            Encoding::Identity => return Ok(None),
            Encoding::Brotli => StreamEncoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                64 << 10,
                STREAM_BROTLI_QUALITY,
                BROTLI_WINDOW as u32,
            ))),
            Encoding::Zstd => StreamEncoder::Zstd(zstd::stream::write::Encoder::new(
                Vec::new(),
                STREAM_ZSTD_LEVEL,
            )?),
            Encoding::Gzip => StreamEncoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(STREAM_GZIP_LEVEL),
            )),
        }))
    }

    /// Feeds `data`; returns the coded bytes produced so far.
    pub fn push(&mut self, data: &[u8]) -> io::Result<Bytes> {
        let out = match self {
            StreamEncoder::Brotli(w) => {
                w.write_all(data)?;
                w.get_mut()
            }
            StreamEncoder::Zstd(w) => {
                w.write_all(data)?;
                w.get_mut()
            }
            StreamEncoder::Gzip(w) => {
                w.write_all(data)?;
                w.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(out)))
    }

    /// Ends the stream; returns the last coded bytes.
    pub fn finish(self) -> io::Result<Bytes> {
        Ok(Bytes::from(match self {
            StreamEncoder::Brotli(w) => w.into_inner(),
            StreamEncoder::Zstd(w) => w.finish()?,
            StreamEncoder::Gzip(w) => w.finish()?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::UNIX_EPOCH;

    fn fp(len: u64) -> Fingerprint {
        Fingerprint {
            len,
            modified: UNIX_EPOCH,
            changed_ns: 0,
            ino: 1,
            dev: 1,
        }
    }

    fn body(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn round_trips() {
        let text = "hello mles, hello mles, hello mles\n".repeat(100);
        let data = text.as_bytes();
        let br = compress(data, Encoding::Brotli).unwrap();
        let mut out = Vec::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        assert_eq!(
            zstd::decode_all(&compress(data, Encoding::Zstd).unwrap()[..]).unwrap(),
            data
        );
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&compress(data, Encoding::Gzip).unwrap()[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        assert!(br.len() < data.len() / 10);
    }

    #[test]
    fn streamed_pieces_decode_to_the_input() {
        let text = "streamed mles text, streamed mles text\n".repeat(5000);
        for e in [Encoding::Brotli, Encoding::Zstd, Encoding::Gzip] {
            let mut enc = StreamEncoder::new(e).unwrap().unwrap();
            let mut coded = Vec::new();
            for piece in text.as_bytes().chunks(7000) {
                coded.extend_from_slice(&enc.push(piece).unwrap());
            }
            coded.extend_from_slice(&enc.finish().unwrap());
            let mut out = Vec::new();
            match e {
                Encoding::Brotli => {
                    brotli::Decompressor::new(&coded[..], 4096)
                        .read_to_end(&mut out)
                        .unwrap();
                }
                Encoding::Zstd => out = zstd::decode_all(&coded[..]).unwrap(),
                _ => {
                    flate2::read::GzDecoder::new(&coded[..])
                        .read_to_end(&mut out)
                        .unwrap();
                }
            }
            assert_eq!(out, text.as_bytes(), "{e:?}");
            assert!(coded.len() < text.len() / 10, "{e:?}");
        }
        assert!(StreamEncoder::new(Encoding::Identity).unwrap().is_none());
    }

    #[test]
    fn hit_miss_and_stale() {
        let c = CompressionCache::new(1000);
        let p = PathBuf::from("/a");
        assert!(c.get(&p, Encoding::Gzip, &fp(1)).is_none());
        c.insert(p.clone(), Encoding::Gzip, fp(1), body(10));
        assert_eq!(c.get(&p, Encoding::Gzip, &fp(1)).unwrap().len(), 10);
        assert!(c.get(&p, Encoding::Brotli, &fp(1)).is_none());
        // The file changed: the entry goes away.
        assert!(c.get(&p, Encoding::Gzip, &fp(2)).is_none());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn stays_within_bound_evicting_least_recent() {
        let c = CompressionCache::new(100);
        for name in ["/a", "/b", "/c"] {
            c.insert(PathBuf::from(name), Encoding::Brotli, fp(1), body(40));
        }
        // a was evicted to make room for c.
        assert!(
            c.get(&PathBuf::from("/a"), Encoding::Brotli, &fp(1))
                .is_none()
        );
        assert!(c.bytes() <= 100);
        // Touch b, so that c is the least recent, then insert d.
        assert!(
            c.get(&PathBuf::from("/b"), Encoding::Brotli, &fp(1))
                .is_some()
        );
        c.insert(PathBuf::from("/d"), Encoding::Brotli, fp(1), body(40));
        assert!(
            c.get(&PathBuf::from("/c"), Encoding::Brotli, &fp(1))
                .is_none()
        );
        assert!(
            c.get(&PathBuf::from("/b"), Encoding::Brotli, &fp(1))
                .is_some()
        );
        assert_eq!(c.bytes(), 80);
        // Too large for the whole cache: not stored, nothing evicted.
        c.insert(PathBuf::from("/e"), Encoding::Brotli, fp(1), body(101));
        assert_eq!(c.bytes(), 80);
        // Replacing an entry does not count it twice.
        c.insert(PathBuf::from("/b"), Encoding::Brotli, fp(2), body(50));
        assert_eq!(c.bytes(), 90);
    }
}
