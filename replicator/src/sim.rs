//! A simulated protected server for tests and benchmarks: disks held in memory, every
//! write sealed into a record with the next seq exactly as the replicator seals, and
//! barriers that mark recovery points. The disks in memory are the model that whatever the
//! standby rebuilds must equal.

use ferry_wire::message::{Barrier, DiskInfo, PointKind, RegisterServer};
use ferry_wire::record::RecordAddress;
use ferry_wire::seal::DEFAULT_ZSTD_LEVEL;
use ferry_wire::{
    ByteLen, ByteOffset, DiskId, HostKeys, Message, PointId, SealError, Sealer, Seq, ServerId,
};

/// A server whose disks live in memory.
#[derive(Debug)]
pub struct SimServer {
    server: ServerId,
    sealer: Sealer,
    keys: HostKeys,
    disks: Vec<Vec<u8>>,
    last_seq: Seq,
    next_point: u64,
}

impl SimServer {
    /// A server (the one `keys` are for) with zeroed disks of the given sizes (disk ids
    /// 0, 1, …).
    pub fn new(keys: &HostKeys, disk_sizes: &[usize]) -> Result<Self, SealError> {
        Ok(Self {
            server: keys.recovery.server.clone(),
            sealer: Sealer::new(keys, DEFAULT_ZSTD_LEVEL)?,
            keys: keys.clone(),
            disks: disk_sizes.iter().map(|&n| vec![0u8; n]).collect(),
            last_seq: Seq::new(0),
            next_point: 1,
        })
    }

    pub fn server(&self) -> &ServerId {
        &self.server
    }

    /// The disks as they are now.
    pub fn disks(&self) -> &[Vec<u8>] {
        &self.disks
    }

    /// The seq of the last record or barrier made.
    pub fn last_seq(&self) -> Seq {
        self.last_seq
    }

    /// The registration an agent would send (sealed).
    pub fn registration(&self) -> RegisterServer {
        let reg = RegisterServer {
            hostname: self.server.to_string(),
            disks: self
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| DiskInfo {
                    disk: DiskId::from_index(i).expect("few disks"),
                    name: format!("sim{i}"),
                    size: ByteLen::new(d.len() as u64),
                    identity: ferry_wire::disk_identity::DiskIdentity::Unknown,
                })
                .collect(),
            seal: [0; 32],
            mac: [0; 32],
        };
        ferry_wire::seal::sign_registration(&self.keys, reg)
    }

    fn next(&mut self, disk: u32, offset: u64) -> RecordAddress {
        self.last_seq = self.last_seq.checked_next().expect("seqs never run out");
        RecordAddress {
            server: self.server.clone(),
            disk: DiskId::new(disk),
            offset: ByteOffset::new(offset),
            seq: self.last_seq,
        }
    }

    fn range(&mut self, disk: u32, offset: u64, len: usize) -> &mut [u8] {
        let start = usize::try_from(offset).expect("sim disks fit in memory");
        &mut self.disks[disk as usize][start..start + len]
    }

    /// Writes `data` at `offset` of `disk` and returns the sealed record (all-zero data
    /// becomes a zero record, as in replication).
    pub fn write(&mut self, disk: u32, offset: u64, data: &[u8]) -> Result<Message, SealError> {
        self.range(disk, offset, data.len()).copy_from_slice(data);
        let addr = self.next(disk, offset);
        let record = self.sealer.seal(addr, data, &mut rand_core::OsRng)?;
        Ok(Message::Record(record))
    }

    /// Zeroes a range (a write-zeroes request).
    pub fn write_zeroes(
        &mut self,
        disk: u32,
        offset: u64,
        len: usize,
    ) -> Result<Message, SealError> {
        self.range(disk, offset, len).fill(0);
        let addr = self.next(disk, offset);
        Ok(Message::Record(
            self.sealer.zeroes(addr, ByteLen::new(len as u64))?,
        ))
    }

    /// Discards a range (reads back as zeroes on a rebuilt disk).
    pub fn discard(&mut self, disk: u32, offset: u64, len: usize) -> Result<Message, SealError> {
        self.range(disk, offset, len).fill(0);
        let addr = self.next(disk, offset);
        Ok(Message::Record(
            self.sealer.discard(addr, ByteLen::new(len as u64))?,
        ))
    }

    /// A barrier: a recovery point of the disks as they are now. Returns it and its id.
    pub fn barrier(&mut self, kind: PointKind, unix_time_ms: u64) -> (Message, PointId) {
        self.last_seq = self.last_seq.checked_next().expect("seqs never run out");
        let point = PointId::new(self.next_point);
        self.next_point += 1;
        let barrier = ferry_wire::seal::sign_barrier(
            &self.keys,
            Barrier {
                server: self.server.clone(),
                seq: self.last_seq,
                point,
                kind,
                consistent: true,
                unix_time_ms,
                registration: self.registration().seal,
                seal: [0; 32],
                mac: [0; 32],
            },
        );
        (Message::Barrier(barrier), point)
    }
}

/// Deterministic pseudo-random bytes (xorshift): incompressible test data, the same for
/// the same seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = vec![0u8; len.next_multiple_of(8)];
    for word in out.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
