#!/usr/bin/env bash
# Fuzzes ferry's frame decoder for a bounded time (default 60 s): bash scripts/fuzz.sh [SECONDS]
# Installs cargo-fuzz if missing. libFuzzer needs nightly compiler flags; the stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1 (fuzzing only, never for release builds).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prereqs.sh
ferry_rust
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
seconds="${1:-60}"
cd wire
RUSTC_BOOTSTRAP=1 cargo fuzz run frame_decode -- -max_total_time="$seconds" -rss_limit_mb=2048
