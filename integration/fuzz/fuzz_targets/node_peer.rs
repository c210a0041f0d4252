//! One Node, judged as a peer (the annotation parsers and the whole
//! Node -> Peer verdict) for vxlan, dual-stack, host-gw and wireguard: it
//! is a peer whose lease lies in the cluster network and not on ours, with
//! an address and backend data for every enabled family; or it is skipped
//! with a reason short enough to log (no 1 MiB annotation in a warning);
//! or it is not a flannel node at all.
#![no_main]

#[path = "nodes.rs"]
mod nodes;

use flannel_embed::kube_subnet::{build_peer_set, SkipReason};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(node) = nodes::node(data) else {
        return;
    };
    let name = node.metadata.name.clone().unwrap_or_default();
    for ctx in nodes::contexts() {
        let build = build_peer_set([&node], &ctx);
        assert!(build.peers.len() + build.skipped.len() <= 1);
        if let Some(reason) = build.skipped.get(&name) {
            let text = reason.to_string();
            assert!(!text.is_empty());
            // Values in warnings are shortened; keys are ours or the node's
            // own annotation names (bounded by the API server).
            if let SkipReason::BadAnnotation { value, .. } = reason {
                assert!(value.chars().count() <= 80, "{text}");
            }
        }
        let Some(peer) = build.peers.get(&name) else {
            continue;
        };
        let nc = &ctx.netconf;
        if let Some(v4) = peer.lease.ipv4 {
            let network = nc
                .active_ipv4_network()
                .expect("an IPv4 lease needs IPv4 on");
            assert!(network.contains(v4.network()) && v4.prefix() >= network.prefix());
            let own = ctx.own_lease.ipv4.expect("an own IPv4 lease");
            assert!(!v4.contains(own.network()) && !own.contains(v4.network()));
            assert!(peer.public_ip.is_some() && peer.backend_v4.is_some());
        }
        if let Some(v6) = peer.lease.ipv6 {
            let network = nc
                .active_ipv6_network()
                .expect("an IPv6 lease needs IPv6 on");
            assert!(network.contains(v6.network()) && v6.prefix() >= network.prefix());
            assert!(peer.public_ipv6.is_some() && peer.backend_v6.is_some());
        }
        assert_eq!(peer.lease.ipv4.is_some(), nc.enable_ipv4);
        assert_eq!(peer.lease.ipv6.is_some(), nc.enable_ipv6);
    }
});
