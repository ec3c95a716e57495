//! Accept survives running out of file descriptors, without spinning.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// CPU seconds (user + system) used so far by process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test]
async fn accept_backs_off_on_emfile_and_recovers() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mles"));
    cmd.args(["--listen", "127.0.0.1:0", "--shards", "1"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; the closure only calls it.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 48,
                rlim_max: 48,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: std::net::SocketAddr = loop {
        let line = lines.next().expect("server logs its address").unwrap();
        if let Some(rest) = line.split("addrs=[").nth(1) {
            break rest.split(']').next().unwrap().parse().unwrap();
        }
    };
    // Keep draining stderr so the server never blocks on logging; pass lines on.
    let (log_tx, log_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            let _ = log_tx.send(l);
        }
    });

    // Exhaust the server's descriptors with idle connections.
    let mut hogs = Vec::new();
    for _ in 0..80 {
        hogs.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // While out of descriptors the accept loop backs off instead of spinning.
    let before = cpu_seconds(child.id());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let used = cpu_seconds(child.id()) - before;
    assert!(used < 0.5, "accept loop spun: {used} CPU seconds in 1 s");
    // Other lines may come first: wait (bounded) for the back-off warning.
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    let hit = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match log_rx.recv_timeout(left) {
            Ok(l) if l.contains("out of file descriptors") => break true,
            Ok(l) => seen.push(l),
            Err(_) => break false,
        }
    };
    assert!(
        hit,
        "the server really ran out of descriptors; it logged: {seen:?}"
    );

    drop(hogs);
    // Once descriptors are free again, new sessions work.
    let srv_addr = addr;
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut a, mut b) = loop {
        let a = RawClient::try_connect(srv_addr).await;
        let b = RawClient::try_connect(srv_addr).await;
        if let (Some(a), Some(b)) = (a, b) {
            break (a, b);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server never recovered; it logged: {:?}; fds open: {}",
            log_rx.try_iter().collect::<Vec<_>>(),
            std::fs::read_dir(format!("/proc/{}/fd", child.id()))
                .map(|d| d.count())
                .unwrap_or(0)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    a.join("a", "emfile").await;
    b.join("b", "emfile").await;
    let (_, hdr) = a.frame().await.unwrap();
    assert!(
        String::from_utf8_lossy(&hdr).contains("\"b\""),
        "a sees b join"
    );
    child.kill().unwrap();
    let _ = child.wait();
}
