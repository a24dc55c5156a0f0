#!/usr/bin/env bash
# Run a command in a new network namespace whose only interface is loopback, then delete it.
#
#   scripts/loopback_netns.sh COMMAND [ARGS...]
#
# Ray's processes listen on, and register, the machine's outward-facing address even when told to
# use 127.0.0.1; inside this namespace there is no such address, so a test cluster can reach
# nothing but itself. Needs root (or CAP_SYS_ADMIN) and iproute2's `ip`.
set -euo pipefail
[ "$#" -ge 1 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
ns="hybridrs-$$"
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" "$@"
