#!/usr/bin/env bash
# ferry's main job, end to end, on an embedded default: everything in a temporary
# directory, on loop devices over sparse files, cleaned up afterwards. Installs what it
# needs first; safe to run twice.
#
# What runs end to end today (it grows with every stage built):
#   a protected disk (ext4 on a loop device, with real files), every write to it
#     reported by the eBPF tracker (checked: no non-zero block unreported)
#   → sealed extent by extent (zero detection, zstd, AES-256-CTR, HMAC-SHA256) into
#     frames, as replication will ship them (here: a seed file, for offline seeding)
#   → a tampered copy is refused, naming the damage
#   → restored at the "standby" into a sparse image, mounted, every file checked.
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
loops=()
tracker=""
cleanup() {
    [ -n "$tracker" ] && kill "$tracker" 2>/dev/null || true
    for m in "$work/primary" "$work/standby"; do
        mountpoint -q "$m" 2>/dev/null && umount "$m"
    done
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. protected server web-1: a 512 MiB disk (sparse file → loop device), watched by the eBPF tracker"
truncate -s 512M "$work/disk.img"
disk="$(losetup --find --show "$work/disk.img")"
loops+=("$disk")
"$ferry" check || true
"$ferry" track --json "$disk" >"$work/track.jsonl" 2>"$work/track.log" &
tracker=$!
until grep -q watching "$work/track.log"; do sleep 0.05; done
echo "tracker attached to $disk"

step "2. the server writes: mkfs.ext4, then real files, while the tracker records every completed write"
mkfs.ext4 -q -L web-1-data "$disk"
mkdir -p "$work/primary" "$work/standby"
mount "$disk" "$work/primary"
cp -a /usr/share/doc "$work/primary/doc"
head -c 32M /dev/urandom >"$work/primary/random.bin"
echo "ferry demo: the secret marker 7f3e1b" >"$work/primary/marker.txt"
(cd "$work/primary" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$work/sums"
used="$(df -h --output=used "$work/primary" | tail -1 | xargs)"
umount "$work/primary"
sleep 0.3
kill -INT "$tracker"
wait "$tracker"
tracker=""
echo "$disk: $(wc -l <"$work/sums") files, $used used"
tail -1 "$work/track.log"
# The disk was all zeroes before the tracker attached: every non-zero 4 KiB block on it
# now must lie in a range the tracker reported.
python3 - "$work/track.jsonl" "$work/disk.img" <<'PY'
import json, sys
blocks = set()
for line in open(sys.argv[1]):
    e = json.loads(line)
    blocks.update(range(e["offset"] // 4096, (e["offset"] + e["length"] + 4095) // 4096))
missed = nonzero = 0
with open(sys.argv[2], "rb") as disk:
    for i, block in enumerate(iter(lambda: disk.read(4096), b"")):
        if block.count(0) != len(block):
            nonzero += 1
            missed += i not in blocks
print(f"{nonzero} non-zero 4 KiB blocks on the disk, {missed} of them not reported by the tracker")
sys.exit(1 if missed else 0)
PY

step "3. the site pair's master key (mode 0600)"
"$ferry" keygen --out "$work/pair.key"
ls -l "$work/pair.key"

step "4. seal the whole disk into frames (what a full copy ships)"
start=$(date +%s.%N)
"$ferry" seed export --key "$work/pair.key" --server web-1 --device "$disk" --out "$work/web-1.seed"
echo "took $(echo "$(date +%s.%N) - $start" | bc -l | xargs printf '%.2f') s"
if grep -q "secret marker 7f3e1b" "$work/web-1.seed"; then
    echo "FAIL: plaintext found in the sealed stream" >&2
    exit 1
fi
echo "the marker text is in the files but not in the sealed stream: encrypted"

step "5. a sealed stream altered in transit is refused, and nothing is written"
cp "$work/web-1.seed" "$work/tampered.seed"
size=$(stat -c %s "$work/tampered.seed")
printf '\x55' | dd of="$work/tampered.seed" bs=1 seek=$((size / 2)) conv=notrunc status=none
if "$ferry" seed restore --key "$work/pair.key" --seed "$work/tampered.seed" --out "$work/tampered.img"; then
    echo "FAIL: a tampered stream was restored" >&2
    exit 1
fi
[ ! -e "$work/tampered.img" ] && echo "refused as expected; no image written"

step "6. at the standby: verify every record and rebuild the disk into a sparse image"
"$ferry" seed restore --key "$work/pair.key" --seed "$work/web-1.seed" --out "$work/standby.img"
echo "image: $(du -h --apparent-size "$work/standby.img" | cut -f1) apparent, $(du -h "$work/standby.img" | cut -f1) allocated (holes stay holes)"
cmp "$work/disk.img" "$work/standby.img" && echo "byte for byte identical to the protected disk"
copy="$(losetup --find --show --read-only "$work/standby.img")"
loops+=("$copy")
mount -o ro "$copy" "$work/standby"
(cd "$work/standby" && sha256sum --quiet -c "$work/sums") && echo "all $(wc -l <"$work/sums") files verified on the rebuilt disk"

step "done: tracking, sealing and rebuild work end to end (replication, points, drills and failover come next)"
