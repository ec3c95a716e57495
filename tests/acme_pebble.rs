//! ACME end to end, offline, against Let's Encrypt's test CA `pebble`:
//! the server starts without a certificate, gets one covering all its
//! domains through TLS-ALPN-01 on its TLS port, serves it (no SNI: served;
//! unknown SNI: refused), and after a restart with the same `--cache`
//! serves the cached certificate at once without a new order.
//!
//! Needs `pebble` and `pebble-challtestsrv` on PATH: run
//! `scripts/install-pebble.sh`. pebble's WFE certificate is generated per
//! run (the Debian package ships none) and trusted through `--acme-ca-root`.
//!
//! The other tests here need no pebble: ACME set-up errors and a directory
//! that cannot be reached.

mod common;
mod tlsutil;

use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mles::tls::{Tls, TlsError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tlsutil::{STEP, TestCa, client, connect, eventually, leaf_of, serve_on};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

const DOMAINS: [&str; 2] = ["a.mles.test", "b.mles.test"];

/// Issuance with PEBBLE_VA_NOSLEEP takes a few seconds (rustls-acme polls
/// authorizations after 1, 2, 4 s); allow for a slow, shared machine.
const ISSUE_LIMIT: Duration = Duration::from_secs(90);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

fn require_pebble() {
    for tool in ["pebble", "pebble-challtestsrv"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            found,
            "{tool} is not installed: run scripts/install-pebble.sh (apt package 'pebble')"
        );
    }
}

/// A port that was free a moment ago (the child binds it; a clash fails loudly).
fn free_tcp_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (by its pid) when the test ends.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// pebble + pebble-challtestsrv (its DNS answers 127.0.0.1 for every name).
struct Pebble {
    _dns: Kid,
    _pebble: Kid,
    log: PathBuf,
    directory: String,
    management: SocketAddr,
    /// The CA that signed pebble's own HTTPS certificate (for --acme-ca-root).
    wfe_ca_file: PathBuf,
    wfe_roots: RootCertStore,
}

impl Pebble {
    /// Starts both, with TLS-ALPN-01 validations sent to `tls_port`.
    async fn start(dir: &Path, tls_port: u16) -> Pebble {
        require_pebble();
        let wfe_ca = TestCa::new("pebble WFE test CA");
        let wfe = wfe_ca.issue(&["127.0.0.1", "localhost"]);
        let (wfe_cert, wfe_key) = (dir.join("wfe-cert.pem"), dir.join("wfe-key.pem"));
        wfe.write(&wfe_cert, &wfe_key);
        let wfe_ca_file = dir.join("wfe-ca.pem");
        std::fs::write(&wfe_ca_file, &wfe_ca.pem).unwrap();

        let dns_port = free_udp_port();
        let dns_mgmt = free_tcp_port();
        let dns = Kid(Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::from(
                std::fs::File::create(dir.join("challtestsrv.log")).unwrap(),
            ))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pebble-challtestsrv"));
        wait_for_port(("127.0.0.1", dns_mgmt), "pebble-challtestsrv").await;

        let wfe_port = free_tcp_port();
        let management: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{wfe_port}"),
                "managementListenAddress": management.to_string(),
                "certificate": wfe_cert,
                "privateKey": wfe_key,
                "httpPort": free_tcp_port(),
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        let config_file = dir.join("pebble-config.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = dir.join("pebble.log");
        let pebble = Kid(Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("start pebble"));
        wait_for_port(("127.0.0.1", wfe_port), "pebble").await;
        wait_for_port(management, "pebble management").await;
        Pebble {
            _dns: dns,
            _pebble: pebble,
            log,
            directory: format!("https://127.0.0.1:{wfe_port}/dir"),
            management,
            wfe_ca_file,
            wfe_roots: wfe_ca.roots(),
        }
    }

    /// The root that pebble issues under (regenerated per pebble run).
    async fn issuing_root(&self) -> CertificateDer<'static> {
        let pem = https_get(self.management, "/roots/0", self.wfe_roots.clone()).await;
        CertificateDer::from_pem_slice(&pem).expect("pebble's /roots/0 is a PEM certificate")
    }

    /// How many orders pebble has been sent, from its log.
    fn orders(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .matches("POST /order-plz")
            .count()
    }
}

async fn wait_for_port(addr: impl tokio::net::ToSocketAddrs + Clone, what: &str) {
    eventually(STEP, what, || {
        let addr = addr.clone();
        async move { TcpStream::connect(addr).await.ok().map(|_| ()) }
    })
    .await;
}

