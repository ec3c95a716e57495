//! The header frame and auth: any bytes either parse into a bounded header
//! whose relayed copy holds only the known fields, or are refused with a
//! protocol close code; auth accepts exactly the right hash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mles::protocol::auth::{self, AuthError};
use mles::protocol::header::{self, MAX_FIELD, MAX_HEADER_FRAME};

fuzz_target!(|data: &[u8]| {
    let h = match header::parse(data) {
        Err(c) => {
            assert!(matches!(c.code, 1002 | 1008 | 1009), "{c:?}");
            assert!(!c.reason.is_empty());
            return;
        }
        Ok(h) => h,
    };
    assert!(data.len() <= MAX_HEADER_FRAME);
    for f in [&h.uid, &h.channel] {
        assert!(!f.is_empty() && f.len() <= MAX_FIELD);
    }
    // The relayed copy: uid, channel and peer only, the same values.
    let v: serde_json::Value = serde_json::from_slice(&h.relay).expect("relay is JSON");
    let m = v.as_object().expect("relay is an object");
    assert!(m.keys().all(|k| k == "uid" || k == "channel" || k == "peer"));
    assert_eq!(m.get("uid").and_then(|u| u.as_str()), Some(h.uid.as_str()));
    assert_eq!(
        m.get("channel").and_then(|c| c.as_str()),
        Some(h.channel.as_str())
    );
    assert_eq!(m.contains_key("peer"), h.peer);

    // Auth: whatever was given never panics, and is accepted only if it is
    // the hash; the right hash is always accepted, in either case.
    let key = h.uid.as_bytes().get(..3);
    let want_plain = auth::hash_parts(&[h.uid.as_bytes(), h.channel.as_bytes()]);
    if let Some(given) = h.auth.as_deref() {
        match auth::verify(&h.uid, &h.channel, Some(given), None) {
            Ok(()) => assert_eq!(hex_value(given), Some(want_plain), "{given:?}"),
            Err(e) => assert!(matches!(e, AuthError::NotHex | AuthError::Mismatch)),
        }
        let _ = auth::verify(&h.uid, &h.channel, Some(given), key);
    }
    let hex = format!("{want_plain:x}");
    assert_eq!(auth::verify(&h.uid, &h.channel, Some(&hex), None), Ok(()));
    assert_eq!(
        auth::verify(&h.uid, &h.channel, Some(&hex.to_uppercase()), None),
        Ok(())
    );
    if let Some(k) = key {
        let keyed = auth::hash_parts(&[h.uid.as_bytes(), h.channel.as_bytes(), k]);
        let hex = format!("{keyed:016x}");
        assert_eq!(auth::verify(&h.uid, &h.channel, Some(&hex), Some(k)), Ok(()));
        assert_eq!(
            auth::verify(&h.uid, &h.channel, None, Some(k)),
            Err(AuthError::Missing)
        );
    }
});

/// The value of `0x`-prefixed or plain hexadecimal of any length: an oracle
/// that works digit by digit, unlike the server's parser, which trims leading
/// zeros and hands the rest to `from_str_radix`.
fn hex_value(s: &str) -> Option<u64> {
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if s.is_empty() {
        return None;
    }
    s.chars().try_fold(0u64, |acc, c| {
        let digit = u64::from(c.to_digit(16)?);
        (acc >> 60 == 0).then_some(acc << 4 | digit)
    })
}
