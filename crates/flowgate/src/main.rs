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

/// The journal-rollout example's tools (its generator and cluster importer),
/// built into flowgate so `flowgate demo` needs no second binary:
/// `flowgate example-journal-rollout import …` is `journal-rollout import …`.
pub(crate) const JOURNAL_TOOLS: &str = "example-journal-rollout";

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == JOURNAL_TOOLS)
    {
        return journal_rollout::main_with(std::env::args_os().skip(1));
    }
    cli::main()
}
