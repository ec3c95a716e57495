//! Header authentication, compatible with the reference server (PROTOCOL.md §3).

use std::hash::Hasher;

use siphasher::sip::SipHasher24;

/// SipHash-2-4 with the all-zero key over the raw bytes of each part, in order.
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h = SipHasher24::new_with_keys(0, 0);
    for p in parts {
        h.write(p);
    }
    h.finish()
}

/// Why a header's `auth` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `MLES_KEY` is set and the header carries no `auth`.
    #[error("auth required")]
    Missing,
    /// `auth` is not a hexadecimal u64.
    #[error("auth is not hexadecimal")]
    NotHex,
    /// `auth` does not match.
    #[error("auth mismatch")]
    Mismatch,
}

/// Checks `auth` for (uid, channel) against `key` (`MLES_KEY`), PROTOCOL.md §3.
pub fn verify(
    uid: &str,
    channel: &str,
    auth: Option<&str>,
    key: Option<&[u8]>,
) -> Result<(), AuthError> {
    let Some(auth) = auth else {
        return if key.is_some() {
            Err(AuthError::Missing)
        } else {
            Ok(())
        };
    };
    let given = parse_hex(auth).ok_or(AuthError::NotHex)?;
    let expected = match key {
        Some(k) => hash_parts(&[uid.as_bytes(), channel.as_bytes(), k]),
        None => hash_parts(&[uid.as_bytes(), channel.as_bytes()]),
    };
    if given == expected {
        Ok(())
    } else {
        Err(AuthError::Mismatch)
    }
}

/// Parses hexadecimal of any case, with or without leading zeros or a `0x` prefix.
fn parse_hex(s: &str) -> Option<u64> {
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let digits = s.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_test_vectors() {
        assert_eq!(
            format!("{:016x}", hash_parts(&[b"alice", b"example"])),
            "9b3b95527f7c2d80"
        );
        assert_eq!(
            format!("{:016x}", hash_parts(&[b"alice", b"example", b"secret"])),
            "afa46b8689dae7a5"
        );
        assert_eq!(
            format!("{:016x}", hash_parts(&[b"bob", b"general", b"k3y"])),
            "82dab779bb281d62"
        );
    }

    #[test]
    fn verify_with_and_without_key() {
        assert_eq!(verify("alice", "example", None, None), Ok(()));
        assert_eq!(
            verify("alice", "example", Some("9b3b95527f7c2d80"), None),
            Ok(())
        );
        assert_eq!(
            verify("alice", "example", Some("9B3B95527F7C2D80"), None),
            Ok(())
        );
        assert_eq!(
            verify("alice", "example", Some("afa46b8689dae7a5"), None),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            verify("alice", "example", None, Some(b"secret")),
            Err(AuthError::Missing)
        );
        assert_eq!(
            verify(
                "alice",
                "example",
                Some("afa46b8689dae7a5"),
                Some(b"secret")
            ),
            Ok(())
        );
        assert_eq!(
            verify("bob", "general", Some("82dab779bb281d62"), Some(b"k3y")),
            Ok(())
        );
        assert_eq!(
            verify("bob", "general", Some("zz"), Some(b"k3y")),
            Err(AuthError::NotHex)
        );
        assert_eq!(
            verify("bob", "general", Some(""), None),
            Err(AuthError::NotHex)
        );
    }

    #[test]
    fn leading_zeros_compare_numerically() {
        assert_eq!(parse_hex("00ff"), Some(255));
        assert_eq!(parse_hex("0000000000000000000001"), Some(1));
        assert_eq!(parse_hex("0"), Some(0));
        assert_eq!(parse_hex("1ffffffffffffffff"), None);
    }
}
