//! `mixprec info`.
use std::io::Write;

use super::CliError;

/// Runs `mixprec info`.
pub fn run(_out: &mut impl Write) -> Result<(), CliError> {
    Err(CliError::NotAvailable {
        what: "`mixprec info`",
        needs: "this commit",
    })
}
