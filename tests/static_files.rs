//! Static file serving, on files written into a temporary directory.
//!
//! - `direct`: `StaticFiles::serve` called with `http::Request`s: types,
//!   validators, compression, ranges, traversal, hidden files, hosts, the
//!   open-files limit, and the built-in web client's routes.
//! - `wire`: the same features through the real server over a socket, with
//!   raw HTTP/1.1 (request targets are sent exactly as written).

mod common;
#[path = "static_files/direct.rs"]
mod direct;
#[path = "static_files/wire.rs"]
mod wire;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use mles::config::StaticSettings;
use mles::statics::StaticFiles;

fn settings(root: Option<&Path>, domains: &[&str]) -> StaticSettings {
    StaticSettings {
        wwwroot: root.map(Path::to_path_buf),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        file_limit: 16,
        compression_cache_bytes: 8 << 20,
    }
}

/// A site in a temporary directory; `www` is the root, `outside` is next
/// to it (the target of escape attempts).
struct Site {
    _dir: tempfile::TempDir,
    www: PathBuf,
    outside: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&www).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret.txt"), "top secret").unwrap();
        Site {
            _dir: dir,
            www,
            outside,
        }
    }

    fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.www.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        p
    }

    fn files(&self) -> StaticFiles {
        StaticFiles::new(&settings(Some(&self.www), &[])).unwrap()
    }
}

/// Text that compresses well, `n` bytes long.
fn text(n: usize) -> Vec<u8> {
    let line = b"function hello(name) { return 'hello, ' + name + '!'; } // mles\n";
    line.iter().copied().cycle().take(n).collect()
}

fn decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "br" => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(data).unwrap(),
        "gzip" => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        }
        "" => out = data.to_vec(),
        other => panic!("unexpected coding {other}"),
    }
    out
}
