//! Single-core seal throughput over a file, for comparison with other tools on the same
//! bytes (see `benches/seal_vs_cli.sh`).
//!
//! `seal_throughput write-corpus usr-lib|random BYTES OUT` writes a corpus file;
//! `seal_throughput seal FILE EXTENT_BYTES RUNS` seals FILE in extents, RUNS times, and
//! prints the median throughput in MB/s (10^6 bytes per second) and the sealed size.

use anyhow::{Context, Result, bail};
use ferry_benches::{random_bytes, usr_lib_corpus};
use ferry_wire::record::RecordAddress;
use ferry_wire::seal::DEFAULT_ZSTD_LEVEL;
use ferry_wire::{ByteOffset, DiskId, MasterKey, Sealer, Seq, ServerId};
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["write-corpus", kind, bytes, out] => {
            let len: usize = bytes.parse().context("corpus length")?;
            let data = match kind {
                "usr-lib" => usr_lib_corpus(len)?,
                "random" => random_bytes(len),
                other => bail!("unknown corpus kind {other:?} (usr-lib or random)"),
            };
            std::fs::write(out, data).with_context(|| format!("writing {out}"))
        }
        ["seal", file, extent, runs] => {
            let data = std::fs::read(file).with_context(|| format!("reading {file}"))?;
            let extent: usize = extent.parse().context("extent bytes")?;
            let runs: usize = runs.parse().context("runs")?;
            let (mbps, sealed) = seal_median(&data, extent, runs)?;
            println!(
                "{mbps:.1} MB/s median of {runs} runs; sealed {} -> {sealed} bytes",
                data.len()
            );
            Ok(())
        }
        _ => bail!(
            "usage: seal_throughput write-corpus usr-lib|random BYTES OUT | seal FILE EXTENT_BYTES RUNS"
        ),
    }
}

fn seal_median(data: &[u8], extent: usize, runs: usize) -> Result<(f64, usize)> {
    let keys = MasterKey::generate(&mut rand_core::OsRng)
        .host_key(&ServerId::new("bench")?)
        .keys();
    let mut sealer = Sealer::new(&keys, DEFAULT_ZSTD_LEVEL)?;
    let server = ServerId::new("bench")?;
    let mut rng = rand_core::OsRng;
    let mut rates = Vec::with_capacity(runs);
    let mut sealed = 0;
    for _ in 0..runs {
        sealed = 0;
        let start = Instant::now();
        for (i, chunk) in data.chunks(extent).enumerate() {
            let addr = RecordAddress {
                server: server.clone(),
                disk: DiskId::new(0),
                offset: ByteOffset::new((i * extent) as u64),
                seq: Seq::new(i as u64 + 1),
            };
            sealed += sealer.seal(addr, chunk, &mut rng)?.payload.len();
        }
        rates.push(data.len() as f64 / start.elapsed().as_secs_f64() / 1e6);
    }
    rates.sort_by(f64::total_cmp);
    Ok((rates[rates.len() / 2], sealed))
}
