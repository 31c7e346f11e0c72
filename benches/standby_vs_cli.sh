#!/usr/bin/env bash
# Standby benchmark: ingest over loopback TCP (4 KiB and 1 MiB records, fsync group
# commit) and rebuild of a 4 GiB disk, against `cp --sparse=always` of the same image and
# `zstd -d` of the same data, in the same run.
# Usage: bash benches/standby_vs_cli.sh [RUNS] [DISK_GIB]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prereqs.sh
ferry_apt zstd util-linux coreutils bc
ferry_rust
runs="${1:-3}"
disk_gib="${2:-4}"
cargo build --release --locked -q -p ferry -p ferry-benches --bin ferry --bin standby_bench --bin seal_throughput
ferry=target/release/ferry
bench=target/release/standby_bench
work="$(mktemp -d /var/tmp/ferry-standby-bench.XXXXXX)" # a real disk, not tmpfs
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

median() { sort -g | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]}'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

"$ferry" keygen --out "$work/pair.key" 2>/dev/null
"$ferry" keygen --from "$work/pair.key" --standby --out "$work/standby.key" 2>/dev/null
for s in bench4k bench1m disk; do
    "$ferry" keygen --from "$work/pair.key" --host "$s" --out "$work/$s.key" 2>/dev/null
done
cat >"$work/standby.toml" <<TOML
data_dir = "$work/data"
listen = "127.0.0.1:0"
key_file = "$work/standby.key"
# The bench client (standby_bench) speaks plain TCP: ingest cost without TLS.
insecure_plaintext = true
[[servers]]
id = "bench4k"
[[servers]]
id = "bench1m"
[[servers]]
id = "disk"
TOML
"$ferry" standby --config "$work/standby.toml" >"$work/standby.out" 2>"$work/standby.log" &
pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/standby.out" && break; sleep 0.1; done
addr="$(sed -n 's/^listening on //p' "$work/standby.out")"
hz="$(getconf CLK_TCK)"

printf 'machine: %s, %s cores, %s; load before: %s\n' "$(uname -r)" "$(nproc)" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$(cut -d' ' -f1-3 /proc/loadavg)"
"target/release/seal_throughput" write-corpus usr-lib $((256 << 20)) "$work/corpus"

echo "== ingest (usr-lib data, sealed before timing; wall clock to the last ack)"
printf '%-8s %10s %12s %10s %14s\n' record "MB/s" "records/s" "acks" "MB/s per core"
for spec in "bench4k 4096 $((256 << 20))" "bench1m 1048576 $((2048 << 20))"; do
    set -- $spec
    rates=() recs=() acks=() percore=()
    for _ in $(seq "$runs"); do
        before="$(cpu_ticks "$pid")"
        read -r mbps rps nacks < <("$bench" ingest "$addr" "$work/$1.key" "$1" "$2" "$3" "$work/corpus")
        after="$(cpu_ticks "$pid")"
        cpu="$(echo "($after - $before) / $hz" | bc -l)"
        rates+=("$mbps") recs+=("$rps") acks+=("$nacks")
        percore+=("$(echo "$3 / 1000000 / $cpu" | bc -l)")
    done
    printf '%-8s %10s %12s %10s %14s\n' "$(($2 / 1024))KiB" \
        "$(printf '%s\n' "${rates[@]}" | median)" "$(printf '%s\n' "${recs[@]}" | median)" \
        "$(printf '%s\n' "${acks[@]}" | median)" "$(printf '%s\n' "${percore[@]}" | median)"
done

echo "== rebuild of a ${disk_gib} GiB disk (half usr-lib data, half never written)"
size=$((disk_gib << 30))
"target/release/seal_throughput" write-corpus usr-lib $((size / 2)) "$work/half"
truncate -s "$size" "$work/half"
mv "$work/half" "$work/disk.img"
"$bench" fill "$addr" "$work/disk.key" disk "$work/disk.img" >/dev/null
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
zstd -q -1 -T0 "$work/disk.img" -o "$work/disk.img.zst"
cat "$work/disk.img" "$work/disk.img.zst" >/dev/null # page cache: every side reads from memory
for seg in "$work"/data/servers/disk/log/*.seg; do cat "$seg" >/dev/null; done

timed() { # COMMAND... -> seconds (the output file is fsynced inside the timing)
    local start end
    start="$(date +%s.%N)"
    "$@" >/dev/null 2>&1
    sync "$work/out.img"
    end="$(date +%s.%N)"
    echo "$end - $start" | bc -l
}
rb=() cp_=() zd=()
for _ in $(seq "$runs"); do
    rm -f "$work/out.img"; rb+=("$(timed "$ferry" rebuild --data-dir "$work/data" --server disk --point latest --key "$work/pair.key" --out "$work/out.img")")
    cmp -s "$work/disk.img" "$work/out.img" || { echo "rebuild differs from the image" >&2; exit 1; }
    rm -f "$work/out.img"; cp_+=("$(timed cp --sparse=always "$work/disk.img" "$work/out.img")")
    rm -f "$work/out.img"; zd+=("$(timed zstd -q -d -f "$work/disk.img.zst" -o "$work/out.img")")
done
mbps() { echo "$size / $1 / 1000000" | bc -l; }
r="$(printf '%s\n' "${rb[@]}" | median)"; c="$(printf '%s\n' "${cp_[@]}" | median)"; z="$(printf '%s\n' "${zd[@]}" | median)"
printf '%-22s %8s %10s %14s\n' tool "secs" "MB/s" "ferry / tool"
printf '%-22s %8.2f %10.0f %14s\n' "ferry rebuild" "$r" "$(mbps "$r")" "-"
printf '%-22s %8.2f %10.0f %14.2f\n' "cp --sparse=always" "$c" "$(mbps "$c")" "$(echo "$c / $r" | bc -l)"
printf '%-22s %8.2f %10.0f %14.2f\n' "zstd -d" "$z" "$(mbps "$z")" "$(echo "$z / $r" | bc -l)"
printf 'load after: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
