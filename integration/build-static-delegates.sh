#!/usr/bin/env bash
# Builds the delegate CNI plugins the shipped conflist needs (bridge,
# host-local, loopback, portmap, bandwidth) as static executables: k3d's
# node image has no libc and an empty /opt/cni/bin, and kind's lacks
# bridge and bandwidth. Debian's containernetworking-plugins binaries are
# dynamically linked, so they are rebuilt here from Debian's own source
# package of the same version (the one the tests run from /usr/lib/cni),
# with Debian's Go and Go library packages and CGO_ENABLED=0. Nothing is
# fetched from outside Debian's archive; apt checks the source against
# Debian's signed index. vendor-notes/deploy.md says why this source.
#
#   bash integration/build-static-delegates.sh [OUT_DIR]   (default target/static-delegates)
#
# The source is cached in $FLANNEL_CNI_SRC_CACHE (default
# /var/cache/flannel-embed/cni-src), the build in OUT_DIR: a second run
# with the same source and Go rebuilds nothing. Go's output goes to
# stderr; the last line on stdout is the directory holding the plugins.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-target/static-delegates}")
cache=${FLANNEL_CNI_SRC_CACHE:-/var/cache/flannel-embed/cni-src}
plugins=(main/bridge ipam/host-local main/loopback meta/portmap meta/bandwidth)
source_package=golang-github-containernetworking-plugins

for tool in go apt-get dpkg-query readelf tar; do
    command -v "$tool" >/dev/null || { echo "build-static-delegates: '$tool' is not installed (.ci/install-deps installs what this needs)" >&2; exit 1; }
done
# The version of the plugins the tests use; their source package has the
# same version.
version=$(dpkg-query -W -f='${source:Version}' containernetworking-plugins 2>/dev/null || true)
[ -n "$version" ] || { echo "build-static-delegates: Debian's containernetworking-plugins is not installed" >&2; exit 1; }
upstream_version=${version%%+*}
upstream_version=${upstream_version%%-*}
go_version=$(go env GOVERSION)
stamp="$source_package $version $go_version ${plugins[*]}"

if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ]; then
    echo "build-static-delegates: up to date ($stamp)" >&2
    echo "$out"
    exit 0
fi

# 1. Debian's source package, from a private source list (the machine's
#    own apt configuration is not touched).
mkdir -p "$cache"
orig=$(ls "$cache"/${source_package}_"${version%-*}".orig.tar.* 2>/dev/null | head -n 1 || true)
if [ -z "$orig" ] || [ ! -f "$cache/${source_package}_${version}.dsc" ]; then
    apt_dir="$cache/apt"
    mkdir -p "$apt_dir/lists/partial"
    suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
    printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian %s main\n' \
        "$suite" >"$apt_dir/sources.list"
    apt_options=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt_dir/lists" -o APT::Sandbox::User=root)
    echo "build-static-delegates: fetching Debian's source of $source_package $version" >&2
    timeout 300 apt-get "${apt_options[@]}" -qq update >&2
    (cd "$cache" && timeout 300 apt-get "${apt_options[@]}" -qq source --download-only \
        "$source_package=$version" >&2)
    orig=$(ls "$cache"/${source_package}_"${version%-*}".orig.tar.* | head -n 1)
fi

# 2. A GOPATH with the plugins' source; the libraries come from Debian's
#    golang-*-dev packages under /usr/share/gocode.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
module="$work/gopath/src/github.com/containernetworking/plugins"
mkdir -p "$module"
tar -xf "$orig" -C "$module" --strip-components=1
export GOPATH="$work/gopath:/usr/share/gocode" GO111MODULE=off CGO_ENABLED=0 GOFLAGS=
export GOCACHE="${GOCACHE:-$cache/go-build}"

# 3. Build, each into a temporary name first (a half-built plugin never
#    takes a plugin's name).
mkdir -p "$out"
rm -f "$out/.stamp"
ldflags="-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=v$upstream_version"
for plugin in "${plugins[@]}"; do
    name=$(basename "$plugin")
    (cd "$module" && timeout 600 go build -trimpath -ldflags "$ldflags" -o "$out/.$name.tmp" "./plugins/$plugin") >&2
    if readelf -lW "$out/.$name.tmp" | grep -qw INTERP; then
        echo "build-static-delegates: $name has a program interpreter (not static)" >&2
        exit 1
    fi
    mv -f "$out/.$name.tmp" "$out/$name"
done
echo "$stamp" >"$out/.stamp"
echo "build-static-delegates: ${plugins[*]##*/} from $source_package $version with $go_version, static" >&2
echo "$out"