/// A minimal HTTPS GET (HTTP/1.0, so the body ends at EOF and is never chunked).
async fn https_get(addr: SocketAddr, path: &str, roots: RootCertStore) -> Vec<u8> {
    mles::tls::install_crypto_provider();
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = tokio::time::timeout(
        STEP,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .unwrap()
    .unwrap();
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    // Go's server may end the TLS stream without close_notify; take what arrived.
    let _ = tokio::time::timeout(STEP, tls.read_to_end(&mut response))
        .await
        .unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response")
        + 4;
    assert!(response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200"));
    response[split..].to_vec()
}

fn acme_args(pebble: &Pebble, tls_port: u16, cache: &Path) -> Vec<String> {
    let mut args = vec!["--listen".to_string(), format!("127.0.0.1:{tls_port}")];
    for d in DOMAINS {
        args.extend(["-d".to_string(), d.to_string()]);
    }
    args.extend(["-e".into(), "admin@mles.test".into()]);
    args.extend(["--cache".into(), cache.to_str().unwrap().into()]);
    args.extend(["--acme-directory".into(), pebble.directory.clone()]);
    args.extend([
        "--acme-ca-root".into(),
        pebble.wfe_ca_file.to_str().unwrap().into(),
    ]);
    args
}

fn acme_config(args: &[String]) -> mles::config::Config {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tlsutil::config(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_issues_and_the_cache_is_reused() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("acme-cache");

    // Our TLS port first: pebble must know it for TLS-ALPN-01.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = listener.local_addr().unwrap();
    let pebble = Pebble::start(dir.path(), tls_addr.port()).await;
    let args = acme_args(&pebble, tls_addr.port(), &cache);

    // First start: no certificate yet, but accepting already.
    let (stop, shutdown) = watch::channel(false);
    let tls = Tls::start(&acme_config(&args), shutdown)
        .unwrap()
        .expect("ACME mode");
    let server = serve_on(listener, tls.clone());
    eventually(ISSUE_LIMIT, "a certificate from pebble", || async {
        let status = tls.acme_status().unwrap();
        if let Some(e) = &status.last_error {
            eprintln!("ACME so far: {status:?} ({e})");
        }
        (status.new_deployed > 0).then_some(())
    })
    .await;
    assert_eq!(pebble.orders(), 1, "one order for all domains");

    let mut roots = RootCertStore::empty();
    roots.add(pebble.issuing_root().await).unwrap();
    let trusting = client(roots.clone());

    // Every configured name is covered by the one certificate.
    let a = connect(tls_addr, DOMAINS[0], trusting.clone())
        .await
        .expect("handshake for the first domain");
    let b = connect(tls_addr, DOMAINS[1], trusting.clone())
        .await
        .expect("handshake for the second domain");
    assert_eq!(leaf_of(&a), leaf_of(&b));
    assert_eq!(a.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    // An unknown name is refused by the server (not merely distrusted by the client).
    let err = connect(tls_addr, "other.mles.test", trusting.clone())
        .await
        .expect_err("unknown SNI");
    assert!(err.to_string().contains("AccessDenied"), "{err}");

    // No SNI: the certificate, valid for the first domain.
    let mut no_sni = (*trusting).clone();
    no_sni.enable_sni = false;
    let s = connect(tls_addr, DOMAINS[0], Arc::new(no_sni))
        .await
        .expect("handshake without SNI");
    assert_eq!(leaf_of(&s), leaf_of(&a));
    let issued = leaf_of(&a);
    drop((a, b, s));

    // Restart with the same cache: served at once, no new order.
    stop.send(true).unwrap();
    tokio::task::spawn_blocking({
        let tls = tls.clone();
        move || tls.join()
    })
    .await
    .unwrap();
    server.abort();
    let _ = server.await;
    let listener = TcpListener::bind(tls_addr).await.unwrap();
    let (_stop2, shutdown2) = watch::channel(false);
    let tls2 = Tls::start(&acme_config(&args), shutdown2).unwrap().unwrap();
    let _server2 = serve_on(listener, tls2.clone());
    eventually(STEP, "the cached certificate", || async {
        (tls2.acme_status().unwrap().cached_deployed > 0).then_some(())
    })
    .await;
    let s = connect(tls_addr, DOMAINS[1], trusting.clone())
        .await
        .expect("handshake after restart");
    assert_eq!(leaf_of(&s), issued, "the cached certificate is served");
    let status = tls2.acme_status().unwrap();
    assert_eq!(status.new_deployed, 0, "{status:?}");
    assert_eq!(pebble.orders(), 1, "no new order after restart");
}

#[tokio::test]
async fn an_unreachable_directory_is_retried_and_the_server_keeps_accepting() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let closed = free_tcp_port();
    let ca = TestCa::new("unused CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let config = tlsutil::config(&[
        "--listen",
        "127.0.0.1:0",
        "-d",
        "a.mles.test",
        "--cache",
        dir.path().join("cache").to_str().unwrap(),
        "--acme-directory",
        &format!("https://127.0.0.1:{closed}/dir"),
        "--acme-ca-root",
        ca_file.to_str().unwrap(),
    ]);
    let (_stop, shutdown) = watch::channel(false);
    let tls = Tls::start(&config, shutdown).unwrap().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = serve_on(listener, tls.clone());

    // The first try fails at once, the retry after a 1 s back-off.
    let status = eventually(STEP, "two failed ACME attempts", || async {
        let s = tls.acme_status().unwrap();
        (s.failures >= 2).then_some(s)
    })
    .await;
    assert!(!status.has_certificate());
    let cause = status.last_error.clone().unwrap();
    assert!(cause.contains("order"), "the cause is logged: {cause}");
    assert!(status.order_failures >= 2, "{status:?}");
    let mut metrics = String::new();
    tls.render_metrics(&mut metrics);
    let orders: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mles_acme_order_failures_total "))
        .expect("ACME order failures are exported")
        .parse()
        .unwrap();
    assert!(orders >= 2, "{metrics}");
    assert!(!tls.has_certificate());

    // No certificate yet: handshakes fail, the listener lives on.
    assert!(
        connect(addr, "a.mles.test", client(ca.roots()))
            .await
            .is_err()
    );
    assert!(
        connect(addr, "a.mles.test", client(ca.roots()))
            .await
            .is_err()
    );
}

async fn admin_get(addr: SocketAddr, path: &str) -> String {
    common::http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Without a certificate yet, the server accepts but is not ready.
#[tokio::test]
async fn not_ready_until_a_certificate_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let closed = free_tcp_port();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &TestCa::new("unused CA").pem).unwrap();
    let server = common::TestServer::start(&[
        "-d",
        "a.mles.test",
        "--acme-directory",
        &format!("https://127.0.0.1:{closed}/dir"),
        "--acme-ca-root",
        ca_file.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
    ]);
    let admin = server.metrics_addr().unwrap();
    let ready = admin_get(admin, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(
        ready.contains("ok listeners") && ready.contains("waiting certificate"),
        "{ready}"
    );
    let live = admin_get(admin, "/healthz").await;
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    assert!(server.stop());
}

#[test]
fn bad_acme_settings_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let start = |extra: &[&str]| {
        let mut args = vec!["--listen", "127.0.0.1:0", "-d", "a.mles.test"];
        args.extend_from_slice(extra);
        let (_stop, shutdown) = watch::channel(false);
        Tls::start(&tlsutil::config(&args), shutdown).expect_err("bad settings")
    };
    let missing = dir.path().join("missing-ca.pem");
    let err = start(&["--acme-ca-root", missing.to_str().unwrap()]);
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
    assert!(err.to_string().contains("missing-ca.pem"), "{err}");

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err = start(&["--acme-ca-root", empty.to_str().unwrap()]);
    assert!(matches!(err, TlsError::NoCertificate(_)), "{err}");

    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let err = start(&["--cache", not_a_dir.to_str().unwrap()]);
    assert!(matches!(err, TlsError::Cache { .. }), "{err}");
}

/// The whole server (4 shards) against pebble: the certificate arrives
/// through TLS-ALPN-01 on whichever shard pebble's validation lands, a wss
/// client that trusts only pebble's root joins a channel and relays, and a
/// restart with the same cache serves at once without a new order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_gets_a_certificate_from_pebble_and_relays_over_wss() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("acme-cache");
    // Reserve the TLS port pebble will validate on (the server binds it right after).
    let tls_port = free_tcp_port();
    let tls_addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let pebble = Pebble::start(dir.path(), tls_port).await;
    let args = acme_args(&pebble, tls_port, &cache);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let mut roots = RootCertStore::empty();
    roots.add(pebble.issuing_root().await).unwrap();
    let trusting = client(roots);

    let mut with_metrics = args.clone();
    with_metrics.extend(["--metrics", "127.0.0.1:0"]);
    let server = common::TestServer::start(&with_metrics);
    assert_eq!(server.addr, tls_addr);
    eventually(
        ISSUE_LIMIT,
        "the server's certificate from pebble",
        || async {
            connect(tls_addr, DOMAINS[0], trusting.clone())
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    // Ready, and the new certificate's expiry is exported for every domain.
    let admin = server.metrics_addr().unwrap();
    let ready = admin_get(admin, "/readyz").await;
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.contains("ok certificate"),
        "{ready}"
    );
    let metrics = admin_get(admin, "/metrics").await;
    for d in DOMAINS {
        let prefix = format!("mles_tls_certificate_expiry_seconds{{domain=\"{d}\"}} ");
        let left: i64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no expiry for {d}:\n{metrics}"))
            .parse()
            .unwrap();
        assert!(left > 86_400, "{d}: {left}");
    }
    tlsutil::wss_relay_check(tls_addr, DOMAINS[1], trusting.clone()).await;
    let err = connect(tls_addr, "other.mles.test", trusting.clone())
        .await
        .expect_err("unknown SNI");
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    assert!(server.stop());
    assert_eq!(pebble.orders(), 1);

    let server = common::TestServer::start(&args);
    eventually(STEP, "the cached certificate after restart", || async {
        connect(tls_addr, DOMAINS[0], trusting.clone())
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    tlsutil::wss_relay_check(tls_addr, DOMAINS[0], trusting.clone()).await;
    assert_eq!(pebble.orders(), 1, "no new order after restart");
    assert!(server.stop());
}
