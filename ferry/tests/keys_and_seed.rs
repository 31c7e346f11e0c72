//! `ferry keygen` and `ferry seed` as an operator runs them: key files are private and
//! checked on load; a seed file restores the exact disk, and a damaged one changes nothing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn ferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .expect("running ferry")
}

fn ok(args: &[&str]) -> String {
    let out = ferry(args);
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = ferry(args);
    assert!(
        !out.status.success(),
        "ferry {args:?} succeeded but should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites_silently() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("pair.key");
    ok(&["keygen", "--out", p(&key)]);
    let meta = fs::metadata(&key).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "key file mode");
    let first = fs::read_to_string(&key).unwrap();
    assert_eq!(first.len(), 65, "64 hex digits and a newline: {first:?}");
    assert!(first[..64].chars().all(|c| c.is_ascii_hexdigit()));

    let err = fails(&["keygen", "--out", p(&key)]);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(&key).unwrap(),
        first,
        "a refused keygen changed the key"
    );

    ok(&["keygen", "--out", p(&key), "--force"]);
    let second = fs::read_to_string(&key).unwrap();
    assert_ne!(second, first, "--force did not write a new key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "temporary files left behind: {leftovers:?}"
    );

    let err = fails(&["keygen", "--out", p(&dir.path().join("missing/dir/k"))]);
    assert!(err.contains("cannot create"), "{err}");
}

#[test]
fn unsafe_or_malformed_key_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    fs::write(&image, vec![1u8; 8192]).unwrap();
    let key = dir.path().join("k");
    let out = dir.path().join("seed");
    let export = |key: &Path| {
        fails(&[
            "seed",
            "export",
            "--key",
            p(key),
            "--server",
            "web-1",
            "--device",
            p(&image),
            "--out",
            p(&out),
        ])
    };

    ok(&["keygen", "--out", p(&key)]);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = export(&key);
    assert!(
        err.contains("mode 0644") && err.contains("chmod 600") && err.contains(p(&key)),
        "{err}"
    );

    let short = dir.path().join("short");
    fs::write(&short, "abcd\n").unwrap();
    fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
    let err = export(&short);
    assert!(
        err.contains("4 hex digits") && err.contains("exactly 64"),
        "{err}"
    );

    let not_hex = dir.path().join("nothex");
    fs::write(&not_hex, format!("{}\n", "z".repeat(64))).unwrap();
    fs::set_permissions(&not_hex, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(export(&not_hex).contains("not a hex digit at position 0"));

    let err = export(&dir.path().join("absent"));
    assert!(err.contains("cannot open key file"), "{err}");
    assert!(!out.exists(), "a refused export created its output");
}

/// A disk image with data, zero stretches and compressible text, `len` bytes.
fn sample_disk(len: usize) -> Vec<u8> {
    let mut disk = vec![0u8; len];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for (i, chunk) in disk.chunks_mut(64 * 1024).enumerate() {
        match i % 4 {
            0 => chunk.iter_mut().for_each(|b| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x.to_le_bytes()[0];
            }),
            1 => {} // zeroes
            2 => chunk
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = b"ferry replicates "[j % 17]),
            _ => chunk[100] = 1, // one byte in a zero stretch
        }
    }
    disk
}

#[test]
fn seed_restores_the_exact_disk_and_damaged_seeds_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    ok(&["keygen", "--out", p(&key)]);
    // 3 MiB + 12 KiB: the last extent is short.
    let disk = sample_disk(3 * 1024 * 1024 + 12 * 1024);
    let image = dir.path().join("disk.img");
    fs::write(&image, &disk).unwrap();
    let seed = dir.path().join("disk.seed");
    let said = ok(&[
        "seed",
        "export",
        "--key",
        p(&key),
        "--server",
        "web-1",
        "--device",
        p(&image),
        "--out",
        p(&seed),
    ]);
    assert!(said.contains("4 data records"), "{said}");
    let sealed = fs::read(&seed).unwrap();
    assert!(
        !sealed.windows(17).any(|w| w == b"ferry replicates "),
        "plaintext in the seed file"
    );

    let restored = dir.path().join("restored.img");
    let restore = |seed: &Path, key: &Path| {
        ferry(&[
            "seed",
            "restore",
            "--key",
            p(key),
            "--seed",
            p(seed),
            "--out",
            p(&restored),
        ])
    };
    let out = restore(&seed, &key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fs::read(&restored).unwrap() == disk,
        "restored image differs from the disk"
    );
    let err = fails(&[
        "seed",
        "restore",
        "--key",
        p(&key),
        "--seed",
        p(&seed),
        "--out",
        p(&restored),
    ]);
    assert!(err.contains("already exists"), "{err}");
    fs::remove_file(&restored).unwrap();

    let refused = |bytes: &[u8], key: &Path, expect: &str| {
        let bad = dir.path().join("bad.seed");
        fs::write(&bad, bytes).unwrap();
        let out = restore(&bad, key);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "damaged seed restored (expected {expect:?})"
        );
        assert!(
            err.contains(expect) && err.contains("nothing was written"),
            "expected {expect:?}: {err}"
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with("restored")),
            "output left behind: {names:?}"
        );
    };
    let mut flipped = sealed.clone();
    let at = sealed.len() / 2;
    flipped[at] ^= 0x10;
    refused(&flipped, &key, "crc32 mismatch");
    refused(&sealed[..sealed.len() - 100], &key, "ended inside a frame");
    let other_key = dir.path().join("other");
    ok(&["keygen", "--out", p(&other_key)]);
    // Another pair's key: the registration's seal (checked first) does not match.
    refused(
        &sealed,
        &other_key,
        "registration of web-1 does not check out: seal does not match",
    );
    // Drop the second record frame: the gap is named.
    let frames = split_frames(&sealed);
    let mut gap = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        if i != 2 {
            gap.extend_from_slice(f);
        }
    }
    refused(&gap, &key, "are missing");
    let short: Vec<u8> = frames[..frames.len() - 1].concat();
    refused(&short, &key, "seed file ends at offset");
}

fn split_frames(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = 16 + u32::from_le_bytes(rest[8..12].try_into().unwrap()) as usize;
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    out
}
