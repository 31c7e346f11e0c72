//! Shared pieces of the standby's tests: keys, a store in a temporary directory, feeding
//! a simulated server's messages through the ingest rules, and rebuilding to memory.

#![allow(dead_code, reason = "each test binary uses a different subset")]

pub(crate) mod sim_storage;

use ferry_replicator::sim::SimServer;
pub(crate) use ferry_replicator::sim::noise;
use ferry_standby::log::OpenMode;
use ferry_standby::rebuild::{self, Target};
use ferry_standby::server::{Ingested, ServerState};
use ferry_wire::{HostKeys, MasterKey, Message, Seq, ServerId};
use std::path::Path;
use std::sync::Arc;

pub(crate) const SEGMENT: u64 = 2 << 20;

pub(crate) fn keys() -> HostKeys {
    master().host_key(&server()).keys()
}

/// The site pair's master key of the tests.
pub(crate) fn master() -> MasterKey {
    MasterKey::from_bytes([7; 32])
}

pub(crate) fn server() -> ServerId {
    ServerId::new("web-1").expect("a valid name")
}

pub(crate) fn open(dir: &Path) -> ServerState {
    ServerState::open(server(), dir, SEGMENT, OpenMode::ReadWrite)
        .unwrap_or_else(|e| panic!("opening the store in {}: {e:?}", dir.display()))
        .0
}

/// Opens the store over simulated storage (`meta` for its small files, `log` for segments).
pub(crate) fn open_sim(
    meta: &Arc<sim_storage::SimDir>,
    log: &Arc<sim_storage::SimDir>,
) -> ServerState {
    ServerState::open_in(
        server(),
        meta.clone(),
        log.clone(),
        SEGMENT,
        OpenMode::ReadWrite,
    )
    .unwrap_or_else(|e| panic!("opening the store on simulated storage: {e:?}"))
    .0
}

/// Encodes `message` and feeds it through the ingest rules; it must be stored.
pub(crate) fn feed(state: &mut ServerState, message: &Message, keys: &HostKeys) {
    let frame = message.encode().expect("message encodes");
    match state.ingest(&frame, message, &keys.ingest.mac) {
        Ok(Ingested::Stored(_)) => {}
        other => panic!("{:?} was not stored: {other:?}", message.frame_type()),
    }
}

/// A new store with the simulated server registered.
pub(crate) fn registered(dir: &Path, sim: &SimServer) -> ServerState {
    let mut state = open(dir);
    state
        .register(sim.registration(), &keys().ingest.mac)
        .expect("registration is stored");
    state
}

/// Rebuilds every registered disk at `seq` into files under `scratch` and reads them back.
pub(crate) fn rebuild_all(
    state: &ServerState,
    seq: Seq,
    keys: &HostKeys,
    scratch: &Path,
) -> Vec<Vec<u8>> {
    let disks = rebuild::point_disks(state, seq, &keys.recovery)
        .unwrap_or_else(|e| panic!("point seq {seq} does not check out: {e}"));
    disks
        .iter()
        .map(|disk| {
            let out = scratch.join(format!("rebuild-{}-{}.img", seq.get(), disk.disk.get()));
            let target = Target::open(&out, disk).expect("a new image file");
            rebuild::rebuild_disk(&state.log, disk, seq, target, &keys.recovery, 2, &|_| {})
                .unwrap_or_else(|e| {
                    panic!(
                        "rebuild of disk {} at seq {seq} failed: {e}",
                        disk.disk.get()
                    )
                });
            let bytes = std::fs::read(&out).expect("reading the rebuilt image");
            std::fs::remove_file(&out).expect("removing the rebuilt image");
            bytes
        })
        .collect()
}

/// Panics, naming the first differing byte, unless the disks equal the model.
pub(crate) fn assert_disks_eq(got: &[Vec<u8>], want: &[Vec<u8>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: number of disks");
    for (d, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: disk {d} size");
        if let Some(at) = g.iter().zip(w.iter()).position(|(a, b)| a != b) {
            panic!(
                "{what}: disk {d} differs from the model first at byte {at} (got {:#04x}, want {:#04x})",
                g[at], w[at]
            );
        }
    }
}

/// Bytes that compress well.
pub(crate) fn text(len: usize, seed: u64) -> Vec<u8> {
    format!("ferry block {seed} standby log ")
        .bytes()
        .cycle()
        .take(len)
        .collect()
}
