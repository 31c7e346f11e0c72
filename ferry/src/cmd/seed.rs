//! `ferry seed export|restore`: a disk as a file of sealed frames, and back.
//!
//! A seed file is the frames a full copy of one disk would send, written to a file
//! instead of a socket: one `RegisterServer` frame naming the disk and its size, then
//! `Record` frames in seq order (1, 2, …) covering the disk from offset 0 to its end in
//! extents of at most 1 MiB, with no gap and no overlap. It is sealed exactly as
//! replication seals (zstd, AES-256-CTR, HMAC-SHA256), so it can travel on untrusted
//! media: offline seeding of a standby over a slow link.
//!
//! `restore` verifies every frame's CRC and every record's MAC before using it, refuses a
//! record out of order, out of the disk, or a file that ends early, and writes to a
//! temporary file renamed into place only when everything checked out: bad input changes
//! nothing. The restored image is plaintext: it is created mode 0600 whatever the umask
//! (the seed file too).

use crate::keyfile;
use anyhow::{Context, Result, bail, ensure};
use ferry_standby::private_files;
use ferry_wire::message::{DiskInfo, RegisterServer};
use ferry_wire::record::RecordAddress;
use ferry_wire::seal::{DEFAULT_ZSTD_LEVEL, Unsealed};
use ferry_wire::{
    ByteLen, ByteOffset, DiskId, MAX_DATA_EXTENT, Message, RecordKind, Sealer, Seq, ServerId,
    Unsealer,
};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Seal a whole disk (or image) into a seed file.
    ///
    /// Example: `ferry seed export --key pair.key --server web-1 --device /dev/vdb --out web-1.seed`
    Export(ExportArgs),
    /// Verify a seed file and restore the disk it holds into a new image file.
    ///
    /// Example: `ferry seed restore --key pair.key --seed web-1.seed --out disk.img`
    Restore(RestoreArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// Site-pair master key file.
    #[arg(long)]
    key: PathBuf,
    /// The protected server's name.
    #[arg(long)]
    server: ServerId,
    /// The disk's number within the server.
    #[arg(long, default_value_t = 0)]
    disk: u32,
    /// Block device or image file to read.
    #[arg(long)]
    device: PathBuf,
    /// Seed file to create (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// zstd level (1 is fastest).
    #[arg(long, default_value_t = DEFAULT_ZSTD_LEVEL)]
    zstd_level: i32,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RestoreArgs {
    /// The pair key, or the recovery (or host) key of the seed's server.
    #[arg(long)]
    key: PathBuf,
    /// Seed file to read.
    #[arg(long)]
    seed: PathBuf,
    /// Image file to create (must not exist); sparse where the disk was zero.
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn run(command: Command) -> Result<()> {
    match command {
        Command::Export(args) => export(args),
        Command::Restore(args) => restore(args),
    }
}

fn export(args: ExportArgs) -> Result<()> {
    let keys = keyfile::load_sealing(&args.key, &args.server)?.keys();
    let mut sealer = Sealer::new(&keys, args.zstd_level)?;
    let mut device = File::open(&args.device)
        .with_context(|| format!("cannot open {}", args.device.display()))?;
    let size = device.seek(SeekFrom::End(0))?;
    device.seek(SeekFrom::Start(0))?;
    let out = private_files::create_new(&args.out)
        .with_context(|| format!("cannot create seed file {}", args.out.display()))?;
    let mut out = BufWriter::with_capacity(4 << 20, out);
    // The device's name when it is a kernel disk name (`/dev/vdb` → `vdb`); an image
    // file's name (`disk.img`) is not one, so it is registered as `diskN`.
    let name = args
        .device
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| ferry_wire::ids::validate_disk_name(n).is_ok())
        .unwrap_or_else(|| format!("disk{}", args.disk));
    let mut frame = Vec::with_capacity(MAX_DATA_EXTENT + 4096);
    let registration = RegisterServer {
        hostname: args.server.to_string(),
        disks: vec![DiskInfo {
            disk: DiskId::new(args.disk),
            name,
            size: ByteLen::new(size),
            identity: ferry_wire::disk_identity::DiskIdentity::Unknown,
        }],
        seal: [0; 32],
        mac: [0; 32],
    };
    Message::RegisterServer(ferry_wire::seal::sign_registration(&keys, registration))
        .encode_into(&mut frame)?;
    out.write_all(&frame)?;

    let (mut data_records, mut zero_records, mut written) = (0u64, 0u64, frame.len() as u64);
    let mut buf = vec![0u8; MAX_DATA_EXTENT];
    let mut offset = 0u64;
    let mut seq = Seq::new(0);
    while offset < size {
        let n = usize::try_from((size - offset).min(MAX_DATA_EXTENT as u64)).expect("≤ 1 MiB");
        device
            .read_exact(&mut buf[..n])
            .with_context(|| format!("cannot read {} at offset {offset}", args.device.display()))?;
        seq = seq
            .checked_next()
            .expect("a disk has fewer than 2^64 extents");
        let addr = RecordAddress {
            server: args.server.clone(),
            disk: DiskId::new(args.disk),
            offset: ByteOffset::new(offset),
            seq,
        };
        let record = sealer.seal(addr, &buf[..n], &mut rand_core::OsRng)?;
        match record.header.kind {
            RecordKind::Data => data_records += 1,
            _ => zero_records += 1,
        }
        frame.clear();
        Message::Record(record).encode_into(&mut frame)?;
        out.write_all(&frame)?;
        written += frame.len() as u64;
        offset += n as u64;
    }
    let out = out.into_inner().map_err(|e| e.into_error())?;
    out.sync_all()?;
    println!(
        "sealed {} ({size} bytes) into {}: {data_records} data records, {zero_records} zero \
         records, {written} bytes ({:.1}% of the disk)",
        args.device.display(),
        args.out.display(),
        100.0 * written as f64 / size.max(1) as f64
    );
    Ok(())
}

/// Reads the next frame, or `None` at a clean end of file.
fn next_frame(reader: &mut impl Read, buf: &mut Vec<u8>) -> Result<Option<Message>> {
    ferry_wire::frame::read_frame(reader, buf).context("seed file refused")
}

fn restore(args: RestoreArgs) -> Result<()> {
    let seed = File::open(&args.seed)
        .with_context(|| format!("cannot open seed file {}", args.seed.display()))?;
    let mut reader = BufReader::with_capacity(4 << 20, seed);
    if fs::symlink_metadata(&args.out).is_ok() {
        bail!(
            "{} already exists; restore writes a new image file",
            args.out.display()
        );
    }
    let tmp = tmp_path(&args.out);
    let result = restore_into(&mut reader, &args.key, &tmp);
    match result {
        Ok((disk, records)) => {
            fs::rename(&tmp, &args.out)?;
            println!(
                "restored disk {} of {} ({} bytes) from {} verified records into {}",
                disk.disk.get(),
                disk.name,
                disk.size.get(),
                records,
                args.out.display()
            );
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e.context(format!(
                "seed file {} refused; nothing was written",
                args.seed.display()
            )))
        }
    }
}

