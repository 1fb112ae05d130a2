//! The `qwenedge` binary: subcommands over the library. Errors become one clear line on stderr
//! and a non-zero exit status.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qwenedge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
