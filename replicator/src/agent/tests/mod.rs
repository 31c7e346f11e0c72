//! The agent's invariants, tested without root against in-memory fakes of its parts
//! (`i1`: clear-on-ack, `i5`: consistent points). The agent's own code runs — `pick`,
//! `ship`, `apply_acks`, `point` — only its parts are fakes:
//!
//! - [`FakeTracker`]: the real `TrackState`, fed the events the BPF programs would log
//!   for each write: a submission (dirty, in flight), the bytes changing, a completion.
//! - [`FakeReader`]: reads the disks' bytes; before and after each read it lets the
//!   application's queued writes land, as writes land while a real agent reads.
//! - [`FakeFreezer`]: while frozen, the application's writes wait (as FIFREEZE holds
//!   writers), unless the test makes it one that does not hold them.
//! - [`FakeStandby`]: unseals every record it is sent (the real `Unsealer`) and
//!   acknowledges up to the seq the test says.

mod i1;
mod i5;

use super::parts::{DirtySource, ExtentReader, Freezer, Uplink};
use super::ship::Stream;
use super::{Agent, AgentConfig, lock};
use crate::freeze::FreezeError;
use crate::link::LinkError;
use crate::read::{ReadError, ReadReq};
use ferry_tracker::check::CheckError;
use ferry_tracker::sys::blockdev::{BlockDevice, KernelDev};
use ferry_tracker::{Gap, TrackerError};
use ferry_tracker_core::dirty::GRAIN;
use ferry_tracker_core::event::{Event, Kind, Op};
use ferry_tracker_core::range::ByteRange;
use ferry_tracker_core::state::TrackState;
use ferry_wire::keys::MasterKey;
use ferry_wire::message::{Digests, ErrorMessage, PointRequest};
use ferry_wire::seal::{Unsealed, Unsealer};
use ferry_wire::{DiskId, HostKeys, Message, Seq, ServerId};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes per block the application writes (one grain).
const BLOCK: usize = 4096;
const _: () = assert!(BLOCK as u64 == GRAIN);

/// One write of the application: `block` of `disk` filled with `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Write {
    disk: usize,
    block: usize,
    value: u8,
}

/// The protected server: its disks, and the writes its application has yet to issue.
#[derive(Debug)]
struct Server {
    disks: Vec<Vec<u8>>,
    /// Writes waiting to land, in the order the application issues them.
    queued: VecDeque<Write>,
    /// How many queued writes land before and after each read of the agent.
    land_per_read: (usize, usize),
    /// Every write that landed, in order.
    landed: Vec<Write>,
    frozen: bool,
    /// Whether a freeze holds the application's writers (a fake FIFREEZE that works).
    freeze_holds: bool,
    next_id: u64,
}

type Shared = Arc<Mutex<Server>>;

impl Server {
    fn new(disks: usize, blocks: usize) -> Shared {
        Arc::new(Mutex::new(Server {
            disks: vec![vec![0; blocks * BLOCK]; disks],
            queued: VecDeque::new(),
            land_per_read: (0, 0),
            landed: Vec::new(),
            frozen: false,
            freeze_holds: true,
            next_id: 1,
        }))
    }
}

/// The dirty map fed as the BPF programs feed it. Writes the application makes while
/// the agent runs land through [`land`], which takes this tracker's lock as the real
/// drain thread does.
#[derive(Debug)]
struct FakeTracker {
    devices: Vec<BlockDevice>,
    state: TrackState,
}

impl FakeTracker {
    fn new(server: &Server) -> Self {
        let devices = server
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| BlockDevice {
                path: PathBuf::from(format!("/dev/fake{i}")),
                name: format!("fake{i}"),
                major: 0,
                minor: 0,
                dev: KernelDev(0),
                size: d.len() as u64,
            })
            .collect();
        Self {
            devices,
            state: TrackState::new(server.disks.len()),
        }
    }

    /// One write, as the kernel reports it: submitted, on the device, completed.
    fn write(&mut self, server: &mut Server, w: Write) {
        let id = server.next_id;
        server.next_id += 1;
        let offset = (w.block * BLOCK) as u64;
        let event = |kind| Event {
            id,
            disk: DiskId::from_index(w.disk).expect("few disks"),
            range: ByteRange::new(offset, offset + GRAIN),
            op: Op::Write,
            kind,
            seen_ns: 1,
        };
        self.state
            .apply(&event(Kind::Submit { untracked: false }))
            .expect("a known disk");
        server.disks[w.disk][w.block * BLOCK..][..BLOCK].fill(w.value);
        self.state
            .apply(&event(Kind::Complete { status: 0 }))
            .expect("a known disk");
        server.landed.push(w);
    }
}

