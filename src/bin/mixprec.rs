//! The `mixprec` command; all the work is in [`mixprec::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = mixprec::cli::Cli::parse();
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
