#!/usr/bin/env bash
# The local multi-node flannel lab, from a fresh Debian machine (as root,
# with a Rust toolchain): installs the Debian packages it needs, builds the
# workspace binaries (release) and runs `flannel-lab`.
#
#   bash integration/lab.sh                  # = flannel-lab up (2 nodes, vxlan, 10.42.0.0/16)
#   bash integration/lab.sh --nodes 3 --pods-per-node 2
#   bash integration/lab.sh --backend host-gw --nodes 3   # routes via the peers' uplinks
#   bash integration/lab.sh --backend wireguard-native   # flannel-wg (wireguard-go here), UDP 51820
#   bash integration/lab.sh --cluster-cidr 10.42.0.0/16,fd00:42::/56   # dual-stack
#   bash integration/lab.sh --outside-host           # plus an "internet" host 203.0.113.10
#   bash integration/lab.sh status           # status, exec, kubectl, stop-agent,
#                                            # start-agent, down pass through
#   bash integration/lab.sh exec node-0 -- ip route
#   bash integration/lab.sh down
#
# Everything the lab makes lives in network namespaces named fl-<id>-* and in
# its directory (--dir, default /tmp/flannel-lab); `down` removes all of it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "lab.sh: the lab creates network namespaces and mounts: run it as root" >&2
    exit 1
fi

lab=target/release/flannel-lab
# No subcommand given (only options, or nothing): it is `up`.
command=
for arg in "$@"; do
    case "$arg" in
        --) break ;;
        up | down | status | exec | kubectl | stop-agent | start-agent | help | --help | -h) command=$arg; break ;;
    esac
done
if [ -z "$command" ]; then
    command=up
    set -- up "$@"
fi

if [ "$command" = up ] || [ ! -x "$lab" ]; then
    bash .ci/install-deps
    echo "== cargo build --release --workspace --bins"
    cargo build --release --workspace --bins
fi
FLANNEL_LAB_CMD="bash integration/lab.sh" exec "$lab" "$@"
