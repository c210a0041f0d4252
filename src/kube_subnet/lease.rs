//! This node's lease: the Pod CIDRs kube-controller-manager assigned to its
//! Node object, checked against the cluster networks in net-conf.json.

use std::fmt;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::SlimNode;
use crate::config::NetConf;

/// The pod subnets this node owns, one per enabled family.
///
/// ```
/// use flannel_embed::Lease;
///
/// let lease = Lease { ipv4: Some("10.42.0.0/24".parse()?), ipv6: None };
/// assert_eq!(lease.to_string(), "10.42.0.0/24");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lease {
    /// The IPv4 pod subnet (e.g. 10.42.0.0/24).
    pub ipv4: Option<Ipv4Network>,
    /// The IPv6 pod subnet (e.g. fd00:42::/64).
    pub ipv6: Option<Ipv6Network>,
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ipv4, self.ipv6) {
            (Some(v4), Some(v6)) => write!(f, "{v4},{v6}"),
            (Some(v4), None) => write!(f, "{v4}"),
            (None, Some(v6)) => write!(f, "{v6}"),
            (None, None) => f.write_str("(none)"),
        }
    }
}

/// Where the node's Pod CIDR assignment stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// `spec.podCIDR(s)` not set yet: keep waiting.
    NotAssigned,
    /// Assigned, but without a subnet of a family net-conf.json enables
    /// (`"IPv4"` or `"IPv6"`): keep waiting, and tell the operator.
    MissingFamily(&'static str),
    /// Every enabled family has its subnet.
    Ready(Lease),
}

/// The Node's Pod CIDRs cannot be used. These are configuration mistakes,
/// not transient states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// More than one CIDR per family, or more than two in all.
    #[error(
        "node {node} has {count} podCIDRs ({cidrs}); at most one IPv4 and one IPv6 are allowed"
    )]
    TooManyPodCidrs {
        /// Node name.
        node: String,
        /// How many.
        count: usize,
        /// The list as found.
        cidrs: String,
    },
    /// Not a CIDR.
    #[error("node {node} has podCIDR '{value}', which is not a CIDR")]
    BadPodCidr {
        /// Node name.
        node: String,
        /// The text found.
        value: String,
    },
    /// The lease does not lie inside the configured network.
    #[error("node {node} has podCIDR {lease}, which is not inside the flannel {field} {network}; the cluster CIDR given to flannel (--cluster-cidr / net-conf.json) must match kube-controller-manager's --cluster-cidr")]
    OutsideNetwork {
        /// Node name.
        node: String,
        /// The node's subnet.
        lease: IpNetwork,
        /// `Network` or `IPv6Network`.
        field: &'static str,
        /// The configured network.
        network: IpNetwork,
    },
}

/// Decides this node's lease from its Node object and net-conf.json, the
/// way flannel's kube subnet manager does, but waiting (rather than failing)
/// while a family is not assigned yet.
pub fn lease_state(node: &SlimNode, netconf: &NetConf) -> Result<LeaseState, LeaseError> {
    let name = node.name().to_string();
    let cidrs = node.pod_cidrs();
    if cidrs.is_empty() {
        return Ok(LeaseState::NotAssigned);
    }
    let too_many = || LeaseError::TooManyPodCidrs {
        node: name.clone(),
        count: cidrs.len(),
        cidrs: cidrs.join(","),
    };
    if cidrs.len() > 2 {
        return Err(too_many());
    }
    let mut lease = Lease::default();
    for text in &cidrs {
        let parsed: IpNetwork = text.trim().parse().map_err(|_| LeaseError::BadPodCidr {
            node: name.clone(),
            value: text.clone(),
        })?;
        // Same masking as Go's net.ParseCIDR.
        let masked = IpNetwork::new(parsed.network(), parsed.prefix()).map_err(|_| {
            LeaseError::BadPodCidr {
                node: name.clone(),
                value: text.clone(),
            }
        })?;
        match masked {
            IpNetwork::V4(v4) if lease.ipv4.is_none() => lease.ipv4 = Some(v4),
            IpNetwork::V6(v6) if lease.ipv6.is_none() => lease.ipv6 = Some(v6),
            _ => return Err(too_many()),
        }
    }
    // A family net-conf.json does not enable is ignored, as upstream does.
    if !netconf.enable_ipv4 {
        lease.ipv4 = None;
    }
    if !netconf.enable_ipv6 {
        lease.ipv6 = None;
    }
    let families = [
        (
            lease.ipv4.map(IpNetwork::V4),
            netconf.active_ipv4_network().map(IpNetwork::V4),
            "Network",
        ),
        (
            lease.ipv6.map(IpNetwork::V6),
            netconf.active_ipv6_network().map(IpNetwork::V6),
            "IPv6Network",
        ),
    ];
    for (subnet, network, field) in families {
        if let (Some(subnet), Some(network)) = (subnet, network) {
            if !network_contains(network, subnet) {
                return Err(LeaseError::OutsideNetwork {
                    node: name,
                    lease: subnet,
                    field,
                    network,
                });
            }
        }
    }
    if netconf.enable_ipv4 && lease.ipv4.is_none() {
        return Ok(LeaseState::MissingFamily("IPv4"));
    }
    if netconf.enable_ipv6 && lease.ipv6.is_none() {
        return Ok(LeaseState::MissingFamily("IPv6"));
    }
    Ok(LeaseState::Ready(lease))
}

