//! `mixprec convert`.
use std::io::Write;

use super::{CliError, ConvertArgs};

/// Runs `mixprec convert`.
pub fn run(_args: &ConvertArgs, _out: &mut impl Write) -> Result<(), CliError> {
    Err(CliError::NotAvailable {
        what: "`mixprec convert`",
        needs: "this commit",
    })
}
