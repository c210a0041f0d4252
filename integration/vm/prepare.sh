#!/usr/bin/env bash
# Prepares the VM kit: a qemu (software emulation, TCG) that boots Debian's
# own kernel (the one `linux-image-amd64` points to, which has the wireguard,
# vxlan, veth, tun and bridge modules) with a small initramfs whose /init
# mounts a 9p share (tag `host0`) at /mnt, runs `/mnt/run.sh` with bash,
# writes its exit code to /mnt/exit-code, prints `FLANNEL-VM-RESULT rc=N` on
# the serial console and powers off. `run.sh` next to this script boots it.
#
# Nothing is installed on the host: the .debs are fetched with
# `apt-get download` and unpacked with `dpkg-deb -x` into the cache dir
# (installing qemu-system-x86 would replace a newer qemu-utils, installing a
# kernel runs boot hooks).
#
#   FLANNEL_VM_CACHE        cache dir (default /var/cache/flannel-vm)
#   FLANNEL_VM_REFRESH=1    resolve the kernel and packages again, rebuild
#   FLANNEL_VM_EXTRA_TOOLS  more host programs for the initramfs (names or
#                           paths, space separated), with their libraries
#   FLANNEL_VM_EXTRA_MODULES more kernel modules to load at boot (names)
#
# Result: $CACHE/kit.env (KEY=VALUE lines, no quoting: KVER, KERNEL,
# KERNEL_BZIMAGE, INITRD, QEMU, QEMU_L1, QEMU_L2, QEMU_LIBS, QEMU_MODULE_DIR,
# STAMP). Idempotent; concurrent runs serialise on $CACHE/.lock. A run whose
# inputs did not change only checks the stamp (no network).
#
# Exit status: 0 ready; 3 this host cannot run the kit at all (no
# apt-get/dpkg-deb, or the unpacked qemu does not start); anything else is a
# failure of the preparation itself (download, unpack, initramfs).
set -euo pipefail
export LC_ALL=C DEBIAN_FRONTEND=noninteractive

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${FLANNEL_VM_CACHE:-/var/cache/flannel-vm}

say() { echo "flannel-vm: [${SECONDS}s] $*" >&2; }
die() { say "error: $*"; exit 1; }
unavailable() { say "unavailable: $*"; exit 3; }

# kit.env is parsed without a shell by the Rust side: keep paths simple.
[[ $cache =~ ^/[A-Za-z0-9_./+-]+$ ]] \
    || die "FLANNEL_VM_CACHE must be an absolute path of [A-Za-z0-9_./+-] characters: '$cache'"

for tool in flock timeout sha256sum gzip ldd depmod find sort; do
    command -v "$tool" >/dev/null 2>&1 || unavailable "'$tool' is not installed"
done
for tool in apt-get apt-cache dpkg-deb dpkg-query; do
    command -v "$tool" >/dev/null 2>&1 || unavailable "'$tool' is missing: the kit needs a Debian host"
done

mkdir -p "$cache" 2>/dev/null \
    || die "cannot create $cache (run as root, or point FLANNEL_VM_CACHE at a writable dir)"
exec 9>"$cache/.lock"
if ! flock -w 840 9; then
    die "another prepare.sh held $cache/.lock for 14 minutes"
fi
# Left by a run that was killed.
rm -rf "$cache"/download.?????? "$cache"/stage.?????? "$cache"/root.new

# Programs copied from the host into the initramfs (with their libraries).
# wg falls back to the wireguard-tools .deb when the host has none.
# iptables (nf_tables backend, as on the host): the network task keeps its
# masquerade and forward rules with iptables-save/-restore.
required_tools=(ip bridge bash ping iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore)
read -r -a extra_tools <<<"${FLANNEL_VM_EXTRA_TOOLS:-}"
# Modules loaded at boot (after their dependencies, modules.dep order).
modules=(virtio_pci 9pnet_virtio 9p wireguard vxlan veth tun bridge dummy
    nf_tables nft_compat nft_chain_nat nf_nat nf_conntrack xt_MASQUERADE xt_comment xt_mark)
read -r -a extra_modules <<<"${FLANNEL_VM_EXTRA_MODULES:-}"
modules+=("${extra_modules[@]}")

