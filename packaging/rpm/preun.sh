# ferry %preun ($1: 0 on erase, 1 on upgrade): on erase, stop the services and detach the
# agent's eBPF tracker, which stays pinned in the kernel after the agent stops; nothing
# of ferry keeps running once the package is gone.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl --no-reload disable ferry-agent.service ferry-standby.service >/dev/null 2>&1 || true
        systemctl stop ferry-agent.service ferry-standby.service || true
    fi
    if [ -d /sys/fs/bpf/ferry ]; then
        ferry track --detach || echo "ferry: could not detach the tracker pinned in /sys/fs/bpf/ferry; remove it with: rm -r /sys/fs/bpf/ferry" >&2
    fi
fi