/// Lets up to `n` of the application's queued writes land (none while a freeze holds
/// the writers).
fn land(server: &Shared, tracker: &Mutex<FakeTracker>, n: usize) {
    for _ in 0..n {
        let mut s = lock(server);
        if s.frozen && s.freeze_holds {
            return;
        }
        let Some(w) = s.queued.pop_front() else {
            return;
        };
        lock(tracker).write(&mut s, w);
    }
}

impl DirtySource for FakeTracker {
    fn devices(&self) -> &[BlockDevice] {
        &self.devices
    }
    fn state(&self) -> &TrackState {
        &self.state
    }
    fn state_mut(&mut self) -> &mut TrackState {
        &mut self.state
    }
    fn poll(&mut self) -> Result<(), TrackerError> {
        Ok(())
    }
    fn gap(&self, _: DiskId) -> Option<&Gap> {
        None
    }
    fn gap_count(&self, _: DiskId) -> u64 {
        0
    }
    fn close_gap(&mut self, _: DiskId, _: u64) -> bool {
        true
    }
    fn drops(&self) -> u64 {
        0
    }
    fn stop(self) -> Result<(), TrackerError> {
        Ok(())
    }
}

/// Reads the server's disks; the application's writes land around each read.
#[derive(Debug)]
struct FakeReader {
    server: Shared,
    /// The agent's tracker, set once the agent is assembled.
    tracker: Option<Arc<Mutex<FakeTracker>>>,
}

impl ExtentReader for FakeReader {
    fn read(&mut self, reqs: &mut [ReadReq]) -> Result<(), ReadError> {
        let tracker = self.tracker.clone().expect("set after assembly");
        let (before, after) = lock(&self.server).land_per_read;
        land(&self.server, &tracker, before);
        {
            let s = lock(&self.server);
            for r in reqs.iter_mut() {
                let start = usize::try_from(r.offset).expect("small disks");
                let len = r.buf.len();
                r.buf.copy_from_slice(&s.disks[r.disk][start..start + len]);
            }
        }
        land(&self.server, &tracker, after);
        Ok(())
    }
    fn uses_io_uring(&self) -> bool {
        false
    }
}

/// Freezes the one fake filesystem: the application's writers wait until the guard is
/// dropped, unless the server's `freeze_holds` is false.
#[derive(Debug)]
struct FakeFreezer {
    server: Shared,
}

/// Thaws the fake filesystem when dropped.
#[derive(Debug)]
struct FakeThaw(Shared);

impl Drop for FakeThaw {
    fn drop(&mut self) {
        lock(&self.0).frozen = false;
    }
}

impl Freezer for FakeFreezer {
    type Guard = FakeThaw;
    fn mounts(&self, _: &[String]) -> Result<Vec<PathBuf>, CheckError> {
        Ok(vec![PathBuf::from("/fake")])
    }
    fn freeze(
        &mut self,
        _: &[PathBuf],
        _: Duration,
    ) -> Result<(FakeThaw, Vec<String>), FreezeError> {
        lock(&self.server).frozen = true;
        Ok((FakeThaw(self.server.clone()), vec!["/fake".to_owned()]))
    }
}

/// What the standby was sent, unsealed, in seq order; the seq it acknowledges.
#[derive(Debug, Default)]
struct Received {
    /// Each record's seq, disk, offset and bytes.
    records: Vec<(Seq, usize, usize, Vec<u8>)>,
    /// Each barrier's seq and whether it was marked consistent.
    barriers: Vec<(Seq, bool)>,
    /// The highest seq sent.
    sent: Seq,
    durable: Seq,
}

impl Received {
    /// The disks as the standby would rebuild them from every record with seq ≤ `upto`.
    fn image(&self, sizes: &[usize], upto: Seq) -> Vec<Vec<u8>> {
        let mut disks: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0; n]).collect();
        for (seq, disk, offset, bytes) in &self.records {
            if *seq <= upto {
                disks[*disk][*offset..*offset + bytes.len()].copy_from_slice(bytes);
            }
        }
        disks
    }
}

/// A standby that unseals what it is sent and acknowledges when the test says (and at
/// once when the agent waits for an ack).
struct FakeStandby {
    unsealer: Unsealer,
    received: Arc<Mutex<Received>>,
}

