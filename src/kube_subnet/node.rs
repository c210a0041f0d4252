//! A slim view of a Node: only what the network task reads. Watching every
//! Node of a large cluster as full `k8s_openapi` objects would keep their
//! images, conditions and managed fields in memory for nothing; and of the
//! annotations only flannel's are kept (k3s's node-args and the like are
//! large).

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Deserialize;

/// The fields of a Node the kube subnet manager uses; every other field is
/// skipped while deserializing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SlimNode {
    /// name, uid, resourceVersion, creationTimestamp, deletionTimestamp,
    /// and the annotations a peer is read from ([`PEER_ANNOTATION_NAMES`]).
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    /// The Pod CIDR fields of the spec.
    #[serde(default)]
    pub spec: SlimNodeSpec,
}

/// `spec.podCIDR` and `spec.podCIDRs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimNodeSpec {
    /// `spec.podCIDR`.
    #[serde(rename = "podCIDR", default)]
    pub pod_cidr: Option<String>,
    /// `spec.podCIDRs`.
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    creation_timestamp: Option<Time>,
    #[serde(default)]
    deletion_timestamp: Option<Time>,
    #[serde(default)]
    annotations: Option<PeerAnnotations>,
}

/// The names (after the prefix) of the annotations a peer is read from.
/// The prefix is per task and deserializing has no context, so every
/// annotation whose key ends in one of these is kept, under any prefix
/// (a foreign one that happens to match costs a few bytes, no more).
pub const PEER_ANNOTATION_NAMES: [&str; 6] = [
    "kube-subnet-manager",
    "backend-type",
    "backend-data",
    "backend-v6-data",
    "public-ip",
    "public-ipv6",
];

/// Whether an annotation is one a peer may be read from.
fn is_peer_annotation(key: &str) -> bool {
    PEER_ANNOTATION_NAMES.iter().any(|name| key.ends_with(name))
}

/// The longest annotation value kept as it is. flannel's longest value
/// (wireguard backend-data) is under 100 bytes; a longer one can only be
/// wrong. The peer cache keeps verdicts, not Nodes, so a 1 MiB value only
/// passes through; but a SlimNode anyone keeps (our own Node's, a future
/// store) must not hold it. A longer value is kept as its first 80
/// characters and its length, which no parser accepts and a warning can
/// show.
pub const MAX_KEPT_ANNOTATION_LEN: usize = 4096;

/// The annotations map, keeping only [`is_peer_annotation`] entries; the
/// others' values are skipped unread.
struct PeerAnnotations(BTreeMap<String, String>);

/// A JSON string read leniently: as raw bytes (serde_json then accepts
/// escapes of lone UTF-16 surrogates, which a strict string read refuses
/// and which would make the whole Node, and with it a whole list, fail to
/// decode), turned into text with U+FFFD for whatever is not UTF-8.
struct LossyString(String);

impl<'de> Deserialize<'de> for LossyString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Lossy;
        impl serde::de::Visitor<'_> for Lossy {
            type Value = LossyString;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<LossyString, E> {
                Ok(LossyString(text.to_string()))
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<LossyString, E> {
                Ok(LossyString(String::from_utf8_lossy(bytes).into_owned()))
            }
        }
        deserializer.deserialize_bytes(Lossy)
    }
}

/// `value` as kept: itself, or its beginning and length when it is longer
/// than [`MAX_KEPT_ANNOTATION_LEN`].
fn bounded(value: String) -> String {
    if value.len() <= MAX_KEPT_ANNOTATION_LEN {
        return value;
    }
    let head: String = value.chars().take(80).collect();
    format!(
        "{head}... ({} bytes, longer than any flannel value)",
        value.len()
    )
}

impl<'de> Deserialize<'de> for PeerAnnotations {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Kept;
        impl<'de> serde::de::Visitor<'de> for Kept {
            type Value = PeerAnnotations;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of annotations")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<PeerAnnotations, A::Error> {
                let mut kept = BTreeMap::new();
                while let Some(LossyString(key)) = map.next_key::<LossyString>()? {
                    if is_peer_annotation(&key) {
                        let LossyString(value) = map.next_value()?;
                        kept.insert(key, bounded(value));
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(PeerAnnotations(kept))
            }
        }
        deserializer.deserialize_map(Kept)
    }
}

fn slim_meta<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    let meta = SlimMeta::deserialize(deserializer)?;
    Ok(ObjectMeta {
        name: meta.name,
        uid: meta.uid,
        resource_version: meta.resource_version,
        creation_timestamp: meta.creation_timestamp,
        deletion_timestamp: meta.deletion_timestamp,
        annotations: meta.annotations.map(|kept| kept.0),
        ..ObjectMeta::default()
    })
}

impl SlimNode {
    /// The Node's name ("" if the server sent none).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    /// An annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }

    /// The Pod CIDRs: `spec.podCIDRs`, falling back to `spec.podCIDR`.
    pub fn pod_cidrs(&self) -> Vec<String> {
        match self.spec.pod_cidrs.as_ref().filter(|l| !l.is_empty()) {
            Some(list) => list.clone(),
            None => self
                .spec
                .pod_cidr
                .iter()
                .filter(|c| !c.is_empty())
                .cloned()
                .collect(),
        }
    }
}

