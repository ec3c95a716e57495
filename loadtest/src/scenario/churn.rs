//! stub
use anyhow::Result;
use crate::report::Report;
pub fn run(_args: &crate::cli::ChurnArgs) -> Result<Report> { anyhow::bail!("todo") }
