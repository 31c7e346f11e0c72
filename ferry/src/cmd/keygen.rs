//! `ferry keygen`: create a site pair's master key.

use crate::keyfile;
use anyhow::Result;
use ferry_wire::MasterKey;
use std::path::PathBuf;

/// Create a new site-pair master key file (mode 0600).
///
/// Every agent and standby of the pair needs the same key; copy it over a secure channel.
/// Example: `ferry keygen --out /etc/ferry/keys/pair.key`
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where to write the key.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing key file (the old key is lost).
    #[arg(long)]
    force: bool,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let key = MasterKey::generate(&mut rand_core::OsRng);
    keyfile::write(&args.out, &key, args.force)?;
    eprintln!(
        "wrote a new master key to {} (mode 0600)",
        args.out.display()
    );
    Ok(())
}
