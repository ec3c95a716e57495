//! Autobahn|Testsuite (fuzzingclient, cases 1-11) against the server.
//!
//! `wstest` (installed by scripts/install-autobahn.sh into its own folder
//! for Python 2.7) plays the client; the server runs in its echo conformance
//! mode, which uses the real session and frame code with only the routing
//! replaced by echo. Cases 12 and 13 need permessage-deflate, which the
//! server does not offer. The HTML and JSON report stays under
//! `target/autobahn/report/`; a summary is printed and written beside it.

mod common;

use std::collections::BTreeMap;

/// Behaviours that count as passing: RFC conformant, conformant but not
/// failing fast (e.g. invalid UTF-8 found at the end of a message rather
/// than mid-frame), and cases that only record what happened.
const ACCEPTED: &[&str] = &["OK", "NON-STRICT", "INFORMATIONAL"];
/// The same for how the connection was closed.
const ACCEPTED_CLOSE: &[&str] = &["OK", "INFORMATIONAL"];

/// One case of a report.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    case: String,
    behavior: String,
    close: String,
    remote_code: Option<u64>,
}

/// Reads the outcomes of `agent` from a report's `index.json`, in case order.
fn parse_index(json: &str, agent: &str) -> Vec<Outcome> {
    let v: serde_json::Value = serde_json::from_str(json).expect("index.json is JSON");
    let cases = v
        .get(agent)
        .and_then(|a| a.as_object())
        .unwrap_or_else(|| panic!("no agent {agent:?} in the report"));
    let text = |c: &serde_json::Value, k: &str| {
        c.get(k)
            .and_then(|s| s.as_str())
            .unwrap_or("MISSING")
            .to_string()
    };
    let mut out: Vec<Outcome> = cases
        .iter()
        .map(|(case, c)| Outcome {
            case: case.clone(),
            behavior: text(c, "behavior"),
            close: text(c, "behaviorClose"),
            remote_code: c.get("remoteCloseCode").and_then(|n| n.as_u64()),
        })
        .collect();
    out.sort_by_key(|o| case_order(&o.case));
    out
}

/// "6.10.3" sorts after "6.2.4".
fn case_order(case: &str) -> Vec<u32> {
    case.split('.')
        .map(|p| p.parse().unwrap_or(u32::MAX))
        .collect()
}

/// Counts per behaviour, and every case that did not pass.
#[derive(Debug, Default)]
struct Summary {
    total: usize,
    counts: BTreeMap<String, usize>,
    failed: Vec<String>,
}

fn summarize(outcomes: &[Outcome]) -> Summary {
    let mut s = Summary::default();
    for o in outcomes {
        s.total += 1;
        *s.counts.entry(o.behavior.clone()).or_default() += 1;
        if !ACCEPTED.contains(&o.behavior.as_str()) || !ACCEPTED_CLOSE.contains(&o.close.as_str()) {
            s.failed.push(format!(
                "{}: behavior {}, close {}, remote code {:?}",
                o.case, o.behavior, o.close, o.remote_code
            ));
        }
    }
    s
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} cases:", self.total)?;
        for (b, n) in &self.counts {
            write!(f, " {b} {n},")?;
        }
        writeln!(f, " not passing {}", self.failed.len())?;
        for line in &self.failed {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

#[test]
fn report_parsing_counts_behaviours_and_lists_what_did_not_pass() {
    let json = include_str!("autobahn/index.sample.json");
    let outcomes = parse_index(json, "mles");
    let order: Vec<&str> = outcomes.iter().map(|o| o.case.as_str()).collect();
    assert_eq!(
        order,
        [
            "1.1.1", "6.2.4", "6.4.1", "6.10.3", "7.1.6", "7.9.9", "9.1.6"
        ]
    );
    let s = summarize(&outcomes);
    assert_eq!(s.total, 7);
    assert_eq!(s.counts["OK"], 4);
    assert_eq!(s.counts["NON-STRICT"], 1);
    assert_eq!(s.counts["INFORMATIONAL"], 1);
    assert_eq!(s.counts["FAILED"], 1);
    // A wrong close code fails a case even when its messages were right.
    assert_eq!(s.failed.len(), 2, "{s}");
    assert!(s.failed[0].starts_with("7.9.9: behavior OK, close WRONG CODE"));
    assert!(s.failed[1].starts_with("9.1.6: behavior FAILED"));
    assert!(s.failed[1].contains("Some(1009)"));
    let shown = s.to_string();
    assert!(
        shown.starts_with("7 cases: FAILED 1, INFORMATIONAL 1, NON-STRICT 1, OK 4, not passing 2"),
        "{shown}"
    );
}

#[test]
#[should_panic(expected = "no agent")]
fn report_without_the_agent_is_an_error() {
    parse_index(include_str!("autobahn/index.sample.json"), "other");
}