impl From<&Node> for SlimNode {
    fn from(node: &Node) -> Self {
        SlimNode {
            metadata: ObjectMeta {
                name: node.metadata.name.clone(),
                uid: node.metadata.uid.clone(),
                resource_version: node.metadata.resource_version.clone(),
                creation_timestamp: node.metadata.creation_timestamp.clone(),
                deletion_timestamp: node.metadata.deletion_timestamp.clone(),
                annotations: node.metadata.annotations.as_ref().map(|all| {
                    all.iter()
                        .filter(|(key, _)| is_peer_annotation(key))
                        .map(|(key, value)| (key.clone(), bounded(value.clone())))
                        .collect()
                }),
                ..ObjectMeta::default()
            },
            spec: SlimNodeSpec {
                pod_cidr: node.spec.as_ref().and_then(|s| s.pod_cidr.clone()),
                pod_cidrs: node.spec.as_ref().and_then(|s| s.pod_cidrs.clone()),
            },
        }
    }
}

impl kube::Resource for SlimNode {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_node_document_is_read_slim() {
        let json = r#"{
            "kind": "Node", "apiVersion": "v1",
            "metadata": {"name": "node-b", "uid": "u1", "resourceVersion": "42",
                         "creationTimestamp": "2026-11-26T05:00:00Z",
                         "labels": {"kubernetes.io/hostname": "node-b"},
                         "annotations": {"flannel.alpha.coreos.com/public-ip": "192.168.1.13",
                                         "k3s.io/node-args": "[\"agent\",\"--node-name\",\"node-b\"]",
                                         "k3s.io/node-config-hash": "ABCDEF",
                                         "node.alpha.kubernetes.io/ttl": "0",
                                         "example.com/backend-data": "{}",
                                         "flannel.alpha.coreos.com/backend-v6-data": "{\"VNI\":1}"},
                         "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]},
            "spec": {"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"], "providerID": "k3s://node-b"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "images": [{"names": ["x"]}]}
        }"#;
        let node: SlimNode = serde_json::from_str(json).unwrap();
        assert_eq!(node.name(), "node-b");
        assert_eq!(node.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(
            node.annotation("flannel.alpha.coreos.com/public-ip"),
            Some("192.168.1.13")
        );
        assert_eq!(node.pod_cidrs(), vec!["10.42.1.0/24".to_string()]);
        assert!(node.metadata.managed_fields.is_none() && node.metadata.labels.is_none());
        // Only annotations a peer is read from are kept, under any prefix.
        let kept: Vec<&str> = node
            .metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            kept,
            [
                "example.com/backend-data",
                "flannel.alpha.coreos.com/backend-v6-data",
                "flannel.alpha.coreos.com/public-ip"
            ]
        );
        let null: SlimNode =
            serde_json::from_str(r#"{"metadata": {"name": "n", "annotations": null}}"#).unwrap();
        assert!(null.metadata.annotations.is_none());
        let only_old_field: SlimNode = serde_json::from_str(
            r#"{"metadata": {"name": "n"}, "spec": {"podCIDR": "10.42.2.0/24"}}"#,
        )
        .unwrap();
        assert_eq!(only_old_field.pod_cidrs(), vec!["10.42.2.0/24".to_string()]);
        let no_spec: SlimNode = serde_json::from_str(r#"{"metadata": {"name": "n"}}"#).unwrap();
        assert!(no_spec.pod_cidrs().is_empty());
    }

    #[test]
    fn hostile_annotations_decode_and_stay_small() {
        // Escapes of lone surrogates (valid JSON, not valid Unicode) in a
        // kept annotation's key and value, and in a skipped one: the Node
        // still decodes, with U+FFFD, instead of failing the whole list.
        let json = r#"{"metadata": {"name": "n", "annotations": {
            "flannel.alpha.coreos.com/public-ip": "192.168.1.\ud800",
            "x\udc00/backend-type": "vxlan",
            "example.com/other": "\udfff"}}}"#;
        let node: SlimNode = serde_json::from_str(json).unwrap();
        assert_eq!(
            node.annotation("flannel.alpha.coreos.com/public-ip"),
            Some("192.168.1.\u{fffd}\u{fffd}\u{fffd}")
        );
        assert_eq!(
            node.annotation("x\u{fffd}\u{fffd}\u{fffd}/backend-type"),
            Some("vxlan")
        );
        // The same inside a watch event, as kube's watcher decodes it.
        let event = format!(r#"{{"type": "ADDED", "object": {json}}}"#);
        let event: kube::api::WatchEvent<SlimNode> = serde_json::from_str(&event).unwrap();
        assert!(matches!(event, kube::api::WatchEvent::Added(_)));

        // A 1 MiB value is kept as its beginning and length.
        let big = "a".repeat(1 << 20);
        let json = format!(
            r#"{{"metadata": {{"name": "n", "annotations": {{"flannel.alpha.coreos.com/backend-data": "{big}"}}}}}}"#
        );
        let node: SlimNode = serde_json::from_str(&json).unwrap();
        let kept = node
            .annotation("flannel.alpha.coreos.com/backend-data")
            .unwrap();
        assert!(kept.len() < 200, "{kept}");
        assert!(kept.ends_with("(1048576 bytes, longer than any flannel value)"));

        // 5,000 keys that all look like flannel's under other prefixes, and
        // the real ones after them (the API server sends keys sorted): the
        // real ones are still read. (kube-apiserver caps a Node's
        // annotations at 256 KiB in all.)
        let mut many: Vec<String> = (0..5000)
            .map(|i| format!(r#""a{i}.example/public-ip": "10.0.0.1""#))
            .collect();
        many.push(r#""flannel.alpha.coreos.com/public-ip": "192.168.1.13""#.into());
        let json = format!(
            r#"{{"metadata": {{"name": "n", "annotations": {{{}}}}}}}"#,
            many.join(",")
        );
        let node: SlimNode = serde_json::from_str(&json).unwrap();
        assert_eq!(
            node.annotation("flannel.alpha.coreos.com/public-ip"),
            Some("192.168.1.13")
        );
    }
}
