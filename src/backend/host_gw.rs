//! The host-gw backend: a plain route per peer through the uplink, which
//! only works when every peer shares the uplink's L2 segment. Like vxlan's,
//! the routes go through nexthop objects where the kernel has them
//! (`<lease> nhid <id> via <peer IP> dev <uplink>`).

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{KernelEntries, RouteEntry};
use crate::kube_subnet::PeerSet;

/// `<peer lease> via <peer public IP> dev <uplink>` per peer and enabled
/// family. A peer whose public IP is not on one of the uplink's connected
/// subnets cannot be reached without a router and gets no route; it is
/// returned with the reason, for a warning.
pub fn desired_routes(
    peers: &PeerSet,
    uplink_index: u32,
    connected: &[IpNetwork],
) -> (KernelEntries, Vec<(String, String)>) {
    let mut entries = KernelEntries::default();
    let mut unreachable = Vec::new();
    for peer in peers.iter() {
        let families = [
            (
                peer.lease.ipv4.map(IpNetwork::V4),
                peer.public_ip.map(IpAddr::V4),
            ),
            (
                peer.lease.ipv6.map(IpNetwork::V6),
                peer.public_ipv6.map(IpAddr::V6),
            ),
        ];
        for (lease, public) in families {
            let (Some(dst), Some(gateway)) = (lease, public) else {
                continue;
            };
            if !connected.iter().any(|net| net.contains(gateway)) {
                unreachable.push((
                    peer.name.clone(),
                    format!(
                        "its public IP {gateway} is not on the uplink's segment ({}); host-gw needs every node on one L2 segment",
                        connected.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    ),
                ));
                continue;
            }
            entries.routes.insert(
                dst,
                RouteEntry {
                    dst,
                    gateway,
                    oif: uplink_index,
                    onlink: false,
                    nexthop: None,
                },
            );
        }
    }
    (entries, unreachable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetConf;
    use crate::kube_subnet::{build_peer_set, AnnotationKeys, Lease, PeerContext, SlimNode};
    use k8s_openapi::api::core::v1::{Node, NodeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn peer(name: &str, cidr: &str, ip: &str) -> SlimNode {
        let p = "flannel.alpha.coreos.com/";
        SlimNode::from(&Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(
                    [
                        ("kube-subnet-manager", "true"),
                        ("backend-type", "host-gw"),
                        ("backend-data", "null"),
                        ("public-ip", ip),
                    ]
                    .iter()
                    .map(|(k, v)| (format!("{p}{k}"), v.to_string()))
                    .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some(cidr.into()),
                ..NodeSpec::default()
            }),
            status: None,
        })
    }

    #[test]
    fn routes_via_each_peer_on_the_segment() {
        let ctx = PeerContext {
            own_name: "node-0".into(),
            own_lease: Lease {
                ipv4: "10.42.0.0/24".parse().ok(),
                ipv6: None,
            },
            keys: AnnotationKeys::new("flannel.alpha.coreos.com/"),
            netconf: NetConf::parse(
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "host-gw"}}"#,
            )
            .unwrap(),
        };
        let nodes = [
            peer("node-1", "10.42.1.0/24", "192.168.1.13"),
            peer("far", "10.42.2.0/24", "10.9.9.9"),
        ];
        let peers = build_peer_set(&nodes, &ctx).peers;
        let (entries, unreachable) =
            desired_routes(&peers, 2, &["192.168.1.0/24".parse().unwrap()]);
        let routes: Vec<String> = entries.routes.values().map(ToString::to_string).collect();
        assert_eq!(routes, vec!["route 10.42.1.0/24 via 192.168.1.13 dev #2"]);
        assert!(entries.neighbours.is_empty() && entries.fdb.is_empty());
        assert_eq!(unreachable.len(), 1);
        assert_eq!(unreachable[0].0, "far");
        assert!(unreachable[0]
            .1
            .contains("10.9.9.9 is not on the uplink's segment"));
    }
}
