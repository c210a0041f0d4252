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

/// The annotations map, keeping only [`is_peer_annotation`] entries; the
/// others' values are skipped unread.
struct PeerAnnotations(BTreeMap<String, String>);

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
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if is_peer_annotation(&key) {
                        kept.insert(key.into_owned(), map.next_value::<String>()?);
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
                        .map(|(key, value)| (key.clone(), value.clone()))
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
}
