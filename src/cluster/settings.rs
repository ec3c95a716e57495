//! Cluster-mode settings (`--nats*` flags), validated without touching the network.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::subject::valid_prefix;

/// Where the shared log lives and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Seed list of NATS servers (`nats://` or `tls://`); the client learns the rest.
    pub servers: Vec<String>,
    /// A NATS credentials file (user JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// PEM roots to trust for `tls://` servers instead of the system ones.
    pub ca: Option<PathBuf>,
    /// Stream (and KV bucket) replicas: 1, or 3 on a 3-node NATS cluster.
    pub replicas: usize,
    /// Prefix of the stream, buckets and subjects, so deployments can share a NATS.
    pub prefix: String,
    /// Frames kept per channel: the stream's `max_msgs_per_subject` (`--limit`).
    pub history_frames: usize,
    /// Largest client message (`--max-message`), checked against NATS `max_payload`.
    pub max_message: usize,
    /// How long a publish may keep retrying (NATS failover) before its sender is told.
    pub publish_deadline: Duration,
    /// Messages one NATS subscription (a followed channel) may hold unread
    /// before the client drops them; its feed then reads them from the stream.
    pub feed_buffer: usize,
}

/// JetStream refuses more replicas than this.
pub const MAX_REPLICAS: usize = 5;

/// A `--nats*` flag that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    /// A `--nats` value that is not a NATS URL.
    #[error("--nats {0}: expected a nats:// or tls:// URL, e.g. nats://127.0.0.1:4222")]
    BadUrl(String),
    /// `--nats-replicas` outside what JetStream accepts.
    #[error("--nats-replicas must be between 1 and {MAX_REPLICAS}")]
    BadReplicas,
    /// Seed URLs that carry different credentials: one connection has one.
    #[error("--nats: the URLs carry different credentials; give them once (or on every URL alike)")]
    MixedCredentials,
    /// A prefix NATS would not accept as a stream name and subject token.
    #[error("--nats-prefix {0:?}: use 1 to 32 of A-Z a-z 0-9 _ -")]
    BadPrefix(String),
}

impl ClusterSettings {
    /// Checks the flags; `history_frames` and `max_message` come from `--limit` and `--max-message`.
    pub fn new(
        servers: Vec<String>,
        creds: Option<PathBuf>,
        ca: Option<PathBuf>,
        replicas: usize,
        prefix: String,
        history_frames: usize,
        max_message: usize,
    ) -> Result<ClusterSettings, SettingsError> {
        if let Some(bad) = servers.iter().find(|s| !valid_url(s)) {
            return Err(SettingsError::BadUrl(bad.clone()));
        }
        let mut userinfo = servers.iter().filter_map(|s| userinfo(s));
        if let Some(first) = userinfo.next()
            && userinfo.any(|u| u != first)
        {
            return Err(SettingsError::MixedCredentials);
        }
        if !(1..=MAX_REPLICAS).contains(&replicas) {
            return Err(SettingsError::BadReplicas);
        }
        if !valid_prefix(&prefix) {
            return Err(SettingsError::BadPrefix(prefix));
        }
        Ok(ClusterSettings {
            servers,
            creds,
            ca,
            replicas,
            prefix,
            history_frames,
            max_message,
            publish_deadline: DEFAULT_PUBLISH_DEADLINE,
            feed_buffer: DEFAULT_FEED_BUFFER,
        })
    }

    /// The stream that holds every channel of this deployment.
    pub fn stream_name(&self) -> String {
        format!("{}-channels", self.prefix)
    }

    /// The KV bucket of the cluster-wide (channel, uid) registry.
    pub fn members_bucket(&self) -> String {
        format!("{}-members", self.prefix)
    }

    /// The user and password, or the token, written in the seed URLs
    /// (`nats://user:pass@host`, `nats://token@host`; percent-encoded as in
    /// any URL), which the client crate would otherwise ignore.
    pub fn url_credentials(&self) -> Option<UrlCredentials> {
        let info = self.servers.iter().find_map(|s| userinfo(s))?;
        Some(match info.split_once(':') {
            Some((user, pass)) => {
                UrlCredentials::UserAndPassword(percent_decoded(user), percent_decoded(pass))
            }
            None => UrlCredentials::Token(percent_decoded(info)),
        })
    }

    /// The seed list as it may be logged: a user and password or a token
    /// in a URL (`nats://user:pass@host`, `nats://token@host`) shows as `***`.
    pub fn servers_for_log(&self) -> Vec<String> {
        self.servers.iter().map(|s| without_secrets(s)).collect()
    }

    /// The subject a node answers half-open probes on.
    pub fn probe_subject(&self, node: &str) -> String {
        format!("{}.node.{node}.probe", self.prefix)
    }
}

/// A NATS leader election after a server dies takes a few seconds (2-5 s in
/// the 3-node tests); 15 s rides out one election with room to spare and still
/// tells a publisher well within a client's patience.
pub const DEFAULT_PUBLISH_DEADLINE: Duration = Duration::from_secs(15);

