//! Seal and unseal throughput, single core, for 4 KiB and 1 MiB extents on realistic
//! data (`/usr/lib`) and on random data. Run: `cargo bench -p ferry-benches --bench seal`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferry_benches::{random_bytes, usr_lib_corpus};
use ferry_wire::record::RecordAddress;
use ferry_wire::seal::DEFAULT_ZSTD_LEVEL;
use ferry_wire::{ByteOffset, DiskId, MasterKey, Sealer, Seq, ServerId, Unsealer};

const CORPUS: usize = 16 << 20;

fn bench(c: &mut Criterion) {
    let server = ServerId::new("bench").unwrap();
    let keys = MasterKey::from_bytes([7; 32]).host_key(&server).keys();
    let corpora = [
        (
            "usr-lib",
            usr_lib_corpus(CORPUS).expect("reading /usr/lib for the corpus"),
        ),
        ("random", random_bytes(CORPUS)),
    ];
    for extent in [4096usize, 1 << 20] {
        let mut group = c.benchmark_group(format!("extent-{}KiB", extent / 1024));
        group.throughput(Throughput::Bytes(CORPUS as u64));
        group.sample_size(10);
        for (name, corpus) in &corpora {
            let mut sealer = Sealer::new(&keys, DEFAULT_ZSTD_LEVEL).unwrap();
            let mut rng = rand_core::OsRng;
            let addr = |i: usize| RecordAddress {
                server: server.clone(),
                disk: DiskId::new(0),
                offset: ByteOffset::new((i * extent) as u64),
                seq: Seq::new(i as u64 + 1),
            };
            group.bench_function(BenchmarkId::new("seal", name), |b| {
                b.iter(|| {
                    for (i, chunk) in corpus.chunks(extent).enumerate() {
                        std::hint::black_box(sealer.seal(addr(i), chunk, &mut rng).unwrap());
                    }
                })
            });
            let sealed: Vec<_> = corpus
                .chunks(extent)
                .enumerate()
                .map(|(i, chunk)| sealer.seal(addr(i), chunk, &mut rng).unwrap())
                .collect();
            let mut unsealer = Unsealer::new(&keys.recovery).unwrap();
            group.bench_function(BenchmarkId::new("unseal", name), |b| {
                b.iter(|| {
                    for record in &sealed {
                        std::hint::black_box(unsealer.unseal(record).unwrap());
                    }
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
