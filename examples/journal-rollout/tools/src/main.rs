//! `journal-rollout generate …` writes journals; `journal-rollout import …` is a
//! cluster's importer. See the example's README.

fn main() -> std::process::ExitCode {
    journal_rollout::main_with(std::env::args_os())
}
