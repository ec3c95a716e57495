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
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;

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

/// Where reports go: `target/autobahn/`.
fn report_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target tmp dir has a parent")
        .join("autobahn")
}

/// Where scripts/install-autobahn.sh put the suite, and the Python to run it.
fn installation() -> (PathBuf, PathBuf) {
    let home = std::env::var("HOME").expect("HOME is set");
    let dir = std::env::var("MLES_AUTOBAHN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(&home).join(".cache/mles/autobahn-25.10.1"));
    let python = std::env::var("MLES_PYTHON2")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let pyenv = std::env::var("PYENV_ROOT").unwrap_or_else(|_| format!("{home}/.pyenv"));
            Path::new(&pyenv).join("versions/2.7.18/bin/python")
        });
    assert!(
        dir.join(".installed").exists() && python.exists(),
        "Autobahn|Testsuite is not installed at {} (run scripts/install-autobahn.sh)",
        dir.display()
    );
    (dir, python)
}

/// Upper bound for the whole run: about 300 cases, the largest (9.x)
/// moving 16 MiB messages through Python.
const RUN_LIMIT: Duration = Duration::from_secs(20 * 60);

/// Runs `wstest -m fuzzingclient` against `url` for `cases`; returns the report's outcomes.
fn run_wstest(url: &str, cases: &[&str], exclude: &[&str], out: &Path) -> Vec<Outcome> {
    let (dir, python) = installation();
    let report = out.join("report");
    let _ = std::fs::remove_dir_all(&report);
    std::fs::create_dir_all(&report).expect("target/ is writable");
    let spec = serde_json::json!({
        "outdir": report,
        "servers": [{"agent": "mles", "url": url, "protocols": ["mles-websocket"]}],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    });
    let spec_path = out.join("fuzzingclient.json");
    std::fs::write(&spec_path, spec.to_string()).expect("target/ is writable");
    let log = std::fs::File::create(out.join("wstest.log")).expect("target/ is writable");
    let script = "import site, sys\n\
                  site.addsitedir(sys.argv[1])\n\
                  sys.argv = ['wstest', '-m', 'fuzzingclient', '-s', sys.argv[2]]\n\
                  from autobahntestsuite.wstest import run\n\
                  sys.exit(run())\n";
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&dir)
        .arg(&spec_path)
        .current_dir(out)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("a log file clones"))
        .stderr(log)
        .spawn()
        .expect("python 2.7 starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wstest can be waited for") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            panic!(
                "wstest ran over {RUN_LIMIT:?}; see {}",
                out.join("wstest.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "wstest failed ({status}); see {}",
        out.join("wstest.log").display()
    );
    let index =
        std::fs::read_to_string(report.join("index.json")).expect("wstest wrote index.json");
    parse_index(&index, "mles")
}

/// Every case of 1-11 against the echo mode; 12 and 13 test permessage-deflate.
#[test]
fn autobahn_fuzzingclient_cases_1_to_11_all_pass() {
    // Messages up to 16 MiB (cases 9.x) are echoed whole, so the limits sit above them.
    let srv = TestServer::start(&[
        "--conformance-echo",
        "--shards",
        "2",
        "--max-message",
        "20MiB",
        "--max-queue",
        "64MiB",
    ]);
    let out = report_root();
    std::fs::create_dir_all(&out).expect("target/ is writable");
    let url = format!("ws://{}", srv.addr);
    let outcomes = run_wstest(&url, &["*"], &["12.*", "13.*"], &out);
    let summary = summarize(&outcomes);
    std::fs::write(out.join("summary.txt"), summary.to_string()).expect("target/ is writable");
    println!("Autobahn|Testsuite: {summary}");
    assert!(summary.total > 200, "too few cases ran: {summary}");
    assert!(
        summary.failed.is_empty(),
        "{summary}report: {}",
        out.join("report/index.html").display()
    );
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
