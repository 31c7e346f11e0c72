#!/usr/bin/env bash
# Write tracker overhead: fio random writes (io_uring, iodepth 32, O_DIRECT) on a loop
# device, without the tracker and with it attached and drained, alternating runs.
# Usage: bash benches/tracker_overhead.sh [PAIRS] [SECONDS]   (as root)
# Prints, for 4 KiB and 64 KiB writes: per-run IOPS, the medians and their ratio, the
# median of the ratios of adjacent pairs (drift in the machine's load cancels within a
# pair), and, from one more run with BPF run-time statistics on, the tracker's CPU time
# per write: each program (bpf_stats) and the drainer (its utime + stime).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prereqs.sh
ferry_need_root "the tracker benchmark"
ferry_apt "${FERRY_PACKAGES[@]}" fio python3 bpftool
ferry_rust
pairs="${1:-5}"
seconds="${2:-10}"
cargo build --release --locked -q -p ferry-benches --bin track_drain
drain="$PWD/target/release/track_drain"
work="$(mktemp -d)"
shm=""
disk=""
tracker=""
stats_before="$(sysctl -n kernel.bpf_stats_enabled)"
cleanup() {
    [ -n "$tracker" ] && kill "$tracker" 2>/dev/null && wait "$tracker" 2>/dev/null || true
    sysctl -q kernel.bpf_stats_enabled="$stats_before" || true
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
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
start_tracker() {
    "$drain" "$disk" 2>"$work/drain.log" &
    tracker=$!
    until grep -q watching "$work/drain.log" 2>/dev/null; do sleep 0.05; done
}
stop_tracker() {
    kill "$tracker"; wait "$tracker" || true; tracker=""
    tail -1 "$work/drain.log" | grep -q "drops: 0" || echo "warning: $(tail -1 "$work/drain.log")" >&2
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

printf 'machine: %s, %s cores; %s pairs of %ss runs per size\n' "$(uname -r)" "$(nproc)" "$pairs" "$seconds"
for bs in 4k 64k; do
    without=() with=() ratios=()
    iops "$bs" >/dev/null # warm-up, not counted
    for pair in $(seq "$pairs"); do
        # Alternate which side runs first, so drift over time favours neither.
        for side in $( ((pair % 2)) && echo "without with" || echo "with without"); do
            if [ "$side" = without ]; then
                w="$(iops "$bs")"
                continue
            fi
            start_tracker
            t="$(iops "$bs")"
            stop_tracker
        done
        without+=("$w") with+=("$t") ratios+=("$(echo "$t / $w" | bc -l)")
    done
    mw="$(median "${without[@]}")" mt="$(median "${with[@]}")" mr="$(median "${ratios[@]}")"
    printf '%-4s without: %s  with: %s\n' "$bs" "${without[*]}" "${with[*]}"
    printf '%-4s median without %s, with %s, ratio %.3f (%+.1f%%); median pair ratio %.3f (%+.1f%%)\n' "$bs" \
        "$mw" "$mt" "$(echo "$mt / $mw" | bc -l)" "$(echo "($mt / $mw - 1) * 100" | bc -l)" \
        "$mr" "$(echo "($mr - 1) * 100" | bc -l)"
    # CPU per write, in a run of its own (the statistics cost a little per program run).
    start_tracker
    sysctl -q kernel.bpf_stats_enabled=1
    before="$(cpu_ticks "$tracker")"
    n="$(iops "$bs")"
    after="$(cpu_ticks "$tracker")"
    bpftool prog show --json | python3 -c '
import json, sys
ticks, writes, hz = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
parts = []
for p in json.load(sys.stdin):
    if p.get("name", "").startswith("ferry_") and p.get("run_cnt"):
        parts.append("%s %.0f ns" % (p["name"], p["run_time_ns"] / writes))
parts.append("drainer %.0f ns" % (ticks / hz * 1e9 / writes))
print("%-4s tracker CPU per write: %s" % (sys.argv[4], ", ".join(parts)))
' "$((after - before))" "$((n * seconds))" "$(getconf CLK_TCK)" "$bs"
    sysctl -q kernel.bpf_stats_enabled="$stats_before"
    stop_tracker
done
