//! wss:// against a TLS fake server: a CA file or --insecure works; an
//! unknown certificate without --insecure is refused.

mod common;

use common::{FakeServer, Fault, cli};

#[test]
fn wss_with_ca_file() {
    let (server, pem) = FakeServer::start_tls(Fault::None);
    let mut ca = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut ca, pem.as_bytes()).unwrap();
    let ca_path = ca.path().to_str().unwrap().to_string();
    let r = mles_loadtest::run(
        &cli(&[
            "history",
            "--url",
            &server.url,
            "--ca-file",
            &ca_path,
            "--messages",
            "20",
            "--live",
            "10",
            "--rate",
            "500",
            "--timeout",
            "3",
            "--quiet",
        ])
        .command,
    )
    .unwrap();
    assert!(r.passed, "{}", r.table());
}

#[test]
fn wss_insecure_fanout() {
    let (server, _) = FakeServer::start_tls(Fault::None);
    let r = mles_loadtest::run(
        &cli(&[
            "fanout",
            "--url",
            &server.url,
            "--insecure",
            "--channels",
            "1",
            "--subs",
            "2",
            "--rate",
            "100",
            "--warmup",
            "0.1",
            "--duration",
            "0.4",
            "--deadline",
            "8",
            "--quiet",
        ])
        .command,
    )
    .unwrap();
    assert!(r.passed, "{}", r.table());
    assert!(r.count("delivered") > 0);
}

#[test]
fn wss_unknown_certificate_is_refused() {
    let (server, _) = FakeServer::start_tls(Fault::None);
    let err = mles_loadtest::run(
        &cli(&["history", "--url", &server.url, "--timeout", "2", "--quiet"]).command,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("tls"), "{err:#}");
}
