//! The real mles server, started in-process on an ephemeral loopback port.

use clap::Parser;
use mles::config::{Cli, Config};
use mles::server::ServerHandle;

/// A running mles server; shuts down when dropped.
pub struct Mles {
    pub url: String,
    handle: Option<ServerHandle>,
}

impl Mles {
    /// Starts with `args` on 127.0.0.1:0, 2 shards unless `--shards` is given
    /// (so channels and sessions cross shards).
    pub fn start(args: &[&str]) -> Mles {
        let mut v = vec!["mles", "--listen", "127.0.0.1:0"];
        if !args.contains(&"--shards") {
            v.extend(["--shards", "2"]);
        }
        v.extend_from_slice(args);
        let cli = Cli::try_parse_from(v).expect("test arguments parse");
        let config = Config::from_cli(cli, None).expect("test configuration is valid");
        let handle = mles::server::start(config).expect("server starts");
        Mles {
            url: format!("ws://{}/", handle.local_addrs()[0]),
            handle: Some(handle),
        }
    }
}

impl Drop for Mles {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
    }
}