impl Uplink for FakeStandby {
    fn send(&mut self, message: &Message) -> Result<(), LinkError> {
        let frame = message.encode().expect("the agent's messages encode");
        self.send_frame(None, frame)
    }
    fn send_frame(&mut self, _: Option<Seq>, frame: Vec<u8>) -> Result<(), LinkError> {
        let message = ferry_wire::frame::decode(&frame).expect("the agent's frames decode");
        let mut r = lock(&self.received);
        match message {
            Message::Record(record) => {
                let h = &record.header;
                assert!(h.seq > r.sent, "records are sent in seq order");
                r.sent = h.seq;
                let offset = usize::try_from(h.offset.get()).expect("small disks");
                let (seq, disk) = (h.seq, h.disk.index());
                let bytes = match self.unsealer.unseal(&record).expect("a record we sealed") {
                    Unsealed::Data(d) => d.to_vec(),
                    Unsealed::Zeroes(n) | Unsealed::Discarded(n) => {
                        vec![0; usize::try_from(n.get()).expect("small")]
                    }
                };
                r.records.push((seq, disk, offset, bytes));
            }
            Message::Barrier(b) => {
                assert!(b.seq > r.sent, "a barrier follows its records");
                r.sent = b.seq;
                r.barriers.push((b.seq, b.consistent));
            }
            _ => {}
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
    fn durable(&self) -> Seq {
        lock(&self.received).durable
    }
    fn wait_durable(&mut self, seq: Seq, _: Duration) -> Result<Seq, LinkError> {
        let mut r = lock(&self.received);
        r.durable = r.durable.max(seq.min(r.sent));
        Ok(r.durable)
    }
    fn closed(&self) -> Option<LinkError> {
        None
    }
    fn take_warnings(&self) -> Vec<ErrorMessage> {
        Vec::new()
    }
    fn take_digests(&self) -> VecDeque<Digests> {
        VecDeque::new()
    }
    fn take_point_requests(&self) -> Vec<PointRequest> {
        Vec::new()
    }
}

type FakeAgent = Agent<FakeTracker, FakeReader, FakeFreezer>;

/// An agent of fakes over `server`, connected to a fake standby; its state directory
/// lives as long as the returned guard.
struct Rig {
    agent: FakeAgent,
    stream: Stream,
    server: Shared,
    received: Arc<Mutex<Received>>,
    sizes: Vec<usize>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(disks: usize, blocks: usize) -> Rig {
        let server = Server::new(disks, blocks);
        let keys: HostKeys = MasterKey::from_bytes([7; 32])
            .host_key(&ServerId::new("web1").expect("a valid name"))
            .keys();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = AgentConfig::new(
            keys.recovery.server.clone(),
            "standby:4430".into(),
            Vec::new(),
            dir.path().to_owned(),
        );
        // Several extents and batches over small disks.
        config.extent_max = 2 * GRAIN;
        config.batch_bytes = 4 * GRAIN;
        config.seal_threads = 2;
        config.point_interval = None;
        let tracker = FakeTracker::new(&lock(&server));
        let reader = FakeReader {
            server: server.clone(),
            tracker: None,
        };
        let freezer = FakeFreezer {
            server: server.clone(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let unsealer = Unsealer::new(&keys.recovery).expect("an unsealer");
        let mut agent = Agent::assemble(config, keys, stop, tracker, reader, freezer)
            .expect("an agent of fakes");
        agent.reader.tracker = Some(agent.tracker.clone());
        let received = Arc::new(Mutex::new(Received::default()));
        let stream = Stream {
            link: Box::new(FakeStandby {
                unsealer,
                received: received.clone(),
            }),
            next_seq: Seq::new(1),
        };
        let sizes = lock(&server).disks.iter().map(Vec::len).collect();
        Rig {
            agent,
            stream,
            server,
            received,
            sizes,
            _dir: dir,
        }
    }

    /// One turn of the replication loop: apply acks, pick a batch, read, seal, send.
    fn ship_batch(&mut self) {
        let durable = self.stream.link.durable();
        self.agent.apply_acks(durable);
        let batch = self.agent.pick(self.agent.config.batch_bytes, None);
        if !batch.is_empty() {
            self.agent
                .ship(&mut self.stream, batch)
                .expect("shipping to a fake standby");
        }
    }

    /// The standby acknowledges every seq up to `seq` (at most what was sent).
    fn ack(&mut self, seq: u64) {
        let mut r = lock(&self.received);
        r.durable = r.durable.max(Seq::new(seq).min(r.sent));
    }

    fn queue(&self, writes: impl IntoIterator<Item = Write>) {
        lock(&self.server).queued.extend(writes);
    }

    /// Lets `n` queued writes land now.
    fn land(&self, n: usize) {
        land(&self.server, &self.agent.tracker, n);
    }

    fn disks(&self) -> Vec<Vec<u8>> {
        lock(&self.server).disks.clone()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.agent
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.agent.tracker_thread.take() {
            let _ = t.join();
        }
    }
}
