#!/usr/bin/env bash
# Guest images for the VM tests (tests/e2e_vm.rs) and `scripts/demo.sh --vm`: a bootable
# Debian 12 system disk, as a cloud server has — a dos partition table, one partition
# holding / and /boot, GRUB in the MBR gap, Debian's cloud kernel (6.1, the oldest kernel
# ferry supports), systemd, systemd-networkd (DHCP), sshd (root by key only), and a small
# application (ferry-app: an HTTP service that appends each request durably to a log on
# the data disk, mounted at /data). With --split-boot, /boot is a partition of a second
# disk (boot.img), which ferry must refuse to protect.
#
#   bash scripts/guest-image.sh build [--split-boot]
#       prints the image directory: system.img (2 GiB, sparse), boot.img with
#       --split-boot, id_ed25519 (root's ssh key), and kernel-version.
#       Built once per content of this script and cached in /var/cache/ferry-test
#       (debootstrap from the Debian mirror of apt's sources, ~2 min).
#   bash scripts/guest-image.sh install IMAGE DEB FILES
#       installs the .deb DEB into the system disk IMAGE (a copy of system.img) and copies
#       the tree FILES (e.g. FILES/etc/ferry/agent.toml) onto its root; enables
#       ferry-agent.service when FILES holds /etc/ferry/agent.toml.
#
# Needs root (loop devices, mounts, chroot). Everything attached or mounted is released
# on exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prereqs.sh
ferry_need_root "building a guest image (loop devices, mounts, chroot)"
ferry_apt debootstrap fdisk util-linux e2fsprogs netcat-openbsd openssh-client

fail() {
    echo "guest-image: FAIL: $*" >&2
    exit 1
}
step() { echo "guest-image: $*" >&2; }

# What the guest runs. python3 serves the application; nothing that reaches out
# (no NTP, no apt timers: they are masked below).
include=systemd,systemd-sysv,dbus,linux-image-cloud-amd64,grub-pc,udev,kmod,e2fsprogs,util-linux,iproute2,openssh-server,python3
cache=/var/cache/ferry-test
mkdir -p "$cache"

loops=()
mounts=()
attached=
cleanup() {
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" 2>/dev/null || true
    done
    for l in "${loops[@]}"; do
        drop_partitions "$l"
        losetup -d "$l" 2>/dev/null || true
    done
    mounts=()
    loops=()
}
trap cleanup EXIT

# Partitions added with addpart outlive the loop device's detach: remove them, or the
# next file attached there shows a stale partition.
drop_partitions() {
    local p
    for p in /sys/block/"${1#/dev/}"/"${1#/dev/}"p*; do
        [ -e "$p" ] && delpart "$1" "${p##*p}" 2>/dev/null
    done
    return 0
}

# attach FILE: attaches it (the loop device in $attached), its partitions added (this
# kernel does not scan loop devices' partition tables: BLKPG through addpart).
attach() {
    local loop start size n=0
    loop=$(losetup --show -f "$1") || fail "cannot attach $1"
    loops+=("$loop")
    drop_partitions "$loop"
    while read -r start size; do
        n=$((n + 1))
        addpart "$loop" "$n" "$start" "$size" || fail "addpart $loop $n failed"
    done < <(sfdisk --dump "$1" 2>/dev/null | sed -n 's/.*start= *\([0-9]*\), size= *\([0-9]*\).*/\1 \2/p')
    udevadm settle 2>/dev/null || true
    attached=$loop
}

mount_at() {
    mount "$1" "$2" || fail "cannot mount $1 on $2"
    mounts+=("$2")
}

# The guest's own files: network, fstab, the application, masks.
configure() {
    local root=$1 split=$2
    echo guest >"$root/etc/hostname"
    if [ "$split" = 1 ]; then
        printf 'LABEL=root / ext4 errors=remount-ro 0 1\nLABEL=boot /boot ext4 defaults 0 2\nLABEL=data /data ext4 defaults,nofail 0 2\n' >"$root/etc/fstab"
    else
        printf 'LABEL=root / ext4 errors=remount-ro 0 1\nLABEL=data /data ext4 defaults,nofail 0 2\n' >"$root/etc/fstab"
    fi
    mkdir -p "$root/data"
    mkdir -p "$root/etc/systemd/network"
    printf '[Match]\nName=en*\n\n[Network]\nDHCP=yes\n' >"$root/etc/systemd/network/10-all.network"
    ln -sf /lib/systemd/system/systemd-networkd.service \
        "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
    # Root logs in with the image's key only.
    install -d -m 0700 "$root/root/.ssh"
    install -m 0600 "$out/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
    printf 'PasswordAuthentication no\nUseDNS no\n' >"$root/etc/ssh/sshd_config.d/ferry-test.conf"
    install -m 0755 scripts/guest/ferry-app "$root/usr/local/bin/ferry-app"
    install -m 0644 scripts/guest/ferry-app.service "$root/etc/systemd/system/ferry-app.service"
    ln -sf /etc/systemd/system/ferry-app.service \
        "$root/etc/systemd/system/multi-user.target.wants/ferry-app.service"
    # GRUB: the kernel finds / by label (grub-mkconfig in this chroot would name the
    # builder's loop device) and speaks on the serial port.
    cat >"$root/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="root=LABEL=root console=ttyS0,115200 net.ifnames=1"
GRUB_DISABLE_LINUX_UUID=true
GRUB_DISABLE_OS_PROBER=true
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
EOF
}

