//! The Mles header frame (PROTOCOL.md §2): parse, validate, and build the
//! copy that is relayed and stored, which holds the known fields only.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::close::{self, Close};

/// Largest uid or channel, in bytes.
pub const MAX_FIELD: usize = 1024;

/// Largest header frame, in bytes. Two maximal fields, `auth` and the JSON
/// around them fit with room for escapes; anything bigger is refused (1009)
/// as soon as its length is known, so an unauthenticated connection cannot
/// make the server hold up to `--max-message` for it. Kept in step with
/// the reason of [`close::HEADER_TOO_BIG`].
pub const MAX_HEADER_FRAME: usize = 8192;

/// Refuses a header frame (or the fragments of one so far) of `len` bytes
/// over [`MAX_HEADER_FRAME`].
pub fn check_len(len: u64) -> Result<(), Close> {
    if len > MAX_HEADER_FRAME as u64 {
        Err(close::HEADER_TOO_BIG)
    } else {
        Ok(())
    }
}

/// A validated header frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub uid: String,
    pub channel: String,
    pub auth: Option<String>,
    /// `"peer": true`: the session is another server's peer link (PROTOCOL.md
    /// §7), admitted as a link member rather than a client.
    pub peer: bool,
    /// The JSON payload to relay and store: `uid`, `channel` and (for a peer
    /// link) `"peer": true`, re-serialized. `auth` is a replayable credential
    /// and other fields are unbounded client data, so neither is kept.
    pub relay: Bytes,
}

/// Parses the first data frame's payload (already known to be valid UTF-8 text).
/// The error is the close the session ends with.
pub fn parse(payload: &[u8]) -> Result<Header, Close> {
    check_len(payload.len() as u64)?;
    let obj: Map<String, Value> = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => m,
        _ => return Err(close::BAD_HEADER_JSON),
    };
    let uid = take_field(&obj, "uid")?;
    let channel = take_field(&obj, "channel")?;
    let auth = match obj.get("auth") {
        None | Some(Value::Null) => None,
        Some(Value::String(a)) => Some(a.clone()),
        Some(_) => return Err(close::BAD_HEADER_FIELD),
    };
    let peer = obj.get("peer") == Some(&Value::Bool(true));
    let relay = relay_copy(&uid, &channel, peer);
    Ok(Header {
        peer,
        uid,
        channel,
        auth,
        relay,
    })
}

fn relay_copy(uid: &str, channel: &str, peer: bool) -> Bytes {
    let mut m = Map::new();
    m.insert("uid".into(), Value::String(uid.into()));
    m.insert("channel".into(), Value::String(channel.into()));
    if peer {
        m.insert("peer".into(), Value::Bool(true));
    }
    Bytes::from(serde_json::to_vec(&Value::Object(m)).expect("a JSON map always serializes"))
}

fn take_field(obj: &Map<String, Value>, name: &str) -> Result<String, Close> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(close::MISSING_HEADER_FIELD),
        Some(Value::String(s)) if s.is_empty() => Err(close::EMPTY_FIELD),
        Some(Value::String(s)) if s.len() > MAX_FIELD => Err(close::OVERSIZED_FIELD),
        // Names end up in logs and user interfaces: no terminal escapes, NUL or newlines.
        Some(Value::String(s)) if s.chars().any(char::is_control) => Err(close::CONTROL_CHARS),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(close::BAD_HEADER_FIELD),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relayed(h: &Header) -> Value {
        serde_json::from_slice(&h.relay).unwrap()
    }

    #[test]
    fn relay_copy_holds_the_known_fields_only() {
        let raw = br#"{ "uid":"alice", "channel":"example", "x": 1 }"#;
        let h = parse(raw).unwrap();
        assert_eq!(
            (
                h.uid.as_str(),
                h.channel.as_str(),
                h.auth.as_deref(),
                h.peer
            ),
            ("alice", "example", None, false)
        );
        assert_eq!(
            relayed(&h),
            serde_json::json!({"uid":"alice","channel":"example"})
        );
        let p = parse(br#"{"uid":"s","channel":"c","peer":true,"big":"xxxx"}"#).unwrap();
        assert!(p.peer);
        assert_eq!(
            relayed(&p),
            serde_json::json!({"uid":"s","channel":"c","peer":true})
        );
    }

    #[test]
    fn auth_and_unknown_fields_are_dropped() {
        let h =
            parse(br#"{"uid":"a","channel":"c","auth":"9b3b95527f7c2d80","extra":[1,2]}"#).unwrap();
        assert_eq!(h.auth.as_deref(), Some("9b3b95527f7c2d80"));
        assert_eq!(relayed(&h), serde_json::json!({"uid":"a","channel":"c"}));
    }

    #[test]
    fn header_frames_are_capped() {
        let pad = "p".repeat(MAX_HEADER_FRAME);
        let big = format!(r#"{{"uid":"a","channel":"c","pad":"{pad}"}}"#);
        assert_eq!(parse(big.as_bytes()).unwrap_err(), close::HEADER_TOO_BIG);
        assert_eq!(parse(big.as_bytes()).unwrap_err().code, 1009);
        let pad = "p".repeat(MAX_HEADER_FRAME - 40);
        let fits = format!(r#"{{"uid":"a","channel":"c","pad":"{pad}"}}"#);
        assert!(fits.len() <= MAX_HEADER_FRAME);
        assert!(parse(fits.as_bytes()).is_ok());
        assert_eq!(check_len(MAX_HEADER_FRAME as u64), Ok(()));
        assert_eq!(
            check_len(MAX_HEADER_FRAME as u64 + 1),
            Err(close::HEADER_TOO_BIG)
        );
        assert!(
            close::HEADER_TOO_BIG
                .reason
                .contains(&MAX_HEADER_FRAME.to_string())
        );
    }

    #[test]
    fn refusals_carry_the_right_code() {
        assert_eq!(parse(b"not json").unwrap_err().code, 1002);
        assert_eq!(parse(b"[1,2]").unwrap_err().code, 1002);
        assert_eq!(parse(br#"{"uid":"a"}"#).unwrap_err().code, 1002);
        assert_eq!(parse(br#"{"uid":1,"channel":"c"}"#).unwrap_err().code, 1002);
        assert_eq!(
            parse(br#"{"uid":"a","channel":"c","auth":5}"#)
                .unwrap_err()
                .code,
            1002
        );
        assert_eq!(
            parse(br#"{"uid":"","channel":"c"}"#).unwrap_err(),
            close::EMPTY_FIELD
        );
        let long = format!(r#"{{"uid":"{}","channel":"c"}}"#, "u".repeat(1025));
        assert_eq!(parse(long.as_bytes()).unwrap_err(), close::OVERSIZED_FIELD);
        let max = format!(r#"{{"uid":"{}","channel":"c"}}"#, "u".repeat(1024));
        assert!(parse(max.as_bytes()).is_ok());
        for bad in [
            r#""\u0000peer""#,
            r#""a\nb""#,
            r#""\u001b[31m""#,
            r#""\u0085""#,
        ] {
            let uid = format!(r#"{{"uid":{bad},"channel":"c"}}"#);
            assert_eq!(
                parse(uid.as_bytes()).unwrap_err(),
                close::CONTROL_CHARS,
                "{bad}"
            );
            let ch = format!(r#"{{"uid":"u","channel":{bad}}}"#);
            assert_eq!(
                parse(ch.as_bytes()).unwrap_err(),
                close::CONTROL_CHARS,
                "{bad}"
            );
        }
        assert!(parse("{\"uid\":\"é ü 名\",\"channel\":\"c\"}".as_bytes()).is_ok());
    }
}
