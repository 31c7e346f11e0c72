#!/usr/bin/env bash
# Runs every ferry test: formatting, lints, dependency checks (cargo deny: advisories,
# licences, bans, sources), unit, property and end-to-end tests (the
# end-to-end ones use loop devices and mounts, so this runs as root; tests/e2e_vm.rs boots
# a Debian guest with ferry's .deb under qemu, its image built by scripts/guest-image.sh
# once and cached in /var/cache/ferry-test, ~6 min warm), then the packaging
# test (scripts/test-packaging.sh: builds the .deb and .rpm, checks the .rpm, installs the
# .deb under a real systemd in a container and runs, restarts, upgrades, removes and
# purges it; ~13 min the first time on a clean 2-core machine, under a minute plus the
# release build after). Installs what it needs first; safe to run twice. CI runs exactly
# this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/prereqs.sh
ferry_need_root "the test suite"
ferry_apt "${FERRY_PACKAGES[@]}"
# The qemu launcher's boots (tests/e2e_dr.rs, tests/e2e_vm.rs); only the emulator, not
# its GUI extras.
ferry_apt --lean qemu-system-x86
ferry_rust

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
ferry_deny
cargo test --workspace --locked
bash scripts/test-packaging.sh