build() {
    local split=0
    if [ "${1:-}" = --split-boot ]; then split=1; fi
    local key
    key=$(cat "$0" scripts/guest/ferry-app scripts/guest/ferry-app.service | sha256sum | cut -c1-12)
    out=$cache/guest-$key
    if [ "$split" = 1 ]; then out=$out-split; fi
    if [ -f "$out/ready" ]; then
        echo "$out"
        return
    fi
    exec 9>"$cache/guest.lock"
    flock -w 1800 9 || fail "another guest build held $cache/guest.lock for 30 min"
    if [ -f "$out/ready" ]; then
        echo "$out"
        return
    fi
    # Images of earlier contents of this script are never used again.
    local d
    for d in "$cache"/guest-*/; do
        d=${d%/}
        case $d in "$cache/guest-$key" | "$cache/guest-$key-split") ;; *) rm -rf "$d" ;; esac
    done
    rm -rf "$out"
    mkdir -p "$out"
    ssh-keygen -q -t ed25519 -N '' -C ferry-test -f "$out/id_ed25519"
    local mirror
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}

    step "building the guest's system disk in $out (once; debootstrap from $mirror, ~2 min)"
    truncate -s 2G "$out/system.img.tmp"
    echo 'label: dos
start=2048, type=83, bootable' | sfdisk -q "$out/system.img.tmp" || fail "sfdisk failed"
    local sys root boot=
    attach "$out/system.img.tmp"
    sys=$attached
    mkfs.ext4 -q -L root "${sys}p1" || fail "mkfs.ext4 failed"
    root=$(mktemp -d /tmp/ferry-guest-root.XXXXXX)
    mount_at "${sys}p1" "$root"
    if [ "$split" = 1 ]; then
        truncate -s 512M "$out/boot.img"
        echo 'label: dos
start=2048, type=83' | sfdisk -q "$out/boot.img" || fail "sfdisk (boot) failed"
        attach "$out/boot.img"
        boot=$attached
        mkfs.ext4 -q -L boot "${boot}p1" || fail "mkfs.ext4 (boot) failed"
        mkdir -p "$root/boot"
        mount_at "${boot}p1" "$root/boot"
    fi
    debootstrap --variant=minbase --include="$include" bookworm "$root" "$mirror" \
        >"$out/debootstrap.log" 2>&1 \
        || fail "debootstrap from $mirror failed (a Debian mirror must be reachable); see $out/debootstrap.log:
$(tail -n 5 "$out/debootstrap.log")"
    configure "$root" "$split"
    for fs in dev proc sys; do
        mount --bind "/$fs" "$root/$fs" || fail "cannot bind /$fs"
        mounts+=("$root/$fs")
    done
    chroot "$root" grub-install --target=i386-pc "${boot:-$sys}" >"$out/grub.log" 2>&1 \
        || fail "grub-install failed: $(tail -n 5 "$out/grub.log")"
    chroot "$root" update-grub >>"$out/grub.log" 2>&1 || fail "update-grub failed: $(tail -n 5 "$out/grub.log")"
    grep -q 'root=LABEL=root' "$root/boot/grub/grub.cfg" || fail "grub.cfg does not give root=LABEL=root"
    basename "$(ls "$root"/boot/vmlinuz-* | tail -n 1)" | sed 's/^vmlinuz-//' >"$out/kernel-version"
    chroot "$root" apt-get clean
    cleanup
    mv "$out/system.img.tmp" "$out/system.img"
    touch "$out/ready"
    step "guest image ready ($(du -sh --apparent-size "$out/system.img" | cut -f1) disk, $(du -sh "$out/system.img" | cut -f1) used; kernel $(cat "$out/kernel-version"))"
    echo "$out"
}

install_into() {
    local image=$1 deb=$2 files=$3 sys root
    [ -f "$image" ] || fail "no image at $image"
    [ -f "$deb" ] || fail "no .deb at $deb"
    [ -d "$files" ] || fail "no directory $files"
    attach "$image"
    sys=$attached
    root=$(mktemp -d /tmp/ferry-guest-root.XXXXXX)
    mount_at "${sys}p1" "$root"
    cp "$deb" "$root/tmp/ferry.deb"
    chroot "$root" dpkg -i /tmp/ferry.deb >"$root/tmp/dpkg.log" 2>&1 \
        || fail "dpkg -i in the guest image failed: $(tail -n 5 "$root/tmp/dpkg.log")"
    rm -f "$root/tmp/ferry.deb" "$root/tmp/dpkg.log"
    cp -a "$files/." "$root/"
    if [ -f "$files/etc/ferry/agent.toml" ]; then
        ln -sf /lib/systemd/system/ferry-agent.service \
            "$root/etc/systemd/system/multi-user.target.wants/ferry-agent.service"
    fi
    sync -f "$root"
}

case "${1:-}" in
build) shift; build "$@" ;;
install) shift; [ $# -eq 3 ] || fail "usage: guest-image.sh install IMAGE DEB FILES"; install_into "$@" ;;
*) fail "usage: guest-image.sh build [--split-boot] | install IMAGE DEB FILES" ;;
esac
