//! `fanout` against the fake server: a correct relay passes; dropped,
//! reordered and duplicated frames are each reported as failures.

mod common;

use common::{FakeServer, Fault, cli, run_fanout_binary};
use mles_loadtest::Report;

fn fanout(url: &str, extra: &[&str]) -> Report {
    fanout_pubs(url, "2", extra)
}

fn fanout_pubs(url: &str, pubs: &str, extra: &[&str]) -> Report {
    let mut args = vec![
        "fanout",
        "--url",
        url,
        "--channels",
        "2",
        "--subs",
        "3",
        "--pubs",
        pubs,
        "--size",
        "64",
        "--warmup",
        "0.2",
        "--duration",
        "0.8",
        "--drain",
        "3",
        "--deadline",
        "9",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    mles_loadtest::run(&cli(&args).command).unwrap()
}

#[test]
fn correct_relay_passes_at_fixed_rate() {
    let server = FakeServer::start(Fault::None);
    let r = fanout(&server.url, &["--rate", "200", "--threads", "2"]);
    assert!(r.passed, "{}", r.table());
    let delivered = r.count("delivered");
    assert!(delivered > 0, "{}", r.table());
    assert_eq!(delivered, r.count("expected_deliveries"), "{}", r.table());
    assert!(r.count("delivered_in_window") > 0);
    assert!(r.count("latency.count") > 0);
    assert_eq!(
        r.count("join.count"),
        2 * 3 + 2 * 2,
        "every session's join is timed"
    );
    assert_eq!(r.get("subscribers").unwrap(), "6/6");
}

#[test]
fn correct_relay_passes_with_window() {
    let server = FakeServer::start(Fault::None);
    let r = fanout(&server.url, &["--window", "16"]);
    assert!(r.passed, "{}", r.table());
    assert!(r.count("delivered_in_window") > 0, "{}", r.table());
    assert_eq!(r.count("delivered"), r.count("expected_deliveries"));
}

#[test]
fn dropped_frame_is_loss() {
    let server = FakeServer::start(Fault::Drop(20));
    let r = fanout(&server.url, &["--rate", "200"]);
    assert!(!r.passed, "{}", r.table());
    // Each channel drops one frame for its 3 subscribers (and 1 publisher).
    assert!(r.count("lost") >= 6, "{}", r.table());
    assert!(
        r.failures.iter().any(|f| f.contains("lost")),
        "{:?}",
        r.failures
    );
}

#[test]
fn reordered_frames_are_late() {
    // One publisher per channel, so the swapped frames share a publisher
    // (order is per publisher; swapping two publishers' frames is legal).
    let server = FakeServer::start(Fault::Reorder(20));
    let r = fanout_pubs(&server.url, "1", &["--rate", "200"]);
    assert!(!r.passed, "{}", r.table());
    assert!(r.count("late") >= 6, "{}", r.table());
    assert_eq!(
        r.count("lost"),
        0,
        "a late frame is not lost: {}",
        r.table()
    );
}

#[test]
fn duplicated_frame_is_reported() {
    let server = FakeServer::start(Fault::Duplicate(20));
    let r = fanout(&server.url, &["--rate", "200"]);
    assert!(!r.passed, "{}", r.table());
    assert!(r.count("duplicates") >= 6, "{}", r.table());
}

#[test]
fn refused_upgrade_is_an_error() {
    let server = FakeServer::start(Fault::Refuse);
    let err = mles_loadtest::run(
        &cli(&["fanout", "--url", &server.url, "--quiet", "--deadline", "5"]).command,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("400"), "{err:#}");
}

#[test]
fn binary_exit_status_follows_the_checks() {
    let run = |url: &str| run_fanout_binary(&[url], "8");
    let bad = FakeServer::start(Fault::Duplicate(10));
    let out = run(&bad.url);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["passed"], false);
    assert!(json["results"]["duplicates"].as_u64().unwrap() >= 2);
    assert_eq!(json["params"]["subs"], 2, "parameters are in the JSON");

    let good = FakeServer::start(Fault::None);
    let out = run(&good.url);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["passed"], true);
}