/// Whether `subnet` lies entirely inside `network` (same family).
pub(crate) fn network_contains(network: IpNetwork, subnet: IpNetwork) -> bool {
    network.contains(subnet.network()) && subnet.prefix() >= network.prefix()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, NodeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(pod_cidr: Option<&str>, pod_cidrs: Option<&[&str]>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("node-a".into()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: pod_cidr.map(str::to_string),
                pod_cidrs: pod_cidrs.map(|l| l.iter().map(|s| s.to_string()).collect()),
                ..NodeSpec::default()
            }),
            status: None,
        }
    }

    fn netconf(text: &str) -> NetConf {
        NetConf::parse(text).unwrap()
    }

    const V4: &str = r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "vxlan"}}"#;
    const DUAL: &str = r#"{"Network": "10.42.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:42::/56", "Backend": {"Type": "vxlan"}}"#;
    const V6: &str = r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:42::/56", "Backend": {"Type": "vxlan"}}"#;

    fn ready(v4: Option<&str>, v6: Option<&str>) -> LeaseState {
        LeaseState::Ready(Lease {
            ipv4: v4.map(|s| s.parse().unwrap()),
            ipv6: v6.map(|s| s.parse().unwrap()),
        })
    }

    #[test]
    fn lease_decisions() {
        let cases: Vec<(&str, Node, &str, LeaseState)> = vec![
            ("no spec", Node::default(), V4, LeaseState::NotAssigned),
            (
                "nothing assigned",
                node(None, None),
                V4,
                LeaseState::NotAssigned,
            ),
            (
                "empty strings",
                node(Some(""), Some(&[])),
                V4,
                LeaseState::NotAssigned,
            ),
            (
                "podCIDR only (old clusters)",
                node(Some("10.42.0.0/24"), None),
                V4,
                ready(Some("10.42.0.0/24"), None),
            ),
            (
                "podCIDRs wins",
                node(Some("10.42.9.0/24"), Some(&["10.42.1.0/24"])),
                V4,
                ready(Some("10.42.1.0/24"), None),
            ),
            (
                "dual, v6 first",
                node(None, Some(&["fd00:42:0:1::/64", "10.42.1.0/24"])),
                DUAL,
                ready(Some("10.42.1.0/24"), Some("fd00:42:0:1::/64")),
            ),
            (
                "v6 ignored when not enabled",
                node(None, Some(&["10.42.1.0/24", "fd00:42:0:1::/64"])),
                V4,
                ready(Some("10.42.1.0/24"), None),
            ),
            (
                "v6 only",
                node(None, Some(&["fd00:42:0:2::/64"])),
                V6,
                ready(None, Some("fd00:42:0:2::/64")),
            ),
            (
                "dual wanted, v4 only so far",
                node(None, Some(&["10.42.1.0/24"])),
                DUAL,
                LeaseState::MissingFamily("IPv6"),
            ),
            (
                "v4 wanted, v6 only",
                node(None, Some(&["fd00:42:0:2::/64"])),
                DUAL,
                LeaseState::MissingFamily("IPv4"),
            ),
            (
                "host bits masked",
                node(Some("10.42.3.1/24"), None),
                V4,
                ready(Some("10.42.3.0/24"), None),
            ),
        ];
        for (name, node, conf, wanted) in cases {
            assert_eq!(
                lease_state(&SlimNode::from(&node), &netconf(conf)),
                Ok(wanted),
                "{name}"
            );
        }
    }

    #[test]
    fn unusable_pod_cidrs_are_errors_that_name_the_node() {
        let cases: Vec<(Node, &str, &str)> = vec![
            (
                node(None, Some(&["10.42.1.0/24", "fd00::/64", "10.42.2.0/24"])),
                V4,
                "node node-a has 3 podCIDRs",
            ),
            (
                node(None, Some(&["10.42.1.0/24", "10.42.2.0/24"])),
                V4,
                "has 2 podCIDRs",
            ),
            (
                node(Some("banana"), None),
                V4,
                "podCIDR 'banana', which is not a CIDR",
            ),
            (
                node(Some("10.43.0.0/24"), None),
                V4,
                "podCIDR 10.43.0.0/24, which is not inside the flannel Network 10.42.0.0/16",
            ),
            (
                node(Some("10.0.0.0/8"), None),
                V4,
                "not inside the flannel Network",
            ),
            (
                node(None, Some(&["10.42.1.0/24", "fd01::/64"])),
                DUAL,
                "not inside the flannel IPv6Network fd00:42::/56",
            ),
        ];
        for (node, conf, wanted) in cases {
            let message = lease_state(&SlimNode::from(&node), &netconf(conf))
                .unwrap_err()
                .to_string();
            assert!(message.contains(wanted), "{message:?} lacks {wanted:?}");
        }
    }
}
