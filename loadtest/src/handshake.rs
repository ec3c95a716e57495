//! The client side of the WebSocket opening handshake (RFC 6455 §4.1),
//! sans-IO: build the upgrade request, validate the server's 101 answer.

use anyhow::{Context, Result, bail};

/// The Mles subprotocol name (PROTOCOL.md §1).
pub const SUBPROTOCOL: &str = "mles-websocket";

/// Longest response head the harness waits for.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// A fresh random `Sec-WebSocket-Key`.
pub fn new_key() -> String {
    tungstenite::handshake::client::generate_key()
}

/// The HTTP/1.1 upgrade request offering the Mles subprotocol.
pub fn request(host: &str, path: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\
         User-Agent: mles-loadtest\r\n\
         \r\n"
    )
    .into_bytes()
}

/// Validates the response head at the start of `buf`. `Ok(None)`: incomplete.
/// `Ok(Some(n))`: accepted; the first `n` bytes were the head, the rest are
/// already WebSocket frames.
pub fn parse_response(buf: &[u8], key: &str) -> Result<Option<usize>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_RESPONSE_HEAD {
            bail!("handshake response head over {MAX_RESPONSE_HEAD} bytes");
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("handshake response is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x response: {status:?}");
    }
    if code != "101" {
        let body = String::from_utf8_lossy(&buf[end + 4..buf.len().min(end + 4 + 200)]);
        bail!("upgrade refused: {status:?} {:?}", body.trim());
    }
    let mut accept = None;
    let mut upgrade = false;
    let mut connection = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("malformed header line {line:?}");
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
            "connection" => {
                connection = value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            }
            "sec-websocket-accept" => accept = Some(value),
            "sec-websocket-protocol" if value != SUBPROTOCOL => {
                bail!("server chose subprotocol {value:?}, not {SUBPROTOCOL}");
            }
            "sec-websocket-extensions" => bail!("server negotiated extensions {value:?}"),
            _ => {}
        }
    }
    if !upgrade || !connection {
        bail!("101 without Upgrade: websocket / Connection: Upgrade");
    }
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    match accept {
        Some(a) if a == expected => Ok(Some(end + 4)),
        Some(a) => bail!("wrong Sec-WebSocket-Accept {a:?}, expected {expected:?}"),
        None => bail!("101 without Sec-WebSocket-Accept"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6455 §1.3 example key and accept value.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn ok_response() -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\nSec-WebSocket-Protocol: mles-websocket\r\n\r\n"
        )
    }

    #[test]
    fn request_offers_subprotocol() {
        let r = String::from_utf8(request("h:1", "/", KEY)).unwrap();
        assert!(r.starts_with("GET / HTTP/1.1\r\n"));
        assert!(r.contains("Sec-WebSocket-Protocol: mles-websocket\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn accepts_valid_101_and_keeps_trailing_frames() {
        let mut buf = ok_response().into_bytes();
        let head = buf.len();
        assert_eq!(parse_response(&buf[..head - 1], KEY).unwrap(), None);
        buf.extend_from_slice(&[0x82, 0]);
        assert_eq!(parse_response(&buf, KEY).unwrap(), Some(head));
    }

    #[test]
    fn rejects_bad_answers() {
        let bad_accept = ok_response().replace(ACCEPT, "AAAA");
        assert!(parse_response(bad_accept.as_bytes(), KEY).is_err());
        let other_proto = ok_response().replace("mles-websocket", "chat");
        assert!(parse_response(other_proto.as_bytes(), KEY).is_err());
        let refused = "HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nnope!";
        let err = parse_response(refused.as_bytes(), KEY).unwrap_err();
        assert!(format!("{err}").contains("400"), "{err}");
        let no_upgrade = ok_response().replace("Upgrade: websocket\r\n", "");
        assert!(parse_response(no_upgrade.as_bytes(), KEY).is_err());
    }
}
