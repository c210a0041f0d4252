//! Node objects as a flannel-run cluster has them, for tests and
//! benchmarks.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;

use crate::apiserver::ready_node;

/// flannel's default annotation prefix.
pub const PREFIX: &str = "flannel.alpha.coreos.com/";

/// A Ready Node that a flannel vxlan agent has annotated: the i-th peer of
/// a lab-like cluster (`10.42.<i>.0/24` on `192.168.<i/250>.<i%250+1>`, a
/// MAC derived from `i`).
pub fn vxlan_peer(index: u32) -> Node {
    let octet3 = (index / 250) % 256;
    let octet4 = index % 250 + 1;
    // 10.42.0.0/16 only has 256 /24s; larger clusters spill into /24s of
    // 10.0.0.0/8 above it, which callers put in a bigger Network.
    let cidr = format!("10.{}.{}.0/24", 42 + index / 256, index % 256);
    let mac = format!(
        "0a:{:02x}:{:02x}:{:02x}:{:02x}:01",
        (index >> 24) & 0xff,
        (index >> 16) & 0xff,
        (index >> 8) & 0xff,
        index & 0xff
    );
    annotated(
        ready_node(&format!("peer-{index}"), Some(&cidr)),
        &[
            ("kube-subnet-manager", "true"),
            ("backend-type", "vxlan"),
            ("backend-data", &format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)),
            ("public-ip", &format!("192.168.{octet3}.{octet4}")),
        ],
    )
}

/// Adds (or, with `None`, removes) flannel annotations under [`PREFIX`].
pub fn annotated(mut node: Node, annotations: &[(&str, &str)]) -> Node {
    let map: &mut BTreeMap<String, String> =
        node.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (key, value) in annotations {
        map.insert(format!("{PREFIX}{key}"), value.to_string());
    }
    node
}

/// Removes a flannel annotation.
pub fn without(mut node: Node, key: &str) -> Node {
    if let Some(map) = node.metadata.annotations.as_mut() {
        map.remove(&format!("{PREFIX}{key}"));
    }
    node
}
