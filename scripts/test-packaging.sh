#!/usr/bin/env bash
# The packaging test: builds the .deb and .rpm (scripts/package.sh), checks the .rpm's
# contents and scriptlets, then boots a real systemd in a container (systemd-nspawn of a
# debootstrap'd Debian 12 tree; this machine's PID 1 is not systemd) and, as an admin
# would: installs the .deb, runs ferry-standby and ferry-agent as services (the agent
# protecting a loop device handed to the container), kills them to see Restart=on-failure
# bring them back, reads their journal, stops them, upgrades, removes and purges.
#
# `bash scripts/test.sh` (and so CI) runs it last. A cold run (cargo-deb and
# cargo-generate-rpm installed from crates.io, a release build, the tree debootstrapped)
# took 13 min on a 2-core machine; a warm one takes under a minute plus the release
# build. The tree is cached in /var/cache/ferry-test.
# Needs root. Every failure names what was expected; everything made here (container and
# its ephemeral snapshot, loop device, bpffs mount, files, cgroups nspawn leaves behind)
# is removed on exit, also on failure or SIGTERM. Runs are serialised by a lock, and a
# run killed with SIGKILL has its leftovers removed by the next run.
#
#   bash scripts/test-packaging.sh            # build the packages, then test them
#   FERRY_DEB=x.deb FERRY_RPM=y.rpm bash scripts/test-packaging.sh   # test these
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prereqs.sh
ferry_need_root "the packaging test (it boots a container and attaches a loop device)"
ferry_apt systemd-container debootstrap rpm util-linux

fail() {
    echo "test-packaging: FAIL: $*" >&2
    exit 1
}
# Each check announces itself with `check`; one that is announced and followed by another
# (or by the end) has passed. The last line is "test-packaging: N passed, M failed".
checks_passed=0
current_check=
check() {
    [ -n "$current_check" ] && checks_passed=$((checks_passed + 1))
    current_check=$*
    echo "test-packaging: $*" >&2
}
step() { echo "test-packaging: $*" >&2; }
summary() {
    if [ "$1" -eq 0 ]; then
        [ -n "$current_check" ] && checks_passed=$((checks_passed + 1))
        echo "test-packaging: $checks_passed passed, 0 failed" >&2
    else
        echo "test-packaging: failed at: ${current_check:-before the first check}" >&2
        echo "test-packaging: $checks_passed passed, 1 failed" >&2
    fi
}
trap 'summary $?' EXIT

started=$SECONDS
if [ -z "${FERRY_DEB:-}" ] || [ -z "${FERRY_RPM:-}" ]; then
    check "building the packages (scripts/package.sh)"
    package_out=$(mktemp /tmp/ferry-test-packaging-out.XXXXXX)
    if ! bash scripts/package.sh >"$package_out"; then
        rm -f "$package_out"
        fail "scripts/package.sh failed (its errors are above)"
    fi
    mapfile -t packages <"$package_out"
    rm -f "$package_out"
    FERRY_DEB=${packages[0]:-}
    FERRY_RPM=${packages[1]:-}
    step "packages built in $((SECONDS - started)) s"
fi
[ -f "$FERRY_DEB" ] || fail "no .deb at '$FERRY_DEB'"
[ -f "$FERRY_RPM" ] || fail "no .rpm at '$FERRY_RPM'"

# Files both packages must install (the RPM puts units under /usr/lib, the deb under /lib).
common_files=(
    /usr/bin/ferry
    /etc/ferry/agent.toml
    /etc/ferry/standby.toml
    /usr/share/man/man1/ferry.1.gz
    /usr/share/man/man1/ferry-agent.1.gz
    /usr/share/man/man1/ferry-standby.1.gz
    /usr/share/bash-completion/completions/ferry
    /usr/share/fish/vendor_completions.d/ferry.fish
    /usr/share/doc/ferry/README.md
)

