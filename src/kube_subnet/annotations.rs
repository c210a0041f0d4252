//! flannel's Node annotations: their names under the configured prefix, what
//! this node publishes, and the patch that publishes only what differs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Map, Value};

use crate::mac::MacAddr;

/// The annotation names under one prefix (flannel's `annotations` struct).
///
/// ```
/// use flannel_embed::kube_subnet::AnnotationKeys;
///
/// let keys = AnnotationKeys::new("flannel.alpha.coreos.com/");
/// assert_eq!(keys.backend_data, "flannel.alpha.coreos.com/backend-data");
/// assert_eq!(keys.public_ip_overwrite, "flannel.alpha.coreos.com/public-ip-overwrite");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationKeys {
    /// `kube-subnet-manager` ("true" on nodes run by a kube subnet manager).
    pub kube_subnet_manager: String,
    /// `backend-type`.
    pub backend_type: String,
    /// `backend-data` (IPv4).
    pub backend_data: String,
    /// `backend-v6-data`.
    pub backend_v6_data: String,
    /// `public-ip`.
    pub public_ip: String,
    /// `public-ipv6`.
    pub public_ipv6: String,
    /// `public-ip-overwrite` (set by a person or by k3s
    /// `--flannel-external-ip`; published as `public-ip`).
    pub public_ip_overwrite: String,
    /// `public-ipv6-overwrite`.
    pub public_ipv6_overwrite: String,
    /// `node-public-ip` (set by a person: the address to use instead of the
    /// interface's).
    pub node_public_ip: String,
    /// `node-public-ipv6`.
    pub node_public_ipv6: String,
}

impl AnnotationKeys {
    /// Names under `prefix`, which must already be normalised (see
    /// [`crate::Config::annotation_prefix`]).
    pub fn new(prefix: &str) -> AnnotationKeys {
        let key = |name: &str| format!("{prefix}{name}");
        AnnotationKeys {
            kube_subnet_manager: key("kube-subnet-manager"),
            backend_type: key("backend-type"),
            backend_data: key("backend-data"),
            backend_v6_data: key("backend-v6-data"),
            public_ip: key("public-ip"),
            public_ipv6: key("public-ipv6"),
            public_ip_overwrite: key("public-ip-overwrite"),
            public_ipv6_overwrite: key("public-ipv6-overwrite"),
            node_public_ip: key("node-public-ip"),
            node_public_ipv6: key("node-public-ipv6"),
        }
    }
}

/// `backend-data` of the vxlan backend, exactly as flanneld marshals it:
/// `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`.
pub fn vxlan_backend_data(vni: u32, vtep_mac: MacAddr) -> String {
    format!(r#"{{"VNI":{vni},"VtepMAC":"{vtep_mac}"}}"#)
}

/// `backend-data` of the wireguard backend: `{"PublicKey":"...","Port":51820}`.
pub fn wireguard_backend_data(public_key: &str, port: u16) -> String {
    json!({"PublicKey": public_key, "Port": port}).to_string()
}

/// `backend-data` of host-gw (Go marshals its nil attributes as `null`).
pub const HOST_GW_BACKEND_DATA: &str = "null";

/// The VTEP MAC stored in this node's own `backend-data` (or
/// `backend-v6-data`), reused when the device is created so peers never keep
/// a stale MAC after a restart.
pub fn stored_vtep_mac(annotations: &BTreeMap<String, String>, key: &str) -> Option<MacAddr> {
    let data: Value = serde_json::from_str(annotations.get(key)?).ok()?;
    let mac: MacAddr = data.get("VtepMAC")?.as_str()?.parse().ok()?;
    mac.is_usable_unicast().then_some(mac)
}

/// What this node publishes about itself, per family (`None`: the family is
/// not enabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnAttrs {
    /// flannel backend type (`vxlan`, `host-gw`, `wireguard`).
    pub backend_type: &'static str,
    /// IPv4 `backend-data` and the address peers send to.
    pub ipv4: Option<(String, Ipv4Addr)>,
    /// IPv6 `backend-v6-data` and the address peers send to.
    pub ipv6: Option<(String, Ipv6Addr)>,
}

