//! The listen, TLS and ACME flags: which addresses the server listens on,
//! how connections are secured ([`TlsChoice`]: plain, certificate files, or
//! ACME), the http->https redirect, and their checks.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use clap::Args;

use super::ConfigError;

/// The listen, TLS and ACME flags of [`super::Cli`].
#[derive(Args, Debug, Clone)]
pub struct ListenFlags {
    /// Domain(s) served; with no TLS flags these get Let's Encrypt certificates (repeatable).
    #[arg(short = 'd', long = "domains", display_order = 1)]
    pub domains: Vec<String>,
    /// ACME contact e-mail address (repeatable).
    #[arg(short = 'e', long = "email", display_order = 2)]
    pub email: Vec<String>,
    /// Directory that keeps the ACME account and certificates across restarts.
    #[arg(short = 'c', long = "cache", display_order = 3)]
    pub cache: Option<PathBuf>,
    /// Use Let's Encrypt staging environment.
    #[arg(short = 's', long = "staging", display_order = 7)]
    pub staging: bool,
    /// Port of the default listen address [default: 443 with TLS, 8080 otherwise].
    #[arg(short = 'p', long = "port", display_order = 8)]
    pub port: Option<u16>,
    /// Serve an HTTP redirect to https on port 80 (see --redirect-port).
    #[arg(short = 'r', long = "redirect", display_order = 9)]
    pub redirect: bool,
    /// Port of the redirect listener.
    #[arg(long = "redirect-port", default_value_t = 80, display_order = 10)]
    pub redirect_port: u16,
    // The brackets are an address, not a link; the text is also --help's.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Full listen address, e.g. 0.0.0.0:9000 or [::]:443 (repeatable; wins over --port).
    #[arg(long = "listen", display_order = 12)]
    pub listen: Vec<SocketAddr>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long = "tls-cert", requires = "tls_key", display_order = 13)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long = "tls-key", requires = "tls_cert", display_order = 14)]
    pub tls_key: Option<PathBuf>,
    /// Serve plain ws even with --domains (behind a TLS-terminating proxy).
    #[arg(long = "plain", conflicts_with_all = ["tls_cert", "tls_key"], display_order = 15)]
    pub plain: bool,
    /// ACME directory URL [default: Let's Encrypt production, or staging with --staging].
    #[arg(long = "acme-directory", display_order = 16)]
    pub acme_directory: Option<String>,
    /// PEM root certificate to trust for the ACME directory (a private or test CA).
    #[arg(long = "acme-ca-root", display_order = 17)]
    pub acme_ca_root: Option<PathBuf>,
}

/// How connections are secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsChoice {
    /// Plain ws (local use, or behind a TLS-terminating proxy).
    Plain,
    /// Certificate chain and key from PEM files.
    Files { cert: PathBuf, key: PathBuf },
    /// Certificates from an ACME CA (Let's Encrypt by default).
    Acme(AcmeSettings),
}

/// ACME settings, from `--domains`, `--email`, `--cache`, `--staging`, `--acme-*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    pub domains: Vec<String>,
    pub emails: Vec<String>,
    pub cache: Option<PathBuf>,
    /// Directory URL; production Let's Encrypt unless `--staging` or `--acme-directory`.
    pub directory: String,
    pub ca_root: Option<PathBuf>,
}

/// Let's Encrypt production directory (the default, unlike rustls-acme's).
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt staging directory (`--staging`).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// What [`ListenFlags`] resolve to.
pub(super) struct Listening {
    /// Lower-cased `--domains`.
    pub domains: Vec<String>,
    pub tls: TlsChoice,
    pub listen: Vec<SocketAddr>,
    /// Port that https URLs in redirects point to.
    pub tls_port: u16,
    /// ACME flags given but without effect with certificate files.
    pub warnings: Vec<String>,
}

