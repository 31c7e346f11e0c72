//! Sealing on every core: a batch of extents is split into contiguous runs, one per
//! thread, each with its own [`Sealer`] (key schedule and zstd context reused); the
//! frames come back in the batch's order, ready for the ordered stream.

use ferry_wire::record::RecordAddress;
use ferry_wire::{FrameError, HostKeys, Message, SealError, Sealer};

/// Why sealing a batch failed (a bug or a resource failure, never bad input: extents
/// are bounded by the caller).
#[derive(Debug, thiserror::Error)]
pub enum SealPoolError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// One sealer per thread.
#[derive(Debug)]
pub struct SealPool {
    sealers: Vec<Sealer>,
}

impl SealPool {
    /// `threads` sealers (at least one).
    pub fn new(keys: &HostKeys, zstd_level: i32, threads: usize) -> Result<Self, SealError> {
        let sealers = (0..threads.max(1))
            .map(|_| Sealer::new(keys, zstd_level))
            .collect::<Result<_, _>>()?;
        Ok(Self { sealers })
    }

    /// Seals each extent and encodes it as a `Record` frame, in the order given.
    pub fn seal(
        &mut self,
        items: &[(RecordAddress, &[u8])],
    ) -> Result<Vec<Vec<u8>>, SealPoolError> {
        let per = items.len().div_ceil(self.sealers.len()).max(1);
        let runs: Vec<Result<Vec<Vec<u8>>, SealPoolError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = items
                .chunks(per)
                .zip(self.sealers.iter_mut())
                .map(|(run, sealer)| {
                    scope.spawn(move || {
                        let mut rng = rand_core::OsRng;
                        run.iter()
                            .map(|(addr, data)| {
                                let record = sealer.seal(addr.clone(), data, &mut rng)?;
                                Ok(Message::Record(record).encode()?)
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a sealing thread panicked"))
                .collect()
        });
        let mut frames = Vec::with_capacity(items.len());
        for run in runs {
            frames.extend(run?);
        }
        Ok(frames)
    }
}
