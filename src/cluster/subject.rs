//! Names in NATS for mles things: channel -> subject, (channel, uid) -> KV key.
//!
//! Sans-IO and total: every UTF-8 channel name has exactly one subject and no
//! two channels share one. NATS subject tokens may not hold spaces, `.`, `*`
//! or `>` (and tools choke on other control characters), so a channel is
//! *encoded*, never cleaned: ASCII letters, digits and `-` stand for
//! themselves, every other byte becomes `_` and two upper-case hex digits.
//! Decoding reads `_XX` back, so the encoding is injective, and operators can
//! still read `mles.ch.general` in `nats stream view`. The one name that would
//! encode to nothing, `""`, becomes a lone `_`, which no other name produces
//! (an `_` from the encoder is always followed by two hex digits).
//!
//! KV keys use base64url (no padding) instead: a registry key holds both the
//! channel and the uid (up to 1 KiB each), and the escape encoding's worst case
//! (3 bytes per byte, 6 KiB) would pass the NATS control-line limit (4 KiB).

/// The subject a channel's frames are stored under: `<prefix>.ch.<encoded>`.
pub fn channel_subject(prefix: &str, channel: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 4 + channel.len());
    s.push_str(prefix);
    s.push_str(".ch.");
    encode_token_into(channel.as_bytes(), &mut s);
    s
}

/// The wildcard that covers every channel of a deployment: `<prefix>.ch.*`.
pub fn all_channels(prefix: &str) -> String {
    format!("{prefix}.ch.*")
}

/// Where the stream republishes every frame of every channel:
/// `<prefix>.live.<encoded>` for `<prefix>.ch.<encoded>`.
pub fn live_channels(prefix: &str) -> String {
    format!("{prefix}.live.{{{{wildcard(1)}}}}")
}

/// The live subject of a channel's stream subject (see [`live_channels`]).
pub fn live_subject(prefix: &str, channel_subject: &str) -> String {
    let token = channel_subject
        .strip_prefix(prefix)
        .and_then(|t| t.strip_prefix(".ch."))
        .unwrap_or(channel_subject);
    format!("{prefix}.live.{token}")
}

/// Encodes bytes as one valid subject token (see the module doc).
pub fn encode_token(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    encode_token_into(bytes, &mut s);
    s
}

fn encode_token_into(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if bytes.is_empty() {
        out.push('_');
        return;
    }
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push('_');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

/// The inverse of [`encode_token`]; `None` for a token the encoder never makes.
pub fn decode_token(token: &str) -> Option<Vec<u8>> {
    if token == "_" {
        return Some(Vec::new());
    }
    let t = token.as_bytes();
    let mut out = Vec::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        match t[i] {
            b'_' => {
                let hi = hex_value(*t.get(i + 1)?)?;
                let lo = hex_value(*t.get(i + 2)?)?;
                let b = hi << 4 | lo;
                // A byte that would have stood for itself was never escaped.
                if b.is_ascii_alphanumeric() || b == b'-' {
                    return None;
                }
                out.push(b);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    if out.is_empty() { None } else { Some(out) }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The registry key of a (channel, uid) pair: `<b64(channel)>.<b64(uid)>`.
///
/// Both parts are non-empty for any joined session (PROTOCOL.md §2), but an
/// empty part still yields a valid key (`=` is a legal KV key character and
/// never appears in unpadded base64url).
pub fn member_key(channel: &str, uid: &str) -> String {
    let mut s = String::with_capacity((channel.len() + uid.len()) * 4 / 3 + 4);
    b64_into(channel.as_bytes(), &mut s);
    s.push('.');
    b64_into(uid.as_bytes(), &mut s);
    s
}

fn b64_into(bytes: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    if bytes.is_empty() {
        out.push('=');
        return;
    }
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[idx as usize]));
        }
    }
}

