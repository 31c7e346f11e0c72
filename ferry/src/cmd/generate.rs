//! `ferry generate`: write ferry's man pages and shell completions, generated from the
//! same clap definitions that parse the command line, so they never drift from it.
//! Hidden: the package build (`scripts/package.sh`) runs it; operators get the results
//! installed (`man ferry`, tab completion).

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// Write man pages or shell completions into a directory.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Man pages, section 1: ferry.1 and one page per subcommand (ferry-agent.1, …).
    Man {
        /// Directory to write into (created if missing).
        dir: PathBuf,
    },
    /// Completions for bash (ferry.bash), zsh (_ferry) and fish (ferry.fish).
    Completions {
        /// Directory to write into (created if missing).
        dir: PathBuf,
    },
}

pub(crate) fn run(command: Command) -> Result<()> {
    let (Command::Man { dir } | Command::Completions { dir }) = &command;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cli = crate::Cli::command();
    match command {
        Command::Man { dir } => clap_mangen::generate_to(cli, &dir)
            .with_context(|| format!("cannot write the man pages into {}", dir.display())),
        Command::Completions { dir } => completions(cli, &dir),
    }
}

fn completions(mut cli: clap::Command, dir: &Path) -> Result<()> {
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cli, "ferry", dir).with_context(|| {
            format!(
                "cannot write the {shell} completions into {}",
                dir.display()
            )
        })?;
    }
    Ok(())
}
