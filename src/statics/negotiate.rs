//! `Accept-Encoding` -> the content coding to send (RFC 9110 §12.5.3).
//!
//! Pure: parses header values, never touches bodies (that is `compress.rs`).

/// A content coding this server can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Identity,
    Brotli,
    Zstd,
    Gzip,
}

/// The compressed codings, best first: this order breaks ties between equal
/// q-values. Brotli first because it makes the smallest text at the levels
/// we use; zstd before gzip because it decodes faster and compresses better.
pub const PREFERENCE: [Encoding; 3] = [Encoding::Brotli, Encoding::Zstd, Encoding::Gzip];

impl Encoding {
    /// The token in `Accept-Encoding` / `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }

    /// Suffix that keeps the ETags of the variants of one file apart.
    pub fn etag_suffix(self) -> &'static str {
        match self {
            Encoding::Identity => "",
            Encoding::Brotli => "-br",
            Encoding::Zstd => "-zst",
            Encoding::Gzip => "-gz",
        }
    }
}

/// q-values in thousandths, as RFC 9110 allows at most three decimals.
type Q = u16;

/// Parses a `qvalue` (`0`, `0.5`, `1`, `1.000`); `None` when malformed.
fn parse_q(s: &str) -> Option<Q> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// What the request says about each coding.
#[derive(Debug, Default)]
struct Accepted {
    brotli: Option<Q>,
    zstd: Option<Q>,
    gzip: Option<Q>,
    identity: Option<Q>,
    star: Option<Q>,
}

impl Accepted {
    fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Accepted {
        let mut acc = Accepted::default();
        for item in values.into_iter().flat_map(|v| v.split(',')) {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if coding.is_empty() {
                continue;
            }
            let mut q = Some(1000);
            for param in parts {
                match param.split_once('=') {
                    Some((name, value)) if name.trim().eq_ignore_ascii_case("q") => {
                        q = parse_q(value.trim())
                    }
                    _ => {}
                }
            }
            // A malformed q-value makes the whole entry unusable; skip it.
            let Some(q) = q else { continue };
            let slot = match coding.to_ascii_lowercase().as_str() {
                "br" => &mut acc.brotli,
                "zstd" => &mut acc.zstd,
                "gzip" | "x-gzip" => &mut acc.gzip,
                "identity" => &mut acc.identity,
                "*" => &mut acc.star,
                _ => continue,
            };
            *slot = Some(q);
        }
        acc
    }

    fn q(&self, e: Encoding) -> Q {
        let explicit = match e {
            Encoding::Brotli => self.brotli,
            Encoding::Zstd => self.zstd,
            Encoding::Gzip => self.gzip,
            Encoding::Identity => self.identity,
        };
        explicit.or(self.star).unwrap_or(0)
    }
}

/// Picks the coding for a compressible response from the request's
/// `Accept-Encoding` values (several header lines are joined).
///
/// The best compressed coding wins unless identity was given a strictly
/// higher q-value. When nothing at all is acceptable (`identity;q=0`) the
/// response is still sent uncoded, which RFC 9110 allows instead of a 406.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Encoding {
    let acc = Accepted::parse(values);
    let mut best = (Encoding::Identity, 0);
    for e in PREFERENCE {
        let q = acc.q(e);
        if q > best.1 {
            best = (e, q);
        }
    }
    // Identity is acceptable by default, but only an explicit q beats a coding.
    let identity_q = acc.identity.or(acc.star).unwrap_or(0);
    if best.1 == 0 || identity_q > best.1 {
        Encoding::Identity
    } else {
        best.0
    }
}

#[cfg(test)]
mod tests {
    use super::Encoding::*;
    use super::*;

    fn n(v: &str) -> Encoding {
        negotiate([v])
    }

    #[test]
    fn q_values() {
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("0"), Some(0));
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.125"), Some(125));
        assert_eq!(parse_q("0.001"), Some(1));
        assert_eq!(parse_q("1.5"), None);
        assert_eq!(parse_q("2"), None);
        assert_eq!(parse_q("0.1234"), None);
        assert_eq!(parse_q("x"), None);
        assert_eq!(parse_q(""), None);
    }

    #[test]
    fn browsers() {
        assert_eq!(n("gzip, deflate, br, zstd"), Brotli);
        assert_eq!(n("gzip, deflate"), Gzip);
        assert_eq!(n("zstd"), Zstd);
        assert_eq!(n("x-gzip"), Gzip);
    }

    #[test]
    fn absent_or_empty_is_identity() {
        assert_eq!(negotiate([]), Identity);
        assert_eq!(n(""), Identity);
        assert_eq!(n("deflate, compress"), Identity);
    }

    #[test]
    fn q_values_decide() {
        assert_eq!(n("br;q=0.5, gzip;q=0.8"), Gzip);
        assert_eq!(n("br;q=0.8, gzip;q=0.8, zstd;q=0.8"), Brotli);
        assert_eq!(n("gzip;q=1.0, zstd; q=0.9"), Gzip);
        assert_eq!(n("BR;Q=0.3, GZIP;Q=0.2"), Brotli);
    }

    #[test]
    fn q_zero_refuses() {
        assert_eq!(n("br;q=0, gzip"), Gzip);
        assert_eq!(n("br;q=0, zstd;q=0, gzip;q=0"), Identity);
        assert_eq!(n("gzip;q=0"), Identity);
    }

    #[test]
    fn star() {
        assert_eq!(n("*"), Brotli);
        assert_eq!(n("*;q=0.5, br;q=0"), Zstd);
        assert_eq!(n("gzip, *;q=0"), Gzip);
        assert_eq!(n("*;q=0"), Identity);
        assert_eq!(n("*;q=0.1, gzip;q=0.5"), Gzip);
    }

    #[test]
    fn identity_preference() {
        assert_eq!(n("identity, gzip;q=0.5"), Identity);
        assert_eq!(n("identity;q=0.5, gzip;q=0.5"), Gzip);
        assert_eq!(n("identity;q=0, gzip"), Gzip);
        // Nothing acceptable: still identity (no 406).
        assert_eq!(n("identity;q=0"), Identity);
    }

    #[test]
    fn malformed_entries_are_skipped() {
        assert_eq!(n("br;q=abc, gzip"), Gzip);
        assert_eq!(n(",,gzip;;,"), Gzip);
        assert_eq!(n("br;q=7"), Identity);
    }

    #[test]
    fn several_header_lines() {
        assert_eq!(negotiate(["gzip;q=0.5", "zstd"]), Zstd);
    }
}
