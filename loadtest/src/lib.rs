//! mles-loadtest: a load-test harness that speaks Mles v2 to any server by
//! URL, so the same run can measure this project's server and others.
//!
//! Map of the modules:
//! - [`cli`]: clap arguments of every scenario (the only place options live).
//! - [`scenario`]: `fanout`, `conns`, `churn`, `history`, and what they share.
//! - [`target`]: URLs, resolution, TLS, loopback source addresses; opens connections.
//! - [`conn`]: one client connection with harness-owned framing.
//! - [`frame`]: RFC 6455 frame parsing and masked encoding (sans-IO).
//! - [`handshake`]: the client opening handshake (sans-IO).
//! - [`tls`]: rustls client configuration (ring provider only).
//! - [`payload`]: the stamp in every message: publisher, sequence, send time.
//! - [`tracker`]: per-publisher loss / late / duplicate tracking.
//! - [`order`]: whether all subscribers of a channel saw one sequence.
//! - [`metrics`]: hdrhistogram latencies and their summaries.
//! - [`procstat`]: server CPU and RSS (anonymous and file-backed) from /proc, the harness's own CPU.
//! - [`workers`]: worker threads (one current-thread runtime each), phases, progress line.
//! - [`report`]: pass/fail, parameters and figures as a table and as JSON.
//! - [`clock`], [`rng`]: the process clock and a cheap PRNG.

pub mod cli;
pub mod clock;
pub mod conn;
pub mod frame;
pub mod handshake;
pub mod metrics;
pub mod order;
pub mod payload;
pub mod procstat;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod target;
pub mod tls;
pub mod tracker;
pub mod workers;

use anyhow::Result;

pub use cli::{Cli, Command};
pub use report::Report;

/// Runs one scenario to completion (blocking: it starts its own runtimes
/// and threads, so call it outside any tokio runtime).
pub fn run(command: &Command) -> Result<Report> {
    conn::set_auth_key(command.common().key.as_deref());
    match command {
        Command::Fanout(a) => scenario::fanout::run(a),
        Command::Conns(a) => scenario::conns::run(a),
        Command::Churn(a) => scenario::churn::run(a),
        Command::History(a) => scenario::history::run(a),
    }
}
