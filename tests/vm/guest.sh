#!/bin/bash
# Runs INSIDE the test VM (scripts/test-vm), as root, from rafty-vm.service, with the host's run
# directory shared over 9p at /mnt/share. Two phases:
#   1. set-up: stream the journal to the share, turn on udev's debug log (so the RUN of our rule is
#      logged), write /etc/rafty/rafty.toml, install the .debs with dpkg (their dependencies are in the
#      image already), then write share/ready (or share/setup.failed with the reason).
#   2. watch: wait until rip@sr0.service has run and stopped (share/rip.result, written by a drop-in),
#      then report what it did: its log, the ISO's sha256, the outbox; share/rip.done last.
#   3. the negative control: the old, bare eject on a door udev locked (see below).
# The host asserts on what lands in the share; nothing here decides pass or fail.
set -u
share=/mnt/share
exec > "$share/guest.log" 2>&1
echo "guest: $(date -u +%T) start; kernel $(uname -r)"

fail() {
  echo "$*" > "$share/setup.failed"
  echo "guest: FAILED: $*"
  exit 1
}

# The whole journal, as it is written (the host reads it while the test runs), from a unit of its
# own so that it goes on when this script has stopped.
systemd-run --quiet --unit=rafty-vm-journal -p StandardOutput=file:$share/journal.log -p StandardError=inherit \
  journalctl --boot --follow --no-tail -o short-monotonic --all || fail "cannot start journalctl in rafty-vm-journal"

udevadm control --log-priority=debug || fail "udevadm control --log-priority=debug failed"

[ -b /dev/sr0 ] || fail "no /dev/sr0 in the guest (the emulated drive is missing)"
ls -l /dev/sr0

# The configuration before the packages: dpkg keeps it (--force-confold), and rafty-rip's postinst
# sees a broker URL that is set.
install -d -m 0755 /etc/rafty
install -m 0644 "$share/rafty.toml" /etc/rafty/rafty.toml

debs=$(ls "$share"/debs/*.deb) || fail "no .deb in $share/debs"
echo "guest: dpkg -i" $debs
if ! dpkg --force-confold -i $debs > "$share/dpkg.log" 2>&1; then
  fail "dpkg -i of the packages failed (see dpkg.log): $(tail -n 5 "$share/dpkg.log" | tr '\n' ' ')"
fi
{
  echo "outbox-timer-enabled=$(systemctl is-enabled rafty-outbox.timer 2>&1)"
  echo "rafty-groups=$(id -nG rafty 2>&1)"
  echo "rule=$(ls /usr/lib/udev/rules.d/*rafty* /lib/udev/rules.d/*rafty* /etc/udev/rules.d/*rafty* 2>/dev/null | head -n1)"
  echo "rip=$(command -v rip)"
  echo "config-mode=$(stat -c '%U:%G %a' /etc/rafty/rafty.toml)"
  echo "iso-dir=$(stat -c '%U:%G %a' /var/lib/rafty/iso 2>&1)"
} > "$share/installed"
cat "$share/installed"
# The one addition to the packaged unit: on stop, record how rip@sr0 ended ("+": outside its sandbox).
install -d /etc/systemd/system/rip@.service.d
cat > /etc/systemd/system/rip@.service.d/rafty-vm.conf <<DROPIN
[Service]
ExecStopPost=+/bin/sh -c 'echo "result=\$\$SERVICE_RESULT code=\$\$EXIT_CODE status=\$\$EXIT_STATUS uptime=\$\$(cut -d" " -f1 /proc/uptime)" > $share/rip.result'
DROPIN
systemctl daemon-reload || fail "systemctl daemon-reload failed"
udevadm settle
echo "guest: $(date -u +%T) ready"
touch "$share/ready"

# Phase 2: wait for rip@sr0.service to stop. Its result cannot be read with `systemctl show` afterwards
# (an inactive unit nobody refers to is unloaded, its result with it): the drop-in above has systemd
# write it, with the guest's uptime, as the unit stops.
while [ ! -s "$share/rip.result" ]; do sleep 1; done
echo "guest: $(date -u +%T) rip@sr0.service stopped: $(cat "$share/rip.result")"
journalctl --boot -u rip@sr0.service -o short-monotonic --no-pager > "$share/rip.log" 2>&1
ls -la /var/lib/rafty/iso > "$share/iso.ls" 2>&1
(cd /var/lib/rafty/iso && sha256sum -- *.iso) > "$share/iso.sha256" 2>&1
mkdir -p "$share/outbox"
ls -la /var/lib/rafty/spool/outbox > "$share/outbox.ls" 2>&1
cp /var/lib/rafty/spool/outbox/* "$share/outbox/" 2>/dev/null
sync
echo "guest: $(date -u +%T) reported"
touch "$share/rip.done"

# Phase 3, the negative control: with rip@sr0 masked, the host inserts the disc again; once udev has
# locked the door, eject-probe ejects the way rip did before its fix (one bare CDROMEJECT). The host
# checks that the tray stays shut: this VM reproduces the defect, so phase 1's open tray means the fix.
while [ ! -e "$share/control.go" ]; do sleep 1; done
systemctl mask --runtime rip@sr0.service > /dev/null 2>&1 || fail "systemctl mask --runtime rip@sr0.service failed"
echo "guest: $(date -u +%T) control: rip@sr0 masked"
touch "$share/control.masked"
while [ ! -e "$share/control.eject" ]; do sleep 1; done
udevadm settle
"$share/eject-probe" /dev/sr0 > "$share/control.result" 2>&1
echo "guest: $(date -u +%T) control: $(cat "$share/control.result")"
touch "$share/control.done"
