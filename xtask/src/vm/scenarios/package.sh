#!/bin/bash
# The .deb under the guest's real systemd (written for `cargo xtask vm --package`): install,
# the unit's sandbox as systemd applies it, the real control socket, reload, restart under a
# flood, stop, purge. Each step records `package STEP EXIT MILLIS` in out/results.tsv and its
# output in out/tests/package-STEP.log; the first failing step ends the scenario.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cd /vm
mkdir -p out/tests
: > out/results.tsv

# The flood's limit: 1 MB/s with a 256 KiB burst; 1000-byte datagrams are 1042 bytes on the
# wire (Ethernet, IPv4, UDP headers), which is what the bucket charges.
RATE=1000000
BURST=262144
WIRE=1042
PORT=7700

step() {
	local name=$1 start code
	shift
	start=$(date +%s%N)
	"$@" > "out/tests/package-$name.log" 2>&1
	code=$?
	printf 'package\t%s\t%s\t%s\n' "$name" "$code" $((($(date +%s%N) - start) / 1000000)) >> out/results.tsv
	echo "package $name: exit $code"
	if [ "$code" -ne 0 ]; then
		{
			echo "--- systemctl status shaper"
			systemctl status --no-pager shaper
			echo "--- journalctl -u shaper"
			journalctl --no-pager -u shaper | tail -n 60
		} >> "out/tests/package-$name.log" 2>&1
		exit 1
	fi
}

# A node's network: the default route leaves through eth-test (the interface the packaged
# config's daemon takes when it names none), its other end in namespace `peer`.
network() {
	ip netns add peer &&
		ip link add eth-test type veth peer name peer0 netns peer &&
		ip addr add 198.18.7.1/24 dev eth-test &&
		ip link set eth-test up &&
		ip -n peer addr add 198.18.7.2/24 dev peer0 &&
		ip -n peer link set peer0 up &&
		ip -n peer link set lo up &&
		ip route add default via 198.18.7.2
}

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
		shaper limit ls | tee /dev/stderr | grep -q "$PORT"
}

reload_config() {
	printf '\n[[limit]]\nport = 7800\nrate = "1mbit"\n' >> /etc/shaper/shaper.toml &&
		systemctl reload shaper &&
		sleep 3 &&
		shaper limit ls | tee /dev/stderr | grep -q 7800
}

# Floods PORT at ten times the limit for SECONDS while running COMMAND after 2 s, and checks
# that what arrived is at most rate x time + burst (2% for timing at the edges).
flood_with() {
	local seconds=$1
	shift
	python3 /vm/udp_flood.py receive 198.18.7.1 "$PORT" $((seconds + 2)) > out/received &
	local receiver=$!
	sleep 0.5
	ip netns exec peer python3 /vm/udp_flood.py send 198.18.7.1 "$PORT" $((RATE * 10)) "$seconds" > out/sent &
	local sender=$!
	sleep 2
	"$@"
	wait "$sender" "$receiver"
	read -r received span < out/received
	read -r sent < out/sent
	python3 - "$received" "$sent" "$seconds" <<EOF
import sys
received, sent, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
allowed = $RATE * seconds + $BURST
got = received * $WIRE
print(f"sent {sent} datagrams, received {received}: {got} B in {seconds} s, allowed {allowed:.0f} B, "
      f"{max(0, got - allowed):.0f} B beyond the limit")
sys.exit(0 if got <= allowed * 1.02 and got >= $RATE * seconds * 0.5 else 1)
EOF
}

counters() {
	shaper limit ls --json | python3 -c '
import json, sys
rule = next(r for r in json.load(sys.stdin)["rules"] if r["ports"] == sys.argv[1])
print(rule["passed_packets"], rule["dropped_packets"])' "$PORT"
}

# The rule's counters just before a restart and once the new daemon answers: none goes back.
restart_keeping_counters() {
	local before after
	before=$(counters) || return 1
	systemctl restart shaper || return 1
	for _ in $(seq 50); do
		after=$(counters 2>/dev/null) && break
		sleep 0.1
	done
	echo "counters (passed dropped) across the restart: $before -> $after"
	python3 -c 'import sys; b, a = sys.argv[1].split(), sys.argv[2].split(); sys.exit(0 if len(a) == 2 and all(int(y) >= int(x) for x, y in zip(b, a)) else 1)' "$before" "$after"
}

restart_under_flood() {
	flood_with 8 restart_keeping_counters &&
		[ "$(systemctl show -p NRestarts --value shaper)" = 0 ]
}

stop_keeps_enforcing() {
	flood_with 5 systemctl stop shaper
}

security() {
	systemd-analyze security --no-pager shaper
	systemd-analyze security --no-pager shaper | tail -n 1
}

purge() {
	systemctl start shaper &&
		sleep 3 &&
		dpkg --purge shaper &&
		echo "--- left behind:" &&
		ls -R /sys/fs/bpf/ &&
		tc qdisc show dev eth-test &&
		ip -br link show type ifb &&
		[ -z "$(ls -A /sys/fs/bpf/shaper 2>/dev/null)" ] &&
		! tc qdisc show dev eth-test | grep -q clsact &&
		[ -z "$(ip -br link show type ifb)" ] &&
		[ ! -e /var/lib/shaper ]
}

step network network
step install install_deb
step active-after-20s stays_active
step limit-set limit_set
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
		shaper limit ls | tee /dev/stderr | grep -q "$PORT"
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
