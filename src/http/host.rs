//! Which host a request is for (RFC 9112 §3.2): the rules every listener
//! applies before looking at the host.
//!
//! - An HTTP/1.1 request without a Host field, or any request with more than
//!   one, or with a Host value that is not a valid authority, is a bad
//!   request (400).
//! - In absolute form (`GET http://example.org/ HTTP/1.1`) the target's
//!   authority wins over Host.

use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode, Uri, Version};

use super::Body;
use super::response::plain;

/// Why a request's host is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// HTTP/1.1 without a Host field.
    #[error("missing Host header")]
    Missing,
    /// More than one Host field line.
    #[error("more than one Host header")]
    Duplicate,
    /// A Host value that is not an authority (`host[:port]`).
    #[error("invalid Host header")]
    Invalid,
}

impl HostError {
    /// The 400 answer for this error.
    pub fn response(self) -> Response<Body> {
        plain(
            StatusCode::BAD_REQUEST,
            match self {
                HostError::Missing => "missing Host header\n",
                HostError::Duplicate => "more than one Host header\n",
                HostError::Invalid => "invalid Host header\n",
            },
        )
    }
}

/// The authority a request is for (`host[:port]` as sent), `None` when it
/// names none (HTTP/1.0 without Host, or an empty Host).
pub fn request_authority<B>(req: &Request<B>) -> Result<Option<&str>, HostError> {
    authority(req.version(), req.uri(), req.headers())
}

/// The authority a request names, without the checks: the target's
/// authority, else the (first) Host value. For code behind a listener that
/// already applied [`request_authority`].
pub fn target_authority<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req.headers().get(header::HOST)?.to_str().ok(),
    }
}

fn authority<'a>(
    version: Version,
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> Result<Option<&'a str>, HostError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Duplicate);
    }
    if host.is_none() && version >= Version::HTTP_11 {
        return Err(HostError::Missing);
    }
    let host = match host {
        Some(v) => {
            let text = v.to_str().map_err(|_| HostError::Invalid)?.trim();
            if !text.is_empty() && text.parse::<http::uri::Authority>().is_err() {
                return Err(HostError::Invalid);
            }
            Some(text).filter(|t| !t.is_empty())
        }
        None => None,
    };
    match uri.authority() {
        Some(a) => Ok(Some(a.as_str())),
        None => Ok(host),
    }
}

/// The host name of a `Host` header value (or URI authority): lower-cased,
/// without port or trailing dot. IPv6 literals keep their brackets.
pub fn host_name(authority: &str) -> String {
    let a = authority.trim();
    let host = if a.starts_with('[') {
        a.find(']').map_or(a, |end| &a[..=end])
    } else {
        match a.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => a,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(version: Version, uri: &str, hosts: &[&str]) -> Result<Option<String>, HostError> {
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(header::HOST, v.parse().unwrap());
        }
        let uri: Uri = uri.parse().unwrap();
        authority(version, &uri, &h).map(|a| a.map(str::to_string))
    }

    #[test]
    fn host_rules() {
        let v11 = Version::HTTP_11;
        assert_eq!(
            check(v11, "/", &["example.org"]),
            Ok(Some("example.org".into()))
        );
        assert_eq!(check(v11, "/", &[]), Err(HostError::Missing));
        assert_eq!(check(Version::HTTP_10, "/", &[]), Ok(None));
        assert_eq!(check(v11, "/", &["a", "b"]), Err(HostError::Duplicate));
        assert_eq!(check(v11, "/", &["a", "a"]), Err(HostError::Duplicate));
        assert_eq!(check(v11, "/", &["a b"]), Err(HostError::Invalid));
        assert_eq!(check(v11, "/", &["a/b"]), Err(HostError::Invalid));
        assert_eq!(check(v11, "/", &[""]), Ok(None));
        assert_eq!(
            check(v11, "http://example.org:8080/x", &["other.net"]),
            Ok(Some("example.org:8080".into()))
        );
        assert_eq!(
            check(v11, "http://example.org/x", &[]),
            Err(HostError::Missing)
        );
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("Example.ORG"), "example.org");
        assert_eq!(host_name("example.org:8443"), "example.org");
        assert_eq!(host_name("example.org."), "example.org");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
    }
}
