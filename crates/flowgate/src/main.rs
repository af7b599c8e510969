//! The `flowgate` binary: CLI and `serve`.

mod cli;
mod demo;
mod output;
mod receiver;
mod serve;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