/// Whether `s` is a usable stream, bucket and subject prefix: 1 to 32 of
/// `[A-Za-z0-9_-]` (stream and bucket names forbid `.`, `*`, `>`, spaces and
/// path separators, and the prefix is both).
pub fn valid_prefix(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// What NATS accepts in a subject token (and what its tools print cleanly).
    fn valid_token(t: &str) -> bool {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'.' && b != b'*' && b != b'>')
    }

    #[test]
    fn a_channel_is_republished_under_its_own_token() {
        assert_eq!(live_channels("mles"), "mles.live.{{wildcard(1)}}");
        for name in ["general", "a.b c", ""] {
            let stored = channel_subject("mles", name);
            let token = stored.strip_prefix("mles.ch.").unwrap();
            assert_eq!(live_subject("mles", &stored), format!("mles.live.{token}"));
        }
    }

    const AWKWARD: &[&str] = &[
        "general",
        "",
        " ",
        "  ",
        "a b",
        "a.b",
        "a_b",
        "a_2Eb",
        "_",
        "__",
        "_2E",
        "*",
        ">",
        "a.*.>",
        "...",
        "mles.ch.x",
        "tab\there",
        "nul\0byte",
        "line\nbreak",
        "ünïcödé",
        "日本語のチャンネル",
        "emoji 🎉🚀",
        "\u{feff}bom",
        "MiXeD-Case-09",
        "-",
        "%20",
        "a/b\\c",
        "\"quoted\"",
    ];

    #[test]
    fn every_awkward_channel_round_trips_to_a_valid_token() {
        for ch in AWKWARD {
            let t = encode_token(ch.as_bytes());
            assert!(valid_token(&t), "{ch:?} -> {t:?}");
            assert_eq!(decode_token(&t).as_deref(), Some(ch.as_bytes()), "{ch:?}");
            let subject = channel_subject("mles", ch);
            assert_eq!(subject, format!("mles.ch.{t}"));
            assert_eq!(subject.split('.').count(), 3, "{subject}");
        }
    }

    #[test]
    fn distinct_channels_never_share_a_subject() {
        let mut names: Vec<String> = AWKWARD.iter().map(|s| s.to_string()).collect();
        // Every one- and two-byte ASCII string, where escapes and literals meet.
        for a in 0u8..128 {
            names.push(char::from(a).to_string());
            for b in [b'_', b'2', b'E', b'.', b' ', b'a', b'-'] {
                names.push(format!("{}{}", char::from(a), char::from(b)));
            }
        }
        let mut seen = HashSet::new();
        let unique: HashSet<&String> = names.iter().collect();
        for n in unique {
            assert!(seen.insert(channel_subject("p", n)), "collision at {n:?}");
        }
    }

    #[test]
    fn readable_names_stay_readable() {
        assert_eq!(channel_subject("mles", "general"), "mles.ch.general");
        assert_eq!(channel_subject("mles", "a b"), "mles.ch.a_20b");
        assert_eq!(channel_subject("mles", "a.b"), "mles.ch.a_2Eb");
        assert_eq!(channel_subject("mles", "a_b"), "mles.ch.a_5Fb");
        assert_eq!(channel_subject("mles", ""), "mles.ch._");
    }

    #[test]
    fn foreign_tokens_do_not_decode() {
        for t in ["", "a.b", "_2", "_zz", "_41", "a*", "_2e"] {
            assert_eq!(decode_token(t), None, "{t:?}");
        }
    }

    #[test]
    fn longest_names_fit_the_control_line() {
        let channel = "é".repeat(512); // 1024 bytes, all escaped
        let uid = "ü".repeat(512);
        assert!(channel_subject("mles", &channel).len() < 3200);
        assert!(member_key(&channel, &uid).len() < 2800);
    }

    #[test]
    fn member_keys_are_injective_and_valid() {
        let valid_key = |k: &str| {
            !k.starts_with('.')
                && !k.ends_with('.')
                && k.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'=' | b'.')
                })
        };
        let mut seen = HashSet::new();
        for ch in AWKWARD {
            for uid in ["alice", "a.b", "", "ü", "alice ", " alice"] {
                let k = member_key(ch, uid);
                assert!(valid_key(&k), "{k:?}");
                assert!(seen.insert(k), "collision at ({ch:?}, {uid:?})");
            }
        }
        // A dot inside a part cannot be confused with the separator.
        assert_ne!(member_key("a.b", "c"), member_key("a", "b.c"));
        assert_eq!(member_key("alice", "x"), "YWxpY2U.eA");
    }

    #[test]
    fn prefixes() {
        assert!(valid_prefix("mles"));
        assert!(valid_prefix("prod_eu-1"));
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b", &"x".repeat(33)] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }
}
