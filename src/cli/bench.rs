//! `mixprec bench`.
use std::io::Write;

use super::{BenchArgs, CliError};

/// Runs `mixprec bench`.
pub fn run(_args: &BenchArgs, _out: &mut impl Write) -> Result<(), CliError> {
    Err(CliError::NotAvailable {
        what: "`mixprec bench`",
        needs: "this commit",
    })
}