# --- the .rpm: contents, config flags, scriptlets, digests -----------------------------
check "checking $FERRY_RPM: files, config flags, scriptlets, digests"
rpm_files=$(rpm -qlp "$FERRY_RPM" 2>/dev/null)
for f in "${common_files[@]}" /usr/lib/systemd/system/ferry-agent.service \
    /usr/lib/systemd/system/ferry-standby.service /usr/share/zsh/site-functions/_ferry; do
    grep -qx "$f" <<<"$rpm_files" || fail "the .rpm does not install $f; it has:
$rpm_files"
done
rpm_config=$(rpm -qcp "$FERRY_RPM" 2>/dev/null)
[ "$rpm_config" = $'/etc/ferry/agent.toml\n/etc/ferry/standby.toml' ] \
    || fail "the .rpm's config files should be the two TOML files, not: $rpm_config"
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$FERRY_RPM" 2>/dev/null \
    | grep -q '^cn /etc/ferry/agent.toml$' || fail "agent.toml is not %config(noreplace) in the .rpm"
rpm_scripts=$(rpm -qp --scripts "$FERRY_RPM" 2>/dev/null)
for want in "postinstall scriptlet" "preuninstall scriptlet" "postuninstall scriptlet" \
    "install -d -m 0700 /etc/ferry/keys" "install -d -m 0755 -o root -g root /etc/ferry/scripts" \
    "ferry track --detach" "systemctl daemon-reload"; do
    grep -qF "$want" <<<"$rpm_scripts" || fail "the .rpm's scriptlets lack '$want':
$rpm_scripts"
done
if grep -qE 'systemctl (enable|start)' <<<"$rpm_scripts"; then
    fail "the .rpm's scriptlets enable or start a service; installing must not"
fi
rpm -K --nosignature "$FERRY_RPM" | grep -q 'digests OK' || fail "rpm -K: the .rpm's digests do not check out"

# --- the .deb: contents and conffiles, before installing it ---------------------------
check "checking $FERRY_DEB: files, conffiles"
deb_files=$(dpkg-deb -c "$FERRY_DEB" | awk '{print substr($6, 2)}')
for f in "${common_files[@]}" /lib/systemd/system/ferry-agent.service \
    /lib/systemd/system/ferry-standby.service /usr/share/zsh/vendor-completions/_ferry; do
    grep -qx "$f" <<<"$deb_files" || fail "the .deb does not install $f"
done
[ "$(dpkg-deb -f "$FERRY_DEB" Package)" = ferry ] || fail "the .deb's package is not named ferry"
conffiles=$(dpkg-deb --ctrl-tarfile "$FERRY_DEB" | tar -xO ./conffiles)
[ "$conffiles" = $'/etc/ferry/agent.toml\n/etc/ferry/standby.toml' ] \
    || fail "the .deb's conffiles should be the two TOML files, not: $conffiles"

# --- the container ---------------------------------------------------------------------
# A minimal Debian 12 with systemd and man-db, debootstrapped once and cached; each run
# boots a throwaway copy of it (--ephemeral).
include=systemd,systemd-sysv,dbus,man-db
cache=/var/cache/ferry-test
tree=$cache/bookworm-$(echo "$include" | sha256sum | cut -c1-12)
mkdir -p "$cache"

# One run at a time (the cache, the container's name, the cgroups nspawn makes are
# shared). fd 9 is closed for the container, so a run killed with SIGKILL does not leave
# the lock held by an orphaned nspawn.
exec 9>"$cache/lock"
if ! flock -n 9; then
    step "another packaging test is running; waiting for it (at most 30 min)"
    flock -w 1800 9 || fail "another packaging test held $cache/lock for 30 min"
fi

