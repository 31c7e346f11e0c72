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
