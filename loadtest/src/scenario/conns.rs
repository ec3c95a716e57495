//! stub
use anyhow::Result;
use crate::report::Report;
pub fn run(_args: &crate::cli::ConnsArgs) -> Result<Report> { anyhow::bail!("todo") }
