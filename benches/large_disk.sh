#!/usr/bin/env bash
# A disk of real size: the agent's memory while a whole disk is dirty (its full copy),
# against the same run with a baseline build.
# Usage: bash benches/large_disk.sh [TIB] [SECONDS]   (as root)
#
#   For each ferry binary (this tree's release build, then $FERRY_BASELINE if set): a
#   sparse TIB TiB disk (a loop device with direct I/O over a file on an xfs filesystem in
#   a sparse file: ext4's file limit is 16 TiB − 4 KiB), a standby on loopback, and the agent's full copy
#   for SECONDS: the agent's peak RSS (VmHWM), its RSS at the end, and the bytes copied.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prereqs.sh
. benches/lib/pair.sh
tib="${1:-16}"
seconds="${2:-60}"
pair_prepare "the large-disk benchmark" xfsprogs
binaries=("$PWD/target/release/ferry")
[ -n "${FERRY_BASELINE:-}" ] && binaries+=("$FERRY_BASELINE")
top="$(mktemp -d /var/tmp/ferry-bench.XXXXXX)"
pins="/sys/fs/bpf/ferry-bench-$$"
ferry="${binaries[0]}" disk="" standby="" agent=""
stop_pair() {
    for p in $agent $standby; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    agent="" standby=""
    "$ferry" track --detach --pin-dir "$pins" >/dev/null 2>&1 || true
}
cleanup() {
    stop_pair
    [ -n "$disk" ] && losetup -d "$disk" || true
    mountpoint -q "$top/xfs" && umount "$top/xfs"
    rm -rf "$top"
}
trap cleanup EXIT
truncate -s 64G "$top/xfs.img"
mkfs.xfs -q "$top/xfs.img"
mkdir "$top/xfs"
mount -o loop "$top/xfs.img" "$top/xfs"
truncate -s "${tib}T" "$top/xfs/disk.img"
disk="$(losetup --find --show --direct-io=on "$top/xfs/disk.img")"
printf 'machine: %s, %s cores, %s GiB RAM; disk %s TiB sparse (loop over a file on xfs), %s s of full copy\n' \
    "$(uname -r)" "$(nproc)" "$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) >> 20))" "$tib" "$seconds"
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
for ferry in "${binaries[@]}"; do
    work="$top/$(basename "$(dirname "$(dirname "$ferry")")")-$RANDOM"
    mkdir "$work"
    # Each run reads the disk from the start: none from the page cache of the one before.
    sync
    echo 3 >/proc/sys/vm/drop_caches
    pair_setup web-1
    pair_standby
    pair_agent_config "$disk"
    "$ferry" agent --config "$work/agent.toml" >"$work/agent.out" 2>"$work/agent.log" &
    agent=$!
    until grep -q tracking "$work/agent.out" 2>/dev/null; do sleep 0.1; done
    sleep "$seconds"
    copied=$(json 's["disks"][0]["full_done"]')
    printf '%s: agent peak RSS %d MiB, RSS now %d MiB; %.1f GiB copied (acknowledged) in %s s (%.0f MiB/s)\n' \
        "$ferry" "$(($(kib "$agent" VmHWM) >> 10))" "$(($(kib "$agent" VmRSS) >> 10))" \
        "$(echo "$copied / 2^30" | bc -l)" "$seconds" "$(echo "$copied / 2^20 / $seconds" | bc -l)"
    stop_pair
    rm -rf "$work"
done
