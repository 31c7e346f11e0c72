//! Builds the BPF programs in `ebpf/` with clang (`-target bpf`, CO-RE) into OUT_DIR,
//! where `src/sys/bpf.rs` embeds them. Needs clang (19 preferred; `FERRY_CLANG` picks
//! another) and libbpf's headers (Debian: clang-19, libbpf-dev; `scripts/test.sh`
//! installs them).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../ebpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("tracker.bpf.o");
    for file in ["tracker.bpf.c", "kernel_types.h"] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    println!("cargo:rerun-if-env-changed=FERRY_CLANG");
    let candidates = match std::env::var("FERRY_CLANG") {
        Ok(c) => vec![c],
        Err(_) => vec!["clang-19".to_owned(), "clang".to_owned()],
    };
    let mut last_error = String::new();
    for clang in &candidates {
        let status = Command::new(clang)
            .args([
                "-O2",
                "-g",
                "-target",
                "bpf",
                "-mcpu=v3", // atomics (cmpxchg, xchg) on the in-flight table and logs
                "-D__TARGET_ARCH_x86",
                "-Wall",
                "-Werror",
            ])
            .arg("-I")
            .arg(&root)
            .arg("-c")
            .arg(root.join("tracker.bpf.c"))
            .arg("-o")
            .arg(&out)
            .status();
        match status {
            Ok(s) if s.success() => return,
            Ok(s) => {
                panic!("{clang} failed to build ebpf/tracker.bpf.c ({s}); see the errors above")
            }
            Err(e) => last_error = format!("{clang}: {e}"),
        }
    }
    panic!(
        "cannot build the BPF programs: no clang found ({last_error}); install clang-19 and \
         libbpf-dev (bash scripts/test.sh does), or set FERRY_CLANG"
    );
}
