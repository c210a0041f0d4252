//! Helpers shared by the lab tests (`mod lab_support;`): sockets opened
//! inside lab namespaces, to see which source address a packet arrives
//! with (masquerade or not), and route lines without nexthop ids.

// Each test crate uses only some of these.
#![allow(dead_code)]

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Runs `f` on a fresh thread that has entered the network namespace
/// `/run/netns/<netns>`; sockets it creates belong to that namespace for
/// good.
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns only reads the descriptor and changes the namespace
        // of this thread, which is ours alone and ends after `f`.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

fn unspecified(to: &SocketAddr, port: u16) -> SocketAddr {
    match to {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
    }
}

/// Sends UDP datagrams from namespace `from` to `to` (a listener in
/// namespace `to_ns`, bound to `to`'s port) and returns the source address
/// the listener sees, or `None` when nothing arrives within about 3 s.
/// Each call uses a new source port (a new conntrack flow).
pub fn source_seen(from: &str, to_ns: &str, to: SocketAddr) -> Option<IpAddr> {
    let listen = unspecified(&to, to.port());
    let receiver = in_netns(to_ns, move || {
        UdpSocket::bind(listen).expect("bind listener")
    });
    receiver
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let local = unspecified(&to, 0);
    let sender = in_netns(from, move || UdpSocket::bind(local).expect("bind sender"));
    let mut buf = [0u8; 64];
    for _ in 0..10 {
        // A route may be missing for a moment: keep trying.
        let _ = sender.send_to(b"flannel lab", to);
        if let Ok((_, source)) = receiver.recv_from(&mut buf) {
            return Some(source.ip());
        }
    }
    None
}

/// A route line as `ip route` prints it, trimmed and without a nexthop
/// object id (`10.42.1.0/24 nhid 17 via 10.42.1.0 dev flannel.1 ...` →
/// `10.42.1.0/24 via 10.42.1.0 dev flannel.1 ...`): whether the route
/// names its gateway itself or through a nexthop object, it forwards the
/// same way and `ip` prints the same `via` and `dev`.
pub fn without_nhid(line: &str) -> String {
    let mut words = line.split_whitespace();
    let mut out = Vec::new();
    while let Some(word) = words.next() {
        if word == "nhid" {
            words.next();
        } else {
            out.push(word);
        }
    }
    out.join(" ")
}

/// Runs a command and returns its stdout; panics with its stderr when it
/// fails.
pub fn sh(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pod attached by hand to node namespace `node` the way the bridge
/// plugin attaches one: `cni0` with `gateway_cidr`, a veth into the new
/// namespace `pod` (which the caller deletes, or the lab's prefix covers)
/// with `address_cidr` and a default route via `gateway`, all at `mtu`.
pub fn hand_made_pod(
    node: &str,
    pod: &str,
    gateway_cidr: &str,
    address_cidr: &str,
    gateway: &str,
    mtu: &str,
) {
    sh(&["ip", "netns", "add", pod]);
    sh(&["ip", "-n", node, "link", "add", "cni0", "type", "bridge"]);
    sh(&["ip", "-n", node, "addr", "add", gateway_cidr, "dev", "cni0"]);
    sh(&["ip", "-n", node, "link", "set", "cni0", "mtu", mtu, "up"]);
    sh(&[
        "ip", "-n", node, "link", "add", "vethhand", "mtu", mtu, "type", "veth", "peer", "name",
        "eth0", "netns", pod,
    ]);
    sh(&[
        "ip", "-n", node, "link", "set", "vethhand", "master", "cni0", "up",
    ]);
    sh(&["ip", "-n", pod, "link", "set", "lo", "up"]);
    sh(&["ip", "-n", pod, "link", "set", "eth0", "mtu", mtu, "up"]);
    sh(&["ip", "-n", pod, "addr", "add", address_cidr, "dev", "eth0"]);
    sh(&["ip", "-n", pod, "route", "add", "default", "via", gateway]);
}
