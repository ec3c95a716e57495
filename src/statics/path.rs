//! Request target -> a path relative to a site root, and Host -> a site.
//!
//! Pure functions only: no file system access. What leaves this module can
//! only name something below the root *lexically*; symlinks are the file
//! opener's business (`files.rs`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, percent_encode};

/// Why a request path cannot name a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an origin-form path (`*`, empty), or a segment that tries to leave
    /// the root or smuggle a separator: `..`, `.`, `%2f`, `\`, NUL.
    #[error("bad request path")]
    Bad,
    /// A segment starting with `.`: hidden files are never served.
    #[error("not found")]
    Hidden,
}

/// A sanitized request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    /// Relative, with only normal components (empty for the root).
    pub path: PathBuf,
    /// The request ended in `/` (it asked for a directory).
    pub trailing_slash: bool,
}

/// Turns the raw (still percent-encoded) path of a request into a relative
/// path. Empty segments (`//`) are skipped, so nothing can become absolute.
pub fn sanitize(raw: &str) -> Result<RelPath, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::Bad)?;
    let mut path = PathBuf::new();
    for segment in rest.split('/') {
        let decoded: Vec<u8> = percent_decode_str(segment).collect();
        match decoded.as_slice() {
            b"" => continue,
            b"." | b".." => return Err(PathError::Bad),
            d if d.iter().any(|&b| b == b'/' || b == b'\\' || b == 0) => {
                return Err(PathError::Bad);
            }
            [b'.', ..] => return Err(PathError::Hidden),
            d => path.push(OsStr::from_bytes(d)),
        }
    }
    Ok(RelPath {
        path,
        trailing_slash: raw.ends_with('/'),
    })
}

/// True when some component of `rel` (a path below a root) is hidden or not
/// a plain name. Used on the resolved path, after symlinks.
pub fn has_hidden_or_odd_component(rel: &Path) -> bool {
    rel.components().any(|c| match c {
        Component::Normal(name) => name.as_bytes().first() == Some(&b'.'),
        _ => true,
    })
}

/// Characters escaped when a path segment is written back into a URL.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'`');

/// `/a/b/` for a relative directory path `a/b`: always one leading slash, so
/// a redirect can never become a scheme-relative `//host` URL.
pub fn directory_location(rel: &Path) -> String {
    let mut out = String::from("/");
    for c in rel.components() {
        out.extend(percent_encode(c.as_os_str().as_bytes(), SEGMENT));
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, bool) {
        let r = sanitize(raw).unwrap_or_else(|e| panic!("{raw}: {e:?}"));
        (r.path.to_str().unwrap().to_string(), r.trailing_slash)
    }

    #[test]
    fn plain_paths() {
        assert_eq!(ok("/"), (String::new(), true));
        assert_eq!(ok("/index.html"), ("index.html".into(), false));
        assert_eq!(ok("/a/b/"), ("a/b".into(), true));
        assert_eq!(ok("//a//b"), ("a/b".into(), false));
        assert_eq!(ok("/with%20space.txt"), ("with space.txt".into(), false));
        assert_eq!(ok("/%C3%A4.txt"), ("ä.txt".into(), false));
        assert_eq!(ok("/a..b"), ("a..b".into(), false));
        // A stray percent stays literal, as browsers send it.
        assert_eq!(ok("/100%"), ("100%".into(), false));
    }

    #[test]
    fn traversal_is_bad() {
        for raw in [
            "/..",
            "/../etc/passwd",
            "/a/../../b",
            "/a/./b",
            "/%2e%2e/secret",
            "/%2E%2E/secret",
            "/.%2e/secret",
            "/a%2f..%2f..%2fetc",
            "/%2fetc/passwd",
            "/a%5c..%5cb",
            "/a\\b",
            "/a%00.txt",
            "etc/passwd",
            "*",
            "",
        ] {
            assert_eq!(sanitize(raw), Err(PathError::Bad), "{raw}");
        }
    }

    #[test]
    fn hidden_segments_are_hidden() {
        for raw in ["/.env", "/.git/config", "/a/.htpasswd", "/%2egit/HEAD"] {
            assert_eq!(sanitize(raw), Err(PathError::Hidden), "{raw}");
        }
    }

    #[test]
    fn nothing_absolute_comes_out() {
        for raw in ["//etc/passwd", "///", "/%2F%2Fetc"] {
            if let Ok(r) = sanitize(raw) {
                assert!(r.path.is_relative(), "{raw}");
            }
        }
    }

    #[test]
    fn resolved_components() {
        assert!(!has_hidden_or_odd_component(Path::new("a/b.txt")));
        assert!(!has_hidden_or_odd_component(Path::new("")));
        assert!(has_hidden_or_odd_component(Path::new("a/.git/config")));
        assert!(has_hidden_or_odd_component(Path::new("../x")));
    }

    #[test]
    fn locations_are_single_slash() {
        assert_eq!(directory_location(Path::new("")), "/");
        assert_eq!(directory_location(Path::new("docs")), "/docs/");
        assert_eq!(directory_location(Path::new("a b/c?d")), "/a%20b/c%3Fd/");
    }
}
