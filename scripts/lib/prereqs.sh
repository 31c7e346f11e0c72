# Installs what ferry's commands need on Debian 12, as root; safe to run any number of
# times (installs only what is missing). Sourced by the other scripts.

ferry_need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "ferry: $1 needs root (loop devices, mounts, eBPF); run it as root" >&2
        exit 1
    fi
}

# ferry_apt [--lean] PACKAGE... — installs the Debian packages that are not installed
# yet (--lean: without their recommended packages).
ferry_apt() {
    local missing=() flags=()
    if [ "${1:-}" = --lean ]; then flags=(--no-install-recommends); shift; fi
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "ferry: installing ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${flags[@]}" "${missing[@]}" >/dev/null
    fi
}

# ferry_rust — checks the Rust toolchain and fetches the locked crates.
ferry_rust() {
    if [ -f "$HOME/.cargo/env" ]; then
        # shellcheck source=/dev/null
        . "$HOME/.cargo/env"
    fi
    if ! command -v cargo >/dev/null; then
        echo "ferry: no Rust toolchain: install rustup (https://rustup.rs) with Rust 1.95 or newer" >&2
        exit 1
    fi
    rustup component list --installed 2>/dev/null | grep -q '^clippy' \
        || rustup component add clippy rustfmt >/dev/null 2>&1 || true
    cargo fetch --locked -q
}

# The packages every ferry command relies on.
FERRY_PACKAGES=(e2fsprogs util-linux zstd openssl xxd bc python3 fio clang-19 libbpf-dev)

# ferry_deny — runs cargo deny (advisories, bans, licences, sources; deny.toml) offline:
# cargo-deny is built once into /var/cache/ferry-test, and the RustSec advisory database
# is the snapshot in ../shared/advisory-db (these machines reach no git host), made into
# the git repository cargo-deny expects, keyed by the snapshot's contents.
FERRY_DENY_VERSION=0.20.2
ferry_deny() {
    local cache=/var/cache/ferry-test root snapshot key db
    root=$cache/cargo-deny-$FERRY_DENY_VERSION
    if [ ! -x "$root/bin/cargo-deny" ]; then
        echo "ferry: building cargo-deny $FERRY_DENY_VERSION (once, ~4 min)" >&2
        cargo install -q cargo-deny --version "$FERRY_DENY_VERSION" --locked --root "$root"
    fi
    snapshot=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/shared/advisory-db
    if [ ! -d "$snapshot/crates" ]; then
        echo "ferry: no RustSec advisory database at $snapshot (cargo deny needs it offline)" >&2
        return 1
    fi
    key=$(cd "$snapshot" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
    db=$cache/advisory-db-$key
    # The directory name cargo-deny derives from the database's URL (deny.toml's db-urls).
    if [ ! -d "$db/advisory-db-3157b0e258782691/.git" ]; then
        rm -rf "$db.tmp" && mkdir -p "$db.tmp/advisory-db-3157b0e258782691"
        cp -r "$snapshot/." "$db.tmp/advisory-db-3157b0e258782691/"
        git -C "$db.tmp/advisory-db-3157b0e258782691" init -q
        git -C "$db.tmp/advisory-db-3157b0e258782691" add -A
        git -C "$db.tmp/advisory-db-3157b0e258782691" -c user.email=ci@ferry -c user.name=ci \
            commit -q -m "RustSec advisory database snapshot"
        rm -rf "$db" && mv "$db.tmp" "$db"
    fi
    FERRY_ADVISORY_DB=$db "$root/bin/cargo-deny" deny --offline --locked \
        check advisories bans licenses sources
}
