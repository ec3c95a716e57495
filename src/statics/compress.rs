//! Compressing whole bodies, and a size-bounded LRU cache of the results.
//!
//! Compression is CPU work: callers run [`compress`] on the blocking pool,
//! never on a shard thread. The cache lock is a std `Mutex` held only for
//! map operations, never across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;

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
    /// Position in `lru`.
    tick: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    /// Least recently used first.
    lru: BTreeMap<u64, Key>,
    next_tick: u64,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.map.remove(key) {
            self.lru.remove(&e.tick);
            self.bytes -= e.body.len();
        }
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }
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
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The largest body this cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (every
        // method updates them before anything can panic), so keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached body for this version of the file, if any. A stale entry
    /// (the file changed) is dropped.
    pub fn get(&self, path: &Path, encoding: Encoding, fingerprint: &Fingerprint) -> Option<Bytes> {
        let mut inner = self.lock();
        let key = (path.to_path_buf(), encoding);
        let (old_tick, body) = match inner.map.get(&key) {
            Some(e) if e.fingerprint == *fingerprint => (e.tick, e.body.clone()),
            Some(_) => {
                inner.remove(&key);
                return None;
            }
            None => return None,
        };
        let tick = inner.tick();
        let key = inner
            .lru
            .remove(&old_tick)
            .expect("every entry has its lru slot");
        inner.lru.insert(tick, key.clone());
        inner.map.get_mut(&key).expect("entry found above").tick = tick;
        Some(body)
    }

    /// Stores a body, evicting the least recently used ones to stay within
    /// the bound. A body larger than the whole cache is not stored.
    pub fn insert(&self, path: PathBuf, encoding: Encoding, fingerprint: Fingerprint, body: Bytes) {
        if body.len() > self.capacity {
            return;
        }
        let mut inner = self.lock();
        let key = (path, encoding);
        inner.remove(&key);
        while inner.bytes + body.len() > self.capacity {
            let (_, oldest) = inner
                .lru
                .pop_first()
                .expect("bytes > 0 means some entry is left");
            let e = inner
                .map
                .remove(&oldest)
                .expect("every lru slot has its entry");
            inner.bytes -= e.body.len();
        }
        let tick = inner.tick();
        inner.bytes += body.len();
        inner.lru.insert(tick, key.clone());
        inner.map.insert(
            key,
            Entry {
                fingerprint,
                body,
                tick,
            },
        );
    }

    /// Bytes of bodies held now.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.lock().bytes
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
