#!/usr/bin/env bash
# Write tracker overhead: fio random writes (io_uring, iodepth 32, O_DIRECT) on a loop
# device, without the tracker and with it attached and drained, alternating runs.
# Usage: bash benches/tracker_overhead.sh [PAIRS] [SECONDS]   (as root)
# Prints per-run IOPS, medians and the ratio with/without for 4 KiB and 64 KiB writes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prereqs.sh
ferry_need_root "the tracker benchmark"
ferry_apt "${FERRY_PACKAGES[@]}" fio python3
ferry_rust
pairs="${1:-5}"
seconds="${2:-10}"
cargo build --release --locked -q -p ferry-benches --bin track_drain
drain="$PWD/target/release/track_drain"
work="$(mktemp -d)"
shm=""
disk=""
tracker=""
cleanup() {
    [ -n "$tracker" ] && kill "$tracker" 2>/dev/null && wait "$tracker" 2>/dev/null || true
    [ -n "$disk" ] && losetup -d "$disk" || true
    rm -rf "$work" "${shm:-}"
}
trap cleanup EXIT
# The disk lives in memory (tmpfs), written in full first: what is measured is the CPU
# the tracker costs, not the host disk's writeback or hole allocation.
shm="$(mktemp -d /dev/shm/ferry-bench.XXXXXX)"
dd if=/dev/zero of="$shm/disk.img" bs=4M count=512 status=none
disk="$(losetup --find --show "$shm/disk.img")"

iops() { # BS -> IOPS of one fio run
    fio --name=w --filename="$disk" --rw=randwrite --bs="$1" --ioengine=io_uring --iodepth=32 \
        --direct=1 --runtime="$seconds" --time_based --size=1536M --output-format=json 2>/dev/null \
        | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))'
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf 'machine: %s, %s cores; %s pairs of %ss runs per size\n' "$(uname -r)" "$(nproc)" "$pairs" "$seconds"
for bs in 4k 64k; do
    without=() with=()
    iops "$bs" >/dev/null # warm-up, not counted
    for pair in $(seq "$pairs"); do
        # Alternate which side runs first, so drift over time favours neither.
        for side in $( ((pair % 2)) && echo "without with" || echo "with without"); do
            if [ "$side" = without ]; then
                without+=("$(iops "$bs")")
                continue
            fi
            "$drain" "$disk" 2>"$work/drain.log" &
            tracker=$!
            until grep -q watching "$work/drain.log" 2>/dev/null; do sleep 0.05; done
            with+=("$(iops "$bs")")
            kill "$tracker"; wait "$tracker" || true; tracker=""
            tail -1 "$work/drain.log" | grep -q "drops: 0" || echo "warning: $(tail -1 "$work/drain.log")" >&2
        done
    done
    mw="$(median "${without[@]}")" mt="$(median "${with[@]}")"
    printf '%-4s without: %s  with: %s  median without %s, with %s, ratio %.3f (%+.1f%%)\n' "$bs" \
        "${without[*]}" "${with[*]}" "$mw" "$mt" "$(echo "$mt / $mw" | bc -l)" "$(echo "($mt / $mw - 1) * 100" | bc -l)"
done
