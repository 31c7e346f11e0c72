# A protected server and its standby on loopback, for the benchmarks that run both:
# keys, a TLS CA with the standby's and the server's certificates, the two configs, and
# the standby started. Source it (after scripts/lib/prereqs.sh), then call, in order:
#
#   pair_prepare WHAT PKG…   root, the packages, Rust, the release build; sets $ferry
#   (then set $work and $pins)
#   pair_setup HOST          keys and certificates in $work; sets $port
#   pair_standby             writes $work/standby.toml, starts `ferry standby`; sets $standby
#   pair_agent_config DISK…  writes $work/agent.toml (state in $work/agent, pins in $pins)
#
# and then json EXPR (the agent's status) and wait_in_sync.
#
# The caller's cleanup kills $standby (and its agent).

pair_prepare() {
    ferry_need_root "$1"
    shift
    ferry_apt "${FERRY_PACKAGES[@]}" python3 "$@"
    ferry_rust
    cargo build --release --locked -q -p ferry
    ferry="$PWD/target/release/ferry"
}

pair_tls() { # NAME: the [tls] table of NAME's config
    printf '[tls]\nca = "%s"\ncert = "%s"\nkey = "%s"\n' \
        "$work/pki/ca.pem" "$work/pki/$1.pem" "$work/pki/$1.key"
}

pair_setup() {
    pair_host="$1"
    "$ferry" keygen --out "$work/pair.key" 2>/dev/null
    "$ferry" keygen --from "$work/pair.key" --standby --out "$work/standby.key" 2>/dev/null
    "$ferry" keygen --from "$work/pair.key" --host "$pair_host" --out "$work/$pair_host.key" 2>/dev/null
    "$ferry" tls init --dir "$work/pki" 2>/dev/null
    for n in standby "$pair_host"; do
        "$ferry" tls issue --dir "$work/pki" --name "$n" --san 127.0.0.1 2>/dev/null
    done
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
}

pair_standby() {
    cat >"$work/standby.toml" <<TOML
data_dir = "$work/standby"
listen = "127.0.0.1:$port"
key_file = "$work/standby.key"
$(pair_tls standby)
[[servers]]
id = "$pair_host"
TOML
    "$ferry" standby --config "$work/standby.toml" >"$work/standby.out" 2>"$work/standby.log" &
    standby=$!
    until grep -q listening "$work/standby.out" 2>/dev/null; do sleep 0.05; done
}

pair_agent_config() { # DISK…
    local disks
    disks=$(printf '"%s", ' "$@")
    cat >"$work/agent.toml" <<TOML
server = "$pair_host"
standby = "127.0.0.1:$port"
key_file = "$work/$pair_host.key"
disks = [${disks%, }]
state_dir = "$work/agent"
pin_dir = "$pins"
point_interval_minutes = 0
$(pair_tls "$pair_host")
TOML
}

json() { # EXPR over the agent's status `s`, printed by python
    "$ferry" agent status --json --state-dir "$work/agent" |
        python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"
}

wait_in_sync() { # until a fresh status says realtime with nothing left to ship
    local since
    since=$(date +%s%3N)
    until [ "$(json "s['updated_unix_ms'] > $since + 100 and s['phase']=='realtime' and s['backlog_bytes']==0")" = True ]; do
        sleep 0.05
    done
}