/// A burst this long on one channel, unread by a busy node, waits in
/// memory; the rest is read again from the stream once the node catches up.
/// The client's own default (65,536) would let a slow node hold 16 MB of
/// 64-byte frames per channel, outside `--max-memory`.
pub const DEFAULT_FEED_BUFFER: usize = 8 * 1024;

/// Credentials written in a `--nats` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlCredentials {
    UserAndPassword(String, String),
    Token(String),
}

/// A URL's scheme, its user information (what comes before the host's `@`)
/// and the rest from that `@` on.
fn split_userinfo(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some((scheme, &rest[..at], &rest[at..]))
}

fn userinfo(url: &str) -> Option<&str> {
    split_userinfo(url)
        .map(|(_, info, _)| info)
        .filter(|i| !i.is_empty())
}

fn without_secrets(url: &str) -> String {
    match split_userinfo(url) {
        Some((scheme, _, host)) => format!("{scheme}://***{host}"),
        None => url.to_string(),
    }
}

/// `%XX` escapes decoded; a malformed one is kept as it is.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn valid_url(s: &str) -> bool {
    (s.starts_with("nats://") || s.starts_with("tls://"))
        && async_nats::ServerAddr::from_str(s).is_ok_and(|a| !a.host().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_taken_once() {
        let one = |urls: &[&str]| {
            ClusterSettings::new(
                urls.iter().map(|u| u.to_string()).collect(),
                None,
                None,
                1,
                "mles".into(),
                200,
                1 << 20,
            )
        };
        let s = one(&["nats://a:4222", "nats://mles:p%40ss%3Aw@b:4222"]).unwrap();
        assert_eq!(
            s.url_credentials(),
            Some(UrlCredentials::UserAndPassword(
                "mles".into(),
                "p@ss:w".into()
            ))
        );
        let s = one(&["tls://t0k%2Fen@b:4443", "tls://t0k%2Fen@c:4443"]).unwrap();
        assert_eq!(
            s.url_credentials(),
            Some(UrlCredentials::Token("t0k/en".into()))
        );
        assert_eq!(one(&["nats://a:4222"]).unwrap().url_credentials(), None);
        assert_eq!(
            one(&["nats://u:p@a:4222", "nats://u:q@b:4222"]),
            Err(SettingsError::MixedCredentials)
        );
        assert_eq!(percent_decoded("100%"), "100%");
        assert_eq!(percent_decoded("%zz%41"), "%zzA");
    }

    #[test]
    fn secrets_in_urls_are_not_logged() {
        let s = ClusterSettings::new(
            vec!["nats://mles:s3cret@a:4222".into(), "nats://c:4222".into()],
            None,
            None,
            1,
            "mles".into(),
            200,
            1 << 20,
        )
        .unwrap();
        assert_eq!(s.servers_for_log(), ["nats://***@a:4222", "nats://c:4222"]);
        assert_eq!(without_secrets("tls://t0ken@b:4443"), "tls://***@b:4443");
        assert_eq!(without_secrets("nats://u:p@w@d"), "nats://***@d");
        assert_eq!(without_secrets("nats://d/x@y"), "nats://d/x@y");
    }

    fn settings(servers: &[&str], replicas: usize, prefix: &str) -> Result<(), SettingsError> {
        ClusterSettings::new(
            servers.iter().map(|s| s.to_string()).collect(),
            None,
            None,
            replicas,
            prefix.to_string(),
            200,
            1 << 20,
        )
        .map(|_| ())
    }

    #[test]
    fn accepts_nats_and_tls_urls() {
        assert_eq!(
            settings(
                &["nats://127.0.0.1:4222", "tls://nats.example:4443"],
                3,
                "mles"
            ),
            Ok(())
        );
        assert_eq!(settings(&["nats://user:pw@host:4222"], 1, "mles"), Ok(()));
    }

    #[test]
    fn refuses_what_cannot_work() {
        for bad in [
            "127.0.0.1:4222",
            "http://host:4222",
            "ws://host",
            "nats://",
            "nats://ho st:1",
        ] {
            assert_eq!(
                settings(&[bad], 1, "mles"),
                Err(SettingsError::BadUrl(bad.to_string())),
                "{bad}"
            );
        }
        assert_eq!(
            settings(&["nats://h:1"], 0, "mles"),
            Err(SettingsError::BadReplicas)
        );
        assert_eq!(
            settings(&["nats://h:1"], 6, "mles"),
            Err(SettingsError::BadReplicas)
        );
        assert_eq!(
            settings(&["nats://h:1"], 1, "a.b"),
            Err(SettingsError::BadPrefix("a.b".into()))
        );
    }

    #[test]
    fn names_follow_the_prefix() {
        let s = ClusterSettings::new(
            vec!["nats://h:1".into()],
            None,
            None,
            1,
            "eu".into(),
            200,
            1 << 20,
        )
        .unwrap();
        assert_eq!(s.stream_name(), "eu-channels");
        assert_eq!(s.members_bucket(), "eu-members");
        assert_eq!(s.probe_subject("n1"), "eu.node.n1.probe");
    }
}
