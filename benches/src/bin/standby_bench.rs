//! The client side of the standby benchmark (`benches/standby_vs_cli.sh`).
//!
//! `standby_bench ingest ADDR KEY_FILE SERVER RECORD_BYTES TOTAL_BYTES CORPUS_FILE`
//!   seals TOTAL_BYTES of the corpus (repeated as needed) into records of RECORD_BYTES
//!   *before* timing, then streams them to the standby over one link and waits for the
//!   final ack. Prints `MB/s records/s acks` (10^6 bytes of disk data per second, wall
//!   clock from the first send to the last ack, fsync group commit included).
//! `standby_bench fill ADDR KEY_FILE SERVER IMAGE`
//!   ships an image file as 1 MiB records (as a full sync would) and a barrier.

use anyhow::{Context, Result, bail};
use ferry_replicator::link::{Link, LinkConfig};
use ferry_wire::message::{Barrier, DiskInfo, PointKind, RegisterServer};
use ferry_wire::record::RecordAddress;
use ferry_wire::seal::DEFAULT_ZSTD_LEVEL;
use ferry_wire::{
    ByteLen, ByteOffset, DiskId, HostKeys, KeyFile, Message, PointId, Sealer, ServerId,
};
use std::io::Read;
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["ingest", addr, key, server, record, total, corpus] => ingest(
            addr,
            key,
            server,
            record.parse().context("record bytes")?,
            total.parse().context("total bytes")?,
            corpus,
        ),
        ["fill", addr, key, server, image] => fill(addr, key, server, image),
        _ => bail!(
            "usage: standby_bench ingest ADDR KEY SERVER RECORD_BYTES TOTAL_BYTES CORPUS | \
             fill ADDR KEY SERVER IMAGE"
        ),
    }
}

/// Connects with the host key file `key` (of `server`).
fn connect(addr: &str, key: &str, server: &str) -> Result<(Link, ServerId, Sealer, HostKeys)> {
    let text = std::fs::read_to_string(key).with_context(|| format!("reading {key}"))?;
    let keys = KeyFile::from_text(&text)?.into_host()?.keys();
    let server = ServerId::new(server)?;
    let link = Link::connect(addr, &server, &keys.ingest.auth, &LinkConfig::default())?;
    let sealer = Sealer::new(&keys, DEFAULT_ZSTD_LEVEL)?;
    Ok((link, server, sealer, keys))
}

/// Registers one disk of `size` bytes; returns the registration's seal.
fn register(link: &mut Link, keys: &HostKeys, size: u64) -> Result<[u8; 32]> {
    let reg = ferry_wire::seal::sign_registration(
        keys,
        RegisterServer {
            hostname: keys.recovery.server.to_string(),
            disks: vec![DiskInfo {
                disk: DiskId::new(0),
                name: "bench".into(),
                size: ByteLen::new(size),
                identity: ferry_wire::disk_identity::DiskIdentity::Unknown,
            }],
            seal: [0; 32],
            mac: [0; 32],
        },
    );
    let seal = reg.seal;
    link.register(reg)?;
    Ok(seal)
}

fn ingest(
    addr: &str,
    key: &str,
    server: &str,
    record: usize,
    total: usize,
    corpus: &str,
) -> Result<()> {
    let corpus = std::fs::read(corpus).with_context(|| format!("reading {corpus}"))?;
    let (mut link, server, mut sealer, keys) = connect(addr, key, server)?;
    register(&mut link, &keys, total as u64)?;
    let mut seq = link.welcome_durable();
    let mut frames = Vec::with_capacity(total / record);
    let mut at = 0usize;
    for i in 0..total / record {
        if at + record > corpus.len() {
            at = 0;
        }
        seq = seq.checked_next().context("seq")?;
        let addr = RecordAddress {
            server: server.clone(),
            disk: DiskId::new(0),
            offset: ByteOffset::new((i * record) as u64),
            seq,
        };
        let sealed = sealer.seal(addr, &corpus[at..at + record], &mut rand_core::OsRng)?;
        frames.push((seq, Message::Record(sealed).encode()?));
        at += record;
    }
    let acks_before = link.acks_received();
    let start = Instant::now();
    for (seq, frame) in &frames {
        link.send_encoded(Some(*seq), frame)?;
    }
    link.wait_durable(seq, Duration::from_secs(600))?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:.1} {:.0} {}",
        (frames.len() * record) as f64 / secs / 1e6,
        frames.len() as f64 / secs,
        link.acks_received() - acks_before
    );
    Ok(())
}

fn fill(addr: &str, key: &str, server: &str, image: &str) -> Result<()> {
    let mut file = std::fs::File::open(image).with_context(|| format!("opening {image}"))?;
    let size = file.metadata()?.len();
    let (mut link, server, mut sealer, keys) = connect(addr, key, server)?;
    let registration = register(&mut link, &keys, size)?;
    let mut seq = link.welcome_durable();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < size {
        let n = usize::try_from((size - offset).min(buf.len() as u64))?;
        file.read_exact(&mut buf[..n])?;
        seq = seq.checked_next().context("seq")?;
        let addr = RecordAddress {
            server: server.clone(),
            disk: DiskId::new(0),
            offset: ByteOffset::new(offset),
            seq,
        };
        link.send(&Message::Record(sealer.seal(
            addr,
            &buf[..n],
            &mut rand_core::OsRng,
        )?))?;
        offset += n as u64;
    }
    seq = seq.checked_next().context("seq")?;
    link.send(&Message::Barrier(ferry_wire::seal::sign_barrier(
        &keys,
        Barrier {
            server: server.clone(),
            seq,
            point: PointId::new(seq.get()),
            kind: PointKind::Manual,
            consistent: true,
            unix_time_ms: 0,
            registration,
            seal: [0; 32],
            mac: [0; 32],
        },
    )))?;
    link.wait_durable(seq, Duration::from_secs(600))?;
    println!("filled {size} bytes up to seq {seq}");
    Ok(())
}