# Leftovers of a run killed with SIGKILL (its EXIT trap never ran): with the lock held,
# every one of these is stale. Only what this script makes is touched: its work
# directories, the nspawn it started (pid recorded there, checked against its command
# line), loop devices over its disk image, its bpffs mount, nspawn's ephemeral snapshots
# of the cached tree, and the empty cgroups nspawn leaves behind.
for stale in /tmp/ferry-test-packaging.*/; do
    [ -d "$stale" ] || continue
    stale=${stale%/}
    pid=$(cat "$stale/nspawn.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "^systemd-nspawn .*$stale/"; then
        step "stopping the container of an earlier, killed run (nspawn pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    if mountpoint -q "$stale/bpffs"; then umount "$stale/bpffs" || true; fi
    for dev in $(losetup -j "$stale/disk.img" -O NAME -n 2>/dev/null); do
        losetup -d "$dev" 2>/dev/null || true
    done
    step "removed the leftovers of an earlier, killed run ($stale)"
    rm -rf "$stale"
done
rm -f /tmp/ferry-test-packaging-out.*
if compgen -G "$cache/.#*" >/dev/null; then
    step "removing stale ephemeral snapshots in $cache"
    rm -rf "$cache"/.#*
fi
for cg in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do
    for name in payload supervisor; do
        if [ -d "$cg/$name" ]; then find "$cg/$name" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
    done
done

if [ ! -x "$tree/lib/systemd/systemd" ]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    check "debootstrapping Debian 12 into $tree from $mirror (once; ~2 min, ~250 MB)"
    rm -rf "$tree.tmp"
    debootstrap --variant=minbase --include="$include" bookworm "$tree.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || fail "debootstrap from $mirror failed (a Debian mirror must be reachable); see $cache/debootstrap.log:
$(tail -n 5 "$cache/debootstrap.log")"
    mv "$tree.tmp" "$tree"
fi

work=$(mktemp -d /tmp/ferry-test-packaging.XXXXXX)
nspawn_pid=
loop=
bpffs=
# nspawn (with no systemd on the host) leaves these cgroups behind; remove the ones this
# run made.
leftover_cgroups=()
for cg in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do
    for name in payload supervisor; do
        [ -d "$cg" ] && [ ! -e "$cg/$name" ] && leftover_cgroups+=("$cg/$name")
    done
done
cleanup() {
    local status=$?
    set +e # remove everything, whatever fails
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    [ -n "$bpffs" ] && umount "$bpffs" 2>/dev/null
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null
    for cg in "${leftover_cgroups[@]}"; do
        [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    if [ "$status" -ne 0 ] && [ -s "$work/nspawn.log" ]; then
        echo "test-packaging: the container's console (last 30 lines):" >&2
        tail -n 30 "$work/nspawn.log" >&2
    fi
    rm -rf "$work"
    rm -rf "$cache"/.#*
    summary "$status"
    exit "$status"
}
trap cleanup EXIT

# The agent's disk: a loop device over a sparse file, handed to the container with a
# bpffs of its own (a new instance: the tracker's pins in the container cannot meet the
# host's, and go when it is unmounted), the two capabilities nspawn drops by default, and
# bpf(2) added to nspawn's system-call allow-list (without it, bpf() fails with EPERM
# inside the container whatever the capabilities).
truncate -s 64M "$work/disk.img"
loop=$(losetup --find --show "$work/disk.img") || fail "cannot attach a loop device (losetup)"
mkdir "$work/bpffs"
mount -t bpf bpf "$work/bpffs" || fail "cannot mount a bpffs (mount -t bpf)"
bpffs=$work/bpffs
mkdir "$work/debs"
cp "$FERRY_DEB" "$work/debs/ferry.deb"

check "booting the container"
boot_started=$SECONDS
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn -D "$tree" --ephemeral --boot \
    --register=no --keep-unit -q --private-network --machine=ferry-test \
    --bind-ro="$work/debs:/debs" --bind="$loop" --bind="$bpffs:/sys/fs/bpf" \
    --capability=CAP_BPF,CAP_PERFMON --system-call-filter=bpf </dev/null >"$work/nspawn.log" 2>&1 9>&- &
nspawn_pid=$!
echo "$nspawn_pid" >"$work/nspawn.pid"

# The container's PID 1 is nspawn's child; commands run in its namespaces with nsenter
# (machinectl and systemd-run -M need a systemd on the host).
# nspawn first copies the tree to its ephemeral snapshot (250 MB; no reflinks on ext4):
# 1-10 s here, longer while other I/O runs, hence the generous limit.
# nspawn's first child may be a helper of its own (while it copies the snapshot) that
# ends: the container's PID 1 is the child that runs systemd.
container_pid() { pgrep -P "$nspawn_pid" -x systemd | head -n 1 || true; }
ct_pid=
for _ in $(seq 1200); do
    ct_pid=$(container_pid)
    [ -n "$ct_pid" ] && break
    kill -0 "$nspawn_pid" 2>/dev/null || fail "systemd-nspawn exited while booting"
    sleep 0.1
done
[ -n "$ct_pid" ] || fail "the container's PID 1 did not appear within 120 s (nspawn copies the tree to an ephemeral snapshot first)"
step "the container's PID 1 started after $((SECONDS - boot_started)) s"
ct() {
    nsenter -t "$ct_pid" -m -u -i -n -p -C -- \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 TERM=dumb "$@"
}
# Until its systemd answers on its bus, systemctl fails at once (no state); idle, that is
# a second, but one CI run on a loaded 2-core machine saw no answer for 30 s: allow 120.
state=
for _ in $(seq 240); do
    kill -0 "$ct_pid" 2>/dev/null || ct_pid=$(container_pid)
    [ -n "$ct_pid" ] || fail "the container's systemd ended while booting"
    state=$(ct systemctl is-system-running --wait 2>"$work/systemctl.err" || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.5
done
case "$state" in running | degraded) ;; *) fail "the container's systemd did not come up within 120 s (state '$state'; systemctl said: $(tail -n 2 "$work/systemctl.err"))" ;; esac
step "container running in $((SECONDS - boot_started)) s (systemd: $state)"

# Helpers in the container.
prop() { ct systemctl show -p "$2" --value "$1"; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    fail "$what (waited $limit s)"
}
is_active() { [ "$(ct systemctl is-active "$1")" = active ]; }
restarted() { [ "$(prop "$1" NRestarts)" = "$2" ] && is_active "$1"; }
kill9() { ct sh -c "kill -9 $1"; }

# --- install ---------------------------------------------------------------------------
check "installing the .deb with dpkg -i"
ct dpkg -i /debs/ferry.deb >"$work/dpkg.log" 2>&1 || fail "dpkg -i failed: $(cat "$work/dpkg.log")"
for f in "${common_files[@]}" /lib/systemd/system/ferry-agent.service /lib/systemd/system/ferry-standby.service; do
    ct test -f "$f" || fail "$f is not installed"
done
[ "$(ct stat -c %a /etc/ferry/keys)" = 700 ] || fail "/etc/ferry/keys is not mode 0700"
[ "$(ct stat -c %a:%U /etc/ferry/scripts)" = 755:root ] \
    || fail "/etc/ferry/scripts is not root's and mode 0755 (post-launch scripts run as root)"
ct test -d /var/lib/ferry/standby || fail "/var/lib/ferry/standby was not created"
for unit in ferry-agent ferry-standby; do
    [ "$(ct systemctl is-enabled $unit.service || true)" = disabled ] || fail "$unit is enabled on install"
    [ "$(ct systemctl is-active $unit.service || true)" = inactive ] || fail "$unit was started on install"
done
version=$(ct ferry --version) || fail "ferry --version failed"
[[ "$version" =~ ^ferry\ [0-9]+\.[0-9]+\.[0-9]+ ]] || fail "ferry --version printed '$version'"
ct man -P cat ferry 2>/dev/null | grep -q "continuous block-level disaster recovery" \
    || fail "man ferry does not show ferry's page"
ct man -P cat ferry-standby 2>/dev/null | grep -q -- "--data-dir" || fail "man ferry-standby lacks --data-dir"
ct systemd-analyze verify /lib/systemd/system/ferry-agent.service /lib/systemd/system/ferry-standby.service \
    >"$work/verify.log" 2>&1 || fail "systemd-analyze verify: $(cat "$work/verify.log")"
if grep -q ferry "$work/verify.log"; then fail "systemd-analyze verify warns: $(cat "$work/verify.log")"; fi

# --- the standby -----------------------------------------------------------------------
check "configuring and starting ferry-standby"
ct ferry keygen --out /etc/ferry/keys/pair.key 2>/dev/null || fail "ferry keygen failed"
# The packaged configs name what each side holds: the standby key and the host's own key.
ct ferry keygen --from /etc/ferry/keys/pair.key --standby --out /etc/ferry/keys/standby.key 2>/dev/null \
    || fail "ferry keygen --standby failed"
ct ferry keygen --from /etc/ferry/keys/pair.key --host ct-1 --out /etc/ferry/keys/host.key 2>/dev/null \
    || fail "ferry keygen --host failed"
# The packaged configs' [tls]: a CA, the standby's certificate, and the host's (naming ct-1).
ct sh -c 'ferry tls init --dir /etc/ferry/tls \
    && ferry tls issue --dir /etc/ferry/tls --name standby --san 127.0.0.1 \
    && ferry tls issue --dir /etc/ferry/tls --name ct-1 \
    && mv /etc/ferry/tls/ct-1.pem /etc/ferry/tls/host.pem \
    && mv /etc/ferry/tls/ct-1.key /etc/ferry/tls/host.key' >/dev/null 2>&1 \
    || fail "ferry tls init/issue failed"
ct sh -c 'cat >>/etc/ferry/standby.toml <<EOF

[[servers]]
id = "ct-1"
EOF
sed -i "s/^listen = .*/listen = \"127.0.0.1:7420\"/" /etc/ferry/standby.toml'
# Type=notify: `systemctl start` returns only once READY=1 arrived (or fails).
ct systemctl start ferry-standby.service || fail "systemctl start ferry-standby failed:
$(ct systemctl status ferry-standby --no-pager || true)"
is_active ferry-standby.service || fail "ferry-standby is not active after start"
[ "$(prop ferry-standby Type)" = notify ] || fail "ferry-standby is not Type=notify"
status_text=$(prop ferry-standby StatusText)
[ "$status_text" = "listening on 127.0.0.1:7420" ] \
    || fail "ferry-standby's READY notification carried status '$status_text'"
ct journalctl -u ferry-standby --no-pager -o cat | grep -q "listening on 127.0.0.1:7420" \
    || fail "journalctl -u ferry-standby does not show its readiness line"

check "killing ferry-standby (kill -9): Restart=on-failure must bring it back"
old_pid=$(prop ferry-standby MainPID)
kill9 "$old_pid"
wait_for 20 "ferry-standby did not come back after kill -9" restarted ferry-standby 1
[ "$(prop ferry-standby MainPID)" != "$old_pid" ] || fail "ferry-standby's main PID did not change"
ct journalctl -u ferry-standby --no-pager -o cat | grep -q "Main process exited, code=killed, status=9/KILL" \
    || fail "journalctl -u ferry-standby does not record the killed standby"

# --- the agent -------------------------------------------------------------------------
check "configuring and starting ferry-agent on $loop"
ct sh -c "sed -i -e 's/^server = .*/server = \"ct-1\"/' -e 's/^standby = .*/standby = \"127.0.0.1:7420\"/' \
    -e 's|^#disks = .*|disks = [\"$loop\"]|' -e 's/^#point_interval_minutes = .*/point_interval_minutes = 0/' \
    /etc/ferry/agent.toml"
ct dd if=/dev/urandom of="$loop" bs=1M count=8 seek=4 oflag=direct status=none || fail "cannot write $loop in the container"
if ! ct systemctl start ferry-agent.service; then
    fail "systemctl start ferry-agent failed:
$(ct journalctl -u ferry-agent --no-pager -o cat | tail -n 20)"
fi
[ "$(prop ferry-agent StatusText)" = tracking ] || fail "ferry-agent's READY notification carried status '$(prop ferry-agent StatusText)'"
phase() { ct ferry agent status --json | grep -q '"phase": "realtime"'; }
wait_for 60 "the agent did not reach realtime: $(ct ferry agent status 2>&1 || true)" phase
ct dd if=/dev/urandom of="$loop" bs=64k count=32 seek=300 oflag=direct status=none
ct ferry agent point --server ct-1 >/dev/null 2>"$work/point.log" || fail "ferry agent point failed: $(cat "$work/point.log")"
ct ferry rebuild --data-dir /var/lib/ferry/standby --server ct-1 --point latest \
    --key /etc/ferry/keys/pair.key --out /var/tmp/ct-1.img >/dev/null 2>"$work/rebuild.log" \
    || fail "ferry rebuild failed: $(cat "$work/rebuild.log")"
ct cmp /var/tmp/ct-1.img "$loop" || fail "the rebuilt latest point differs from the agent's disk"
step "the agent's disk, rebuilt at the standby from the latest point, is identical"

check "killing ferry-agent (kill -9): Restart=on-failure must bring it back"
old_pid=$(prop ferry-agent MainPID)
kill9 "$old_pid"
wait_for 30 "ferry-agent did not come back after kill -9" restarted ferry-agent 1
ct journalctl -u ferry-agent --no-pager -o cat | grep -q "^tracking$" || fail "journalctl -u ferry-agent lacks 'tracking'"

# --- stop ------------------------------------------------------------------------------
check "stopping both services"
ct systemctl stop ferry-agent.service ferry-standby.service
for unit in ferry-agent ferry-standby; do
    [ "$(ct systemctl is-active $unit || true)" = inactive ] || fail "$unit is not inactive after stop"
    [ "$(prop $unit Result)" = success ] || fail "$unit stopped with result $(prop $unit Result)"
done

# --- upgrade (the same package again: configure with a previous version) --------------
check "upgrading (dpkg -i again, the admin's config kept, running services restarted)"
ct systemctl start ferry-standby.service
standby_pid=$(prop ferry-standby MainPID)
ct dpkg -i --force-confold /debs/ferry.deb >"$work/dpkg.log" 2>&1 || fail "reinstall failed: $(cat "$work/dpkg.log")"
ct grep -q '^id = "ct-1"' /etc/ferry/standby.toml || fail "the upgrade replaced the admin's standby.toml"
ct test -f /etc/ferry/keys/pair.key || fail "the upgrade lost the key"
is_active ferry-standby.service || fail "ferry-standby is not running after the upgrade"
[ "$(prop ferry-standby MainPID)" != "$standby_pid" ] || fail "the upgrade did not restart ferry-standby"
[ "$(ct systemctl is-active ferry-agent || true)" = inactive ] || fail "the upgrade started the stopped agent"

# --- remove, then purge -----------------------------------------------------------------
check "dpkg -r: binary and units gone, configs, keys and state kept, nothing running"
ct systemctl start ferry-agent.service
ct test -d /sys/fs/bpf/ferry || fail "the agent did not pin its tracker in /sys/fs/bpf/ferry"
ct dpkg -r ferry >"$work/dpkg.log" 2>&1 || fail "dpkg -r failed: $(cat "$work/dpkg.log")"
for f in /usr/bin/ferry /lib/systemd/system/ferry-agent.service /usr/share/man/man1/ferry.1.gz; do
    if ct test -e "$f"; then fail "$f is still there after dpkg -r"; fi
done
for f in /etc/ferry/agent.toml /etc/ferry/standby.toml /etc/ferry/keys/pair.key /var/lib/ferry/standby/lock; do
    ct test -e "$f" || fail "dpkg -r removed $f (removal keeps configs, keys and state)"
done
running=$(ct sh -c 'cat /proc/[0-9]*/cmdline 2>/dev/null | tr "\0" " "' | grep -o "ferry [a-z]*" || true)
[ -z "$running" ] || fail "ferry still runs after dpkg -r: $running"
if ct test -e /sys/fs/bpf/ferry; then fail "the tracker is still pinned in /sys/fs/bpf/ferry after dpkg -r"; fi

check "dpkg --purge: configs, keys and state gone"
ct dpkg --purge ferry >"$work/dpkg.log" 2>&1 || fail "dpkg --purge failed: $(cat "$work/dpkg.log")"
for f in /etc/ferry /var/lib/ferry; do
    if ct test -e "$f"; then fail "$f is still there after dpkg --purge"; fi
done
if ct dpkg -s ferry >/dev/null 2>&1; then fail "dpkg still knows ferry after --purge"; fi

step "PASS ($((SECONDS - started)) s in all)"
