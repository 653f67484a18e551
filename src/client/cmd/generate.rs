//! The hidden `ten completions SHELL` and `ten man`: shell completions (clap_complete) and the
//! man page ten(1) (clap_mangen), generated from the very clap definitions `ten` parses with, so
//! they cannot drift from the CLI. `make deb` runs the built binary to write them into the
//! Debian package (a build script cannot see the CLI, which lives in the binary). Hidden from
//! `ten --help`: they are for packagers, not for daily use.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};

use crate::client::cli::Cli;

/// Print the completion script of a shell (bash, zsh, fish, elvish, powershell)
#[derive(Debug, Args)]
pub struct Completions {
    /// The shell
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

impl Completions {
    pub fn run(&self) -> Result<ExitCode> {
        let mut out = std::io::stdout().lock();
        clap_complete::generate(self.shell, &mut Cli::command(), "ten", &mut out);
        out.flush().context("write the completions")?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Print the man page ten(1) (roff)
pub fn man() -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .context("write the man page")?;
    out.flush().context("write the man page")?;
    Ok(ExitCode::SUCCESS)
}
