//! The vxlan backend's decisions, as flanneld's `backend/vxlan` makes them:
//! the device `flannel.<VNI>` and, per peer, a neighbour, an FDB entry and an
//! onlink route (or a direct route with DirectRouting).

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{FdbEntry, KernelEntries, Neighbour, RouteEntry};
use crate::config::VxlanConf;
use crate::kube_subnet::{Peer, PeerBackend, PeerSet};
use crate::mac::MacAddr;

/// VXLAN encapsulation overhead subtracted from the uplink MTU (IPv4
/// underlay).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The same over an IPv6 underlay (the kernel refuses a larger MTU).
pub const VXLAN6_OVERHEAD: u32 = 70;

/// The vxlan device flannel wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDeviceSpec {
    /// `flannel.<VNI>`.
    pub name: String,
    /// VXLAN id.
    pub vni: u32,
    /// Local (source) address: the uplink's address.
    pub local: IpAddr,
    /// ifindex of the uplink.
    pub underlay_index: u32,
    /// UDP destination port (8472 unless configured).
    pub port: u16,
    /// Group Based Policy.
    pub gbp: bool,
    /// FDB learning (off unless configured).
    pub learning: bool,
    /// Device MTU.
    pub mtu: u32,
    /// MAC to create the device with (stored or random).
    pub mac: MacAddr,
}

/// An existing link as found in a dump, for comparison with the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundVxlan {
    /// ifindex.
    pub index: u32,
    /// Whether it is a vxlan link at all.
    pub is_vxlan: bool,
    /// VXLAN id.
    pub vni: Option<u32>,
    /// Local address.
    pub local: Option<IpAddr>,
    /// Underlay link.
    pub underlay_index: Option<u32>,
    /// UDP port.
    pub port: Option<u16>,
    /// GBP on.
    pub gbp: bool,
    /// Learning on.
    pub learning: bool,
    /// MTU.
    pub mtu: u32,
    /// MAC.
    pub mac: Option<MacAddr>,
    /// IFF_UP.
    pub up: bool,
}

/// The device for this node: name `flannel.<VNI>`, MTU from the config or the
/// uplink MTU − 50; the IPv6 device (local address IPv6) is
/// `flannel-v6.<VNI>` with uplink MTU − 70 (the IPv6 header is 20 bytes
/// longer, and the kernel refuses more).
pub fn device_spec(
    conf: &VxlanConf,
    local: IpAddr,
    underlay_index: u32,
    uplink_mtu: u32,
    mac: MacAddr,
) -> VxlanDeviceSpec {
    VxlanDeviceSpec {
        name: if local.is_ipv6() {
            format!("flannel-v6.{}", conf.vni)
        } else {
            format!("flannel.{}", conf.vni)
        },
        vni: conf.vni,
        local,
        underlay_index,
        port: conf.effective_port(),
        gbp: conf.gbp,
        learning: conf.learning,
        mtu: conf
            .mtu
            .unwrap_or(uplink_mtu.saturating_sub(if local.is_ipv6() {
                VXLAN6_OVERHEAD
            } else {
                VXLAN_OVERHEAD
            })),
        mac,
    }
}

/// Why an existing link cannot be reused (flanneld recreates the device
/// when type, VNI, local address, underlay, port or GBP differ), or `None`.
/// MTU, MAC and up state are fixed in place instead.
pub fn incompatibility(spec: &VxlanDeviceSpec, found: &FoundVxlan) -> Option<String> {
    if !found.is_vxlan {
        return Some(format!("{} exists but is not a vxlan device", spec.name));
    }
    let mut problems = Vec::new();
    if found.vni != Some(spec.vni) {
        problems.push(format!("VNI {:?} != {}", found.vni, spec.vni));
    }
    if found.local != Some(spec.local) {
        problems.push(format!("local {:?} != {}", found.local, spec.local));
    }
    if found.underlay_index != Some(spec.underlay_index) {
        problems.push(format!(
            "dev #{:?} != #{}",
            found.underlay_index, spec.underlay_index
        ));
    }
    if found.port != Some(spec.port) {
        problems.push(format!("dstport {:?} != {}", found.port, spec.port));
    }
    if found.gbp != spec.gbp {
        problems.push(format!("gbp {} != {}", found.gbp, spec.gbp));
    }
    if found.learning != spec.learning {
        problems.push(format!("learning {} != {}", found.learning, spec.learning));
    }
    (!problems.is_empty()).then(|| format!("{} differs: {}", spec.name, problems.join(", ")))
}