fn tmp_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    out.with_file_name(name)
}

fn restore_into(reader: &mut impl Read, key: &Path, tmp: &Path) -> Result<(DiskInfo, u64)> {
    let mut body = Vec::new();
    let (disk, mut unsealer) = match next_frame(reader, &mut body)? {
        Some(Message::RegisterServer(mut reg)) if reg.disks.len() == 1 => {
            // The registration names the server (export writes its id as the host name);
            // its seal, checked with that server's recovery key, proves it.
            let server = ServerId::new(&reg.hostname)
                .map_err(|e| anyhow::anyhow!("seed file names no valid server: {e}"))?;
            let keys = keyfile::load_recovery(key, &server)?.keys();
            ferry_wire::seal::verify_registration_seal(&keys, &reg).with_context(|| {
                format!("the seed's registration of {server} does not check out")
            })?;
            (reg.disks.remove(0), Unsealer::new(&keys)?)
        }
        Some(other) => bail!(
            "seed file must start with one disk's registration, not {:?}",
            other.frame_type()
        ),
        None => bail!("seed file is empty"),
    };
    let out = private_files::create_new(tmp)?;
    out.set_len(disk.size.get())?;
    let (mut next_offset, mut last_seq, mut records) = (0u64, Seq::new(0), 0u64);
    while let Some(message) = next_frame(reader, &mut body)? {
        let Message::Record(record) = message else {
            bail!(
                "unexpected {:?} frame after record {records}",
                message.frame_type()
            );
        };
        let h = &record.header;
        ensure!(
            h.disk == disk.disk,
            "record seq {} is for disk {}, not {}",
            h.seq,
            h.disk.get(),
            disk.disk.get()
        );
        ensure!(
            h.seq > last_seq,
            "record seq {} follows seq {}: out of order",
            h.seq,
            last_seq
        );
        ensure!(
            h.offset.get() == next_offset,
            "record seq {} starts at offset {}; the disk's bytes from {next_offset} are missing",
            h.seq,
            h.offset.get()
        );
        let end = h.offset.get() + h.length.get(); // check() ruled out overflow
        ensure!(
            end <= disk.size.get(),
            "record seq {} ends at {end}, past the disk's {} bytes",
            h.seq,
            disk.size.get()
        );
        match unsealer
            .unseal(&record)
            .with_context(|| format!("record seq {}", h.seq))?
        {
            Unsealed::Data(bytes) => out.write_all_at(bytes, h.offset.get())?,
            Unsealed::Zeroes(_) | Unsealed::Discarded(_) => {} // the new file is a hole there
        }
        (next_offset, last_seq) = (end, h.seq);
        records += 1;
    }
    ensure!(
        next_offset == disk.size.get(),
        "seed file ends at offset {next_offset}; the disk has {} bytes",
        disk.size.get()
    );
    out.sync_all()?;
    Ok((disk, records))
}
