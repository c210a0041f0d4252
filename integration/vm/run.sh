#!/usr/bin/env bash
# run.sh SHARE_DIR [TIMEOUT_SECONDS]
#
# Boots the VM kit that prepare.sh made ($FLANNEL_VM_CACHE/kit.env, default
# /var/cache/flannel-vm) under qemu with software emulation (TCG), no NIC,
# SHARE_DIR as the 9p share `host0` (the guest's /mnt). The guest's /init runs
# SHARE_DIR/run.sh (which the caller writes) with bash and writes its exit
# code to SHARE_DIR/exit-code. The serial console goes to
# SHARE_DIR/console.log.
#
# Exit status: the guest script's exit code; 125 when the VM produced none
# (qemu failed, the guest broke, or TIMEOUT_SECONDS, default 120, passed).
# On any non-zero status the console's tail goes to stderr.
set -uo pipefail
export LC_ALL=C

say() { echo "flannel-vm: $*" >&2; }

if (($# < 1 || $# > 2)); then
    say "usage: run.sh SHARE_DIR [TIMEOUT_SECONDS]"
    exit 125
fi
share=$1
limit=${2:-120}
[[ $limit =~ ^[1-9][0-9]*$ ]] || { say "TIMEOUT_SECONDS must be a positive integer: '$limit'"; exit 125; }
[[ -d $share ]] || { say "no such directory: $share"; exit 125; }
share=$(cd "$share" && pwd)
[[ -f $share/run.sh ]] || { say "$share/run.sh is missing (the guest script)"; exit 125; }
# qemu's -virtfs option list separates with commas.
[[ $share != *,* ]] || { say "the share path must not contain a comma: $share"; exit 125; }

kit=${FLANNEL_VM_CACHE:-/var/cache/flannel-vm}/kit.env
[[ -f $kit ]] || { say "$kit is missing: run prepare.sh first"; exit 125; }
KERNEL='' INITRD='' QEMU='' QEMU_L1='' QEMU_L2='' QEMU_LIBS='' QEMU_MODULE_DIR=''
while IFS='=' read -r key value; do
    case $key in
        KERNEL | INITRD | QEMU | QEMU_L1 | QEMU_L2 | QEMU_LIBS | QEMU_MODULE_DIR) printf -v "$key" '%s' "$value" ;;
    esac
done <"$kit"
for key in KERNEL INITRD QEMU QEMU_L1 QEMU_L2; do
    [[ -n ${!key} && -e ${!key} ]] || { say "$kit: $key '${!key}' does not exist: run prepare.sh again"; exit 125; }
done

rm -f "$share/exit-code" "$share/console.log"

start=$SECONDS
# stdin from /dev/null and no monitor: nothing of qemu's touches the caller's
# terminal. -no-reboot: the guest's poweroff, reboot or panic (panic=-1) ends
# qemu.
LD_LIBRARY_PATH=$QEMU_LIBS QEMU_MODULE_DIR=$QEMU_MODULE_DIR \
    timeout --kill-after=5 "$limit" "$QEMU" \
    -L "$QEMU_L1" -L "$QEMU_L2" \
    -accel tcg -cpu qemu64,+rdrand -m 1024 -smp 2 \
    -nographic -monitor none -serial "file:$share/console.log" \
    -no-reboot -nic none \
    -kernel "$KERNEL" -initrd "$INITRD" \
    -append 'console=ttyS0 quiet panic=-1' \
    -virtfs "local,path=$share,mount_tag=host0,security_model=none,id=host0" \
    </dev/null >"$share/qemu.log" 2>&1 &
qemu_pid=$!
# Stopping this script stops the VM (timeout passes the signal on to qemu).
stopped=
trap 'stopped=1; kill -TERM "$qemu_pid" 2>/dev/null' TERM INT HUP
while true; do
    wait "$qemu_pid"
    qemu_rc=$?
    # wait returns early (>128) when a trapped signal arrives; kill -0 tells.
    kill -0 "$qemu_pid" 2>/dev/null || break
done
trap - TERM INT HUP
elapsed=$((SECONDS - start))

rc=125
if [[ -f $share/exit-code ]]; then
    code=$(tr -d ' \n' <"$share/exit-code")
    if [[ $code =~ ^[0-9]+$ ]]; then
        rc=$code
    else
        say "the guest wrote a malformed exit code: '$code'"
    fi
elif [[ -n $stopped ]]; then
    say "run.sh was stopped by a signal after $elapsed s"
elif ((qemu_rc == 124 || qemu_rc == 137)); then
    say "the VM did not finish within $limit s"
else
    say "the VM produced no exit code (qemu exit status $qemu_rc after $elapsed s)"
fi

if ((rc != 0)); then
    if [[ -s $share/qemu.log ]]; then
        say "qemu said:"
        tail -n 20 "$share/qemu.log" >&2
    fi
    say "console tail ($share/console.log):"
    tail -n 40 "$share/console.log" >&2 2>/dev/null || true
fi
exit "$rc"
