//! The result of a run: pass/fail with reasons, the exact parameters, and
//! the figures; printed as a table for people and as one JSON object.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

/// One finished run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: &'static str,
    /// The run id in the channel names.
    pub run_id: String,
    /// No correctness check failed.
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub failures: Vec<String>,
    /// Things that make the figures doubtful without failing the run.
    pub warnings: Vec<String>,
    /// The scenario's arguments, exactly as used.
    pub params: Value,
    /// The measured figures.
    pub results: Value,
}

impl Report {
    /// Builds a report; `passed` is `failures.is_empty()`.
    pub fn new(
        scenario: &'static str,
        run_id: String,
        params: &impl Serialize,
        results: &impl Serialize,
        failures: Vec<String>,
        warnings: Vec<String>,
    ) -> Report {
        Report {
            scenario,
            run_id,
            passed: failures.is_empty(),
            failures,
            warnings,
            params: serde_json::to_value(params).expect("params serialize"),
            results: serde_json::to_value(results).expect("results serialize"),
        }
    }

    /// A results figure by dotted path (`"latency.p99_us"`), for scripts and tests.
    pub fn get(&self, path: &str) -> Option<&Value> {
        path.split('.').try_fold(&self.results, |v, k| v.get(k))
    }

    /// A numeric results figure as `u64` (0 when missing).
    pub fn count(&self, path: &str) -> u64 {
        self.get(path)
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
            .unwrap_or(0)
    }

    /// The JSON object.
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut rows = Vec::new();
        flatten("", &self.results, &mut rows);
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "{} (run {})", self.scenario, self.run_id);
        for (k, v) in &rows {
            let _ = writeln!(out, "  {k:<width$}  {v}");
        }
        for w in &self.warnings {
            let _ = writeln!(out, "  warning: {w}");
        }
        if self.passed {
            let _ = writeln!(out, "PASS");
        } else {
            for f in &self.failures {
                let _ = writeln!(out, "  failure: {f}");
            }
            let _ = writeln!(out, "FAIL");
        }
        out
    }

    /// Prints the table (stdout, or stderr with `json`) and the JSON (stdout).
    pub fn print(&self, json: bool) {
        if json {
            eprint!("{}", self.table());
            println!("{}", self.json());
        } else {
            print!("{}", self.table());
        }
    }
}

fn flatten(prefix: &str, v: &Value, rows: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, rows);
            }
        }
        Value::Array(items) if items.iter().all(|i| !i.is_object()) => {
            let parts: Vec<String> = items.iter().map(scalar).collect();
            rows.push((prefix.to_string(), parts.join("; ")));
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, rows);
            }
        }
        other => rows.push((prefix.to_string(), scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.abs() >= 100.0 {
                format!("{f:.1}")
            } else {
                format!("{f:.3}")
            }
        }
        Value::String(s) => s.clone(),
        Value::Null => String::from("-"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_lookup() {
        let r = Report::new(
            "x",
            "id".into(),
            &serde_json::json!({"a": 1}),
            &serde_json::json!({"lost": 3, "lat": {"p50_us": 1.5}, "errs": ["e1", "e2"]}),
            vec!["lost 3".into()],
            vec![],
        );
        assert!(!r.passed);
        assert_eq!(r.count("lost"), 3);
        assert_eq!(r.get("lat.p50_us").and_then(Value::as_f64), Some(1.5));
        let t = r.table();
        assert!(
            t.contains("lat.p50_us") && t.contains("FAIL") && t.contains("e1; e2"),
            "{t}"
        );
        let j: Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(j["params"]["a"], 1);
    }
}
