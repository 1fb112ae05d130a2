//! The `qwenedge` binary: subcommands over the library. Errors become one clear line on stderr
//! and a non-zero exit status.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Not `eprintln!`: it panics when stderr cannot be written (a full disk).
            let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("qwenedge: {e:#}\n").as_bytes());
            std::process::ExitCode::FAILURE
        }
    }
}
