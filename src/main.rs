//! `ten`: one binary that replaces nginx, a process supervisor and a basic monitoring stack.

mod api;
mod audit;
mod cli;
mod client;
mod cmd;
mod compose;
mod config_cmd;
mod externals;
mod serve;

use std::process::ExitCode;

/// mimalloc: the allocator took ~23 % of ten's instructions per request under glibc malloc
/// (BENCHMARKS.md, callgrind).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
