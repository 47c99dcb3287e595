#!/bin/bash
# The upgrade from the previous release's package under the guest's real systemd (written for
# `cargo xtask vm --package`, which boots sid's newest kernel for it: 0.1.0's program passes
# neither Debian 12's 6.1 nor Debian 13's 6.12 verifier, "math between map_value pointer and
# register with unbounded min value", found by this scenario, so no node of theirs ran 0.1.0 to
# upgrade). Steps as in lib.sh.
GROUP=upgrade
. /vm/lib.sh

# The upgrade from the previous release's package (`cargo xtask upgrade-test --prepare-deb`
# built it with that release's own `cargo xtask dist`; /vm/previous-commit names the commit):
# installed and given a limit and a watch, then this package installed over it by dpkg under a
# flood at ten times the limit. Its postinst's try-restart hands the pinned datapath from the
# old daemon to the new one: the unit stays active, nothing beyond rate x time + burst arrives,
# the rule's counters continue, the new daemon logs the adoption, and the watch is kept.
#
# 0.1.0's unit cannot pin under Debian 12's systemd 252: its `ReadWritePaths=/sys/fs/bpf` does
# not undo the read-only /sys of `ProtectKernelTunables=` there, so its daemon fails with
# "Read-only file system" (found by this step). An operator who ran 0.1.0 on Debian 12 needed
# the drop-in below, which is what this release's unit does itself; it is left in place across
# the upgrade, as an operator's would be (harmless beside the new unit: the same directory).
install_previous() {
	mkdir -p /etc/systemd/system/shaper.service.d &&
		printf '[Service]\nExecStartPre=+/bin/mkdir -p /sys/fs/bpf/shaper\nReadWritePaths=-/sys/fs/bpf/shaper\n' \
			> /etc/systemd/system/shaper.service.d/bpffs.conf &&
		dpkg -i /vm/shaper-previous.deb &&
		sleep 10 &&
		[ "$(systemctl show -p ActiveState --value shaper)" = active ] &&
		shaper --version | shows "$(cat /vm/previous-commit)" &&
		shaper limit set "$PORT" --rate 8mbit --burst 256KiB --proto udp &&
		shaper watch 7701 &&
		shaper limit ls | shows "$PORT"
}

# dpkg -i of this package, then the new daemon answering: `shaper` is the new binary from here.
upgrade_deb() {
	date '+%Y-%m-%d %H:%M:%S' > out/upgrade-started
	dpkg -i /vm/shaper.deb || return 1
	for _ in $(seq 100); do
		shaper limit ls >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}

upgrade_under_flood() {
	flood_with 25 keeping_counters upgrade_deb &&
		systemctl show -p ActiveState -p NRestarts -p ExecMainStartTimestamp shaper &&
		[ "$(systemctl show -p ActiveState --value shaper)" = active ] &&
		[ "$(systemctl show -p NRestarts --value shaper)" = 0 ] &&
		! shaper --version | grep -q "$(cat /vm/previous-commit)" &&
		journalctl --no-pager -u shaper --since "$(cat out/upgrade-started)" |
		grep -E 'adopting the datapath|map\(s\) of this build' | shows 'adopting the datapath' &&
		shaper watch | shows 7701
}

step network network
step install-previous install_previous
step upgrade-under-flood upgrade_under_flood
step purge purge
