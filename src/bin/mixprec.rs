//! The `mixprec` command; all the work is in [`mixprec::cli`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

fn main() -> ExitCode {
    let cli = match mixprec::cli::Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version are not failures: let clap print them in full.
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            err.exit()
        }
        Err(err) => {
            eprintln!("error: {} (see `mixprec --help`)", usage_error_line(&err));
            return ExitCode::from(2);
        }
    };
    match mixprec::cli::execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, whatever the error's chain: the Display of each
            // variant already names the file and the cause.
            eprintln!("error: {err}");
            err.exit_code()
        }
    }
}

/// A usage error as one line like every other failure: clap's message up to
/// its "Usage:" block, joined (`--help` gives the rest).
fn usage_error_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    parts.join(" ").trim_start_matches("error: ").to_string()
}
