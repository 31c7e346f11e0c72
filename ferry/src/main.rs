//! The `ferry` binary: operator commands, the standby service and the agent. Thin: each subcommand parses its arguments and calls into the
//! library crates.

mod api;
mod cmd;
mod keyfile;
#[cfg(test)]
mod packaged_configs;
mod sd_notify;

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
    /// Certificates: a site-pair CA and the certificates it issues.
    #[command(subcommand)]
    Tls(cmd::tls::Command),
    #[command(subcommand)]
    Seed(cmd::seed::Command),
    Track(cmd::track::Args),
    Check(cmd::check::Args),
    Standby(cmd::standby::Args),
    Agent(cmd::agent::Args),
    /// Site pairs (at the standby site's control API).
    #[command(subcommand)]
    Pair(cmd::pair::Command),
    /// Protected servers (at the standby site's control API).
    #[command(subcommand)]
    Server(cmd::server::Command),
    /// A protected server's replication (at the standby site's control API).
    #[command(subcommand)]
    Replication(cmd::replication::Command),
    /// Drills: a point brought up beside running replication (at the standby site).
    #[command(subcommand)]
    Drill(cmd::instance::DrillCommand),
    /// Failover: stop replication and bring a point up as production (at the standby site).
    #[command(subcommand)]
    Failover(cmd::instance::FailoverCommand),
    /// Reverse replication of a failed-over server back to its original site.
    #[command(subcommand)]
    Reverse(cmd::instance::ReverseCommand),
    /// Bring a reverse-replicated server up at its original site again.
    ///
    /// Example: `ferry failback web-1 --script /etc/ferry/scripts/up.sh`
    Failback(cmd::instance::StartArgs),
    /// Protect a failed-back server forward again (no full copy).
    ///
    /// Example: `ferry register web-1`
    Register(cmd::instance::ServerArgs),
    /// Recovery points held by a standby.
    #[command(subcommand)]
    Point(cmd::point::Command),
    Rebuild(cmd::rebuild::Args),
    /// Retention and log cleaning at a standby.
    #[command(subcommand)]
    Retention(cmd::retention::Command),
    /// Write man pages or shell completions (used to build the packages).
    #[command(subcommand, hide = true)]
    Generate(cmd::generate::Command),
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
    if !matches!(cli.command, Command::Standby(_) | Command::Agent(_)) {
        // A command whose output goes into `head` ends quietly when the pipe closes, as
        // Unix tools do (Rust ignores SIGPIPE, so println! would panic on EPIPE). The
        // services keep ignoring it: a peer closing a socket must be an error, not death.
        use nix::sys::signal::{SigHandler, Signal, signal};
        // SAFETY: SIG_DFL installs no handler of ours, and no other thread runs yet.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    }
    let level = match cli.command {
        Command::Standby(_) | Command::Agent(_) => tracing::Level::INFO,
        _ => tracing::Level::WARN,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Keygen(args) => cmd::keygen::run(args),
        Command::Tls(command) => cmd::tls::run(command),
        Command::Seed(command) => cmd::seed::run(command),
        Command::Track(args) => cmd::track::run(args),
        Command::Check(args) => cmd::check::run(args),
        Command::Standby(args) => cmd::standby::run(args),
        Command::Agent(args) => cmd::agent::run(args),
        Command::Pair(command) => cmd::pair::run(command),
        Command::Server(command) => cmd::server::run(command),
        Command::Replication(command) => cmd::replication::run(command),
        Command::Drill(command) => cmd::instance::drill(command),
        Command::Failover(command) => cmd::instance::failover(command),
        Command::Reverse(command) => cmd::instance::reverse(command),
        Command::Failback(args) => cmd::instance::failback(args),
        Command::Register(args) => cmd::instance::register(args),
        Command::Point(command) => cmd::point::run(command),
        Command::Rebuild(args) => cmd::rebuild::run(args),
        Command::Retention(command) => cmd::retention::run(command),
        Command::Generate(command) => cmd::generate::run(command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferry: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
