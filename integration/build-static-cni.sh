#!/usr/bin/env bash
# Builds the `flannel` CNI plugin as a static executable (glibc linked in
# with +crt-static, no PT_INTERP): k3d's node image has no libc at all, and
# a static plugin also skips the dynamic loader on every pod start. The
# explicit --target keeps build scripts and proc macros dynamic (RUSTFLAGS
# then reach only the target's artifacts). Only the plugin's features are
# built: no kube, no tokio, no Kubernetes API version.
#
#   bash integration/build-static-cni.sh [TARGET_DIR]   (default target/static)
#
# Cargo's output goes to stderr; the last line on stdout is the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${1:-target/static}
# $CARGO / $RUSTC when a cargo runs this (tests, benchmarks): PATH may not
# have them (sudo's secure_path).
cargo=${CARGO:-cargo}
triple=$("${RUSTC:-rustc}" -vV | sed -n 's/^host: //p')
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    "$cargo" build --profile cni-static --locked --target "$triple" --target-dir "$target_dir" \
    -p flannel-embed --no-default-features --features cni-plugin --bin flannel >&2
binary="$target_dir/$triple/cni-static/flannel"
if [ -n "$(readelf -lW "$binary" 2>/dev/null | grep -w INTERP || true)" ]; then
    echo "build-static-cni: $binary still has a program interpreter (not static)" >&2
    exit 1
fi
echo "$binary"
