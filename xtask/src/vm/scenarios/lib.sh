# Sourced by the guest's scenarios (package.sh, image.sh, upgrade.sh): each step's bookkeeping,
# the node's network, a UDP flood through a limit and the limit's counters. A scenario sets GROUP
# (the first column of out/results.tsv and the prefix of its logs); `diagnose`, whose output is
# appended to a failed step's log, shows the unit's status and journal unless the scenario
# defines its own (image.sh: the containers).
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cd /vm
mkdir -p out/tests
touch out/results.tsv

# The flood's limit: 1 MB/s with a 256 KiB burst; 1000-byte datagrams are 1042 bytes on the
# wire (Ethernet, IPv4, UDP headers), which is what the bucket charges.
RATE=1000000
BURST=262144
WIRE=1042
PORT=7700

# Prints its input and succeeds when it contains PATTERN: `shows PATTERN`. (`tee /dev/stderr`
# would reopen the step's log through /proc/self/fd/2, truncating what the step wrote before.)
shows() {
	local text
	text=$(cat)
	printf '%s\n' "$text"
	grep -q -- "$1" <<< "$text"
}

diagnose() {
	echo "--- systemctl status shaper"
	systemctl status --no-pager shaper
	echo "--- journalctl -u shaper"
	journalctl --no-pager -u shaper | tail -n 60
}

# Runs one step: `step NAME COMMAND...` records `GROUP NAME EXIT MILLIS` in out/results.tsv and
# the output in out/tests/GROUP-NAME.log; the first failing step ends the scenario.
step() {
	local name=$1 start code
	shift
	start=$(date +%s%N)
	"$@" > "out/tests/$GROUP-$name.log" 2>&1
	code=$?
	printf '%s\t%s\t%s\t%s\n' "$GROUP" "$name" "$code" $((($(date +%s%N) - start) / 1000000)) >> out/results.tsv
	echo "$GROUP $name: exit $code"
	if [ "$code" -ne 0 ]; then
		diagnose >> "out/tests/$GROUP-$name.log" 2>&1
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

# Floods PORT at ten times the limit for SECONDS while running COMMAND after 2 s, and checks
# that COMMAND succeeded and that what arrived is at most rate x time + burst (2% for timing at
# the edges).
flood_with() {
	local seconds=$1 command_code
	shift
	python3 /vm/udp_flood.py receive 198.18.7.1 "$PORT" $((seconds + 2)) > out/received &
	local receiver=$!
	sleep 0.5
	ip netns exec peer python3 /vm/udp_flood.py send 198.18.7.1 "$PORT" $((RATE * 10)) "$seconds" > out/sent &
	local sender=$!
	sleep 2
	"$@"
	command_code=$?
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
	[ $? -eq 0 ] && [ "$command_code" -eq 0 ]
}

counters() {
	shaper limit ls --json | python3 -c '
import json, sys
rule = next(r for r in json.load(sys.stdin)["rules"] if r["ports"] == sys.argv[1])
print(rule["passed_packets"], rule["dropped_packets"])' "$PORT"
}

# The rule's counters just before COMMAND (a restart, a handover) and once a daemon answers
# again: none goes back.
keeping_counters() {
	local before after
	before=$(counters) || return 1
	"$@" || return 1
	for _ in $(seq 100); do
		after=$(counters 2>/dev/null) && break
		sleep 0.1
	done
	echo "counters (passed dropped) across '$*': $before -> $after"
	python3 -c 'import sys; b, a = sys.argv[1].split(), sys.argv[2].split(); sys.exit(0 if len(a) == 2 and all(int(y) >= int(x) for x, y in zip(b, a)) else 1)' "$before" "$after"
}

# `dpkg --purge` of a running package leaves no pin, clsact qdisc, IFB device or state behind.
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
