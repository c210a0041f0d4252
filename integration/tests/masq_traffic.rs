//! What the masquerade rules do to packets, for both drivers, shown with
//! real traffic between namespaces the test makes (nothing leaves them):
//!
//! ```text
//!  pod 10.42.0.5 ── vpod 10.42.0.1 ┐                ┌ 192.168.1.1  "internet"
//!                                  node ── up0 192.168.1.12 ─┤ 203.0.113.1
//! pod2 10.42.1.5 ── vpod2 10.42.1.1┘                └ (route 10.42.0.0/16 via node)
//! ```
//!
//! Cluster Network 10.42.0.0/16, the node's lease 10.42.0.0/24; pod2 stands
//! for a pod of another node's lease, routed through the node.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use flannel_embed::masq::{DriverKind, MasqRules, RuleSet};
use integration::netns::TestNetns;

/// Runs `f` on a fresh thread that has entered `ns`; sockets it creates
/// belong to `ns` for good.
fn in_netns<T: Send + 'static>(ns: &TestNetns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.path();
    std::thread::spawn(move || {
        let file = File::open(&path).expect("namespace file opens");
        // SAFETY: setns only reads the descriptor and changes the namespace
        // of this thread, which is ours alone and ends after `f`.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Sends UDP from `from` to `to` (listening in `to_ns`) and returns the
/// source address the receiver sees.
fn source_seen(from: &TestNetns, to_ns: &TestNetns, to: SocketAddr) -> IpAddr {
    let receiver = in_netns(to_ns, move || {
        UdpSocket::bind(SocketAddr::new([0, 0, 0, 0].into(), to.port())).expect("bind")
    });
    receiver
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let sender = in_netns(from, || UdpSocket::bind("0.0.0.0:0").expect("bind"));
    let mut buf = [0u8; 64];
    for _ in 0..10 {
        sender.send_to(b"flannel", to).expect("send");
        if let Ok((_, source)) = receiver.recv_from(&mut buf) {
            return source.ip();
        }
    }
    panic!("nothing arrived at {to} in {}", to_ns.name());
}

fn veth(a: &TestNetns, a_name: &str, a_addr: &str, b: &TestNetns, b_name: &str, b_addr: &str) {
    a.ip(&[
        "link",
        "add",
        a_name,
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ]);
    a.ip(&["addr", "add", a_addr, "dev", a_name]);
    a.ip(&["link", "set", a_name, "up"]);
    b.ip(&["addr", "add", b_addr, "dev", b_name]);
    b.ip(&["link", "set", b_name, "up"]);
}

fn run(ns: &TestNetns, program: &str, args: &[&str]) {
    let output = ns.exec(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn addr(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn traffic_is_masqueraded_as_upstream(kind: DriverKind) {
    let node = TestNetns::new("mqnode");
    let pod = TestNetns::new("mqpod");
    let pod2 = TestNetns::new("mqpodb");
    let inet = TestNetns::new("mqinet");
    veth(&node, "vpod", "10.42.0.1/24", &pod, "eth0", "10.42.0.5/24");
    veth(
        &node,
        "vpod2",
        "10.42.1.1/24",
        &pod2,
        "eth0",
        "10.42.1.5/24",
    );
    veth(
        &node,
        "up0",
        "192.168.1.12/24",
        &inet,
        "eth0",
        "192.168.1.1/24",
    );
    inet.ip(&["addr", "add", "203.0.113.1/32", "dev", "eth0"]);
    pod.ip(&["route", "add", "default", "via", "10.42.0.1"]);
    pod2.ip(&["route", "add", "default", "via", "10.42.1.1"]);
    node.ip(&["route", "add", "default", "via", "192.168.1.1"]);
    inet.ip(&["route", "add", "10.42.0.0/16", "via", "192.168.1.12"]);
    run(&node, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    if kind == DriverKind::Iptables {
        // Only FLANNEL-FWD lets cluster traffic through.
        run(&node, "iptables", &["-P", "FORWARD", "DROP"]);
    }
    // kube-proxy's mark (plus another bit) on pod traffic to port 9998.
    run(
        &node,
        "nft",
        &[
            "add table ip fe-kube-mark; add chain ip fe-kube-mark pre { type filter hook prerouting priority mangle; }; add rule ip fe-kube-mark pre ip saddr 10.42.0.5 udp dport 9998 meta mark set 0xc000",
        ],
    );

    let desired = RuleSet::for_lease(
        Some((
            "10.42.0.0/16".parse().unwrap(),
            "10.42.0.0/24".parse().unwrap(),
        )),
        None,
        true,
        false,
    );
    let node_path = node.path();
    let (rules, outcome) =
        MasqRules::setup(kind, Some(&node_path), desired, None).expect("setup in the node");
    assert!(outcome.written, "{kind}: {outcome:?}");

    let internet: SocketAddr = "203.0.113.1:9999".parse().unwrap();
    // Pod to the outside: the node's uplink address.
    assert_eq!(
        source_seen(&pod, &inet, internet),
        addr("192.168.1.12"),
        "{kind}: pod → internet"
    );
    // Pod to a pod of another lease: the pod's own address.
    assert_eq!(
        source_seen(&pod, &pod2, "10.42.1.5:9999".parse().unwrap()),
        addr("10.42.0.5"),
        "{kind}: pod → pod"
    );
    // The outside to one of our pods: untouched (`! -s C -d P` RETURN).
    assert_eq!(
        source_seen(&inet, &pod, "10.42.0.5:9999".parse().unwrap()),
        addr("192.168.1.1"),
        "{kind}: internet → own pod"
    );
    // The outside to a pod of another lease: masqueraded to the node
    // (`! -s C -d C` MASQUERADE; upstream's nftables set returns here).
    assert_eq!(
        source_seen(&inet, &pod2, "10.42.1.5:9999".parse().unwrap()),
        addr("10.42.1.1"),
        "{kind}: internet → other lease"
    );
    // kube-proxy marked (mark & 0x4000 == 0x4000): left alone.
    assert_eq!(
        source_seen(&pod, &inet, "203.0.113.1:9998".parse().unwrap()),
        addr("10.42.0.5"),
        "{kind}: marked pod traffic"
    );

    // The traffic did not make the check write anything.
    let writes = rules.writes();
    assert!(!rules.check_and_restore().expect("check").written);
    assert_eq!(rules.writes(), writes);
}

#[test]
fn iptables_masquerades_pod_traffic_to_the_outside_only() {
    traffic_is_masqueraded_as_upstream(DriverKind::Iptables);
}

#[test]
fn nftables_masquerades_pod_traffic_to_the_outside_only() {
    traffic_is_masqueraded_as_upstream(DriverKind::Nftables);
}
