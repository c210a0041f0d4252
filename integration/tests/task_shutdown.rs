//! `Handle::shutdown()` ends everything the network task started: once it
//! returns, no socket of the task is open in the node's namespace (the
//! netlink connection, the nexthop socket and both kernel-monitor sockets
//! belong to tasks that have ended), while the kernel state stays for the
//! pods. Counted from this process's own descriptors, by the namespace
//! each netlink socket lives in.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use flannel_embed::Backend;
use integration::fixtures::{means, ready_with_peer, route_to, NodePair};
use integration::netns::TestNetns;

/// `SIOCGSKNS` (linux/sockios.h): an fd for the socket's network namespace.
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// This process's open netlink sockets that live in `ns`'s namespace.
fn netlink_sockets_in(ns: &TestNetns) -> usize {
    let wanted = fs::metadata(ns.path()).expect("netns handle").ino();
    let mut count = 0;
    for entry in fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Ok(entry) = entry else { continue };
        let is_socket = fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        let mut domain: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `domain`; a
        // descriptor closed meanwhile only makes it fail.
        let ok = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                (&mut domain as *mut libc::c_int).cast(),
                &mut len,
            )
        } == 0;
        if !ok || domain != libc::AF_NETLINK {
            continue;
        }
        // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor
        // (or -1), which the OwnedFd then owns.
        let ns_fd = unsafe { libc::ioctl(fd, SIOCGSKNS as _) };
        if ns_fd < 0 {
            continue;
        }
        // SAFETY: `ns_fd` was just returned to us and is owned by nobody else.
        let ns_fd = unsafe { OwnedFd::from_raw_fd(ns_fd) };
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes into `stat` only.
        if unsafe { libc::fstat(ns_fd.as_raw_fd(), &mut stat) } == 0 && stat.st_ino == wanted {
            count += 1;
        }
    }
    count
}

#[tokio::test]
async fn after_shutdown_no_socket_of_the_task_is_left_in_the_node() {
    let pair = NodePair::new("sd", Backend::Vxlan);
    let peer = pair.spawn(1);
    let node = &pair.nodes[0];
    assert_eq!(netlink_sockets_in(node), 0, "nothing in node-0 before");

    let handle = pair.spawn(0);
    ready_with_peer(&handle).await;
    let running = netlink_sockets_in(node);
    // The command connection, the nexthop socket, the monitor's rtnetlink
    // and (where the kernel has the group) nexthop sockets.
    assert!(
        running >= 3,
        "netlink sockets of a running task in node-0: {running}"
    );

    handle.shutdown().await.expect("a clean shutdown");
    assert_eq!(
        netlink_sockets_in(node),
        0,
        "netlink sockets left in node-0 once shutdown() returned (were {running})"
    );
    // Nothing was torn down: the peer's route stays for the pods.
    let route = route_to(node, "10.42.1.0/24").expect("the peer route stays");
    assert!(means(&route, "10.42.1.0", "flannel.1", true), "{route}");

    // The other node's task is untouched and still has its sockets.
    assert!(netlink_sockets_in(&pair.nodes[1]) >= 3);
    peer.shutdown().await.expect("a clean shutdown");
    assert_eq!(netlink_sockets_in(&pair.nodes[1]), 0);
}
