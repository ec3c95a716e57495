//! The `mles` binary: parse the command line, install logging, run the server.

use std::process::ExitCode;

use clap::Parser;
use mles::config::{Cli, Config};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // The NATS client logs every connection event at info; the
                // cluster supervisor says what of them matters (link up or
                // down, why NATS cannot be reached) once.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let config = match Config::from_cli(cli, std::env::var("MLES_KEY").ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mles: {e}");
            return ExitCode::from(2);
        }
    };
    match mles::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our error messages already carry their cause; `{e:#}` would print it twice.
            eprintln!("mles: {e}");
            ExitCode::FAILURE
        }
    }
}
