//! Shared by the fuzz targets that go through the static-file front: a site
//! on disk built once per process, a runtime to drive `StaticFiles::serve`,
//! and the markers that must never leave the server.
//!
//! The targets use only the server's public API, so they keep working
//! however `statics` is arranged inside.

use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use mles::config::StaticSettings;
use mles::statics::{Body, StaticFiles};

/// Text of a file beside the root, reachable only by escaping it.
pub const OUTSIDE: &[u8] = b"MARKER-OUTSIDE-THE-ROOT";
/// Text of a hidden file inside the root, never served.
pub const HIDDEN: &[u8] = b"MARKER-HIDDEN-FILE";

/// The files of the site: (path below the root, contents).
pub fn files() -> &'static [(&'static str, Vec<u8>)] {
    static FILES: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let pattern = |n: usize| (0..n).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>();
        vec![
            ("index.html", b"<!doctype html><p>index</p>\n".to_vec()),
            ("empty.txt", Vec::new()),
            ("small.bin", pattern(3000)),
            // Over the server's read-in-one-go limit, so it is streamed.
            ("dir/large.bin", pattern(300 << 10)),
            ("dir/a b%.txt", b"spaces and percent\n".to_vec()),
        ]
    })
}

/// A server front over the site, and a runtime to drive it.
pub struct Site {
    pub statics: StaticFiles,
    pub runtime: tokio::runtime::Runtime,
    /// Keeps the directory alive for the process.
    _dir: PathBuf,
}

/// The one site of this process, made on first use.
pub fn site() -> &'static Site {
    static SITE: OnceLock<Site> = OnceLock::new();
    SITE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mles-fuzz-{}", std::process::id()));
        let root = dir.join("www");
        std::fs::create_dir_all(root.join("dir")).expect("temp dir is writable");
        std::fs::create_dir_all(root.join(".git")).expect("temp dir is writable");
        for (p, data) in files() {
            std::fs::write(root.join(p), data).expect("temp dir is writable");
        }
        std::fs::write(dir.join("secret.txt"), OUTSIDE).expect("temp dir is writable");
        std::fs::write(root.join(".env"), HIDDEN).expect("temp dir is writable");
        std::fs::write(root.join(".git/config"), HIDDEN).expect("temp dir is writable");
        // A link out of the root: the opener must refuse to follow it.
        let _ = std::os::unix::fs::symlink(dir.join("secret.txt"), root.join("escape.txt"));
        let statics = StaticFiles::new(&StaticSettings {
            wwwroot: Some(root),
            domains: Vec::new(),
            file_limit: 64,
            compression_cache_bytes: 1 << 20,
        })
        .expect("the site directory exists");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        Site {
            statics,
            runtime,
            _dir: dir,
        }
    })
}

impl Site {
    /// Serves `req` and returns the response head with the whole body.
    pub fn serve(&self, req: &Request<()>) -> (Response<()>, Bytes) {
        self.runtime.block_on(async {
            let res: Response<Body> = self.statics.serve(req).await;
            let (parts, body) = res.into_parts();
            let bytes = body
                .collect()
                .await
                .expect("a static body reads without error")
                .to_bytes();
            (Response::from_parts(parts, ()), bytes)
        })
    }
}

/// Whether `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
