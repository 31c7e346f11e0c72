//! Durable acks (DESIGN.md I2): what a sync reports durable includes the directory entry
//! of every segment it covers.

mod common;
use common::*;
use ferry_replicator::sim::SimServer;
use ferry_standby::log::OpenMode;
use ferry_standby::storage::{FsDir, LogDir, LogFile};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
/// Counts directory fsyncs.
struct Counting {
    inner: FsDir,
    dir_syncs: Arc<AtomicUsize>,
}
impl LogDir for Counting {
    fn describe(&self, n: &str) -> std::path::PathBuf {
        self.inner.describe(n)
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn create(&self, n: &str) -> io::Result<Arc<dyn LogFile>> {
        self.inner.create(n)
    }
    fn open(&self, n: &str, r: bool) -> io::Result<Arc<dyn LogFile>> {
        self.inner.open(n, r)
    }
    fn read_small(&self, n: &str, m: u64) -> io::Result<Vec<u8>> {
        self.inner.read_small(n, m)
    }
    fn replace(&self, n: &str, b: &[u8]) -> io::Result<()> {
        self.inner.replace(n, b)
    }
    fn remove(&self, n: &str) -> io::Result<()> {
        self.inner.remove(n)
    }
    fn sync(&self) -> io::Result<()> {
        self.dir_syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync()
    }
}

use ferry_standby::server::ServerState;
#[test]
fn a_sync_beside_an_unfinished_ticket_still_fsyncs_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let syncs = Arc::new(AtomicUsize::new(0));
    let d: Arc<dyn LogDir> = Arc::new(Counting {
        inner: FsDir::open(&dir.path().join("log"), true).unwrap(),
        dir_syncs: syncs.clone(),
    });
    let meta: Arc<dyn LogDir> = Arc::new(FsDir::open(dir.path(), true).unwrap());
    let (mut st, _) =
        ServerState::open_in(server(), meta, d, SEGMENT, OpenMode::ReadWrite).unwrap();
    let mut sim = SimServer::new(server(), &keys, &[8 << 20]).unwrap();
    st.register(sim.registration()).unwrap();
    st.log.sync().unwrap();
    let mut i = 0u64;
    let before = st.log.segment_numbers().len();
    while st.log.segment_numbers().len() == before || st.log.segment_numbers().len() == 1 {
        let m = sim.write(0, (i % 100) * 65536, &noise(65536, i)).unwrap();
        feed(&mut st, &m, &keys);
        i += 1;
    }
    // The group-commit thread has taken a ticket (covering the new segment's directory
    // entry) but not run it yet.
    let ticket = st.log.prepare_sync();
    let n0 = syncs.load(Ordering::SeqCst);
    // A new connection's handshake syncs to tell the agent its last durable seq.
    let durable = st.log.sync().unwrap();
    let n1 = syncs.load(Ordering::SeqCst);
    assert!(
        n1 > n0,
        "sync() declared {durable} durable (frames in a new segment) without fsyncing the directory"
    );
    drop(ticket);
}
