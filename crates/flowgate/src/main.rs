//! The `flowgate` binary: CLI and `serve`.

/// `println!` through the secret redactor: the state store keeps keys, payloads
/// and watermarks exactly, so everything printed is masked on the way out.
macro_rules! say {
    () => { println!() };
    ($($arg:tt)*) => {
        println!("{}", flowgate_core::secret::redact(&format!($($arg)*)))
    };
}

mod cli;
mod demo;
mod output;
mod receiver;
mod serve;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
