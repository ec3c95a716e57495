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
    assert!(err.contains("--shards must be at least 1"), "{err}");
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
