# ferry %postun ($1: 0 on erase, 1 on upgrade): make systemd forget or reload the units;
# after an upgrade, restart what runs on the new binary (the agent's stop is clean: no
# write lost). RPM has no purge: keys (/etc/ferry/keys), certificates (/etc/ferry/tls) and state (/var/lib/ferry) stay;
# delete them by hand to remove every trace.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if [ "$1" -ge 1 ]; then
        systemctl try-restart ferry-agent.service ferry-standby.service
    fi
fi
