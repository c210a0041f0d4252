#!/usr/bin/env bash
# Every benchmark scenario, from a fresh Debian machine (as root, with a
# Rust toolchain): installs the Debian packages the scenarios use, builds
# the workspace binaries (release) and runs `flannel-bench all`, which
# prints each table, a summary of the goals (met / not met) and the total
# wall time, and writes CSV files and cold-sync.svg into --out (default
# target/bench).
#
#   bash integration/bench.sh                       # every scenario
#   bash integration/bench.sh --out /tmp/results    # elsewhere
#   bash integration/bench.sh events --peers 10000  # one scenario, own sizes
#
# Figures, not assertions: run it on a quiet machine. Everything runs in
# network namespaces the scenarios create and remove again (fe-b*-<pid>-<n>;
# the data-plane and wg-throughput scenarios' two-node labs; every
# wireguard-go runs with a private /run, so the machine's /run/wireguard is
# never touched); nothing touches the root namespace's links or routes.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "bench.sh: the benchmarks create network namespaces: run it as root" >&2
    exit 1
fi

bash .ci/install-deps
echo "== cargo build --release --workspace --bins"
cargo build --release --workspace --bins
# No scenario given (only options, or nothing): all of them.
case "${1:-}" in
    peers | events | churn | cni | data-plane | cold-sync | wg-cold-sync | wg-throughput | all | help | --help | -h) ;;
    *) set -- all "$@" ;;
esac
exec target/release/flannel-bench "$@"
