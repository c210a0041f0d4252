#!/usr/bin/env bash
# Builds the flannel-embed OCI image without a container engine, from this
# repository alone: the static `flannel-agent` (install-cni and the agent),
# the static `flannel` CNI plugin and the static delegate plugins the
# conflist needs (bridge, host-local, loopback, portmap, bandwidth; built
# from Debian's source by build-static-delegates.sh), plus Debian's
# iptables (nft and legacy, with their libraries and the dlopened xtables
# extensions) and nft. The DaemonSet runs the agent with
# `--iptables-mode=detect`: it writes with the variant the node's kubelet
# uses, as kube-flannel's image does with iptables-wrappers.
#
#   bash integration/build-image.sh [OUT_DIR]        (default target/image)
#
# Produces OUT_DIR/flannel-embed-<version>.tar, an OCI image layout archive
# whose index names the image `docker.io/library/flannel-embed:<version>`
# (annotation io.containerd.image.name, which `kind load image-archive` and
# `k3d image import` use verbatim), and OUT_DIR/layout, the same layout
# unpacked (umoci unpack --image OUT_DIR/layout:<version> BUNDLE runs it).
# Needs: umoci, python3, readelf (binutils), ldd, Debian's iptables and
# nftables, and what the two plugin scripts need. Cargo's and the tools'
# output goes to stderr; the last line on stdout is the archive's path.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=$(realpath -m "${1:-target/image}")
cargo=${CARGO:-cargo}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
image_name="docker.io/library/flannel-embed:${version}"
# Every timestamp in the image (files, config, layer): the last commit's
# time when there is one, so a rebuild of the same tree gives the same
# layer digests.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}

for tool in umoci python3 readelf ldd tar; do
    command -v "$tool" >/dev/null || { echo "build-image: '$tool' is not installed (.ci/install-deps installs what this needs)" >&2; exit 1; }
done
for program in /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/sbin/nft; do
    [ -x "$program" ] || { echo "build-image: $program is missing (Debian packages iptables, nftables)" >&2; exit 1; }
done

# 1. Our binaries, static (no program interpreter: they run on nodes
#    without libc, e.g. k3d's).
triple=$("${RUSTC:-rustc}" -vV | sed -n 's/^host: //p')
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    timeout 3600 "$cargo" build --profile image --locked --target "$triple" --target-dir target/static \
    -p flannel-embed --features agent --bin flannel-agent >&2
agent="$root/target/static/$triple/image/flannel-agent"
plugin=$(timeout 3600 bash integration/build-static-cni.sh | tail -n 1)
delegates=$(timeout 3600 bash integration/build-static-delegates.sh | tail -n 1)
for binary in "$agent" "$plugin" "$delegates"/*; do
    if readelf -lW "$binary" | grep -qw INTERP; then
        echo "build-image: $binary has a program interpreter (not static)" >&2
        exit 1
    fi
done

# 2. The root filesystem.
rootfs="$out/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs"/usr/{bin,sbin,lib,lib64} "$rootfs"/etc/ssl/certs \
    "$rootfs"/{tmp,run,var/lib/flannel-embed} "$rootfs/opt/flannel-embed/cni/bin"
chmod 1777 "$rootfs/tmp"
# Debian's merged /usr: ldd names /lib/... and /lib64/...
for link in bin sbin lib lib64; do ln -s "usr/$link" "$rootfs/$link"; done
install -m 0755 "$agent" "$rootfs/usr/bin/flannel-agent"
install -m 0755 "$plugin" "$rootfs/opt/flannel-embed/cni/bin/flannel"
for delegate in bridge host-local loopback portmap bandwidth; do
    install -m 0755 "$delegates/$delegate" "$rootfs/opt/flannel-embed/cni/bin/$delegate"
done

# iptables in both variants (the names the agent runs: iptables-nft-save,
# ip6tables-legacy-restore, ...) and nft; their libraries by ldd, and the
# xtables extensions they dlopen (invisible to ldd) with theirs.
install -m 0755 /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/sbin/nft "$rootfs/usr/sbin/"
for variant in nft legacy; do
    for family in iptables ip6tables; do
        for tool in "" -save -restore; do
            ln -s "xtables-$variant-multi" "$rootfs/usr/sbin/$family-$variant$tool"
        done
    done
done
xtables=/usr/lib/x86_64-linux-gnu/xtables
mkdir -p "$rootfs$xtables"
cp -a "$xtables"/. "$rootfs$xtables/"
copy_libraries() {
    # ldd lines: "libx.so.1 => /lib/.../libx.so.1 (0x...)" or
    # "/lib64/ld-linux-x86-64.so.2 (0x...)".
    ldd "$@" 2>/dev/null | awk '/=> \// {print $3} /^\t\// {print $1}' | sort -u |
        while read -r library; do
            case "$library" in
                /usr/*) target="$rootfs$library" ;;
                *) target="$rootfs/usr$library" ;;
            esac
            [ -e "$target" ] || install -D -m 0644 "$(readlink -f "$library")" "$target"
        done
}
copy_libraries /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/sbin/nft
copy_libraries "$xtables"/*.so
chmod 0755 "$rootfs/usr/lib64/ld-linux-x86-64.so.2"

# The few files the programs read: CA roots (the Kubernetes client loads
# them even when the service account's CA is the one used), protocol and
# service names (iptables, nft), name lookup order (the static agent).
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
for file in /etc/protocols /etc/services /etc/ethertypes; do
    [ -e "$file" ] && cp "$file" "$rootfs$file"
done
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
find "$rootfs" -exec touch -h -d "@$epoch" {} +

# 3. The image: one layer, the agent as entrypoint.
layout="$out/layout"
rm -rf "$layout"
run() { timeout 600 "$@" >&2; }
run umoci init --layout "$layout"
run umoci new --image "$layout:$version"
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
# One history entry for the one layer (tools such as `docker history`
# expect one per layer), dated like everything else.
run umoci insert --image "$layout:$version" --history.author flannel-embed \
    --history.created "$created" --history.created_by "integration/build-image.sh" "$rootfs" /
run umoci config --no-history --image "$layout:$version" \
    --os linux --architecture amd64 --author "flannel-embed" --created "$created" \
    --config.entrypoint /usr/bin/flannel-agent \
    --config.env PATH=/usr/sbin:/usr/bin \
    --config.label "org.opencontainers.image.title=flannel-embed" \
    --config.label "org.opencontainers.image.version=$version"
run umoci gc --layout "$layout"

# containerd takes the image's name from this annotation and does not
# normalise it: the full docker.io/library/ name, as the DaemonSet says.
python3 - "$layout/index.json" "$image_name" "$version" <<'EOF'
import json, sys
path, name, tag = sys.argv[1:4]
with open(path) as f:
    index = json.load(f)
for manifest in index["manifests"]:
    annotations = manifest.setdefault("annotations", {})
    annotations["io.containerd.image.name"] = name
    annotations["org.opencontainers.image.ref.name"] = tag
with open(path, "w") as f:
    json.dump(index, f, separators=(",", ":"), sort_keys=True)
EOF
find "$layout" -exec touch -h -d "@$epoch" {} +

archive="$out/flannel-embed-$version.tar"
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
    -C "$layout" -cf "$archive.tmp" oci-layout index.json blobs
mv "$archive.tmp" "$archive"
echo "build-image: $image_name, $(du -k "$archive" | cut -f1) KiB" >&2
echo "$archive"