host_tool() { # NAME or PATH -> the path the host runs, or nothing
    local name=$1
    if [[ $name == /* ]]; then
        if [[ -x $name ]]; then echo "$name"; fi
    else
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin command -v "$name" || true
    fi
}

# The stamp covers every input of the build: this script, the options and
# the host programs that get copied (path, size, mtime).
stamp() {
    {
        sha256sum "$here/prepare.sh" | cut -d' ' -f1
        echo "tools=${required_tools[*]} wg ${extra_tools[*]}"
        echo "modules=${modules[*]}"
        local t p
        for t in "${required_tools[@]}" wg "${extra_tools[@]}"; do
            p=$(host_tool "$t")
            [[ -n $p ]] && stat -L -c '%n %s %Y' "$p"
        done
        true
    } | sha256sum | cut -d' ' -f1
}
want_stamp=$(stamp)

kit_ready() {
    [[ -f $cache/kit.env ]] || return 1
    grep -qx "STAMP=$want_stamp" "$cache/kit.env" || return 1
    local key
    for key in KERNEL INITRD QEMU; do
        local value
        value=$(sed -n "s/^$key=//p" "$cache/kit.env")
        [[ -n $value && -e $value ]] || return 1
    done
}
if [[ ${FLANNEL_VM_REFRESH:-0} != 1 ]] && kit_ready; then
    say "kit ready (cached): $cache/kit.env"
    echo "$cache/kit.env"
    exit 0
fi

t0=$SECONDS
apt_updated=0
apt_update() {
    if ((apt_updated == 0)); then
        say "apt-get update"
        timeout 600 apt-get update -qq || die "apt-get update failed (exit $?)"
        apt_updated=1
    fi
}

# --- which packages --------------------------------------------------------
installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}
host_wg=$(host_tool wg)
debs=$cache/debs
mkdir -p "$debs"
deb_of() { # package -> the cached .deb, if any
    local f
    for f in "$debs/${1}_"*.deb; do
        [[ -e $f ]] && { echo "$f"; return; }
    done
    true
}

# Sets kpkg, kver and packages from the package lists; fails if they know
# no linux-image-amd64.
resolve_packages() {
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '$1 ~ /^\|?Depends:$/ && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
    [[ -n $kpkg ]] || return 1
    kver=${kpkg#linux-image-}
    # Runtime dependencies of qemu-system-x86 that the host lacks, and
    # theirs in turn. qemu's own packages, the firmware and the NIC ROMs (no
    # NIC) are handled apart; the ldd check below is the proof. One apt-cache
    # call per level: without a pkgcache.bin each call costs about 1 s.
    local qemu_deps=() level=(qemu-system-x86) next dep
    local -A seen=([qemu-system-x86]=1)
    while ((${#level[@]})); do
        next=()
        while read -r dep; do
            case $dep in
                qemu-system-* | seabios | ipxe-qemu | '<'*) continue ;;
            esac
            [[ -n ${seen[$dep]:-} ]] && continue
            seen[$dep]=1
            installed "$dep" && continue
            next+=("$dep")
        done < <(apt-cache depends --no-recommends --no-suggests --no-conflicts \
            --no-breaks --no-replaces --no-enhances "${level[@]}" 2>/dev/null \
            | awk '$1 ~ /^\|?(Pre)?Depends:$/ {print $2}')
        qemu_deps+=("${next[@]}")
        level=("${next[@]}")
    done
    packages=("$kpkg" busybox-static qemu-system-x86 qemu-system-common qemu-system-data seabios "${qemu_deps[@]}")
    [[ -n $host_wg ]] || packages+=(wireguard-tools)
}

# Downloads the packages that have no .deb in $debs yet.
download_missing() {
    local missing=() pkg tmp
    for pkg in "${packages[@]}"; do
        [[ -n $(deb_of "$pkg") ]] || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    say "downloading ${missing[*]}"
    tmp=$(mktemp -d "$cache/download.XXXXXX")
    # -o APT::Sandbox::User=root: the _apt user may not write into $tmp.
    if ! (cd "$tmp" && timeout 900 apt-get -q -o APT::Sandbox::User=root download "${missing[@]}" >/dev/null); then
        rm -rf "$tmp"
        return 1
    fi
    mv "$tmp"/*.deb "$debs/"
    rmdir "$tmp"
}

if [[ ${FLANNEL_VM_REFRESH:-0} == 1 ]]; then
    apt_update
    rm -f "$debs"/*.deb
fi
# Stale or missing package lists: update them once and resolve again (the
# kernel package may have a new name by then).
if ! resolve_packages || ! download_missing; then
    apt_update
    resolve_packages || die "apt-cache knows no linux-image-amd64 (no Debian amd64 package lists?)"
    download_missing || die "apt-get download ${packages[*]} failed"
fi
deb_files=()
for pkg in "${packages[@]}"; do
    f=$(deb_of "$pkg")
    [[ -n $f ]] || die "no .deb for $pkg after the download"
    deb_files+=("$f")
done

# --- unpack ----------------------------------------------------------------
root=$cache/root
unpack_key=$(printf '%s\n' "${deb_files[@]##*/}" "kver=$kver" | sort | sha256sum | cut -d' ' -f1)
if [[ ! -f $root/.unpacked ]] || [[ $(cat "$root/.unpacked") != "$unpack_key" ]]; then
    say "unpacking ${#deb_files[@]} packages"
    rm -rf "$root.new"
    mkdir -p "$root.new"
    for f in "${deb_files[@]}"; do
        dpkg-deb -x "$f" "$root.new" || die "dpkg-deb -x $f failed"
    done
    [[ -d $root.new/lib/modules/$kver ]] || die "$kpkg has no lib/modules/$kver"
    # The package ships no modules.dep.
    depmod -b "$root.new" "$kver" || die "depmod -b $root.new $kver failed"
    echo "$unpack_key" >"$root.new/.unpacked"
    rm -rf "$root" "$cache"/vmlinux-*
    mv "$root.new" "$root"
    # Other kernels' files left from an earlier run.
    for f in "$debs"/*.deb; do
        keep=0
        for g in "${deb_files[@]}"; do [[ $f == "$g" ]] && keep=1; done
        ((keep)) || rm -f "$f"
    done
fi

# --- qemu ------------------------------------------------------------------
qemu=$root/usr/bin/qemu-system-x86_64
qemu_libs=$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu
qemu_moddir=$root/usr/lib/x86_64-linux-gnu/qemu
[[ -x $qemu ]] || die "$qemu missing after the unpack"
notfound=$(LD_LIBRARY_PATH=$qemu_libs ldd "$qemu" "$qemu_moddir/accel-tcg-x86_64.so" 2>&1 | grep 'not found' | sort -u || true)
[[ -z $notfound ]] || unavailable "the unpacked qemu lacks libraries: $(echo "$notfound" | tr -s '\n\t' '  ')"
if ! version=$(LD_LIBRARY_PATH=$qemu_libs QEMU_MODULE_DIR=$qemu_moddir timeout 30 "$qemu" -version 2>&1); then
    unavailable "the unpacked qemu does not start: $version"
fi
accels=$(LD_LIBRARY_PATH=$qemu_libs QEMU_MODULE_DIR=$qemu_moddir timeout 30 "$qemu" -accel help 2>&1 || true)
grep -qx tcg <<<"$accels" || unavailable "the unpacked qemu has no TCG accelerator: $accels"
say "$(head -n1 <<<"$version")"

# --- kernel ----------------------------------------------------------------
bzimage=$root/boot/vmlinuz-$kver
[[ -f $bzimage ]] || die "$bzimage missing"
# Under TCG the kernel decompressing itself costs seconds at every boot: give
# qemu the uncompressed ELF (booted through its PVH entry) when the payload
# can be cut out of the bzImage (boot protocol: setup_sects at 0x1f1,
# payload_offset/payload_length at 0x248/0x24c; the payload ends with the
# 4-byte uncompressed size).
extract_vmlinux() {
    local img=$1 out=$2
    local setup_sects payload_offset payload_length start size magic
    setup_sects=$(od -An -t u1 -j $((0x1f1)) -N 1 "$img" | tr -d ' ')
    payload_offset=$(od -An -t u4 -j $((0x248)) -N 4 "$img" | tr -d ' ')
    payload_length=$(od -An -t u4 -j $((0x24c)) -N 4 "$img" | tr -d ' ')
    [[ -n $setup_sects && -n $payload_offset && $payload_length -gt 4 ]] || return 1
    ((setup_sects == 0)) && setup_sects=4
    start=$(((setup_sects + 1) * 512 + payload_offset))
    size=$(od -An -t u4 -j $((start + payload_length - 4)) -N 4 "$img" | tr -d ' ')
    magic=$(od -An -t x1 -j "$start" -N 4 "$img" | tr -d ' ')
    local decompress
    case $magic in
        fd377a58) decompress="xz -dc" ;;
        28b52ffd) decompress="zstd -dcq" ;;
        1f8b*) decompress="gzip -dc" ;;
        *) return 1 ;;
    esac
    command -v "${decompress%% *}" >/dev/null 2>&1 || return 1
    dd if="$img" bs=1M iflag=skip_bytes,count_bytes skip="$start" count=$((payload_length - 4)) status=none \
        | $decompress >"$out.tmp" || return 1
    [[ $(stat -c %s "$out.tmp") == "$size" ]] || return 1
    [[ $(od -An -t x1 -N 4 "$out.tmp" | tr -d ' ') == 7f454c46 ]] || return 1
    mv "$out.tmp" "$out"
}
kernel=$cache/vmlinux-$kver
if [[ ! -f $kernel ]]; then
    if ! extract_vmlinux "$bzimage" "$kernel"; then
        rm -f "$kernel.tmp"
        say "could not extract an uncompressed kernel; booting the bzImage"
        kernel=$bzimage
    fi
fi

# --- initramfs -------------------------------------------------------------
say "building the initramfs"
stage=$(mktemp -d "$cache/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,etc/flannel-vm,proc,sys,dev,run,tmp,mnt,root,var}
ln -s usr/bin "$stage/bin"
ln -s usr/sbin "$stage/sbin"
ln -s usr/lib "$stage/lib"
ln -s usr/lib64 "$stage/lib64"
ln -s ../run "$stage/var/run"
chmod 1777 "$stage/tmp"

copy_file() { # host path -> same path in the stage (symlinks resolved)
    local src=$1
    mkdir -p "$stage$(dirname "$src")"
    [[ -e $stage$src ]] || cp -L "$src" "$stage$src"
}
copy_libs() { # the shared libraries a host program loads, at their paths
    local lib
    while read -r lib; do
        copy_file "$lib"
    done < <(ldd "$1" 2>/dev/null | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}')
}
add_tool() { # host program (path as run) -> the stage, with its libraries
    local path=$1 real
    real=$(readlink -f "$path")
    copy_file "$real"
    copy_libs "$real"
    if [[ $path != "$real" ]]; then
        mkdir -p "$stage$(dirname "$path")"
        [[ -e $stage$path ]] || ln -s "$real" "$stage$path"
    fi
}
for t in "${required_tools[@]}"; do
    p=$(host_tool "$t")
    [[ -n $p ]] || die "'$t' is not installed on the host (the initramfs needs it)"
    add_tool "$p"
done
for t in "${extra_tools[@]}"; do
    p=$(host_tool "$t")
    [[ -n $p ]] || die "FLANNEL_VM_EXTRA_TOOLS: '$t' is not installed on the host"
    add_tool "$p"
done
if [[ -n $host_wg ]]; then
    add_tool "$host_wg"
else
    cp "$root/usr/bin/wg" "$stage/usr/bin/wg"
    copy_libs "$root/usr/bin/wg"
fi
# iptables loads its match and target extensions (comment, mark,
# MASQUERADE) at run time.
for dir in /usr/lib/x86_64-linux-gnu/xtables /usr/lib/xtables; do
    if [[ -d $dir ]]; then
        mkdir -p "$stage$dir"
        cp -a "$dir/." "$stage$dir/"
        break
    fi
done
# What programs built on this host (Rust test binaries) load.
for lib in libgcc_s.so.1 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1; do
    for dir in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu; do
        if [[ -e $dir/$lib ]]; then
            copy_file "$dir/$lib"
            break
        fi
    done
done

cp "$root/bin/busybox" "$stage/usr/bin/busybox"
while read -r applet; do
    [[ -e $stage/$applet || -L $stage/$applet ]] || ln -s /usr/bin/busybox "$stage/$applet"
done < <("$root/bin/busybox" --list-full)

# Modules, each after its dependencies (modprobe's order: modules.dep lists
# a module's dependencies most-dependent first) and after the modules its
# softdep "pre:" names, which modules.dep leaves out: libcrc32c (under
# nf_conntrack and nf_tables) needs a crc32c implementation first, else
# every netfilter module fails with "unknown symbol".
moddir=/lib/modules/$kver
declare -A loaded=()
load_order=()
load_path() { # a modules.dep path, after its own softdeps
    local path=$1 name pre
    [[ -n ${loaded[$path]:-} ]] && return 0
    loaded[$path]=1
    name=$(basename "$path")
    name=${name%%.ko*}
    for pre in $(sed -n "s/^softdep ${name//[-_]/[-_]} pre: *//p" "$root$moddir/modules.softdep" | sed 's/ post:.*//'); do
        add_module "$(module_for "$pre")"
    done
    load_order+=("$path")
}
module_for() { # a module name or alias -> a module name (a generic crypto
    # implementation rather than one that needs a CPU feature TCG lacks)
    local name=$1 candidates
    if grep -qE "(^|/)${name//[-_]/[-_]}\\.ko(\\.[a-z]+)?:" "$root$moddir/modules.dep"; then
        echo "$name"
        return
    fi
    candidates=$(awk -v a="$name" '$1 == "alias" && $2 == a {print $3}' "$root$moddir/modules.alias")
    [[ -n $candidates ]] || die "kernel $kver has no module or alias '$name'"
    grep -m1 '_generic$' <<<"$candidates" || head -n1 <<<"$candidates"
}
add_module() {
    local name=$1 line path deps i
    line=$(grep -E "(^|/)${name//[-_]/[-_]}\\.ko(\\.[a-z]+)?:" "$root$moddir/modules.dep" | head -n1 || true)
    if [[ -z $line ]]; then
        grep -qE "/${name//[-_]/[-_]}\\.ko" "$root$moddir/modules.builtin" && return 0
        die "kernel $kver has no module '$name'"
    fi
    path=${line%%:*}
    read -r -a deps <<<"${line#*:}"
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
        load_path "${deps[i]}"
    done
    load_path "$path"
}
for m in "${modules[@]}"; do
    add_module "$m"
done
: >"$stage/etc/flannel-vm/modules"
for path in "${load_order[@]}"; do
    mkdir -p "$stage$moddir/$(dirname "$path")"
    cp "$root$moddir/$path" "$stage$moddir/$path"
    echo "$moddir/$path" >>"$stage/etc/flannel-vm/modules"
done

echo "root:x:0:0:root:/root:/bin/bash" >"$stage/etc/passwd"
echo "root:x:0:" >"$stage/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$stage/etc/hosts"
echo "$kver" >"$stage/etc/flannel-vm/kernel"

cat >"$stage/init" <<'INIT'
#!/bin/sh
# flannel-vm /init: mount, load the modules, run /mnt/run.sh, power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb WG_COLOR_MODE=never
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns /run/wireguard
hostname flannel-vm

finish() {
    sync
    echo "FLANNEL-VM-RESULT rc=$1"
    poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 10
}

while read -r module; do
    insmod "$module" || echo "flannel-vm: insmod $module failed"
done </etc/flannel-vm/modules
/usr/sbin/ip link set lo up

mounted=0
for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host0 /mnt 2>/dev/null; then
        mounted=1
        break
    fi
    sleep 0.2
done
if [ "$mounted" != 1 ]; then
    echo "flannel-vm: cannot mount the 9p share host0"
    finish 125
fi
if [ ! -f /mnt/run.sh ]; then
    echo "flannel-vm: /mnt/run.sh is missing"
    finish 125
fi
cd /mnt
/usr/bin/bash /mnt/run.sh </dev/null
rc=$?
cd /
echo "$rc" >/mnt/exit-code
finish "$rc"
INIT
chmod 755 "$stage/init"

initrd=$cache/initrd.img
(cd "$stage" && find . -mindepth 1 | sort | "$root/bin/busybox" cpio -o -H newc -R 0:0 2>/dev/null) \
    | gzip -6 -n >"$initrd.tmp" || die "building the initramfs failed"
mv "$initrd.tmp" "$initrd"

# --- kit.env ---------------------------------------------------------------
cat >"$cache/kit.env.tmp" <<EOF
KVER=$kver
KERNEL=$kernel
KERNEL_BZIMAGE=$bzimage
INITRD=$initrd
QEMU=$qemu
QEMU_L1=$root/usr/share/qemu
QEMU_L2=$root/usr/share/seabios
QEMU_LIBS=$qemu_libs
QEMU_MODULE_DIR=$qemu_moddir
STAMP=$want_stamp
EOF
mv "$cache/kit.env.tmp" "$cache/kit.env"
say "kit ready in $((SECONDS - t0)) s: kernel $kver, initramfs $(stat -c %s "$initrd") bytes, $cache/kit.env"
echo "$cache/kit.env"
