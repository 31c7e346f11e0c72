# ferry %post ($1: 1 on install, 2 on upgrade): create the key and state directories and
# make systemd see the units. Never enables or starts a service: the admin does, once
# the configs and the key are in place. (Restarts after an upgrade: %postun.)
install -d -m 0700 /etc/ferry/keys
# Post-launch scripts (they run as root): only root may put one here.
install -d -m 0755 -o root -g root /etc/ferry/scripts
install -d -m 0755 /var/lib/ferry
install -d -m 0700 /var/lib/ferry/agent /var/lib/ferry/standby
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
