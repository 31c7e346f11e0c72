//! End to end on a real disk: an ext4 filesystem on a loop device, sealed into a seed
//! file and restored, must come back byte for byte, with every file intact, and with the
//! disk's empty space still sparse.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use support::{LoopDevice, Mount, ferry, require_root, run};

#[test]
fn ext4_on_a_loop_device_survives_seed_export_and_restore() {
    require_root("sealing a real ext4 disk");
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let disk_size = 64 << 20;
    let disk = LoopDevice::new_sparse(&p("disk.img"), disk_size);
    run("mkfs.ext4", &["-q", "-F", disk.path_str()]);

    let mut files = BTreeMap::new();
    {
        let mount = Mount::new(disk.path_str(), &p("mnt"), "rw");
        let mut x = 12345u64;
        for i in 0..20usize {
            let len = i * 37_000 + 1;
            let bytes: Vec<u8> = match i % 3 {
                0 => (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        x.to_be_bytes()[0]
                    })
                    .collect(),
                1 => format!("file {i} of the ferry end-to-end test\n")
                    .repeat(len / 30 + 1)
                    .into_bytes(),
                _ => vec![0u8; len],
            };
            let name = format!("f{i:02}");
            fs::write(mount.target.join(&name), &bytes).unwrap();
            files.insert(name, bytes);
        }
        run("sync", &[]);
    }

    let key = p("pair.key");
    ferry(&["keygen", "--out", key.to_str().unwrap()]);
    let seed = p("disk.seed");
    let said = ferry(&[
        "seed",
        "export",
        "--key",
        key.to_str().unwrap(),
        "--server",
        "web-1",
        "--device",
        disk.path_str(),
        "--out",
        seed.to_str().unwrap(),
    ]);
    assert!(said.contains("zero records"), "{said}");
    let seed_size = fs::metadata(&seed).unwrap().len();
    assert!(
        seed_size < disk_size / 4,
        "a mostly empty 64 MiB disk sealed to {seed_size} bytes"
    );

    let restored = p("restored.img");
    ferry(&[
        "seed",
        "restore",
        "--key",
        key.to_str().unwrap(),
        "--seed",
        seed.to_str().unwrap(),
        "--out",
        restored.to_str().unwrap(),
    ]);
    let original = fs::read(&disk.path).unwrap();
    let copy = fs::read(&restored).unwrap();
    assert_eq!(
        copy.len(),
        original.len(),
        "restored image has the wrong size"
    );
    if let Some(at) = copy.iter().zip(&original).position(|(a, b)| a != b) {
        panic!("restored image differs from the disk at byte {at}");
    }
    let allocated = fs::metadata(&restored).unwrap().blocks() * 512;
    assert!(
        allocated < disk_size / 4,
        "restored image is not sparse: {allocated} bytes allocated"
    );

    let copy_dev = LoopDevice::attach(&restored, true);
    let mount = Mount::new(copy_dev.path_str(), &p("copy"), "ro");
    for (name, bytes) in &files {
        let got =
            fs::read(mount.target.join(name)).unwrap_or_else(|e| panic!("{name} missing: {e}"));
        assert!(&got == bytes, "{name} differs after restore");
    }
}
