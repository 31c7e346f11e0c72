//! `ferry keygen`: make a site pair's master key, or derive from it what one host, a
//! standby or a recovery gets (key kinds in `ferry_wire::keys`).

use crate::keyfile;
use anyhow::{Result, bail};
use ferry_wire::{KeyFile, MasterKey, ServerId};
use std::path::PathBuf;

/// Make a site-pair master key, or derive a host, standby or recovery key from it (mode
/// 0600).
///
/// The pair key stays with the operator; each host gets its own host key, each standby a
/// standby key that can check and store every server's data but neither read nor forge
/// it, and a recovery (rebuild, drill, failover) the pair key or the server's recovery
/// key.
///
/// Examples:
///   ferry keygen --out pair.key
///   ferry keygen --from pair.key --host web-1 --out web-1.key
///   ferry keygen --from pair.key --standby --out standby.key
///   ferry keygen --from pair.key --recovery web-1 --out web-1.recovery.key
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// Where to write the key.
    #[arg(long)]
    out: PathBuf,
    /// The pair key to derive from (with --host, --standby or --recovery).
    #[arg(long)]
    from: Option<PathBuf>,
    /// Derive the host key of this server (what its agent holds).
    #[arg(long, requires = "from", conflicts_with_all = ["standby", "recovery"])]
    host: Option<ServerId>,
    /// Derive a standby key (ingest keys only).
    #[arg(long, requires = "from", conflicts_with = "recovery")]
    standby: bool,
    /// Derive the recovery key of this server (reads and verifies its replica).
    #[arg(long, requires = "from")]
    recovery: Option<ServerId>,
    /// Replace an existing key file (the old key is lost).
    #[arg(long)]
    force: bool,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let file = match &args.from {
        None => KeyFile::Pair(MasterKey::generate(&mut rand_core::OsRng)),
        Some(from) => {
            let KeyFile::Pair(pair) = keyfile::load(from)? else {
                bail!(
                    "{} is not a site-pair master key: keys are derived from the pair key \
                     only",
                    from.display()
                );
            };
            match (&args.host, args.standby, &args.recovery) {
                (Some(server), _, _) => KeyFile::Host(pair.host_key(server)),
                (None, true, _) => KeyFile::Standby(pair.standby_key()),
                (None, false, Some(server)) => KeyFile::Recovery(pair.recovery_key(server)),
                (None, false, None) => {
                    bail!(
                        "--from needs what to derive: --host SERVER, --standby or --recovery SERVER"
                    )
                }
            }
        }
    };
    keyfile::write(&args.out, &file, args.force)?;
    eprintln!(
        "wrote {} to {} (mode 0600)",
        file.kind(),
        args.out.display()
    );
    Ok(())
}
