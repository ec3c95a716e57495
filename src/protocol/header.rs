//! The Mles header frame (PROTOCOL.md §2): parse, validate, strip `auth`.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::close::{self, Close};

/// Largest uid or channel, in bytes.
pub const MAX_FIELD: usize = 1024;

/// A validated header frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub uid: String,
    pub channel: String,
    pub auth: Option<String>,
    /// `"peer": true`: the session is another server's peer link (PROTOCOL.md
    /// §7), admitted as a link member rather than a client.
    pub peer: bool,
    /// The JSON payload to relay and store: the original bytes when there was
    /// no `auth`, else the object re-serialized without it.
    pub relay: Bytes,
}

/// Parses the first data frame's payload (already known to be valid UTF-8 text).
/// The error is the close the session ends with.
pub fn parse(payload: &[u8]) -> Result<Header, Close> {
    let mut obj: Map<String, Value> = match serde_json::from_slice::<Value>(payload) {
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
    let relay = if obj.contains_key("auth") {
        obj.remove("auth");
        Bytes::from(serde_json::to_vec(&Value::Object(obj)).expect("a JSON map always serializes"))
    } else {
        Bytes::copy_from_slice(payload)
    };
    Ok(Header {
        peer,
        uid,
        channel,
        auth,
        relay,
    })
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

    #[test]
    fn plain_header_is_relayed_verbatim() {
        let raw = br#"{ "uid":"alice", "channel":"example", "x": 1 }"#;
        let h = parse(raw).unwrap();
        assert_eq!(
            (h.uid.as_str(), h.channel.as_str(), h.auth),
            ("alice", "example", None)
        );
        assert_eq!(&h.relay[..], &raw[..]);
        assert!(!h.peer);
        assert!(
            parse(br#"{"uid":"s","channel":"c","peer":true}"#)
                .unwrap()
                .peer
        );
    }

    #[test]
    fn auth_is_stripped_and_other_fields_kept() {
        let h =
            parse(br#"{"uid":"a","channel":"c","auth":"9b3b95527f7c2d80","extra":[1,2]}"#).unwrap();
        assert_eq!(h.auth.as_deref(), Some("9b3b95527f7c2d80"));
        let v: Value = serde_json::from_slice(&h.relay).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"uid":"a","channel":"c","extra":[1,2]})
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
