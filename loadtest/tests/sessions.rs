//! `conns` and `churn` against the fake server.

mod common;

use common::{FakeServer, Fault, cli};

#[test]
fn conns_holds_sessions_and_samples_a_process() {
    let server = FakeServer::start(Fault::None);
    // This test process stands in for the server process.
    let pid = std::process::id().to_string();
    let r = mles_loadtest::run(
        &cli(&[
            "conns",
            "--url",
            &server.url,
            "--conns",
            "40",
            "--per-channel",
            "10",
            "--warmup",
            "0",
            "--duration",
            "0.3",
            "--server-pid",
            &pid,
            "--threads",
            "2",
            "--quiet",
        ])
        .command,
    )
    .unwrap();
    assert!(r.passed, "{}", r.table());
    assert_eq!(r.count("joined"), 40);
    assert_eq!(r.count("join.count"), 40);
    for figure in ["bytes_per_conn", "anon_bytes_per_conn"] {
        assert!(
            r.get(&format!("server_memory.{figure}")).is_some(),
            "{}",
            r.table()
        );
    }
    assert!(r.count("server_memory.anon_kb_end") > 0, "{}", r.table());
}

#[test]
fn churn_cycles() {
    let server = FakeServer::start(Fault::None);
    let r = mles_loadtest::run(
        &cli(&[
            "churn",
            "--url",
            &server.url,
            "--concurrency",
            "4",
            "--channels",
            "2",
            "--warmup",
            "0.1",
            "--duration",
            "0.5",
            "--quiet",
        ])
        .command,
    )
    .unwrap();
    assert!(r.passed, "{}", r.table());
    assert!(r.count("cycles_in_window") > 0, "{}", r.table());
    assert_eq!(r.count("join.count"), r.count("cycles_in_window"));
}

#[test]
fn churn_at_a_rate() {
    let server = FakeServer::start(Fault::None);
    let r = mles_loadtest::run(
        &cli(&[
            "churn",
            "--url",
            &server.url,
            "--concurrency",
            "2",
            "--rate",
            "20",
            "--warmup",
            "0",
            "--duration",
            "0.5",
            "--quiet",
        ])
        .command,
    )
    .unwrap();
    assert!(r.passed, "{}", r.table());
    let n = r.count("cycles_in_window");
    assert!(
        (5..=15).contains(&n),
        "about 10 cycles at 20/s for 0.5 s: {}",
        r.table()
    );
}
