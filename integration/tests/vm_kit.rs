//! The VM kit boots Debian's own kernel under qemu (TCG) and runs a script
//! in it: two network namespaces on a veth pair, a kernel WireGuard device
//! in each, keys from `wg genkey`, peers with endpoints and allowed-ips, and
//! a ping across the tunnel. Everything stays inside the guest (it has no
//! network card).
//!
//! Needs root and a Debian host; skipped (with a line on stderr) where qemu
//! cannot start at all.

use std::time::{Duration, Instant};

use integration::vm::{is_unavailable, VmKit};

const GUEST_SCRIPT: &str = r#"set -euo pipefail
umask 077
echo "guest kernel $(uname -r)"

ip netns add a
ip netns add b
ip link add va netns a type veth peer name vb netns b
ip -n a addr add 192.168.77.1/24 dev va
ip -n b addr add 192.168.77.2/24 dev vb
ip -n a link set va up
ip -n b link set vb up
ip -n a link set lo up
ip -n b link set lo up

wg genkey >/tmp/a.key
wg genkey >/tmp/b.key
a_pub=$(wg pubkey </tmp/a.key)
b_pub=$(wg pubkey </tmp/b.key)

ip -n a link add wg0 type wireguard
ip -n b link add wg0 type wireguard
ip netns exec a wg set wg0 listen-port 51820 private-key /tmp/a.key \
    peer "$b_pub" endpoint 192.168.77.2:51820 allowed-ips 10.77.0.2/32
ip netns exec b wg set wg0 listen-port 51820 private-key /tmp/b.key \
    peer "$a_pub" endpoint 192.168.77.1:51820 allowed-ips 10.77.0.1/32
ip -n a addr add 10.77.0.1/24 dev wg0
ip -n b addr add 10.77.0.2/24 dev wg0
ip -n a link set wg0 up
ip -n b link set wg0 up

ip -n a -d link show wg0 | grep -q wireguard
ip netns exec a ping -c 3 -i 0.2 -W 5 10.77.0.2
# The handshake happened and data crossed the tunnel.
ip netns exec a wg show wg0 latest-handshakes | awk '$2 > 0 {ok=1} END {exit !ok}'
ip netns exec b wg show wg0 transfer | awk '$2 > 0 && $3 > 0 {ok=1} END {exit !ok}'
ip netns exec a wg show wg0

echo ok >/mnt/result
"#;

#[test]
fn vm_kit_runs_kernel_wireguard_between_namespaces() {
    let started = Instant::now();
    let kit = match VmKit::prepare() {
        Ok(kit) => kit,
        Err(e) if is_unavailable(&e) => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("preparing the VM kit failed: {e}"),
    };
    eprintln!(
        "vm kit: prepared in {:.1} s (kernel {}, {})",
        started.elapsed().as_secs_f64(),
        kit.kernel_version(),
        kit.kernel().display()
    );

    let share = tempfile::tempdir().expect("a temporary share dir");
    let booted = Instant::now();
    let outcome = kit
        .run(share.path(), GUEST_SCRIPT, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("the VM run failed: {e}"));
    eprintln!(
        "vm kit: boot to result in {:.1} s",
        booted.elapsed().as_secs_f64()
    );
    assert_eq!(
        outcome.exit_code, 0,
        "the guest script failed; console:\n{}",
        outcome.console
    );
    assert!(
        outcome.console.contains("FLANNEL-VM-RESULT rc=0"),
        "no result line on the console:\n{}",
        outcome.console
    );
    let result = std::fs::read_to_string(share.path().join("result")).unwrap_or_default();
    assert_eq!(
        result.trim(),
        "ok",
        "the guest did not write ok to /mnt/result; console:\n{}",
        outcome.console
    );
}