impl ListenFlags {
    /// Chooses TLS and the listen addresses: certificate files when given,
    /// else ACME for `--domains` (unless `--plain`), else plain ws; plain
    /// ws with no domains listens on loopback only.
    pub(super) fn resolve(&self) -> Result<Listening, ConfigError> {
        let domains: Vec<String> = self
            .domains
            .iter()
            .map(|d| d.trim().to_ascii_lowercase())
            .collect();
        if domains.iter().any(|d| d.is_empty()) {
            return Err(ConfigError::EmptyDomain);
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => TlsChoice::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ if !domains.is_empty() && !self.plain => TlsChoice::Acme(AcmeSettings {
                domains: domains.clone(),
                emails: self.email.clone(),
                cache: self.cache.clone(),
                directory: self.acme_directory.clone().unwrap_or_else(|| {
                    if self.staging {
                        LETS_ENCRYPT_STAGING
                    } else {
                        LETS_ENCRYPT_PRODUCTION
                    }
                    .to_string()
                }),
                ca_root: self.acme_ca_root.clone(),
            }),
            _ => TlsChoice::Plain,
        };
        let secure = tls != TlsChoice::Plain;
        let local = !secure && domains.is_empty();
        let port = self.port.unwrap_or(if secure { 443 } else { 8080 });
        let listen = if !self.listen.is_empty() {
            self.listen.clone()
        } else if local {
            vec![
                SocketAddr::from(([127, 0, 0, 1], port)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            ]
        } else {
            vec![SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))]
        };
        let tls_port = listen.first().map(|a| a.port()).unwrap_or(port);
        let warnings = self.ignored_acme_flags(&tls);
        Ok(Listening {
            domains,
            tls,
            listen,
            tls_port,
            warnings,
        })
    }

    /// The port of the redirect listener, when `--redirect` is given; it
    /// needs TLS to redirect to.
    pub(super) fn redirect_port(&self, tls: &TlsChoice) -> Result<Option<u16>, ConfigError> {
        if self.redirect && *tls == TlsChoice::Plain {
            return Err(ConfigError::RedirectWithoutTls);
        }
        Ok(self.redirect.then_some(self.redirect_port))
    }

    /// A warning for each ACME flag given when certificates come from files.
    fn ignored_acme_flags(&self, tls: &TlsChoice) -> Vec<String> {
        let mut warnings = Vec::new();
        if matches!(tls, TlsChoice::Files { .. }) {
            for (given, flag) in [
                (self.cache.is_some(), "--cache"),
                (!self.email.is_empty(), "--email"),
                (self.staging, "--staging"),
                (self.acme_directory.is_some(), "--acme-directory"),
            ] {
                if given {
                    warnings.push(format!(
                        "{flag} is ignored: certificates come from --tls-cert/--tls-key, not ACME"
                    ));
                }
            }
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::cfg;
    use super::super::{Cli, ConfigError};
    use super::*;
    use clap::Parser;

    #[test]
    fn local_default_is_loopback_8080() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.tls, TlsChoice::Plain);
        assert_eq!(
            c.listen,
            vec![
                "127.0.0.1:8080".parse().unwrap(),
                "[::1]:8080".parse().unwrap()
            ]
        );
    }

    #[test]
    fn domains_mean_acme_on_443_production() {
        let c = cfg(&["-d", "Example.org"]).unwrap();
        assert_eq!(c.listen, vec!["[::]:443".parse().unwrap()]);
        match c.tls {
            TlsChoice::Acme(a) => {
                assert_eq!(a.domains, vec!["example.org"]);
                assert_eq!(a.directory, LETS_ENCRYPT_PRODUCTION);
            }
            other => panic!("{other:?}"),
        }
        match cfg(&["-d", "x.org", "-s"]).unwrap().tls {
            TlsChoice::Acme(a) => assert_eq!(a.directory, LETS_ENCRYPT_STAGING),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn listen_wins_over_port_and_plain_with_domains() {
        let c = cfg(&["-d", "x.org", "--plain", "-p", "9000"]).unwrap();
        assert_eq!(c.tls, TlsChoice::Plain);
        assert_eq!(c.listen, vec!["[::]:9000".parse().unwrap()]);
        let c = cfg(&["--listen", "127.0.0.1:7000", "-p", "9000"]).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:7000".parse().unwrap()]);
    }

    #[test]
    fn redirect_needs_tls_and_a_cert_needs_its_key() {
        assert!(matches!(cfg(&["-r"]), Err(ConfigError::RedirectWithoutTls)));
        assert!(Cli::try_parse_from(["mles", "--tls-cert", "a.pem"]).is_err());
    }

    #[test]
    fn acme_flags_in_file_mode_are_reported() {
        let c = cfg(&["--tls-cert", "c", "--tls-key", "k", "-c", "/x", "-e", "a@b"]).unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].starts_with("--cache is ignored"));
        assert!(
            cfg(&["-d", "x.org", "-c", "/x"])
                .unwrap()
                .warnings
                .is_empty()
        );
    }
}
