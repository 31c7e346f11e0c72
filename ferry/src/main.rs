//! The `ferry` binary: operator commands, and (as the stages are built) the agent and
//! standby services. Thin: each subcommand parses its arguments and calls into the
//! library crates.

mod cmd;
mod keyfile;

use clap::{Parser, Subcommand};

/// Continuous block-level disaster recovery for Linux servers.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Keygen(cmd::keygen::Args),
    #[command(subcommand)]
    Seed(cmd::seed::Command),
    Track(cmd::track::Args),
    Check(cmd::check::Args),
}

/// Fails with a clear message unless running as root (the tracker, mounts and freezes
/// need CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN; root has them).
pub(crate) fn require_root(what: &str) -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        anyhow::bail!(
            "{what} needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN); run it with sudo"
        )
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen(args) => cmd::keygen::run(args),
        Command::Seed(command) => cmd::seed::run(command),
        Command::Track(args) => cmd::track::run(args),
        Command::Check(args) => cmd::check::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferry: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