/// DirectRouting: peers whose public IP is on one of these connected
/// subnets of the uplink get a plain route through it, no encapsulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectRouting {
    /// ifindex of the uplink.
    pub uplink_index: u32,
    /// The uplink's connected subnets.
    pub connected: Vec<IpNetwork>,
}

/// Neighbour, FDB entry and onlink route per peer of one family, exactly as
/// flanneld programs them (the seed's `10.42.1.0/24 via 10.42.1.0 dev
/// flannel.1 onlink`; for IPv6 the same on `flannel-v6.<VNI>`). The routes
/// are plain here; [`super::nexthop::use_nexthops`] points them at nexthop
/// objects where the kernel has them.
pub fn desired_entries(
    peers: &PeerSet,
    device_index: u32,
    direct: Option<&DirectRouting>,
    ipv6: bool,
) -> KernelEntries {
    let mut entries = KernelEntries::default();
    for peer in peers.iter() {
        match peer_entries(peer, device_index, direct, ipv6) {
            Some(PeerEntries::Direct(route)) => {
                entries.routes.insert(route.dst, route);
            }
            Some(PeerEntries::Encapsulated {
                neighbour,
                fdb,
                route,
            }) => {
                entries.neighbours.insert(neighbour.ip, neighbour.mac);
                entries.fdb.insert(fdb);
                entries.routes.insert(route.dst, route);
            }
            None => {}
        }
    }
    entries
}

/// What one peer needs in one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEntries {
    /// DirectRouting: a plain route through the uplink.
    Direct(RouteEntry),
    /// Encapsulated: neighbour, FDB entry and onlink route on the device.
    Encapsulated {
        /// VTEP address → VTEP MAC.
        neighbour: Neighbour,
        /// VTEP MAC → public IP.
        fdb: FdbEntry,
        /// Lease via the VTEP address, onlink.
        route: RouteEntry,
    },
}

