//! `completions SHELL`: a completion script for bash, zsh, fish (and elvish, PowerShell),
//! generated from the same clap definition the binary parses with, so it never drifts.

use clap::CommandFactory;

use crate::args::{Cli, CompletionsArgs};
use crate::exit::{self, CliError};

pub fn completions(a: &CompletionsArgs) -> Result<u8, CliError> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "databuild", &mut script);
    crate::render::out(String::from_utf8_lossy(&script).trim_end_matches('\n'));
    Ok(exit::SUCCESS)
}
