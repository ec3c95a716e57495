//! `Range: bytes=...` -> one byte range of a representation (RFC 9110 §14).
//!
//! Pure. Only single ranges are served; a multi-range request is answered
//! with the whole representation (200), which the RFC allows.

/// What a `Range` header asks of a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range: serve everything with 200.
    Full,
    /// Serve bytes `start..=end` with 206.
    Part { start: u64, end: u64 },
    /// Nothing of the representation can be served: 416.
    Unsatisfiable,
}

/// Parses one `Range` value against a representation of `len` bytes.
/// Malformed values and units other than `bytes` are ignored (`Full`).
pub fn parse_range(value: &str, len: u64) -> RangeRequest {
    let Some((unit, spec)) = value.trim().split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.is_empty(), number(first), number(last)) {
        // `-N`: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part {
                    start: len.saturating_sub(n),
                    end: len - 1,
                }
            }
        }
        // `A-` and `A-B`.
        (false, Some(start), end) if last.is_empty() || end.is_some() => {
            let end = end.unwrap_or(u64::MAX);
            if end < start {
                RangeRequest::Full
            } else if start >= len {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part {
                    start,
                    end: end.min(len - 1),
                }
            }
        }
        _ => RangeRequest::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::*;
    use super::*;

    #[test]
    fn single_ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Part { start: 0, end: 99 });
        assert_eq!(
            parse_range("bytes=500-", 1000),
            Part {
                start: 500,
                end: 999
            }
        );
        assert_eq!(
            parse_range("bytes=-100", 1000),
            Part {
                start: 900,
                end: 999
            }
        );
        assert_eq!(
            parse_range("bytes=990-2000", 1000),
            Part {
                start: 990,
                end: 999
            }
        );
        assert_eq!(
            parse_range("bytes=-5000", 1000),
            Part { start: 0, end: 999 }
        );
        assert_eq!(parse_range("Bytes = 1-1", 1000), Part { start: 1, end: 1 });
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(parse_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=5000-6000", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-10", 0), Unsatisfiable);
    }

    #[test]
    fn ignored() {
        for v in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=+1-2",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=99999999999999999999999-",
            "bytes=1--2",
        ] {
            assert_eq!(parse_range(v, 1000), Full, "{v:?}");
        }
    }
}
