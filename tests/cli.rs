//! The binary's command line: clear one-line errors and a non-zero exit.

use std::process::Command;

fn mles(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mles"))
        .args(args)
        .output()
        .expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_are_refused_clearly() {
    let (code, err) = mles(&["--no-such-flag"]);
    assert_ne!(code, 0);
    assert!(err.contains("--no-such-flag"), "{err}");
    let (code, err) = mles(&["--max-message", "12XB"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown unit"), "{err}");
    let (code, err) = mles(&["--shards", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--shards must be between 1 and 1024"), "{err}");
    let (code, err) = mles(&["--peer", "http://elsewhere/"]);
    assert_eq!(code, 2);
    assert!(err.contains("expected a ws:// or wss:// URL"), "{err}");
    let (code, err) = mles(&["--redirect"]);
    assert_ne!(code, 0);
    assert!(err.contains("--redirect needs TLS"), "{err}");
}

#[test]
fn an_unusable_address_is_a_clear_error() {
    // 192.0.2.1 (TEST-NET-1) is never assigned to this machine, so bind fails at once.
    let (code, err) = mles(&["--listen", "192.0.2.1:8080"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot listen on 192.0.2.1:8080"), "{err}");
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("mles:"))
            .count(),
        1,
        "{err}"
    );
}

#[test]
fn a_missing_certificate_file_is_named_once() {
    let (code, err) = mles(&[
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        "/nonexistent/key.pem",
    ]);
    assert_ne!(code, 0);
    let line = err
        .lines()
        .find(|l| l.starts_with("mles:"))
        .expect("an error line");
    assert!(line.contains("/nonexistent/cert.pem"), "{err}");
    assert_eq!(
        line.matches("No such file or directory").count(),
        1,
        "cause repeated: {line}"
    );
}

#[test]
fn help_lists_the_reference_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_mles"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--domains",
        "--email",
        "--cache",
        "--limit",
        "--filelimit",
        "--wwwroot",
        "--staging",
        "--port",
        "--redirect",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn a_second_server_on_the_same_port_is_refused() {
    // Our listeners use SO_REUSEPORT; a second process must still get "in use".
    let mut first = Command::new(env!("CARGO_BIN_EXE_mles"))
        .args(["--listen", "127.0.0.1:0", "--shards", "1"])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(first.stderr.take().unwrap()));
    let addr = loop {
        let line = lines
            .next()
            .expect("first server logs its address")
            .unwrap();
        if let Some(rest) = line.split("addrs=[").nth(1) {
            break rest.split(']').next().unwrap().to_string();
        }
    };
    let (code, err) = mles(&["--listen", &addr]);
    first.kill().unwrap();
    let _ = first.wait();
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.to_lowercase().contains("in use"),
        "{err}"
    );
}
