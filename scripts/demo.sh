#!/usr/bin/env bash
# ferry's main job, end to end, on an embedded default: the whole DR life cycle of one
# protected server, run with the operator's commands. Everything lives in a temporary
# directory, on loop devices over sparse files, with two standby sites on loopback, and
# is cleaned up afterwards. Installs what it needs first; safe to run twice.
#
#   site A (zone-a): the protected server web-1 (a 512 MiB ext4 disk) and a standby
#   site B (zone-b): the standby web-1 is protected into
#
#   pair + server → agent registers → replication: full copy → real time (RPO lag under
#   writes) → a consistent point → standby B killed and back (no full copy) → a drill
#   checked by its script while replication goes on → clean → the host is lost (agent
#   kill -9) → failover at the latest state → change to the earlier point → confirm →
#   the instance takes writes → reverse replication onto the original machine (only the
#   differences travel) → failback at site A → register forward again (no full copy).
#   Every step is checked: files by sha256 in every instance, whole-disk digests at
#   failback. A report at the end: phase times, RPO lag, RTOs, bytes shipped.
#
# bash scripts/demo.sh --vm: the same cycle with a real server — a Debian 12 guest (its
# own kernel, systemd and ferry's .deb) under qemu, its packaged agent protecting its
# virtio disks: full copy under writes, a reboot and a power cut caught up by digest, a
# drill that boots the replica, failover, change point, confirm, reverse onto the
# guest's own disk images, failback booting the original guest, register. It is the
# scenario of tests/e2e_vm.rs (one copy of it), run in release with its report printed;
# about 15 minutes under TCG, the guest image built once (~2 min) and cached.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prereqs.sh
ferry_need_root "the demo"
ferry_apt "${FERRY_PACKAGES[@]}"
ferry_rust
if [ "${1:-}" = "--vm" ]; then
    ferry_apt --lean qemu-system-x86
    log="$(mktemp /tmp/ferry-demo-vm.XXXXXX.log)"
    echo "building ferry and the VM scenario (release); the whole log: $log"
    # Only what the scenario reports as it goes: e2e_vm lines, guest-image, boots.
    cargo test --release --locked -q -p ferry --test e2e_vm -- --exact \
        a_debian_guest_is_protected_through_reboots_and_power_cuts_without_a_full_copy \
        --nocapture 2>&1 | tee "$log" | grep --line-buffered -E '^(e2e_vm|guest-image|guest):' \
        || true
    if grep -q "^test result: ok" "$log"; then
        echo; echo "== report"
        grep '^e2e_vm:' "$log" | sed 's/^e2e_vm: /  /'
        exit 0
    fi
    echo "the VM demo failed; the end of its log ($log):"; tail -n 40 "$log"
    exit 1
