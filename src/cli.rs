//! Command line (placeholder).
use std::process::ExitCode;
pub fn main() -> ExitCode { ExitCode::SUCCESS }
