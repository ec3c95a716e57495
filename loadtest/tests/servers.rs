//! Several `--url`s: sessions are dealt over the servers and every check
//! (loss, duplicates, self-echo, one order per channel) holds across them.
//! One server given twice must pass; two servers that share nothing must
//! fail loudly; subscribers that disagree on order, with each publisher's
//! own order intact, must fail on the order check alone. `conns`, `churn`
//! and `history` deal their sessions over the servers too.

mod common;

use common::mles::Mles;
use common::{FakeServer, Fault, cli, run_fanout_binary};
use mles_loadtest::Report;

fn fanout(urls: &[&str], extra: &[&str]) -> Report {
    let mut args = vec!["fanout"];
    for u in urls {
        args.extend(["--url", u]);
    }
    args.extend([
        "--channels",
        "2",
        "--subs",
        "4",
        "--pubs",
        "2",
        "--rate",
        "200",
        "--warmup",
        "0.1",
        "--duration",
        "0.8",
        "--drain",
        "3",
        "--deadline",
        "20",
        "--quiet",
    ]);
    args.extend_from_slice(extra);
    mles_loadtest::run(&cli(&args).command).unwrap()
}

#[test]
fn one_server_given_twice_passes_every_check() {
    let server = Mles::start(&[]);
    let r = fanout(&[&server.url, &server.url], &[]);
    assert!(r.passed, "{}", r.table());
    assert_eq!(r.count("servers"), 2);
    assert!(r.count("delivered") > 0);
    assert_eq!(r.count("delivered"), r.count("expected_deliveries"));
    for check in ["lost", "late", "duplicates", "echoed", "order_divergent"] {
        assert_eq!(r.count(check), 0, "{check}: {}", r.table());
    }
}

#[test]
fn two_servers_that_share_nothing_fail() {
    let (a, b) = (Mles::start(&[]), Mles::start(&[]));
    let r = fanout(&[&a.url, &b.url], &[]);
    assert!(!r.passed, "{}", r.table());
    // Half of each channel's subscribers are on the other server than
    // each publisher: they miss its messages and its header.
    assert!(r.count("lost") > 0, "{}", r.table());
    assert!(r.count("order_divergent") > 0, "{}", r.table());
    assert_eq!(r.count("duplicates"), 0);
    assert_eq!(r.count("echoed"), 0);
    assert!(r.failures.iter().any(|f| f.contains("deliveries lost")));
    assert!(
        r.failures
            .iter()
            .any(|f| f.contains("saw another sequence")),
        "{:?}",
        r.failures
    );
}

#[test]
fn binary_exits_1_with_a_summary_when_servers_disagree() {
    let (a, b) = (Mles::start(&[]), Mles::start(&[]));
    let run = |urls: &[&str]| run_fanout_binary(urls, "15");
    let out = run(&[&a.url, &b.url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("FAIL") && stderr.contains("deliveries lost"),
        "{stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["passed"], false);
    assert_eq!(json["params"]["urls"].as_array().unwrap().len(), 2);
    assert!(json["results"]["lost"].as_u64().unwrap() > 0);

    let out = run(&[&a.url, &a.url]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn subscribers_disagreeing_on_order_fail_the_order_check() {
    let server = FakeServer::start(Fault::SplitOrder(20));
    let r = fanout(&[&server.url], &[]);
    assert!(!r.passed, "{}", r.table());
    // Each publisher's own order is intact everywhere...
    for check in ["lost", "late", "duplicates", "echoed"] {
        assert_eq!(r.count(check), 0, "{check}: {}", r.table());
    }
    // ...but in each channel half of the subscribers saw two frames of
    // different publishers the other way round.
    assert_eq!(r.count("order_split_channels"), 2, "{}", r.table());
    assert_eq!(r.count("order_divergent"), 4, "{}", r.table());
    assert!(
        r.failures
            .iter()
            .any(|f| f.contains("saw another sequence")),
        "{:?}",
        r.failures
    );
}

#[test]
fn conns_and_churn_deal_sessions_over_the_servers() {
    let (a, b) = (
        FakeServer::start(Fault::None),
        FakeServer::start(Fault::None),
    );
    let r = mles_loadtest::run(
        &cli(&[
            "conns",
            "--url",
            &a.url,
            "--url",
            &b.url,
            "--conns",
            "20",
            "--per-channel",
            "10",
            "--warmup",
            "0",
            "--duration",
            "0.2",
            "--quiet",
        ])
        .command,
    )
    .unwrap();
    assert!(r.passed, "{}", r.table());
    assert_eq!(r.count("joined"), 20);
    // Each server: 2 seed sessions for each of the 2 channels, and half
    // of the 20 sessions.
    let count = |s: &FakeServer| s.accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((count(&a), count(&b)), (14, 14));

    let r = mles_loadtest::run(
        &cli(&[
            "churn",
            "--url",
            &a.url,
            "--url",
            &b.url,
            "--concurrency",
            "2",
            "--channels",
            "1",
            "--warmup",
            "0",
            "--duration",
            "0.3",
            "--quiet",
        ])
        .command,
    )
    .unwrap();
    assert!(r.passed, "{}", r.table());
    let cycles = r.count("cycles");
    assert!(cycles > 0, "{}", r.table());
    let (ca, cb) = (count(&a) - 14, count(&b) - 14);
    assert!(ca >= 3 && cb >= 3, "both servers churned: {ca} and {cb}");
}

#[test]
fn history_on_servers_that_share_nothing_fails() {
    let history = |urls: &[&str]| {
        let mut args = vec!["history"];
        for u in urls {
            args.extend(["--url", u]);
        }
        args.extend([
            "--messages",
            "20",
            "--limit",
            "200",
            "--live",
            "10",
            "--timeout",
            "2",
            "--quiet",
        ]);
        mles_loadtest::run(&cli(&args).command).unwrap()
    };
    let (a, b) = (Mles::start(&[]), Mles::start(&[]));
    let r = history(&[&a.url, &a.url]);
    assert!(r.passed, "{}", r.table());
    // The witness on one server never sees the publisher on the other.
    let r = history(&[&a.url, &b.url]);
    assert!(!r.passed, "{}", r.table());
}

#[test]
fn linked_servers_disagree_on_order_with_publishers_on_both() {
    // Peer links share no sequencer (PROTOCOL.md §7): each server puts its
    // own publisher's frames first, so with one publisher per channel on
    // each server, subscribers on the two servers see different
    // interleavings. (Whether every frame crossed the link in time is not
    // this test's business: a subscriber that missed one differs too.)
    let a = Mles::start(&[]);
    let b = Mles::start(&["--peer", &a.url, "--peer-uid", "link-b"]);
    let r = mles_loadtest::run(
        &cli(&[
            "fanout",
            "--url",
            &a.url,
            "--url",
            &b.url,
            "--channels",
            "2",
            "--subs",
            "4",
            "--pubs",
            "2",
            "--messages",
            "500",
            "--warmup",
            "0.1",
            "--duration",
            "1",
            "--drain",
            "3",
            "--deadline",
            "20",
            "--quiet",
        ])
        .command,
    )
    .unwrap();
    assert!(!r.passed, "{}", r.table());
    assert!(r.count("order_divergent") > 0, "{}", r.table());
}
