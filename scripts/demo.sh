#!/usr/bin/env bash
# ferry's main job, end to end, on an embedded default: everything in a temporary
# directory, on loop devices over sparse files, cleaned up afterwards. Installs what it
# needs first; safe to run twice.
#
# What runs end to end today (it grows with every stage built):
#   a protected server "web-1": a 512 MiB disk (ext4 on a loop device) with real files
#   → `ferry standby` at the DR site (loopback) and `ferry agent` on the server:
#     eBPF tracking, full copy with progress, then real-time replication
#   → a consistent recovery point (filesystem frozen, remaining changes shipped, thawed)
#   → the standby is killed (kill -9) while the server keeps writing; it comes back and
#     the agent resumes by itself, without a full copy
#   → the agent is killed (kill -9) while the server writes: restarted, it compares chunk
#     digests with the standby and ships only what differs
#   → the point and the latest state are rebuilt at the standby and checked file by file
#     (a drill, by hand; `ferry drill` comes with the DR operations).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prereqs.sh
ferry_need_root "the demo"
ferry_apt "${FERRY_PACKAGES[@]}"
ferry_rust
echo "building ferry (release)…"
cargo build --release --locked -q -p ferry
ferry="$PWD/target/release/ferry"

work="$(mktemp -d /tmp/ferry-demo.XXXXXX)"
pins="/sys/fs/bpf/ferry-demo-$$"
loops=()
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    "$ferry" track --detach --pin-dir "$pins" >/dev/null 2>&1 || true
    for m in "$work"/mnt-*; do
        mountpoint -q "$m" 2>/dev/null && umount "$m"
    done
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
status() { "$ferry" agent status --state-dir "$work/agent" "$@"; }
json() { status --json | python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"; }
wait_in_sync() {
    until [ "$(json 's["phase"]=="realtime" and s["backlog_bytes"]==0')" = True ]; do sleep 0.3; done
}
start_standby() {
    "$ferry" standby --data-dir "$work/standby" --listen "127.0.0.1:$sport" \
        --key "$work/pair.key" --server web-1 >"$work/standby.out" 2>>"$work/standby.log" &
    standby=$!
    pids+=("$standby")
    until grep -q listening "$work/standby.out" 2>/dev/null; do sleep 0.05; done
}

step "1. the site pair's master key (mode 0600) and the standby site (loopback)"
"$ferry" keygen --out "$work/pair.key"
sport="$(port)"
start_standby
echo "ferry standby listening on 127.0.0.1:$sport, data in $work/standby"

step "2. protected server web-1: a 512 MiB disk (sparse file → loop device), ext4, real files"
truncate -s 512M "$work/disk.img"
disk="$(losetup --find --show "$work/disk.img")"
loops+=("$disk")
mkfs.ext4 -q -L web-1-data "$disk"
mkdir -p "$work/mnt-web1" "$work/mnt-drill"
mount "$disk" "$work/mnt-web1"
cp -a /usr/share/doc "$work/mnt-web1/doc"
head -c 32M /dev/urandom >"$work/mnt-web1/random.bin"
sync
echo "$disk mounted on $work/mnt-web1: $(df -h --output=used "$work/mnt-web1" | tail -1 | xargs) used"
"$ferry" check || true

step "3. ferry agent: eBPF tracking, full copy with progress, then real time"
cat >"$work/agent.toml" <<EOF
server = "web-1"
standby = "127.0.0.1:$sport"
key_file = "$work/pair.key"
disks = ["$disk"]
state_dir = "$work/agent"
pin_dir = "$pins"
point_interval_minutes = 0
EOF
cat "$work/agent.toml"
start_agent() {
    : >"$work/agent.out"
    "$ferry" agent --config "$work/agent.toml" >"$work/agent.out" 2>>"$work/agent.log" &
    agent=$!
    pids+=("$agent")
    until grep -q tracking "$work/agent.out" 2>/dev/null; do sleep 0.05; done
}
start_agent
start=$(date +%s.%N)
wait_in_sync
echo "full copy of 512 MiB done in $(echo "$(date +%s.%N) - $start" | bc -l | xargs printf '%.2f') s"
status

step "4. the server keeps writing; a consistent recovery point (freeze → ship the rest → barrier → thaw)"
cp -a /usr/share/common-licenses "$work/mnt-web1/licenses" 2>/dev/null || cp -a /etc "$work/mnt-web1/etc-copy"
head -c 16M /dev/urandom >"$work/mnt-web1/more.bin"
(cd "$work/mnt-web1" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$work/sums-point"
"$ferry" agent point --server web-1 --state-dir "$work/agent"
point="$(json 's["last_point"]["point"]')"

step "5. the standby is killed (kill -9) while the server writes; it restarts; the agent resumes by itself"
shipped_before="$(json 's["shipped_bytes"]')"
{ kill -9 "$standby" && wait "$standby"; } 2>/dev/null || true
head -c 24M /dev/urandom >"$work/mnt-web1/during-outage.bin"
sync
sleep 1
echo "agent phase while the standby is down: $(json 's["phase"]')"
start_standby
wait_in_sync
echo "resumed: $(json 's["reconnects"]') reconnect(s), $(( ($(json 's["shipped_bytes"]') - shipped_before) >> 20 )) MiB shipped since the point (24 MiB written) — no full copy"

step "6. the agent is killed (kill -9) while the server writes; restarted, it catches up by digest"
head -c 32M /dev/urandom >"$work/mnt-web1/burst.bin" &
writer=$!
sleep 0.3
{ kill -9 "$agent" && wait "$agent"; } 2>/dev/null || true
wait "$writer"
sync
start_agent
wait_in_sync
json '"after kill -9: %s — %d MiB compared, %d MiB differed, %d MiB shipped, %.1f s (gap: %s)" % ((lambda c: (c["method"], c["compared_bytes"] >> 20, c["differing_bytes"] >> 20, c["shipped_bytes"] >> 20, c["millis"] / 1000, c["reason"]))(s["disks"][0]["last_catch_up"]))'
(cd "$work/mnt-web1" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$work/sums-latest"
"$ferry" agent point --server web-1 --state-dir "$work/agent"
"$ferry" point list --data-dir "$work/standby" --server web-1

step "7. at the standby: rebuild the first point and mount it (a drill, by hand): every file checked"
"$ferry" rebuild --data-dir "$work/standby" --server web-1 --point "$point" \
    --key "$work/pair.key" --out "$work/point.img"
copy="$(losetup --find --show --read-only "$work/point.img")"
loops+=("$copy")
mount -o ro,noload "$copy" "$work/mnt-drill"
(cd "$work/mnt-drill" && sha256sum --quiet -c "$work/sums-point") &&
    echo "point $point: all $(wc -l <"$work/sums-point") files verified"
umount "$work/mnt-drill"

step "8. and the latest point, taken after the outage and the agent's restart"
"$ferry" rebuild --data-dir "$work/standby" --server web-1 --point latest \
    --key "$work/pair.key" --out "$work/latest.img"
copy="$(losetup --find --show --read-only "$work/latest.img")"
loops+=("$copy")
mount -o ro,noload "$copy" "$work/mnt-drill"
(cd "$work/mnt-drill" && sha256sum --quiet -c "$work/sums-latest") &&
    echo "latest: all $(wc -l <"$work/sums-latest") files verified, including those written during the outage and around the kill"

step "done: protection, real-time replication, consistent points, resume, digest catch-up and rebuild work end to end (drills, failover and failback as commands come next)"
