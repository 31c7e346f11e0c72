//! `ferry pair create|list|delete`: the site pairs of a standby site.

use crate::api::client::ControlArgs;
use crate::cmd::{delete, table};
use anyhow::{Context, Result};
use ferry_site::catalog::{Pair, PairKind};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create a site pair: servers at the primary site are protected into the secondary.
    ///
    /// Names: 1 to 60 characters, starting with a letter; letters, digits, ".", "_", "-".
    ///
    /// Example: `ferry pair create prod.eu --kind region-to-region --primary eu-west --secondary eu-central`
    Create(CreateArgs),
    /// List the site pairs.
    ///
    /// Example: `ferry pair list --json`
    List(ListArgs),
    /// Delete a pair that protects no server.
    ///
    /// Example: `ferry pair delete prod.eu`
    Delete(DeleteArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    name: String,
    /// How far apart the sites are: region-to-region or zone-to-zone.
    #[arg(long, value_parser = parse_kind)]
    kind: PairKind,
    /// The site the servers run at.
    #[arg(long)]
    primary: String,
    /// The site they are protected into (this standby's site).
    #[arg(long)]
    secondary: String,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DeleteArgs {
    name: String,
    #[command(flatten)]
    control: ControlArgs,
}

fn parse_kind(text: &str) -> Result<PairKind> {
    serde_json::from_value(text.into()).with_context(|| {
        format!("{text:?} is not a pair kind: use region-to-region or zone-to-zone")
    })
}

fn kind_name(kind: PairKind) -> &'static str {
    match kind {
        PairKind::RegionToRegion => "region-to-region",
        PairKind::ZoneToZone => "zone-to-zone",
    }
}

pub(crate) fn run(command: Command) -> Result<()> {
    match command {
        Command::Create(a) => {
            let pair = Pair {
                name: a.name,
                kind: a.kind,
                primary: a.primary,
                secondary: a.secondary,
            };
            let made: Pair = a.control.connect()?.post("/v1/pairs", &pair)?;
            if a.control.json {
                println!("{}", serde_json::to_string_pretty(&made)?);
            } else {
                println!(
                    "pair {} created: {} → {} ({})",
                    made.name,
                    made.primary,
                    made.secondary,
                    kind_name(made.kind)
                );
            }
        }
        Command::List(a) => {
            let pairs: Vec<Pair> = a.control.connect()?.get("/v1/pairs")?;
            if a.control.json {
                println!("{}", serde_json::to_string_pretty(&pairs)?);
            } else {
                table(
                    &["PAIR", "KIND", "PRIMARY", "SECONDARY"],
                    pairs.iter().map(|p| {
                        vec![
                            p.name.clone(),
                            kind_name(p.kind).to_owned(),
                            p.primary.clone(),
                            p.secondary.clone(),
                        ]
                    }),
                );
            }
        }
        Command::Delete(a) => delete(
            &a.control,
            &format!("/v1/pairs/{}", a.name),
            &format!("pair {} deleted", a.name),
        )?,
    }
    Ok(())
}
