//! What the served certificate says: subject, names and expiry. Read from
//! the certificate at start and on every reload or renewal, logged, checked
//! against `--domains`, and exported as seconds left per domain.

use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};
use x509_parser::extensions::GeneralName;

/// The parts of a certificate an operator needs to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    /// DNS names of the subjectAltName extension (or the CN when there is none).
    pub names: Vec<String>,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertInfo {
    /// Reads a DER certificate; `None` when it does not parse.
    pub fn parse(der: &[u8]) -> Option<CertInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut names: Vec<String> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if names.is_empty() {
            names = cert
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase)
                .collect();
        }
        Some(CertInfo {
            subject: cert.subject().to_string(),
            names,
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// Whether a name of the certificate matches `domain`, wildcards
    /// (`*.example.org`) covering exactly one label, as browsers check.
    pub fn covers(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(parent) => domain
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => *n == domain,
        })
    }
}

/// The certificate being served, as far as logs and metrics are concerned.
#[derive(Debug, Default)]
pub(crate) struct Served {
    /// `--domains`, lower-case; empty when none were given.
    domains: Vec<String>,
    current: Mutex<Option<CertInfo>>,
}

impl Served {
    pub(crate) fn new(domains: &[String]) -> Served {
        Served {
            domains: domains.to_vec(),
            current: Mutex::new(None),
        }
    }

    /// Records the certificate now served (`der`: the leaf), logs what it
    /// says and warns about configured domains it does not cover.
    pub(crate) fn record(&self, der: &[u8], trigger: &'static str) {
        let Some(info) = CertInfo::parse(der) else {
            warn!(
                trigger,
                "the served certificate cannot be parsed for logging and metrics"
            );
            return;
        };
        let expires = httpdate::fmt_http_date(
            UNIX_EPOCH + std::time::Duration::from_secs(info.not_after.max(0) as u64),
        );
        let days_left = (info.not_after - now()) / 86_400;
        info!(
            trigger,
            subject = %info.subject,
            names = ?info.names,
            expires = %expires,
            days_left,
            "certificate in use"
        );
        if info.not_after <= now() {
            warn!(subject = %info.subject, expires = %expires, "the certificate has expired");
        }
        for d in self.domains.iter().filter(|d| !info.covers(d)) {
            warn!(domain = %d, names = ?info.names, "the certificate does not cover this --domains name; browsers will refuse it");
        }
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(info);
    }

    /// Seconds of validity left per domain: every `--domains` name (0 for a
    /// name the certificate does not cover: clients refuse it as if
    /// expired), or the certificate's own names when none were configured.
    /// Empty before any certificate is served.
    pub(crate) fn seconds_left(&self) -> Vec<(String, i64)> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(info) = current.as_ref() else {
            return Vec::new();
        };
        let left = info.not_after - now();
        if self.domains.is_empty() {
            return info.names.iter().map(|n| (n.clone(), left)).collect();
        }
        self.domains
            .iter()
            .map(|d| (d.clone(), if info.covers(d) { left } else { 0 }))
            .collect()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(names: &[&str]) -> CertInfo {
        CertInfo {
            subject: String::new(),
            names: names.iter().map(|n| n.to_string()).collect(),
            not_after: now() + 86_400,
        }
    }

    #[test]
    fn coverage_follows_browser_rules() {
        let c = info(&["example.org", "*.example.net"]);
        assert!(c.covers("example.org"));
        assert!(c.covers("Example.ORG."));
        assert!(!c.covers("www.example.org"));
        assert!(c.covers("www.example.net"));
        assert!(!c.covers("example.net"));
        assert!(!c.covers("a.b.example.net"));
    }

    #[test]
    fn seconds_left_per_configured_domain() {
        let served = Served::new(&["example.org".into(), "other.net".into()]);
        assert!(served.seconds_left().is_empty());
        *served.current.lock().unwrap() = Some(info(&["example.org"]));
        let left = served.seconds_left();
        assert_eq!(left[0].0, "example.org");
        assert!((86_000..=86_400).contains(&left[0].1), "{left:?}");
        assert_eq!(left[1], ("other.net".into(), 0));
    }

    #[test]
    fn parses_a_generated_certificate() {
        let cert = rcgen::generate_simple_self_signed(vec!["a.example".into(), "b.example".into()])
            .unwrap();
        let info = CertInfo::parse(cert.cert.der()).unwrap();
        assert_eq!(info.names, ["a.example", "b.example"]);
        assert!(info.not_after > now());
    }
}
