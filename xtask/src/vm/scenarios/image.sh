#!/bin/bash
# The container image under podman (Debian 12's, rootful), run the way the DaemonSet runs it
# (written for `cargo xtask vm --package`, after package.sh: the node's network is set up and the
# package is purged). Steps as in lib.sh.
#
# The DaemonSet's pod spec, flag by flag (deploy/kubernetes/daemonset.yaml; xtask checks that
# the manifest still says what these flags reproduce and passes its capabilities as CAPS):
#   hostNetwork: true                          --network host
#   runAsUser/runAsGroup: 0                    --user 0:0
#   capabilities: drop ALL, add CAPS           --cap-drop all --cap-add CAPS
#   allowPrivilegeEscalation: false            --security-opt no-new-privileges
#   readOnlyRootFilesystem: true               --read-only --read-only-tmpfs=false
#   seccompProfile: RuntimeDefault             podman's default profile: refuses bpf(2) without
#                                              CAP_SYS_ADMIN (step default-seccomp), so the pod
#                                              runs with deploy/seccomp/shaper-profile.py's
#                                              profile made from it: --security-opt seccomp=...
#   limits.memory: 256Mi                       --memory 256m (BPF maps are charged to it)
#   the ConfigMap, a directory, read-only      -v /srv/shaper-config:/etc/shaper:ro
#   bpffs, mountPropagation HostToContainer    -v /sys/fs/bpf:/sys/fs/bpf:rslave
#   hostPath /var/lib/shaper, /run/shaper      -v ...:/var/lib/shaper, -v ...:/run/shaper
#   args, env RUST_LOG=info                    the same
GROUP=image
. /vm/lib.sh
. /vm/daemonset.env

IMAGE=localhost/shaper:vm-test
PROFILE=/etc/containers/shaper-seccomp.json

diagnose() {
	for name in shaper-default shaper-a shaper-b; do
		echo "--- podman logs $name"
		podman logs "$name" 2>&1 | tail -n 40
	done
	echo "--- podman ps -a"
	podman ps -a
}

# `run_container NAME SECCOMP ARGS...`: SECCOMP is a profile's path or `default`.
run_container() {
	local name=$1 seccomp=()
	[ "$2" = default ] || seccomp=(--security-opt "seccomp=$2")
	shift 2
	mkdir -p /var/lib/shaper /run/shaper &&
		podman run --detach --name "$name" \
			--network host --user 0:0 \
			--cap-drop all --cap-add "$CAPS" \
			--security-opt no-new-privileges "${seccomp[@]}" \
			--read-only --read-only-tmpfs=false \
			--memory 256m \
			--env RUST_LOG=info \
			--volume /srv/shaper-config:/etc/shaper:ro \
			--volume /sys/fs/bpf:/sys/fs/bpf:rslave \
			--volume /var/lib/shaper:/var/lib/shaper \
			--volume /run/shaper:/run/shaper \
			"$IMAGE" "$@"
}

# The daemon's probe as the kubelet would send it: 200 from /readyz within the startup probe's
# 60 s (periodSeconds 2, failureThreshold 30).
ready() {
	python3 - <<'PYEOF'
import sys, time, urllib.request
deadline = time.monotonic() + 60
last = None
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen("http://127.0.0.1:19350/readyz", timeout=5) as reply:
            if reply.status == 200:
                print("ready")
                sys.exit(0)
    except OSError as error:
        last = error
    time.sleep(1)
print(f"not ready after 60 s: {last}")
sys.exit(1)
PYEOF
}

# The image as `podman load` gives it, tagged as the DaemonSet names it in a registry; the
# node's CLI is the image's own binary (the DaemonSet's README: `shaper limit` on the node
# reaches the pod's daemon through the host's /run/shaper). The ConfigMap's shaper.toml, taken
# from the manifest, is the config.
load_image() {
	local loaded container
	loaded=$(podman load --input /vm/shaper.oci.tar) || return 1
	echo "$loaded"
	loaded=$(echo "$loaded" | sed -n 's/^Loaded image[^:]*: *//p' | head -n 1)
	[ -n "$loaded" ] && podman tag "$loaded" "$IMAGE" || return 1
	container=$(podman create "$IMAGE") &&
		podman cp "$container:/usr/sbin/shaper" /usr/local/sbin/shaper &&
		podman rm "$container" || return 1
	mkdir -p /srv/shaper-config &&
		sed -n '/^  shaper.toml: |$/,$p' /vm/configmap.yaml | tail -n +2 | sed 's/^    //' \
			> /srv/shaper-config/shaper.toml &&
		cat /srv/shaper-config/shaper.toml &&
		grep -q '^metrics_addr' /srv/shaper-config/shaper.toml &&
		python3 /vm/shaper-profile.py > "$PROFILE"
}

