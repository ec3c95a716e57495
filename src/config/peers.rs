//! The flags of the two ways to join servers: peer links (`--peer*`,
//! PROTOCOL.md §7) and cluster mode (`--nats*`, a shared JetStream log);
//! their checks, and this server's peer uid.

use std::path::PathBuf;

use clap::Args;

use super::ConfigError;
use crate::cluster::ClusterSettings;

/// The peer and cluster flags of [`super::Cli`].
#[derive(Args, Debug, Clone)]
pub struct PeerFlags {
    /// Peer server to link every channel to, ws:// or wss:// (repeatable).
    #[arg(long = "peer", display_order = 24)]
    pub peer: Vec<String>,
    /// The uid this server's peer links use; unique per server [default: mles-peer-HOSTNAME-PORT].
    #[arg(long = "peer-uid", display_order = 25)]
    pub peer_uid: Option<String>,
    /// Key the links' `auth` is computed with, for peers that set MLES_KEY [default: MLES_KEY].
    #[arg(long = "peer-key", display_order = 26)]
    pub peer_key: Option<String>,
    /// PEM root certificate(s) to trust for wss:// peers [default: public roots].
    #[arg(long = "peer-ca", display_order = 27)]
    pub peer_ca: Option<PathBuf>,
    /// Cluster mode: a NATS server (nats:// or tls://) of the shared JetStream log (repeatable).
    #[arg(long = "nats", conflicts_with_all = ["peer", "dedup"], display_order = 30)]
    pub nats: Vec<String>,
    /// NATS credentials file (user JWT and NKey seed) for cluster mode.
    #[arg(long = "nats-creds", requires = "nats", display_order = 31)]
    pub nats_creds: Option<PathBuf>,
    /// PEM root certificate(s) to trust for tls:// NATS servers [default: system roots].
    #[arg(long = "nats-ca", requires = "nats", display_order = 32)]
    pub nats_ca: Option<PathBuf>,
    /// Replicas of the cluster's stream and registry (3 on a 3-node NATS cluster).
    #[arg(long = "nats-replicas", default_value_t = 1, display_order = 33)]
    pub nats_replicas: usize,
    /// Prefix of the cluster's stream, bucket and subjects (several deployments can share a NATS).
    #[arg(long = "nats-prefix", default_value = "mles", display_order = 34)]
    pub nats_prefix: String,
}

impl PeerFlags {
    /// Refuses a `--peer` that is not a ws:// or wss:// URL.
    pub(super) fn check_urls(&self) -> Result<(), ConfigError> {
        if let Some(p) = self.peer.iter().find(|p| {
            !(p.starts_with("ws://") || p.starts_with("wss://")) || p.parse::<http::Uri>().is_err()
        }) {
            return Err(ConfigError::BadPeer(p.clone()));
        }
        Ok(())
    }

    /// Cluster mode's settings when `--nats` is given, with the history
    /// and message bounds of `--limit` and `--max-message`.
    pub(super) fn cluster(
        &self,
        history_frames: usize,
        max_message: usize,
    ) -> Result<Option<ClusterSettings>, ConfigError> {
        if self.nats.is_empty() {
            return Ok(None);
        }
        Ok(Some(ClusterSettings::new(
            self.nats.clone(),
            self.nats_creds.clone(),
            self.nats_ca.clone(),
            self.nats_replicas,
            self.nats_prefix.clone(),
            history_frames,
            max_message,
        )?))
    }

    /// The uid of this server's peer links: `--peer-uid`, else one made of
    /// the host name and `port`.
    pub(super) fn peer_uid(&self, port: u16) -> Result<String, ConfigError> {
        match &self.peer_uid {
            Some(u) if u.is_empty() || u.chars().any(char::is_control) => {
                Err(ConfigError::BadPeerUid)
            }
            Some(u) => Ok(u.clone()),
            None => Ok(default_peer_uid(port)),
        }
    }
}

/// The default uid of peer links: `mles-peer-<hostname>-<port>`, unique per
/// server on a host (two servers cannot share a port); with port 0 (chosen by
/// the kernel, not yet known) the process id and a counter stand in for it.
fn default_peer_uid(port: u16) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::from("local")
    };
    if port == 0 {
        // Several servers in one process (tests, embedding) still differ.
        static NTH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NTH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("mles-peer-{host}-pid{}-{n}", std::process::id())
    } else {
        format!("mles-peer-{host}-{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::Cli;
    use super::super::tests::cfg;
    use super::*;
    use crate::cluster::SettingsError;
    use clap::Parser;

    #[test]
    fn nats_flags() {
        assert!(cfg(&[]).unwrap().cluster.is_none());
        let c = cfg(&[
            "--nats",
            "nats://a:4222",
            "--nats",
            "tls://b:4443",
            "--nats-replicas",
            "3",
            "-l",
            "50",
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.servers, vec!["nats://a:4222", "tls://b:4443"]);
        assert_eq!(
            (c.replicas, c.history_frames, c.prefix.as_str()),
            (3, 50, "mles")
        );
        assert!(matches!(
            cfg(&["--nats", "a:4222"]),
            Err(ConfigError::Cluster(SettingsError::BadUrl(_)))
        ));
        assert!(matches!(
            cfg(&["--nats", "nats://a:1", "--nats-prefix", "a.b"]),
            Err(ConfigError::Cluster(SettingsError::BadPrefix(_)))
        ));
        assert!(matches!(
            cfg(&["--nats", "nats://a:1", "--nats-replicas", "0"]),
            Err(ConfigError::Cluster(SettingsError::BadReplicas))
        ));
        // Cluster mode and peer links are two answers to one question: pick one.
        assert!(Cli::try_parse_from(["mles", "--nats", "nats://a:1", "--peer", "ws://b"]).is_err());
        assert!(Cli::try_parse_from(["mles", "--nats-creds", "x.creds"]).is_err());
    }
}
