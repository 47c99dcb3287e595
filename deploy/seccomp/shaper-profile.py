#!/usr/bin/env python3
"""Writes shaper's seccomp profile: a container runtime's own default profile, resolved for the
capabilities shaper's pod holds (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN), that also allows bpf(2)
and perf_event_open(2) -- what containerd's and Docker's default profiles have done since 2022
(containerd 1.7, Docker 23) for a container holding CAP_BPF and CAP_PERFMON.

podman's and CRI-O's default profile (containers-common's seccomp.json) still allows those two
system calls only to a container holding CAP_SYS_ADMIN, so under it the daemon's first bpf(2)
fails with EPERM. Nothing else of the default profile changes.

    shaper-profile.py [DEFAULT_PROFILE] > shaper.json

DEFAULT_PROFILE defaults to /usr/share/containers/seccomp.json (Debian's and Fedora's
containers-common). The output has no capability conditions left (each rule is kept or dropped
for the pod's capabilities), so it is also a plain OCI runtime-spec profile, as kubelet's
`seccompProfile: {type: Localhost}` passes it on. A summary goes to stderr.
"""

import json
import sys

CAPABILITIES = {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"}
# The system calls the two capabilities are for, and the capability each needs.
GRANTED = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}


def applies(rule):
    """Whether `rule` applies to a container holding exactly CAPABILITIES (containers-common's
    reading: every `includes` capability held, no `excludes` capability held)."""
    included = set(rule.get("includes", {}).get("caps", []))
    excluded = set(rule.get("excludes", {}).get("caps", []))
    return included <= CAPABILITIES and not excluded & CAPABILITIES


def resolved(rule):
    """`rule` without its capability conditions (its architecture or kernel ones stay)."""
    rule = dict(rule)
    for key in ("includes", "excludes"):
        condition = {k: v for k, v in rule.get(key, {}).items() if k != "caps"}
        if condition:
            rule[key] = condition
        else:
            rule.pop(key, None)
    return rule


def main():
    source = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/containers/seccomp.json"
    with open(source) as f:
        profile = json.load(f)
    rules = []
    dropped = 0
    for rule in profile.get("syscalls", []):
        if not applies(rule):
            dropped += 1
            continue
        rule = resolved(rule)
        if rule.get("action") != "SCMP_ACT_ALLOW":
            # A refusal of bpf or perf_event_open for this pod: those two leave the rule.
            names = [name for name in rule["names"] if name not in GRANTED]
            if len(names) != len(rule["names"]):
                if not names:
                    continue
                rule["names"] = names
        rules.append(rule)
    for name, capability in GRANTED.items():
        rules.append(
            {
                "names": [name],
                "action": "SCMP_ACT_ALLOW",
                "args": [],
                "comment": f"shaper: {name}(2) to a container holding {capability}",
            }
        )
    profile["syscalls"] = rules
    json.dump(profile, sys.stdout, indent=2)
    sys.stdout.write("\n")
    print(
        f"shaper-profile: {source}: {len(rules) - len(GRANTED)} rules kept for "
        f"{', '.join(sorted(CAPABILITIES))}, {dropped} dropped, bpf and perf_event_open allowed",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
