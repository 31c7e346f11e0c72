#!/usr/bin/env bash
# End-to-end replication: `ferry agent` protecting a loop device and a `ferry standby` on
# loopback, on one machine, against baselines measured in the same run.
# Usage: bash benches/agent_e2e.sh [DISK_MIB] [SECONDS]   (as root)
#
#   full sync   time for the agent's full copy of a disk of incompressible data,
#               against `dd iflag=direct bs=1M` reading the same disk
#   throughput  fio (io_uring, O_DIRECT, iodepth 32) for SECONDS without replication,
#               then with the agent: the write rate fio sees, and the replicated rate
#               (bytes written / time until the standby has acknowledged all of it)
#   RPO lag     fio rate-limited to 10 MB/s of 4 KiB writes: the agent's rpo_lag_ms
#               (time since every completed write was last durable at the standby),
#               sampled every 100 ms: p50, p99
#
# The protected disk is in memory (tmpfs) so that the host disk measures the standby's
# appends and fsyncs, not the source's writeback; the standby's data directory is on
# the host disk (/var/tmp). FERRY_BENCH_DISK_DIR=/var/tmp puts the protected disk's
# backing file on the host disk too (a dd baseline that reads a real disk);
# FERRY_BENCH_STANDBY_DIR=/dev/shm puts the standby's data in memory (what ferry's CPU
# path can do when the standby's disk is not the limit). A second baseline, `dd
# oflag=direct conv=fsync` writing the disk's bytes into the standby's directory, shows
# what that disk can take.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prereqs.sh
. benches/lib/pair.sh
mib="${1:-1024}"
seconds="${2:-15}"
pair_prepare "the agent benchmark" fio
work="$(mktemp -d "${FERRY_BENCH_STANDBY_DIR:-/var/tmp}/ferry-bench.XXXXXX")"
shm="$(mktemp -d "${FERRY_BENCH_DISK_DIR:-/dev/shm}/ferry-bench.XXXXXX")"
pins="/sys/fs/bpf/ferry-bench-$$"
disk="" standby="" agent=""
cleanup() {
    for p in $agent $standby; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    "$ferry" track --detach --pin-dir "$pins" >/dev/null 2>&1 || true
    [ -n "$disk" ] && losetup -d "$disk" || true
    rm -rf "$work" "$shm"
}
trap cleanup EXIT
now() { date +%s.%N; }

head -c "${mib}M" /dev/urandom >"$shm/disk.img"
disk="$(losetup --find --show "$shm/disk.img")"
pair_setup web-1
pair_standby
pair_agent_config "$disk"

printf 'machine: %s, %s cores, %s GiB RAM; disk %s MiB (loop over a file on %s), standby data on %s\n' \
    "$(uname -r)" "$(nproc)" "$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) >> 20))" "$mib" \
    "$(df --output=source "$shm" | tail -1)" \
    "$(df --output=source "$work" | tail -1)"

fio_rate() { # BS RW [extra fio args] -> MiB/s fio saw
    fio --name=w --filename="$disk" --rw="$2" --bs="$1" --ioengine=io_uring --iodepth=32 \
        --direct=1 --runtime="$seconds" --time_based --size="${mib}M" --randrepeat=0 \
        --buffer_compress_percentage=0 --refill_buffers "${@:3}" --output-format=json 2>/dev/null |
        python3 -c 'import json,sys; w=json.load(sys.stdin)["jobs"][0]["write"]; print(w["bw_bytes"]/2**20, w["io_bytes"]/2**20)'
}

# Baselines: fio with no agent and no tracker.
declare -A base
for spec in "4k randwrite" "64k write"; do
    read -r rate _ < <(fio_rate $spec)
    base[$spec]=$rate
done

# Full sync against dd.
sync; echo 3 >/proc/sys/vm/drop_caches
t0=$(now); dd if="$disk" of=/dev/null bs=1M iflag=direct status=none; t1=$(now)
dd_rate=$(echo "$mib / ($t1 - $t0)" | bc -l)
t0=$(now); dd if="$disk" of="$work/dd-write" bs=1M oflag=direct conv=fsync status=none; t1=$(now)
ddw_rate=$(echo "$mib / ($t1 - $t0)" | bc -l)
rm -f "$work/dd-write"
t0=$(now)
"$ferry" agent --config "$work/agent.toml" >"$work/agent.out" 2>"$work/agent.log" &
agent=$!
until grep -q tracking "$work/agent.out" 2>/dev/null; do sleep 0.02; done
wait_in_sync
t1=$(now)
full_rate=$(echo "$mib / ($t1 - $t0)" | bc -l)
cpu() { awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$1/stat"; }
printf 'CPU seconds during the full sync: agent %s, standby %s\n' "$(cpu "$agent")" "$(cpu "$standby")"
printf 'full sync: ferry %.0f MiB/s (%.2f s, start to acknowledged); dd reading the disk %.0f MiB/s (ratio %.2f); dd writing it to the standby'"'"'s directory %.0f MiB/s (ratio %.2f)\n' \
    "$full_rate" "$(echo "$t1 - $t0" | bc -l)" "$dd_rate" "$(echo "$full_rate / $dd_rate" | bc -l)" \
    "$ddw_rate" "$(echo "$full_rate / $ddw_rate" | bc -l)"

for spec in "4k randwrite" "64k write"; do
    t0=$(now)
    shipped0=$(json 's["shipped_bytes"]')
    read -r with bytes < <(fio_rate $spec)
    wait_in_sync
    t1=$(now)
    shipped=$(( ($(json 's["shipped_bytes"]') - shipped0) >> 20 ))
    repl=$(echo "$bytes / ($t1 - $t0)" | bc -l)
    printf '%-13s fio without the agent %.0f MiB/s; with it %.0f MiB/s (ratio %.2f); replicated %.0f MiB/s (%.0f MiB written, all acknowledged %.1f s after fio started; %s MiB shipped after coalescing)\n' \
"$spec" "${base[$spec]}" "$with" "$(echo "$with / ${base[$spec]}" | bc -l)" "$repl" "$bytes" "$(echo "$t1 - $t0" | bc -l)" "$shipped"
done

# RPO lag at 10 MB/s of 4 KiB writes.
fio --name=w --filename="$disk" --rw=randwrite --bs=4k --ioengine=io_uring --iodepth=8 --direct=1 \
    --runtime="$seconds" --time_based --size="${mib}M" --rate=10m --refill_buffers \
    --output-format=json >/dev/null 2>&1 &
fio_pid=$!
samples=()
sleep 1
while kill -0 "$fio_pid" 2>/dev/null; do
    samples+=("$(json 's["rpo_lag_ms"]')")
    sleep 0.1
done
printf '%s\n' "${samples[@]}" | sort -n | awk '{a[NR]=$1} END {
    p99 = int(NR * 0.99) + 1; if (p99 > NR) p99 = NR
    printf "RPO lag at 10 MB/s of 4 KiB writes: p50 %d ms, p99 %d ms, max %d ms (%d samples)\n", a[int(NR * 0.5) + 1], a[p99], a[NR], NR}'
