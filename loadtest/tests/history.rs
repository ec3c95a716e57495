//! `history` against the fake server: correct replay passes (with and
//! without truncation at the limit); a short replay or a live gap fails.

mod common;

use common::{FakeServer, Fault, cli};
use mles_loadtest::Report;

fn history(url: &str, extra: &[&str]) -> Report {
    let mut args = vec![
        "history",
        "--url",
        url,
        "--live",
        "40",
        "--rate",
        "400",
        "--timeout",
        "3",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    mles_loadtest::run(&cli(&args).command).unwrap()
}

#[test]
fn correct_replay_passes_past_the_limit() {
    let server = FakeServer::start(Fault::None);
    let r = history(&server.url, &["--messages", "300"]);
    assert!(r.passed, "{}", r.table());
    assert_eq!(r.count("history_expected"), 200);
    assert_eq!(r.count("history_matched"), 200);
    assert_eq!(r.count("live_matched_l1"), 40);
    assert!(r.count("l2_messages") > 0);
}

#[test]
fn correct_replay_passes_below_the_limit() {
    let server = FakeServer::start(Fault::None);
    let r = history(&server.url, &["--messages", "5"]);
    assert!(r.passed, "{}", r.table());
    assert_eq!(
        r.count("history_expected"),
        7,
        "two headers and five messages"
    );
}

#[test]
fn short_replay_is_a_mismatch() {
    let server = FakeServer::start(Fault::HistoryShort);
    let r = history(&server.url, &["--messages", "300"]);
    assert!(!r.passed, "{}", r.table());
    assert!(
        r.get("history_mismatch").unwrap().is_string(),
        "{}",
        r.table()
    );
}

#[test]
fn live_gap_fails() {
    // Binary frame 310 is live message 309.
    let server = FakeServer::start(Fault::Drop(310));
    let r = history(&server.url, &["--messages", "300"]);
    assert!(!r.passed, "{}", r.table());
    assert!(
        r.failures.iter().any(|f| f.contains("live")),
        "{:?}",
        r.failures
    );
}

#[test]
fn joins_ordered_either_way_pass() {
    // The witness joins before the publisher, but nothing orders the two
    // joins on the server: a log that starts with the publisher's header is
    // as correct as one that starts with the witness's.
    for messages in ["5", "199"] {
        let server = FakeServer::start(Fault::SecondJoinFirst);
        let r = history(&server.url, &["--messages", messages]);
        assert!(r.passed, "--messages {messages}: {}", r.table());
    }
}
