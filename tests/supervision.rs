//! Supervision: a panic in one session's code costs that session only; a
//! panic in a shard-level handler stops the whole server loudly (a log line
//! and a non-zero exit), never leaving a shard that accepts but no longer
//! relays. The panics come from the hidden `--test-hook-channel` hook.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;

#[tokio::test]
async fn a_panicking_session_costs_only_that_session() {
    let srv = TestServer::start(&["--test-hook-channel", "boom", "--shards", "2"]);
    let mut a = srv.join("a", "boom").await;
    let mut b = srv.join("b", "boom").await;
    assert_eq!(a.recv_text().await, header("b", "boom"));
    assert_eq!(b.recv_text().await, header("a", "boom"));
    let mut victim = srv.join("panic-session", "boom").await;
    // Its connection just ends: the session's task is gone.
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match victim.ws.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the panicking session ends");
    assert!(!matches!(end, Some(Ok(_))));
    // Everyone else goes on, on both shards, in the same channel and others.
    a.send_text("still here").await;
    assert_eq!(b.recv_text().await, "still here");
    let mut c = srv.join("c", "boom").await;
    assert_eq!(b.recv_text().await, header("c", "boom"));
    assert_eq!(recv_header_uids(&mut c, 2).await, ["a", "b"]);
    assert_eq!(c.recv_text().await, "still here");
    let mut x = srv.join("x", "elsewhere").await;
    let mut y = srv.join("y", "elsewhere").await;
    assert_eq!(x.recv_text().await, header("y", "elsewhere"));
    y.send_text("hi").await;
    assert_eq!(x.recv_text().await, "hi");
    assert_eq!(srv.failure(), None);
    assert!(srv.stop(), "shuts down cleanly");
}

#[tokio::test]
async fn a_panicking_shard_handler_stops_the_server_in_process() {
    let srv = TestServer::start(&["--test-hook-channel", "boom", "--shards", "2"]);
    let mut bystander = srv.join("by", "other").await;
    let _trigger = srv.join("panic-shard", "boom").await;
    // Every session of every shard is closed as in a shutdown: no shard is
    // left accepting without relaying.
    let (code, _) = bystander.expect_close().await;
    assert_eq!(code, 1001);
    let why = srv.failure().expect("the failure is reported");
    assert!(why.contains("handler panicked"), "{why}");
}

#[test]
fn a_panicking_shard_handler_makes_the_binary_exit_non_zero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mles"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--test-hook-channel",
            "boom",
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "exited early: {log}"
        );
        log.push_str(&line);
        if let Some(rest) = line.split("addrs=[").nth(1) {
            break rest.split(']').next().unwrap().to_string();
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = RawClient::connect(addr.parse().unwrap()).await;
        c.join("panic-shard", "boom").await;
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running after a shard failure"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    log.push_str(&rest);
    assert!(!status.success(), "{status:?}\n{log}");
    assert!(log.contains("shard failure"), "{log}");
    assert!(log.contains("mles: stopped after a shard failure"), "{log}");
}
