//! Shared by the Node targets: the cluster configurations a peer is judged
//! against, and Nodes built from fuzz input, either raw JSON (anything an
//! API server could send) or a structured form that reaches deep into the
//! annotation and podCIDR checks quickly.

use flannel_embed::config::NetConf;
use flannel_embed::kube_subnet::{AnnotationKeys, Lease, PeerContext, SlimNode};
use serde_json::{json, Map, Value};

pub const PREFIX: &str = "flannel.alpha.coreos.com";

/// vxlan IPv4, vxlan dual-stack, host-gw, wireguard dual-stack.
pub fn contexts() -> Vec<PeerContext> {
    [
        r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}"#,
        r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:42::/56","Backend":{"Type":"vxlan"}}"#,
        r#"{"Network":"10.42.0.0/16","Backend":{"Type":"host-gw"}}"#,
        r#"{"Network":"10.42.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:42::/56","Backend":{"Type":"wireguard","PersistentKeepaliveInterval":25}}"#,
    ]
    .iter()
    .map(|text| {
        let netconf = NetConf::parse(text).expect("the targets' net-conf.json parses");
        let own_lease = Lease {
            ipv4: Some("10.42.0.0/24".parse().unwrap()),
            ipv6: netconf
                .enable_ipv6
                .then(|| "fd00:42::/64".parse().unwrap()),
        };
        PeerContext {
            own_name: "own-node".into(),
            own_lease,
            keys: AnnotationKeys::new(PREFIX),
            netconf,
        }
    })
    .collect()
}

/// The annotation names a structured Node sets, in input order.
const FIELDS: [&str; 8] = [
    "kube-subnet-manager",
    "backend-type",
    "backend-data",
    "public-ip",
    "backend-v6-data",
    "public-ipv6",
    "public-ip-overwrite",
    "node-public-ip",
];

/// A Node from `data`: `\n`-separated fields (name, the eight flannel
/// annotations above, podCIDR, comma-separated podCIDRs, creation time in
/// seconds); an empty field is left out.
pub fn structured(data: &[u8]) -> Value {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\n');
    let name = fields.next().unwrap_or_default();
    let mut annotations = Map::new();
    for key in FIELDS {
        match fields.next() {
            Some(value) if !value.is_empty() => {
                annotations.insert(format!("{PREFIX}/{key}"), Value::String(value.into()));
            }
            _ => {}
        }
    }
    let mut spec = Map::new();
    if let Some(cidr) = fields.next().filter(|c| !c.is_empty()) {
        spec.insert("podCIDR".into(), Value::String(cidr.into()));
    }
    if let Some(cidrs) = fields.next().filter(|c| !c.is_empty()) {
        spec.insert(
            "podCIDRs".into(),
            Value::Array(cidrs.split(',').map(|c| Value::String(c.into())).collect()),
        );
    }
    let created = fields
        .next()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(0);
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "creationTimestamp": format!("2026-01-01T00:00:{:02}Z", created % 60),
            "annotations": annotations,
        },
        "spec": spec,
    })
}

/// A Node from raw JSON or the structured form (first byte even: raw).
pub fn node(data: &[u8]) -> Option<SlimNode> {
    let (mode, rest) = data.split_first()?;
    if mode % 2 == 0 {
        serde_json::from_slice(rest).ok()
    } else {
        serde_json::from_value(structured(rest)).ok()
    }
}
