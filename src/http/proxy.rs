//! The PROXY protocol (HAProxy's, versions 1 and 2) in front of a
//! connection, with `--proxy-protocol`: behind a TCP load balancer every
//! client arrives from the balancer's address, and this header carries the
//! real one, for connection limits and logs.
//!
//! Reads exactly the header's bytes and not one more, so whatever follows
//! (TLS or HTTP) is left untouched in the socket. Parsing is the `ppp`
//! crate's; this module only frames the bytes.

use std::net::SocketAddr;

use ppp::{HeaderResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest version 1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// Version 2 address blocks beyond this are refused: IPv6 addresses take
/// 36 bytes, and the TLVs a balancer adds are small; a bound keeps an
/// unauthenticated peer from making the server read 64 KiB first.
const V2_MAX_BODY: usize = 1024;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The connection ended or failed before a whole header arrived.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The connection does not start with a PROXY header.
    #[error("no PROXY protocol header")]
    Missing,
    /// A header that `ppp` does not accept, or one over the size bounds.
    #[error("invalid PROXY protocol header")]
    Invalid,
}

/// Reads the PROXY header at the start of `io`. `Ok(None)` means the header
/// names no client (v1 `UNKNOWN`, v2 `LOCAL`, or a unix-socket source):
/// the TCP peer's own address stands.
pub async fn read_header<S: AsyncRead + Unpin>(
    io: &mut S,
) -> Result<Option<SocketAddr>, ProxyError> {
    // "PROXY UNKNOWN\r\n", the shortest v1 header, is 15 bytes; every v2
    // header is at least 16, and its first 15 bytes tell it apart.
    let mut buf = vec![0u8; 15];
    io.read_exact(&mut buf).await?;
    if buf.starts_with(b"PROXY ") {
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyError::Invalid);
            }
            buf.push(io.read_u8().await?);
        }
    } else if buf.starts_with(&v2::PROTOCOL_PREFIX[..12]) {
        buf.push(io.read_u8().await?);
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if len > V2_MAX_BODY {
            return Err(ProxyError::Invalid);
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        io.read_exact(&mut buf[start..]).await?;
    } else {
        return Err(ProxyError::Missing);
    }
    source_of(HeaderResult::parse(&buf))
}

fn source_of(header: HeaderResult<'_>) -> Result<Option<SocketAddr>, ProxyError> {
    match header {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
            v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) if h.command == v2::Command::Local => Ok(None),
        HeaderResult::V2(Ok(h)) => Ok(match h.addresses {
            v2::Addresses::IPv4(a) => Some((a.source_address, a.source_port).into()),
            v2::Addresses::IPv6(a) => Some((a.source_address, a.source_port).into()),
            v2::Addresses::Unix(_) | v2::Addresses::Unspecified => None,
        }),
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Err(ProxyError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut io = bytes;
        let r = read_header(&mut io).await;
        (r, io.to_vec())
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = v2::PROTOCOL_PREFIX.to_vec();
        h.extend([command, family]);
        h.extend((body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[tokio::test]
    async fn v1_gives_the_source_and_leaves_the_rest() {
        let (r, rest) = read(b"PROXY TCP4 192.0.2.9 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(r.unwrap(), Some("192.0.2.9:5555".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (r, _) = read(b"PROXY TCP6 2001:db8::7 ::1 4000 443\r\n").await;
        assert_eq!(r.unwrap(), Some("[2001:db8::7]:4000".parse().unwrap()));
        let (r, rest) = read(b"PROXY UNKNOWN\r\nX").await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"X");
    }

    #[tokio::test]
    async fn v2_gives_the_source_and_leaves_the_rest() {
        let mut h = v2(
            0x21,
            0x11,
            &[192, 0, 2, 10, 127, 0, 0, 1, 0x1F, 0x90, 0, 80],
        );
        h.extend_from_slice(b"\x16\x03\x01");
        let (r, rest) = read(&h).await;
        assert_eq!(r.unwrap(), Some("192.0.2.10:8080".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03\x01");
        let (r, rest) = read(&v2(0x20, 0x00, &[])).await;
        assert_eq!(r.unwrap(), None, "LOCAL: a health check from the balancer");
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn missing_invalid_and_oversized_headers_are_refused() {
        let (r, _) = read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(matches!(r, Err(ProxyError::Missing)), "{r:?}");
        let (r, _) = read(b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n").await;
        assert!(matches!(r, Err(ProxyError::Invalid)), "{r:?}");
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        let (r, _) = read(long.as_bytes()).await;
        assert!(matches!(r, Err(ProxyError::Invalid)), "{r:?}");
        let (r, _) = read(&v2(0x21, 0x11, &vec![0; V2_MAX_BODY + 1])).await;
        assert!(matches!(r, Err(ProxyError::Invalid)), "{r:?}");
        let (r, _) = read(b"PROXY TCP4 192.0.2.9 127.0.0.1 5555").await;
        assert!(matches!(r, Err(ProxyError::Io(_))), "{r:?}");
    }
}
