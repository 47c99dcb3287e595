#!/bin/bash
# The .deb under the guest's real systemd (written for `cargo xtask vm --package`): install,
# the unit's sandbox as systemd applies it, the real control socket, reload, restart under a
# flood, stop, purge; the apt life cycle. Steps as in lib.sh.
GROUP=package
. /vm/lib.sh

install_deb() {
	dpkg -i /vm/shaper.deb
}

# 20 s after the install the unit is active and was never restarted.
stays_active() {
	sleep 20
	systemctl show -p ActiveState -p SubState -p NRestarts -p ExecMainStatus shaper
	[ "$(systemctl show -p ActiveState --value shaper)" = active ] &&
		[ "$(systemctl show -p NRestarts --value shaper)" = 0 ]
}

limit_set() {
	shaper limit set "$PORT" --rate 8mbit --burst 256KiB --proto udp &&
		shaper limit ls | shows "$PORT"
}

# The package's group shares the control socket: `nobody` outside it is refused by the kernel,
# `nobody` in it changes a limit, and the journal and `limit ls` name that user.
socket_group() {
	getent group shaper &&
		stat -c '%a %U %G' /run/shaper/shaper.sock | shows '^660 root shaper$' &&
		! setpriv --reuid=nobody --regid=nogroup --clear-groups shaper limit ls 2> refused.txt &&
		shows 'root and members of group shaper' < refused.txt &&
		setpriv --reuid=nobody --regid=nogroup --groups=shaper \
			shaper limit set 7801 --rate 1mbit --proto udp &&
		journalctl --no-pager -u shaper | shows 'limit set: 7801 .*(by uid 65534 (nobody), pid ' &&
		shaper limit ls | grep ' 7801 ' | shows ' nobody '
}

# The unit's seccomp filter refuses process_vm_readv, though the daemon keeps CAP_SYS_PTRACE:
# an ExecStartPost in a drop-in runs in the same sandbox as the daemon (only the command
# differs), tries it on PID 1 and on itself, and prints what the kernel answered. On itself no
# ptrace check applies, so EPERM there can only be the filter's.
process_vm_readv_refused() {
	cat > /run/shaper-vm-read-probe.pl <<-'PERL'
		my $buf = "\0" x 16;
		my $local = pack("QQ", unpack("Q", pack("p", $buf)), 16);
		sub readv {
			my ($pid, $addr) = @_;
			my $r = syscall(310, $pid, $local, 1, pack("QQ", $addr, 16), 1, 0);
			return $r >= 0 ? "read $r" : $!{EPERM} ? "EPERM" : "errno " . ($! + 0);
		}
		open(my $maps, "<", "/proc/1/maps");
		my ($start) = (<$maps> // "0-") =~ /^([0-9a-f]+)-/;
		my $mine = "x" x 16;
		printf("process_vm_readv probe: pid 1 %s, self %s\n",
			readv(1, hex($start)), readv($$, unpack("Q", pack("p", $mine))));
	PERL
	mkdir -p /run/systemd/system/shaper.service.d &&
		printf '[Service]\nExecStartPost=/usr/bin/perl /run/shaper-vm-read-probe.pl\n' \
			> /run/systemd/system/shaper.service.d/probe.conf &&
		systemctl daemon-reload &&
		systemctl restart shaper &&
		sleep 2 &&
		rm /run/systemd/system/shaper.service.d/probe.conf /run/shaper-vm-read-probe.pl &&
		systemctl daemon-reload &&
		journalctl --no-pager -u shaper | grep 'process_vm_readv probe' |
		shows 'process_vm_readv probe: pid 1 EPERM, self EPERM'
}

reload_config() {
	printf '\n[[limit]]\nport = 7800\nrate = "1mbit"\n' >> /etc/shaper/shaper.toml &&
		systemctl reload shaper &&
		sleep 3 &&
		shaper limit ls | shows 7800
}

restart_under_flood() {
	flood_with 8 keeping_counters systemctl restart shaper &&
		[ "$(systemctl show -p NRestarts --value shaper)" = 0 ]
}

stop_keeps_enforcing() {
	flood_with 5 systemctl stop shaper
}

security() {
	systemd-analyze security --no-pager shaper
	systemd-analyze security --no-pager shaper | tail -n 1
}


step network network
step install install_deb
step active-after-20s stays_active
step limit-set limit_set
step socket-group socket_group
step process-vm-readv-refused process_vm_readv_refused
step reload reload_config
step restart-under-flood restart_under_flood
step stop-keeps-enforcing stop_keeps_enforcing
step security security
step purge purge

# The package life cycle through apt: dependencies resolved by apt (there are none beyond what
# every Debian system has), the same version again, remove (limits go, the config stays), purge
# (nothing stays).
apt_install() {
	apt-get install -y /vm/shaper.deb &&
		sleep 10 &&
		[ "$(systemctl show -p ActiveState --value shaper)" = active ] &&
		shaper limit set "$PORT" --rate 8mbit --proto udp
}

reinstall_same_version() {
	dpkg -i /vm/shaper.deb &&
		sleep 10 &&
		systemctl show -p ActiveState -p NRestarts shaper &&
		[ "$(systemctl show -p ActiveState --value shaper)" = active ] &&
		shaper limit ls | shows "$PORT"
}

apt_remove() {
	apt-get remove -y shaper &&
		echo "--- left behind:" &&
		ls -R /sys/fs/bpf/ &&
		tc qdisc show dev eth-test &&
		[ -z "$(ls -A /sys/fs/bpf/shaper 2>/dev/null)" ] &&
		! tc qdisc show dev eth-test | grep -q clsact &&
		[ "$(systemctl show -p ActiveState --value shaper)" != active ] &&
		[ -f /etc/shaper/shaper.toml ]
}

apt_purge() {
	apt-get purge -y shaper &&
		[ ! -e /etc/shaper ] &&
		[ ! -e /var/lib/shaper ] &&
		[ ! -e /sys/fs/bpf/shaper ] &&
		[ ! -e /usr/sbin/shaper ]
}

step apt-install apt_install
step reinstall-same-version reinstall_same_version
step apt-remove apt_remove
step apt-purge apt_purge