/// The annotations this node must carry, given its current annotations (for
/// the `*-overwrite` ones a person or k3s set) and, with
/// `--flannel-external-ip`, its ExternalIP addresses.
///
/// Returns the desired values and warnings about annotations that were
/// ignored because they do not parse.
pub fn desired_annotations(
    keys: &AnnotationKeys,
    current: &BTreeMap<String, String>,
    attrs: &OwnAttrs,
    external_ips: &[IpAddr],
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut desired = BTreeMap::new();
    let mut warnings = Vec::new();
    desired.insert(keys.backend_type.clone(), attrs.backend_type.to_string());

    // k3s --flannel-external-ip: publish the node's ExternalIP through the
    // overwrite annotation, which then becomes the public IP.
    let external_v4 = external_ips.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let external_v6 = external_ips.iter().find_map(|ip| match ip {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });

    if let Some((data, detected)) = &attrs.ipv4 {
        desired.insert(keys.backend_data.clone(), data.clone());
        let overwrite = match external_v4 {
            Some(ip) => {
                desired.insert(keys.public_ip_overwrite.clone(), ip.to_string());
                Some(ip)
            }
            None => overwrite_value::<Ipv4Addr>(current, &keys.public_ip_overwrite, &mut warnings),
        };
        desired.insert(
            keys.public_ip.clone(),
            overwrite.unwrap_or(*detected).to_string(),
        );
    }
    if let Some((data, detected)) = &attrs.ipv6 {
        desired.insert(keys.backend_v6_data.clone(), data.clone());
        let overwrite = match external_v6 {
            Some(ip) => {
                desired.insert(keys.public_ipv6_overwrite.clone(), ip.to_string());
                Some(ip)
            }
            None => {
                overwrite_value::<Ipv6Addr>(current, &keys.public_ipv6_overwrite, &mut warnings)
            }
        };
        desired.insert(
            keys.public_ipv6.clone(),
            overwrite.unwrap_or(*detected).to_string(),
        );
    }
    desired.insert(keys.kube_subnet_manager.clone(), "true".to_string());
    (desired, warnings)
}

fn overwrite_value<T: std::str::FromStr>(
    current: &BTreeMap<String, String>,
    key: &str,
    warnings: &mut Vec<String>,
) -> Option<T> {
    let text = current.get(key).filter(|v| !v.is_empty())?;
    match text.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            warnings.push(format!(
                "ignoring annotation {key}='{text}': not an address of the right family"
            ));
            None
        }
    }
}

/// The address a person pinned with `node-public-ip` / `node-public-ipv6`,
/// used instead of the interface's address.
pub fn node_public_ip<T: std::str::FromStr>(
    current: &BTreeMap<String, String>,
    key: &str,
) -> Result<Option<T>, String> {
    match current.get(key).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            format!("annotation {key}='{text}' is not an address of the right family")
        }),
    }
}

