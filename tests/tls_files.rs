//! Certificate-file mode: the configured certificate is served over TLS 1.2
//! and 1.3 with ALPN http/1.1, and bad files are refused at start with a
//! clear error.

mod common;
mod tlsutil;

use std::sync::Arc;

use mles::tls::{Tls, TlsError};
use tlsutil::{TestCa, client, connect, echo, files_config, leaf_of, serve};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

#[tokio::test]
async fn serves_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = TestCa::new("files CA");
    let leaf = ca.issue(&["localhost", "127.0.0.1"]);
    leaf.write(&cert, &key);

    let (_stop, shutdown) = watch::channel(false);
    let tls = Tls::start(&files_config(&cert, &key), shutdown)
        .unwrap()
        .expect("TLS configured");
    let (addr, _server) = serve(tls).await;

    let mut stream = connect(addr, "localhost", client(ca.roots()))
        .await
        .unwrap();
    assert_eq!(leaf_of(&stream), leaf.der);
    let conn = stream.get_ref().1;
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    echo(&mut stream, "hello").await;

    // TLS 1.2 too.
    let mut config =
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
            .with_root_certificates(ca.roots())
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut stream = connect(addr, "127.0.0.1", Arc::new(config)).await.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    echo(&mut stream, "over 1.2").await;

    // A client that trusts another CA fails; the server carries on.
    let other = TestCa::new("other CA");
    assert!(
        connect(addr, "localhost", client(other.roots()))
            .await
            .is_err()
    );
    let mut stream = connect(addr, "localhost", client(ca.roots()))
        .await
        .unwrap();
    echo(&mut stream, "still fine").await;
}

#[tokio::test]
async fn non_tls_bytes_end_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = TestCa::new("files CA");
    ca.issue(&["localhost"]).write(&cert, &key);
    let (_stop, shutdown) = watch::channel(false);
    let tls = Tls::start(&files_config(&cert, &key), shutdown)
        .unwrap()
        .unwrap();
    let (addr, _server) = serve(tls).await;

    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The server gives up on the handshake and closes; whatever it sends (an alert, or nothing), EOF follows.
    let read = tokio::time::timeout(
        tlsutil::STEP,
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut buf),
    )
    .await;
    assert!(
        read.is_ok(),
        "the server should close a non-TLS connection promptly"
    );
}

#[test]
fn plain_needs_no_tls() {
    let (_stop, shutdown) = watch::channel(false);
    let config = tlsutil::config(&["--listen", "127.0.0.1:0"]);
    assert!(Tls::start(&config, shutdown).unwrap().is_none());
}

fn start_err(cert: &std::path::Path, key: &std::path::Path) -> TlsError {
    let (_stop, shutdown) = watch::channel(false);
    Tls::start(&files_config(cert, key), shutdown).expect_err("bad files must be refused")
}

#[test]
fn bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = TestCa::new("files CA");
    let leaf = ca.issue(&["localhost"]);
    let other = ca.issue(&["localhost"]);

    // Missing certificate file.
    let missing = dir.path().join("missing.pem");
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let err = start_err(&missing, &key);
    assert!(
        matches!(err, TlsError::Read { ref path, .. } if path == &missing),
        "{err}"
    );
    assert!(err.to_string().contains("missing.pem"), "{err}");

    // Unreadable key (a directory stands in for a file we may not read: we run as root).
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    let err = start_err(&cert, dir.path());
    assert!(matches!(err, TlsError::Read { .. }), "{err}");

    // Key of another certificate.
    std::fs::write(&key, &other.key_pem).unwrap();
    let err = start_err(&cert, &key);
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");

    // Certificate and key swapped.
    leaf.write(&cert, &key);
    let err = start_err(&key, &cert);
    assert!(matches!(err, TlsError::NoCertificate(_)), "{err}");

    // No PEM at all in the key file.
    std::fs::write(&key, "not a key\n").unwrap();
    let err = start_err(&cert, &key);
    assert!(matches!(err, TlsError::NoPrivateKey(_)), "{err}");

    // Truncated PEM.
    std::fs::write(&cert, &leaf.cert_pem[..leaf.cert_pem.len() / 2]).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let err = start_err(&cert, &key);
    assert!(
        matches!(err, TlsError::Pem { .. } | TlsError::NoCertificate(_)),
        "{err}"
    );
}

/// The whole server: wss join and relay over certificate-file TLS, on 4 shards.
#[tokio::test]
async fn wss_relay_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = TestCa::new("files CA");
    ca.issue(&["localhost", "127.0.0.1"]).write(&cert, &key);
    let server = common::TestServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    tlsutil::wss_relay_check(server.addr, "localhost", client(ca.roots())).await;
    assert!(server.stop());
}

/// Reads one HTTP response from `addr` (plain HTTP).
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    common::http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// The value of a sample line starting with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn operators_see_certificate_expiry_failures_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = TestCa::new("files CA");
    // Covers example.org but not other.net: other.net reports 0 seconds.
    ca.issue(&["example.org", "localhost"]).write(&cert, &key);
    let srv = common::TestServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "-d",
        "example.org",
        "-d",
        "other.net",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let admin = srv.metrics_addr().unwrap();
    let ready = get(admin, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains("ok certificate"), "{ready}");

    let text = get(admin, "/metrics").await;
    let left = sample(
        &text,
        "mles_tls_certificate_expiry_seconds{domain=\"example.org\"} ",
    )
    .unwrap_or_else(|| panic!("expiry per domain:\n{text}"));
    // rcgen's default validity runs to 4096; anything over a year will do.
    assert!(left > 365 * 86_400, "{left}");
    assert_eq!(
        sample(
            &text,
            "mles_tls_certificate_expiry_seconds{domain=\"other.net\"} "
        ),
        Some(0)
    );
    assert_eq!(sample(&text, "mles_tls_handshake_failures_total "), Some(0));

    // Bytes that are not TLS fail the handshake, and it is counted.
    let mut tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tlsutil::eventually(common::WAIT, "the failed handshake is counted", || async {
        let text = get(admin, "/metrics").await;
        (sample(&text, "mles_tls_handshake_failures_total ") == Some(1)).then_some(())
    })
    .await;
}

#[test]
fn the_redirect_listens_where_the_server_does() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    TestCa::new("files CA")
        .issue(&["localhost"])
        .write(&cert, &key);
    let config = tlsutil::config(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--redirect",
        "--redirect-port",
        "0",
    ]);
    let handle = mles::server::start(config).unwrap();
    let redirect = handle.redirect_addr().expect("--redirect was given");
    // Not [::]: the server was told to listen on 127.0.0.1 only.
    assert_eq!(redirect.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert!(handle.stop());
}
