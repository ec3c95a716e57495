//! The `mles-loadtest` binary: parse the CLI, run the scenario, print the
//! report. Exit status: 0 passed, 1 a correctness check failed, 2 error.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mles_loadtest::{Cli, procstat};

/// Extra time past the scenario's deadline before the watchdog ends the process.
const WATCHDOG_GRACE: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = procstat::raise_nofile_limit() {
        eprintln!("warning: could not raise the open-file limit: {e}");
    }
    let limit = Duration::from_secs_f64(cli.command.deadline_secs()) + WATCHDOG_GRACE;
    std::thread::Builder::new()
        .name(String::from("watchdog"))
        .spawn(move || {
            std::thread::sleep(limit);
            eprintln!("error: still running {limit:?} after the start; giving up");
            std::process::exit(2);
        })
        .expect("spawning the watchdog thread");
    match mles_loadtest::run(&cli.command) {
        Ok(report) => {
            report.print(cli.command.common().json);
            if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
