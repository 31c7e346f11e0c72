#!/usr/bin/env bash
# Seal throughput: ferry (one core) against the CLI pipeline
#   zstd -1 | openssl enc -aes-256-ctr | openssl dgst -sha256 -hmac
# on the same bytes in the same run. Usage: bash benches/seal_vs_cli.sh [MIB] [RUNS]
# Prints medians and the ratio ferry / pipeline for realistic (/usr/lib) and random data.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prereqs.sh
ferry_apt zstd openssl bc util-linux
ferry_rust
mib="${1:-128}"
runs="${2:-5}"
cargo build --release --locked -q -p ferry-benches --bin seal_throughput
bin=target/release/seal_throughput
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
key="$(openssl rand -hex 32)"
iv="$(openssl rand -hex 16)"
mac="$(openssl rand -hex 32)"

pipeline_mbps() { # FILE [taskset-cpu-list] -> median MB/s of the CLI pipeline
    local file="$1" pin=() rates=()
    [ -n "${2:-}" ] && pin=(taskset -c "$2")
    local bytes; bytes="$(stat -c %s "$file")"
    for _ in $(seq "$runs"); do
        local start end
        start="$(date +%s.%N)"
        "${pin[@]}" bash -c "zstd -1 -q -c '$file' | openssl enc -aes-256-ctr -K $key -iv $iv \
            | openssl dgst -sha256 -mac HMAC -macopt hexkey:$mac >/dev/null"
        end="$(date +%s.%N)"
        rates+=("$(echo "$bytes / ($end - $start) / 1000000" | bc -l)")
    done
    printf '%s\n' "${rates[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]}'
}

printf 'machine: %s, %s cores, %s\n' "$(uname -r)" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%-8s %-9s %14s %16s %16s %9s %9s\n' corpus extent "ferry MB/s" "pipeline MB/s" "pipe@1cpu MB/s" ratio "ratio@1"
for corpus in usr-lib random; do
    file="$work/$corpus"
    "$bin" write-corpus "$corpus" $((mib << 20)) "$file"
    cat "$file" >/dev/null # page cache: both sides read from memory
    pipe="$(pipeline_mbps "$file")"
    pipe1="$(pipeline_mbps "$file" 0)"
    for extent in 4096 1048576; do
        ferry="$(taskset -c 0 "$bin" seal "$file" "$extent" "$runs" | awk '{print $1}')"
        printf '%-8s %-9s %14s %16s %16s %9.2f %9.2f\n' "$corpus" "$((extent / 1024))KiB" "$ferry" \
            "$pipe" "$pipe1" "$(echo "$ferry / $pipe" | bc -l)" "$(echo "$ferry / $pipe1" | bc -l)"
    done
done
