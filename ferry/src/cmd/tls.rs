//! `ferry tls`: a site pair's own certificate authority (see `ferry_tls::pki`).

use anyhow::{Context, Result};
use ferry_tls::pki;
use std::path::PathBuf;

/// Certificates for the site pair's links and control API.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Make a site-pair CA: DIR/ca.pem (0644) and DIR/ca.key (0600; keep it offline).
    ///
    /// Example: `ferry tls init --dir pki`
    Init {
        /// Directory for the CA (created 0700 if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing CA (every certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate for a server or site: DIR/NAME.pem and DIR/NAME.key (0600).
    ///
    /// Example: `ferry tls issue --dir pki --name site-b --san 127.0.0.1`
    Issue {
        /// The CA's directory (made by `ferry tls init`).
        #[arg(long)]
        dir: PathBuf,
        /// The server id or site name the certificate speaks for.
        #[arg(long)]
        name: String,
        /// Another name or address peers connect to (repeatable; IP or DNS name).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Validity in days (1 to 3650).
        #[arg(long, default_value_t = pki::DEFAULT_DAYS)]
        days: u32,
        /// Replace an existing certificate and key of that name.
        #[arg(long)]
        force: bool,
    },
}

pub(crate) fn run(command: Command) -> Result<()> {
    match command {
        Command::Init { dir, force } => {
            let files = pki::init_ca(&dir, force)
                .with_context(|| format!("cannot make a CA in {}", dir.display()))?;
            eprintln!(
                "wrote the CA certificate {} and its key {} (mode 0600; keep it offline)",
                files.cert.display(),
                files.key.display()
            );
        }
        Command::Issue {
            dir,
            name,
            sans,
            days,
            force,
        } => {
            let request = pki::IssueRequest {
                name: name.clone(),
                sans,
                days,
                force,
            };
            let files = pki::issue(&dir, &request)
                .with_context(|| format!("cannot issue a certificate for {name}"))?;
            eprintln!(
                "wrote {} and its key {} (mode 0600), valid {days} days",
                files.cert.display(),
                files.key.display()
            );
        }
    }
    Ok(())
}