/// One peer's entries in one family, or `None` when the peer has nothing
/// for it (another family only, another backend's data).
pub fn peer_entries(
    peer: &Peer,
    device_index: u32,
    direct: Option<&DirectRouting>,
    ipv6: bool,
) -> Option<PeerEntries> {
    let (lease, public, backend) = if ipv6 {
        (
            peer.lease.ipv6.map(IpNetwork::V6),
            peer.public_ipv6.map(IpAddr::V6),
            peer.backend_v6.as_ref(),
        )
    } else {
        (
            peer.lease.ipv4.map(IpNetwork::V4),
            peer.public_ip.map(IpAddr::V4),
            peer.backend_v4.as_ref(),
        )
    };
    let (Some(dst), Some(public), Some(PeerBackend::Vxlan { vtep_mac })) = (lease, public, backend)
    else {
        return None;
    };
    if let Some(direct) = direct.filter(|d| d.connected.iter().any(|net| net.contains(public))) {
        return Some(PeerEntries::Direct(RouteEntry {
            dst,
            gateway: public,
            oif: direct.uplink_index,
            onlink: false,
            nexthop: None,
        }));
    }
    let vtep = dst.network();
    Some(PeerEntries::Encapsulated {
        neighbour: Neighbour {
            ip: vtep,
            mac: *vtep_mac,
        },
        fdb: FdbEntry {
            mac: *vtep_mac,
            dst: public,
        },
        route: RouteEntry {
            dst,
            gateway: vtep,
            oif: device_index,
            onlink: true,
            nexthop: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetConf;
    use crate::kube_subnet::{build_peer_set, AnnotationKeys, Lease, PeerContext, SlimNode};
    use k8s_openapi::api::core::v1::{Node, NodeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn seed_peer() -> PeerSet {
        let p = "flannel.alpha.coreos.com/";
        let node = Node {
            metadata: ObjectMeta {
                name: Some("ubuntu-dev3".into()),
                annotations: Some(
                    [
                        ("kube-subnet-manager", "true"),
                        ("backend-type", "vxlan"),
                        ("backend-data", r#"{"VNI":1,"VtepMAC":"0a:00:00:00:00:0b"}"#),
                        ("public-ip", "192.168.1.13"),
                    ]
                    .iter()
                    .map(|(k, v)| (format!("{p}{k}"), v.to_string()))
                    .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some("10.42.1.0/24".into()),
                ..NodeSpec::default()
            }),
            status: None,
        };
        let ctx = PeerContext {
            own_name: "ubuntu-dev2".into(),
            own_lease: Lease {
                ipv4: "10.42.0.0/24".parse().ok(),
                ipv6: None,
            },
            keys: AnnotationKeys::new(p),
            netconf: NetConf::parse(r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "vxlan"}}"#)
                .unwrap(),
        };
        build_peer_set([&SlimNode::from(&node)], &ctx).peers
    }

    #[test]
    fn the_seed_articles_entries() {
        let entries = desired_entries(&seed_peer(), 7, None, false);
        let mac: MacAddr = "0a:00:00:00:00:0b".parse().unwrap();
        assert_eq!(
            entries.neighbours.get(&"10.42.1.0".parse().unwrap()),
            Some(&mac)
        );
        assert!(entries.fdb.contains(&FdbEntry {
            mac,
            dst: "192.168.1.13".parse().unwrap()
        }));
        let route = entries.routes.values().next().unwrap();
        assert_eq!(
            route.to_string(),
            "route 10.42.1.0/24 via 10.42.1.0 dev #7 onlink"
        );
    }

    #[test]
    fn direct_routing_skips_encapsulation_for_connected_peers() {
        let direct = DirectRouting {
            uplink_index: 2,
            connected: vec!["192.168.1.0/24".parse().unwrap()],
        };
        let entries = desired_entries(&seed_peer(), 7, Some(&direct), false);
        assert!(entries.neighbours.is_empty() && entries.fdb.is_empty());
        assert_eq!(
            entries.routes.values().next().unwrap().to_string(),
            "route 10.42.1.0/24 via 192.168.1.13 dev #2"
        );
        let elsewhere = DirectRouting {
            uplink_index: 2,
            connected: vec!["10.9.0.0/16".parse().unwrap()],
        };
        assert_eq!(
            desired_entries(&seed_peer(), 7, Some(&elsewhere), false)
                .fdb
                .len(),
            1
        );
    }

    #[test]
    fn device_spec_and_compatibility() {
        let mac: MacAddr = "0a:00:00:00:00:01".parse().unwrap();
        let spec = device_spec(
            &VxlanConf::default(),
            "192.168.1.12".parse().unwrap(),
            2,
            1500,
            mac,
        );
        assert_eq!(
            (
                spec.name.as_str(),
                spec.vni,
                spec.port,
                spec.mtu,
                spec.learning
            ),
            ("flannel.1", 1, 8472, 1450, false)
        );
        let found = FoundVxlan {
            index: 9,
            is_vxlan: true,
            vni: Some(1),
            local: Some("192.168.1.12".parse().unwrap()),
            underlay_index: Some(2),
            port: Some(8472),
            gbp: false,
            learning: false,
            mtu: 1400,
            mac: Some(mac),
            up: false,
        };
        assert_eq!(
            incompatibility(&spec, &found),
            None,
            "MTU and up are fixed in place"
        );
        let moved = FoundVxlan {
            local: Some("192.168.1.99".parse().unwrap()),
            ..found.clone()
        };
        assert!(incompatibility(&spec, &moved).unwrap().contains("local"));
        let other = FoundVxlan {
            is_vxlan: false,
            ..found
        };
        assert!(incompatibility(&spec, &other)
            .unwrap()
            .contains("not a vxlan device"));
        let custom = VxlanConf {
            vni: 4,
            port: 4789,
            mtu: Some(1400),
            ..VxlanConf::default()
        };
        let spec = device_spec(&custom, "192.168.1.12".parse().unwrap(), 2, 9000, mac);
        assert_eq!(
            (spec.name.as_str(), spec.port, spec.mtu),
            ("flannel.4", 4789, 1400)
        );
        let v6 = device_spec(
            &VxlanConf::default(),
            "fd00::12".parse().unwrap(),
            2,
            1500,
            mac,
        );
        assert_eq!((v6.name.as_str(), v6.mtu), ("flannel-v6.1", 1430));
    }
}
