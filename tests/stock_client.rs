//! A stock client not written here (Python `websockets`) joins and relays.

mod common;

use std::path::PathBuf;

use common::*;

/// The python of the virtual environment `scripts/install-test-deps.sh`
/// puts `websockets` in: `$MLES_TEST_VENV`, else `~/.cache/mles/venv`.
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("MLES_TEST_VENV").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/mles/venv")
        },
        PathBuf::from,
    );
    venv.join("bin/python3")
}

#[tokio::test]
async fn python_websockets_client_joins_and_relays() {
    let python = venv_python();
    let ok = std::process::Command::new(&python)
        .args(["-c", "import websockets"])
        .status();
    assert!(
        ok.is_ok_and(|s| s.success()),
        "{} with the `websockets` package is needed: run ./scripts/install-test-deps.sh",
        python.display()
    );
    let srv = TestServer::start(&[]);
    let mut rust = srv.join("rust", "stock").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/mles_client.py");
    let child = tokio::process::Command::new(&python)
        .args([script, &srv.ws_url(), "python", "stock"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert_eq!(
        header_uid(&rust.recv_text().await).as_deref(),
        Some("python")
    );
    assert_eq!(rust.recv_text().await, "hello from python");
    rust.send_text("hello from rust").await;
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let history = stdout
        .lines()
        .find_map(|l| l.strip_prefix("history "))
        .expect("history line");
    assert_eq!(header_uid(history).as_deref(), Some("rust"), "{stdout}");
    assert!(stdout.contains("reply hello from rust"), "{stdout}");
}