# Under podman's own default profile the daemon cannot create a map: it exits, saying that
# seccomp refused bpf(2) and what to do, and leaves nothing behind.
default_seccomp_refused() {
	run_container shaper-default default run --config /etc/shaper/shaper.toml \
		--state /var/lib/shaper/state.json --persist || return 1
	local status
	status=$(timeout 60 podman wait shaper-default) || return 1
	podman logs shaper-default 2>&1 | tee out/default-seccomp.log
	podman rm shaper-default
	echo "exit status $status"
	[ "$status" != 0 ] &&
		grep -q 'refused (EPERM) under a seccomp filter' out/default-seccomp.log &&
		grep -q 'shaper-profile.py' out/default-seccomp.log &&
		[ -z "$(ls -A /sys/fs/bpf/shaper 2>/dev/null)" ] &&
		! tc qdisc show dev eth-test | grep -q clsact
}

# Started with the pod's privileges and nothing more: the kernel's view of the daemon process is
# checked, not podman's flags: its bounding set is the pod's three capabilities, its effective
# set only CAP_NET_ADMIN (it drops CAP_BPF and CAP_PERFMON once attached), no_new_privs is set
# and a seccomp filter is installed.
start() {
	run_container shaper-a "$PROFILE" run --config /etc/shaper/shaper.toml \
		--state /var/lib/shaper/state.json --persist || return 1
	ready || return 1
	local pid
	pid=$(podman inspect --format '{{.State.Pid}}' shaper-a) || return 1
	grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):' "/proc/$pid/status" | tee out/status
	grep -q '^CapEff:[[:space:]]*0000000000001000$' out/status &&
		grep -q "^CapBnd:[[:space:]]*$CAP_MASK\$" out/status &&
		grep -q '^NoNewPrivs:[[:space:]]*1$' out/status &&
		grep -q '^Seccomp:[[:space:]]*2$' out/status &&
		[ "$(podman inspect --format '{{.State.Running}} {{.RestartCount}}' shaper-a)" = "true 0" ]
}

enforce() {
	shaper limit set "$PORT" --rate 8mbit --burst 256KiB --proto udp &&
		shaper limit ls | shows "$PORT" &&
		flood_with 5 true
}

# A rollout: the old pod stops (its datapath stays pinned: --persist), the new one adopts the
# pins under a flood; nothing beyond the limit gets through and no counter goes back.
handover() {
	podman stop --time 20 shaper-a &&
		run_container shaper-b "$PROFILE" run --config /etc/shaper/shaper.toml \
			--state /var/lib/shaper/state.json --persist &&
		ready
}

adopt_under_flood() {
	flood_with 8 keeping_counters handover &&
		podman logs shaper-b 2>&1 | shows 'adopting the datapath pinned at' &&
		shaper limit ls | shows "$PORT"
}

# The pods gone, `shaper down` from the image (the same privileges) removes the datapath:
# nothing stays on the node.
down() {
	podman stop --time 20 shaper-b &&
		podman rm shaper-a shaper-b &&
		podman run --rm --network host --user 0:0 --cap-drop all --cap-add "$CAPS" \
			--security-opt no-new-privileges --security-opt "seccomp=$PROFILE" \
			--read-only --read-only-tmpfs=false \
			--volume /sys/fs/bpf:/sys/fs/bpf:rslave --volume /run/shaper:/run/shaper \
			"$IMAGE" down &&
		echo "--- left behind:" &&
		ls -R /sys/fs/bpf/ &&
		tc qdisc show dev eth-test &&
		[ -z "$(ls -A /sys/fs/bpf/shaper 2>/dev/null)" ] &&
		! tc qdisc show dev eth-test | grep -q clsact &&
		[ -z "$(ip -br link show type ifb)" ] &&
		podman rmi "$IMAGE"
}

step load load_image
step default-seccomp default_seccomp_refused
step start start
step enforce enforce
step adopt-under-flood adopt_under_flood
step down down
