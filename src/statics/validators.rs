//! Conditional requests: `If-None-Match`, `If-Modified-Since`, `If-Range`
//! (RFC 9110 §13). Pure: callers pass the header values and the validators.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// True when an `If-None-Match` value matches `etag` (weak comparison:
/// `W/` is ignored on both sides, `*` matches anything that exists).
pub fn none_match_hits(if_none_match: &str, etag: &str) -> bool {
    let ours = etag.trim_start_matches("W/");
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == ours)
}

/// Truncates to whole seconds, the resolution of HTTP dates.
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// True when `If-Modified-Since` says the client's copy is current.
/// An unparsable date is ignored, as RFC 9110 requires.
pub fn not_modified_since(if_modified_since: &str, modified: SystemTime) -> bool {
    httpdate::parse_http_date(if_modified_since.trim())
        .is_ok_and(|since| whole_seconds(modified) <= since)
}

/// True when an `If-Range` value still names the current representation,
/// so a `Range` may be honoured. An entity tag needs a strong match; a date
/// must equal `Last-Modified` exactly.
pub fn if_range_holds(if_range: &str, etag: &str, modified: Option<SystemTime>) -> bool {
    let v = if_range.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        return !etag.starts_with("W/") && v == etag;
    }
    match (httpdate::parse_http_date(v), modified) {
        (Ok(date), Some(m)) => date == whole_seconds(m),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match() {
        assert!(none_match_hits("\"abc\"", "\"abc\""));
        assert!(none_match_hits("\"x\", \"abc\"", "\"abc\""));
        assert!(none_match_hits("W/\"abc\"", "\"abc\""));
        assert!(none_match_hits("*", "\"abc\""));
        assert!(!none_match_hits("\"abc-br\"", "\"abc\""));
        assert!(!none_match_hits("", "\"abc\""));
    }

    #[test]
    fn if_modified_since() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        let same = httpdate::fmt_http_date(t);
        assert!(
            not_modified_since(&same, t),
            "sub-second part must not count"
        );
        let later = httpdate::fmt_http_date(t + Duration::from_secs(10));
        assert!(not_modified_since(&later, t));
        let earlier = httpdate::fmt_http_date(t - Duration::from_secs(10));
        assert!(!not_modified_since(&earlier, t));
        assert!(!not_modified_since("yesterday", t));
    }

    #[test]
    fn if_range() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(if_range_holds("\"abc\"", "\"abc\"", Some(t)));
        assert!(!if_range_holds("W/\"abc\"", "\"abc\"", Some(t)));
        assert!(!if_range_holds("\"old\"", "\"abc\"", Some(t)));
        assert!(if_range_holds(
            &httpdate::fmt_http_date(t),
            "\"abc\"",
            Some(t)
        ));
        assert!(!if_range_holds(
            &httpdate::fmt_http_date(t + Duration::from_secs(1)),
            "\"abc\"",
            Some(t)
        ));
        assert!(!if_range_holds("garbage", "\"abc\"", Some(t)));
    }
}
