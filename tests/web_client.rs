//! The built-in web client (no `--wwwroot`) in a real headless browser,
//! against the real server: three pages and a Rust client in one channel.
//!
//! `tests/browser/web_client.mjs` drives Debian's Chromium through
//! playwright-core and prints `phase <name>` lines whenever this side has to
//! act; this side answers with a line on its stdin. Screenshots go to
//! `<target dir>/test-artifacts/`. Needs `tests/browser/install.sh` (run by
//! `scripts/test.sh`); without it the test fails and says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{TestServer, header_uid};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Longest wait for the browser script's next line: launching Chromium on a
/// busy two-core machine takes seconds; each step inside waits up to 20 s.
const BROWSER_WAIT: Duration = Duration::from_secs(90);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Fails with instructions when the browser or its driver is missing.
fn require_browser() {
    let dir = browser_dir();
    let mut missing = Vec::new();
    if !Path::new("/usr/bin/chromium").exists() {
        missing.push("/usr/bin/chromium (Debian package chromium)");
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        missing.push("node (Debian package nodejs)");
    }
    if !dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push("tests/browser/node_modules/playwright-core (npm)");
    }
    assert!(
        missing.is_empty(),
        "the browser test needs {}: run tests/browser/install.sh (scripts/test.sh does)",
        missing.join(", ")
    );
}

/// `<target dir>/test-artifacts`, wherever CARGO_TARGET_DIR points.
fn artifact_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target tmp dir has a parent")
        .join("test-artifacts")
}

#[tokio::test]
async fn chat_in_a_real_browser() {
    require_browser();
    let artifacts = artifact_dir();
    let mut srv = TestServer::start(&[]);
    let addr = srv.addr;
    let mut robot = Some(srv.join("robot", "lobby").await);

    let mut child = Command::new("node")
        .arg("web_client.mjs")
        .arg(format!("http://{addr}/"))
        .arg(&artifacts)
        .current_dir(browser_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts (run tests/browser/install.sh)");
    let mut to_browser = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });

    let mut transcript = Vec::new();
    loop {
        let line = tokio::time::timeout(BROWSER_WAIT, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the browser script stalled after {transcript:?}"))
            .expect("stdout reads");
        let Some(line) = line else { break };
        transcript.push(line.clone());
        match line.as_str() {
            "done" => break,
            // The robot member sees each join in the channel's order, and
            // the messages sent between them.
            "phase joined alice" | "phase joined bob" => {
                let r = robot.as_mut().unwrap();
                let uid = line.rsplit(' ').next().unwrap();
                assert_eq!(header_uid(&r.recv_text().await).as_deref(), Some(uid));
            }
            "phase joined carol" => {
                let r = robot.as_mut().unwrap();
                // The page's envelope (docs/PROTOCOL.md), byte for byte.
                assert_eq!(
                    r.recv_text().await,
                    r#"{"mles.chat":1,"from":"alice","text":"hello from alice"}"#
                );
                assert_eq!(
                    r.recv_text().await,
                    r#"{"mles.chat":1,"from":"bob","text":"hi alice"}"#
                );
                assert_eq!(header_uid(&r.recv_text().await).as_deref(), Some("carol"));
            }
            "phase chatted" => {
                let r = robot.as_mut().unwrap();
                r.send_text("beep from robot").await;
                // Looks like a join, but for another channel: a forgery.
                r.send_text(r#"{"uid":"admin","channel":"room2"}"#).await;
                r.send_text(r#"{"mles.chat":1,"from":"mallory","text":"trust me"}"#)
                    .await;
                // Alice's name, but not from her page.
                r.send_text(r#"{"mles.chat":1,"from":"alice","text":"fake alice"}"#)
                    .await;
            }
            // Restart the server on the same address; the pages reconnect.
            "phase restart" => {
                robot = None;
                let stopped = tokio::task::spawn_blocking(move || srv.stop())
                    .await
                    .unwrap();
                assert!(stopped, "the server stopped in time");
                srv = TestServer::start(&["--listen", &addr.to_string()]);
                assert_eq!(srv.addr, addr);
            }
            other if other.starts_with("phase ") => panic!("unexpected {other}"),
            _ => continue,
        }
        to_browser.write_all(b"go\n").await.unwrap();
    }
    let status = tokio::time::timeout(BROWSER_WAIT, child.wait())
        .await
        .expect("the browser script exits")
        .unwrap();
    let errors = errors.await.unwrap();
    assert!(
        status.success() && transcript.last().map(String::as_str) == Some("done"),
        "browser script failed ({status}) after {transcript:?}:\n{errors}"
    );
    for shot in [
        "web_client_phone.png",
        "web_client_desktop.png",
        "web_client_restart.png",
    ] {
        let meta = std::fs::metadata(artifacts.join(shot)).expect("screenshot saved");
        assert!(meta.len() > 1000, "{shot} has content");
    }
    drop(robot);
    drop(srv);
}