elif [ $# -gt 0 ]; then
    echo "usage: bash scripts/demo.sh [--vm]" >&2
    exit 2
fi
echo "building ferry (release)…"
cargo build --release --locked -q -p ferry
ferry="$PWD/target/release/ferry"

work="$(mktemp -d /tmp/ferry-demo.XXXXXX)"
mkdir -m 755 "$work/scripts"
pins="/sys/fs/bpf/ferry-demo-$$"
cleanup() {
    # Every process started here has $work on its command line (the reverse agent is
    # the standby's child, and outlives it).
    for p in $(pgrep -f "$work" || true); do kill -9 "$p" 2>/dev/null || true; done
    sleep 0.3
    "$ferry" track --detach --pin-dir "$pins" >/dev/null 2>&1 || true
    "$ferry" track --detach --pin-dir /sys/fs/bpf/ferry-reverse-web-1 >/dev/null 2>&1 || true
    grep " $work" /proc/self/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l || true
    losetup -a | grep "$work" | cut -d: -f1 | xargs -r -n1 losetup -d 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l | xargs printf '%.1f'; }
mib() { echo $(( $1 >> 20 )); }
# The operator's console, against site B's control API (or site A's with ctl_a).
ctl() { "$ferry" "$@" --control "127.0.0.1:$b_ctl" --token-file "$work/control.token" --ca "$work/pki/ca.pem"; }
ctl_a() { "$ferry" "$@" --control "127.0.0.1:$a_ctl" --token-file "$work/control.token" --ca "$work/pki/ca.pem"; }
# A field of a command's JSON: field EXPR ARGS… (EXPR in Python, the JSON is `s`).
# A command that fails stops the demo with its own error, not a JSON parser's.
field() { local e="$1" out; shift; out=$("$@" --json) || exit 1
    python3 -c "import json,sys; s=json.load(sys.stdin); print($e)" <<<"$out"; }
# wait_until WHAT SECONDS CMD…: runs CMD until it succeeds; after SECONDS the demo stops,
# naming WHAT (every wait of the demo is bounded).
wait_until() { local what="$1" limit="$2" t0; shift 2; t0=$(now)
    until "$@"; do
        if (( $(echo "$(now) - $t0 > $limit" | bc) )); then
            echo "demo: $what did not happen within $limit s" >&2; exit 1
        fi
        sleep 0.1
    done; }
state() { field 's["shown_state"]' ctl server show web-1; }
is_state() { [ "$(state)" = "$1" ]; }
wait_state() { wait_until "web-1 becoming $1" 300 is_state "$1"; }
agent_json() { "$ferry" agent status --state-dir "$work/agent" --json | python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"; }
in_sync() { [ "$(agent_json 's["phase"]=="realtime" and s["backlog_bytes"]==0')" = True ]; }
wait_in_sync() { wait_until "the agent catching up (realtime, no backlog)" 300 in_sync; }
gone() { ! kill -0 "$1" 2>/dev/null; }
sums() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
# A post-launch script that mounts the instance's disk read-only and checks every file.
# Standbys run only scripts in their scripts_dir (root's, not writable by others).
verify_script() {
    cat >"$work/scripts/$1.sh" <<EOF
#!/bin/sh
m="\$FERRY_INSTANCE_DIR/mnt"; mkdir -p "\$m"
mount -o ro,noload "\$FERRY_DEVICE_0" "\$m" || exit 2
(cd "\$m" && sha256sum --quiet -c "$work/$2") && echo "\$FERRY_KIND \$FERRY_INSTANCE at point \$FERRY_POINT: \$(wc -l <"$work/$2") files verified on \$FERRY_DEVICE_0"
rc=\$?; umount "\$m"; exit \$rc
EOF
    chmod 755 "$work/scripts/$1.sh"
    echo "$work/scripts/$1.sh"
}
start_standby() { # start_standby NAME
    "$ferry" standby --config "$work/$1.toml" >"$work/$1.out" 2>>"$work/$1.log" &
    disown
    wait_until "standby $1 listening" 60 grep -qs listening "$work/$1.out"
}
start_agent() {
    : >"$work/agent.out"
    "$ferry" agent --config "$work/agent.toml" >"$work/agent.out" 2>>"$work/agent.log" &
    agent=$!
    disown
    wait_until "the agent tracking" 60 grep -qs tracking "$work/agent.out"
}

step "1. two sites on loopback: a standby at site A (zone-a) and at site B (zone-b)"
"$ferry" keygen --out "$work/pair.key" 2>/dev/null   # the operator keeps it
"$ferry" keygen --from "$work/pair.key" --standby --out "$work/standby.key" 2>/dev/null
"$ferry" keygen --from "$work/pair.key" --host web-1 --out "$work/web-1.key" 2>/dev/null
"$ferry" keygen --out "$work/control.token" >/dev/null
"$ferry" tls init --dir "$work/pki"
for n in zone-a zone-b web-1; do "$ferry" tls issue --dir "$work/pki" --name "$n" --san 127.0.0.1; done
a_data=$(port); a_ctl=$(port); b_data=$(port); b_ctl=$(port)
for s in a b; do
    data_var="${s}_data"; ctl_var="${s}_ctl"
    cat >"$work/site-$s.toml" <<EOF
data_dir = "$work/standby-$s"
listen = "127.0.0.1:${!data_var}"
key_file = "$work/standby.key"
recovery_key_file = "$work/pair.key"
scripts_dir = "$work/scripts"
$( [ "$s" = a ] && echo 'peer_sites = ["zone-b"]' )
[control]
listen = "127.0.0.1:${!ctl_var}"
token_file = "$work/control.token"
[tls]
ca = "$work/pki/ca.pem"
cert = "$work/pki/zone-$s.pem"
key = "$work/pki/zone-$s.key"
EOF
done
cat >>"$work/site-b.toml" <<EOF
[sites.zone-a]
data = "127.0.0.1:$a_data"
control = "127.0.0.1:$a_ctl"
token_file = "$work/control.token"
EOF
start_standby site-a
start_standby site-b
cat "$work/site-a.out" "$work/site-b.out"

step "2. the protected server web-1 at site A: a 512 MiB disk (sparse file → loop device), ext4, real files"
truncate -s 512M "$work/disk.img"
disk="$(losetup --find --show "$work/disk.img")"
mkfs.ext4 -q -L web-1-data "$disk"
mkdir -p "$work/mnt-web1" "$work/mnt-instance"
mount "$disk" "$work/mnt-web1"
cp -a /usr/share/doc "$work/mnt-web1/doc"
head -c 48M /dev/urandom >"$work/mnt-web1/random.bin"
sync
echo "$disk on $work/mnt-web1: $(df -h --output=used "$work/mnt-web1" | tail -1 | xargs) used"

step "3. pair, server, agent: the agent registers (initialized) and waits for the operator"
ctl pair create prod --kind zone-to-zone --primary zone-a --secondary zone-b
ctl server add web-1 --pair prod
cat >"$work/agent.toml" <<EOF
server = "web-1"
standby = "127.0.0.1:$b_data"
key_file = "$work/web-1.key"
disks = ["$disk"]
state_dir = "$work/agent"
pin_dir = "$pins"
point_interval_minutes = 0
[tls]
ca = "$work/pki/ca.pem"
cert = "$work/pki/web-1.pem"
key = "$work/pki/web-1.key"
EOF
start_agent
wait_state initialized
ctl server list

step "4. replication start: starting → full (progress) → realtime"
t0=$(now)
ctl replication start web-1 --keep 24 >/dev/null
sleep 1; ctl server list
wait_state realtime
wait_in_sync
full_s=$(since "$t0"); full_bytes=$(agent_json 's["shipped_bytes"]')
echo "full copy: $(mib "$full_bytes") MiB shipped, real time after $full_s s"

step "5. real time under writes (10 MB/s of direct writes for 6 s, RPO lag sampled), then a consistent point"
rpo_max=0
for i in $(seq 0 59); do
    dd if=/dev/urandom of="$work/mnt-web1/steady.bin" bs=1M count=1 seek="$i" oflag=direct conv=notrunc status=none
    sleep 0.1
done &
writer=$!
while kill -0 "$writer" 2>/dev/null; do
    lag=$(agent_json 's["rpo_lag_ms"]'); (( lag > rpo_max )) && rpo_max=$lag; sleep 0.1
done
sync; wait_in_sync
echo "RPO lag while 60 MiB were written: at most $rpo_max ms"
sums "$work/mnt-web1" >"$work/sums-point"
point=$(field 's["point"]' ctl point create --server web-1)
ctl point list --server web-1

step "6. standby B is killed (kill -9) while the server writes; back, the agent resumes by itself"
shipped0=$(agent_json 's["shipped_bytes"]')
pkill -9 -f "standby --config $work/site-b.toml"
head -c 24M /dev/urandom >"$work/mnt-web1/during-outage.bin"; sync
start_standby site-b
wait_state realtime; wait_in_sync
outage_mib=$(mib $(( $(agent_json 's["shipped_bytes"]') - shipped0 )))
echo "resumed: $outage_mib MiB shipped for 24 MiB written — no full copy; state $(state)"

step "7. a drill of the latest state, checked by its script, while replication goes on"
sums "$work/mnt-web1" >"$work/sums-latest"
drill_ms=$(field 's["ready_ms"]' ctl drill start web-1 --script "$(verify_script drill sums-latest)")
head -c 8M /dev/urandom >"$work/mnt-web1/during-drill.bin"; sync; wait_in_sync
ctl drill status web-1
drill_rpo=$(agent_json 's["rpo_lag_ms"]')
ctl drill clean web-1

step "8. disaster: the host is lost (agent kill -9); failover at the latest state"
sums "$work/mnt-web1" >"$work/sums-final"
kill -9 "$agent"; wait_until "the agent's exit" 30 gone "$agent"
umount "$work/mnt-web1"
failover_ms=$(field 's["ready_ms"]' ctl failover start web-1 --script "$(verify_script failover sums-final)")
ctl server show web-1

step "9. change point: the earlier consistent point instead (\"latest\" is used once), then confirm"
# Its first lines only; kept whole first, as `| head` would end it early (pipefail).
ctl failover change-point web-1 --point "$point" --script "$(verify_script change sums-point)" >"$work/change-point.out"
head -n 3 "$work/change-point.out"
ctl failover confirm web-1
instance_dev=$(field 's["instances"][0]["disks"][0]["device"]' ctl drill status web-1)

step "10. the instance is production at site B and takes writes"
mount "$instance_dev" "$work/mnt-instance"
head -c 12M /dev/urandom >"$work/mnt-instance/after-failover.bin"
cp -a /etc/os-release "$work/mnt-instance/"
sync; umount "$work/mnt-instance"

step "11. reverse replication onto the original machine's disk (only the differences travel)"
ctl reverse register web-1 >/dev/null
t0=$(now)
ctl reverse start web-1 --original-machine >/dev/null
wait_state reverse-realtime
reverse_s=$(since "$t0")
a_realtime() { [ "$(field 's["state"]' ctl_a server show web-1)" = realtime ]; }
wait_until "web-1 realtime at site A" 300 a_realtime
reverse_bytes=$(field 's["reverse_agent"]["shipped_bytes"]' ctl server show web-1)
field '"reverse catch-up: %s, %d MiB compared, %d MiB differed, %d MiB shipped" % (lambda c: (c["method"], c["compared_bytes"] >> 20, c["differing_bytes"] >> 20, c["shipped_bytes"] >> 20))(s["reverse_agent"]["disks"][0]["last_catch_up"])' ctl server show web-1
ctl_a server list

step "12. failback: a last reverse point, restored at site A onto the original disk"
mount -o ro "$instance_dev" "$work/mnt-instance"; sums "$work/mnt-instance" >"$work/sums-instance"; umount "$work/mnt-instance"
want=$(sha256sum "$instance_dev" | cut -d' ' -f1)
failback_ms=$(field 's["ready_ms"]' ctl failback web-1 --script "$(verify_script failback sums-instance)")
got=$(sha256sum "$disk" | cut -d' ' -f1)
[ "$got" = "$want" ] && digests="equal" || { echo "the original disk differs from the instance"; exit 1; }
echo "original disk $disk: sha256 $got — equal to the failed-over instance's"
ctl server show web-1

step "13. register: web-1 is protected forward again, catching up by digest (no full copy)"
ctl register web-1 >/dev/null
start_agent
ctl replication start web-1 >/dev/null
wait_state realtime; wait_in_sync
register_bytes=$(agent_json 's["disks"][0]["last_catch_up"]["shipped_bytes"]')
agent_json '"forward catch-up: %s, %d MiB differed, %d MiB shipped" % (s["disks"][0]["last_catch_up"]["method"], s["disks"][0]["last_catch_up"]["differing_bytes"] >> 20, s["disks"][0]["last_catch_up"]["shipped_bytes"] >> 20)'
mount -o ro "$disk" "$work/mnt-web1"; (cd "$work/mnt-web1" && sha256sum --quiet -c "$work/sums-instance"); umount "$work/mnt-web1"
ctl server list

step "report"
printf '%-44s %s\n' \
    "full copy (512 MiB disk)" "$(mib "$full_bytes") MiB shipped, realtime after $full_s s" \
    "RPO lag (10 MB/s writes / during a drill)" "max $rpo_max ms / $drill_rpo ms" \
    "standby B kill -9 while writing 24 MiB" "$outage_mib MiB shipped, no full copy" \
    "drill ready (RTO, with its check script)" "$drill_ms ms, replication untouched" \
    "failover ready (RTO, with its check script)" "$failover_ms ms" \
    "reverse onto the original machine" "$(mib "$reverse_bytes") MiB shipped of 512 MiB, realtime after $reverse_s s" \
    "failback ready (RTO, with its check script)" "$failback_ms ms" \
    "register forward (digest catch-up)" "$(mib "$register_bytes") MiB shipped" \
    "digests at failback" "$digests; every file checked in every instance"