/// The strategic merge patch (for `nodes/status`) that sets the annotations
/// which differ, or `None` when the Node already carries them all.
pub fn annotation_patch(
    current: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> Option<Value> {
    let changed: Map<String, Value> = desired
        .iter()
        .filter(|(key, value)| current.get(*key) != Some(*value))
        .map(|(key, value)| (key.clone(), Value::String(value.clone())))
        .collect();
    (!changed.is_empty()).then(|| json!({"metadata": {"annotations": changed}}))
}

/// NetworkUnavailable condition values flanneld sets once it is up.
pub const NETWORK_UNAVAILABLE: &str = "NetworkUnavailable";
/// Reason of the condition.
pub const FLANNEL_IS_UP_REASON: &str = "FlannelIsUp";
/// Message of the condition.
pub const FLANNEL_IS_UP_MESSAGE: &str = "Flannel is running on this node";

/// The strategic merge patch for `nodes/status` that sets
/// NetworkUnavailable=False (reason FlannelIsUp), merged by condition type so
/// kubelet's other conditions stay; `None` when it is already set so.
pub fn network_unavailable_patch(node: &Node, now: &str) -> Option<Value> {
    let already = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == NETWORK_UNAVAILABLE
                && c.status == "False"
                && c.reason.as_deref() == Some(FLANNEL_IS_UP_REASON)
                && c.message.as_deref() == Some(FLANNEL_IS_UP_MESSAGE)
        });
    (!already).then(|| {
        json!({"status": {"conditions": [{
            "type": NETWORK_UNAVAILABLE,
            "status": "False",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
            "reason": FLANNEL_IS_UP_REASON,
            "message": FLANNEL_IS_UP_MESSAGE,
        }]}})
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};

    const PREFIX: &str = "flannel.alpha.coreos.com/";

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn vxlan_attrs() -> OwnAttrs {
        OwnAttrs {
            backend_type: "vxlan",
            ipv4: Some((
                vxlan_backend_data(1, "aa:bb:cc:dd:ee:ff".parse().unwrap()),
                Ipv4Addr::new(192, 168, 1, 12),
            )),
            ipv6: None,
        }
    }

    #[test]
    fn names_and_values_are_flannels_byte_for_byte() {
        let keys = AnnotationKeys::new(PREFIX);
        let (desired, warnings) = desired_annotations(&keys, &BTreeMap::new(), &vxlan_attrs(), &[]);
        assert!(warnings.is_empty());
        assert_eq!(
            desired,
            map(&[
                (
                    "flannel.alpha.coreos.com/backend-data",
                    r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}"#
                ),
                ("flannel.alpha.coreos.com/backend-type", "vxlan"),
                ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
                ("flannel.alpha.coreos.com/public-ip", "192.168.1.12"),
            ])
        );
        assert_eq!(
            wireguard_backend_data("a2V5", 51820),
            r#"{"PublicKey":"a2V5","Port":51820}"#
        );
    }

    #[test]
    fn dual_stack_host_gw_publishes_both_families() {
        let keys = AnnotationKeys::new("example.io/net-");
        let attrs = OwnAttrs {
            backend_type: "host-gw",
            ipv4: Some((HOST_GW_BACKEND_DATA.into(), Ipv4Addr::new(10, 0, 0, 1))),
            ipv6: Some((HOST_GW_BACKEND_DATA.into(), "fd00::1".parse().unwrap())),
        };
        let (desired, _) = desired_annotations(&keys, &BTreeMap::new(), &attrs, &[]);
        assert_eq!(
            desired,
            map(&[
                ("example.io/net-backend-data", "null"),
                ("example.io/net-backend-type", "host-gw"),
                ("example.io/net-backend-v6-data", "null"),
                ("example.io/net-kube-subnet-manager", "true"),
                ("example.io/net-public-ip", "10.0.0.1"),
                ("example.io/net-public-ipv6", "fd00::1"),
            ])
        );
    }

    #[test]
    fn overwrite_and_external_ip_decide_the_public_ip() {
        let keys = AnnotationKeys::new(PREFIX);
        let with_overwrite = map(&[(
            "flannel.alpha.coreos.com/public-ip-overwrite",
            "203.0.113.7",
        )]);
        let (desired, _) = desired_annotations(&keys, &with_overwrite, &vxlan_attrs(), &[]);
        assert_eq!(desired[&keys.public_ip], "203.0.113.7");

        let bad_overwrite = map(&[("flannel.alpha.coreos.com/public-ip-overwrite", "fd00::9")]);
        let (desired, warnings) = desired_annotations(&keys, &bad_overwrite, &vxlan_attrs(), &[]);
        assert_eq!(desired[&keys.public_ip], "192.168.1.12");
        assert!(
            warnings[0].contains("public-ip-overwrite='fd00::9'"),
            "{warnings:?}"
        );

        let external: Vec<IpAddr> = vec!["198.51.100.4".parse().unwrap()];
        let (desired, _) = desired_annotations(&keys, &BTreeMap::new(), &vxlan_attrs(), &external);
        assert_eq!(desired[&keys.public_ip], "198.51.100.4");
        assert_eq!(desired[&keys.public_ip_overwrite], "198.51.100.4");
    }

    #[test]
    fn the_patch_holds_only_what_differs() {
        let keys = AnnotationKeys::new(PREFIX);
        let (desired, _) = desired_annotations(&keys, &BTreeMap::new(), &vxlan_attrs(), &[]);
        assert_eq!(annotation_patch(&desired, &desired), None);
        let mut current = desired.clone();
        current.insert(keys.public_ip.clone(), "192.168.1.99".into());
        current.insert("kubelet/other".into(), "kept".into());
        assert_eq!(
            annotation_patch(&current, &desired),
            Some(
                json!({"metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "192.168.1.12"}}})
            )
        );
    }

    #[test]
    fn stored_mac_is_reused_only_when_valid() {
        let key = "flannel.alpha.coreos.com/backend-data";
        let cases = [
            (
                r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#,
                Some("12:c6:65:89:b4:e3"),
            ),
            (r#"{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}"#, None),
            (r#"{"VNI":1}"#, None),
            ("null", None),
            ("{broken", None),
        ];
        for (data, wanted) in cases {
            let got = stored_vtep_mac(&map(&[(key, data)]), key).map(|m| m.to_string());
            assert_eq!(got.as_deref(), wanted, "{data}");
        }
        assert_eq!(stored_vtep_mac(&BTreeMap::new(), key), None);
    }

    #[test]
    fn network_unavailable_condition_is_set_once() {
        let mut node = Node::default();
        let patch = network_unavailable_patch(&node, "2026-11-26T05:00:00Z").unwrap();
        assert_eq!(
            patch,
            json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False",
                "lastHeartbeatTime": "2026-11-26T05:00:00Z", "lastTransitionTime": "2026-11-26T05:00:00Z",
                "reason": "FlannelIsUp", "message": "Flannel is running on this node"}]}})
        );
        node.status = Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "NetworkUnavailable".into(),
                status: "False".into(),
                reason: Some("FlannelIsUp".into()),
                message: Some("Flannel is running on this node".into()),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        });
        assert_eq!(network_unavailable_patch(&node, "later"), None);
    }

    #[test]
    fn node_public_ip_parses_or_explains() {
        let key = "flannel.alpha.coreos.com/node-public-ip";
        assert_eq!(node_public_ip::<Ipv4Addr>(&BTreeMap::new(), key), Ok(None));
        assert_eq!(
            node_public_ip::<Ipv4Addr>(&map(&[(key, "10.1.2.3")]), key),
            Ok(Some(Ipv4Addr::new(10, 1, 2, 3)))
        );
        assert!(node_public_ip::<Ipv4Addr>(&map(&[(key, "nope")]), key)
            .unwrap_err()
            .contains("nope"));
    }
}
