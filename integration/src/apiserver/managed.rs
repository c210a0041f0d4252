//! `metadata.managedFields` as kube-apiserver records them for Update
//! operations (POST, PUT, PATCH): one entry per manager and subresource with
//! the fields its writes touched, in the `FieldsV1` (`f:name`) form.
//!
//! The real server computes the set from the structured-merge diff of the
//! objects; here it is taken from the request document (the patch, or the
//! object sent), which names the same fields for the writes clients make.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value};

use super::node::Subresource;

/// Metadata fields the server owns: never in a manager's set.
const SERVER_OWNED: &[&str] = &[
    "name",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "managedFields",
    "generation",
    "selfLink",
];

/// The `f:` tree of a JSON document: every object key becomes `f:key`,
/// every other value (lists included) a leaf `{}`.
fn tree(document: &Value) -> Value {
    match document {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(key, value)| !key.starts_with('$') && !value.is_null())
                .map(|(key, value)| (format!("f:{key}"), tree(value)))
                .collect(),
        ),
        _ => Value::Object(Map::new()),
    }
}

/// The fields a JSON patch (RFC 6902) touches: each operation's path, down
/// to the first list index.
fn json_patch_tree(operations: &Value) -> Value {
    let mut root = Map::new();
    for operation in operations.as_array().into_iter().flatten() {
        let Some(path) = operation.get("path").and_then(Value::as_str) else {
            continue;
        };
        let mut node = &mut root;
        for token in path.split('/').skip(1) {
            let key = token.replace("~1", "/").replace("~0", "~");
            if key.parse::<usize>().is_ok() || key == "-" {
                break;
            }
            let entry = node
                .entry(format!("f:{key}"))
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = entry else { break };
            node = next;
        }
    }
    Value::Object(root)
}

/// The fields a write names: `document` is the patch (JSON patch when
/// `json_patch`) or the object sent, restricted to what the endpoint
/// changes (the main resource ignores status, `/status` only changes status
/// and metadata).
pub fn touched(document: &Value, json_patch: bool, subresource: Subresource) -> Value {
    let mut set = if json_patch {
        json_patch_tree(document)
    } else {
        tree(document)
    };
    if let Value::Object(map) = &mut set {
        map.remove("f:apiVersion");
        map.remove("f:kind");
        match subresource {
            Subresource::Main => {
                map.remove("f:status");
            }
            Subresource::Status => {
                map.remove("f:spec");
            }
        }
        if let Some(Value::Object(meta)) = map.get_mut("f:metadata") {
            for owned in SERVER_OWNED {
                meta.remove(&format!("f:{owned}"));
            }
        }
        if map
            .get("f:metadata")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            map.remove("f:metadata");
        }
    }
    set
}

/// The union of two `f:` trees.
fn merge(into: &mut Value, from: &Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        for (key, value) in from {
            match into.get_mut(key) {
                Some(existing) => merge(existing, value),
                None => {
                    into.insert(key.clone(), value.clone());
                }
            }
        }
    }
}

/// Adds `fields` to `manager`'s Update entry for `subresource` (creating
/// it), stamped now.
pub fn record(node: &mut Node, manager: &str, subresource: Subresource, fields: Value) {
    let subresource = match subresource {
        Subresource::Main => None,
        Subresource::Status => Some("status".to_string()),
    };
    let now =
        Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH));
    let entries = node.metadata.managed_fields.get_or_insert_with(Vec::new);
    let existing = entries.iter_mut().find(|entry| {
        entry.manager.as_deref() == Some(manager)
            && entry.operation.as_deref() == Some("Update")
            && entry.subresource == subresource
    });
    match existing {
        Some(entry) => {
            let mut set = entry
                .fields_v1
                .take()
                .map(|f| f.0)
                .unwrap_or_else(|| Value::Object(Map::new()));
            merge(&mut set, &fields);
            entry.fields_v1 = Some(FieldsV1(set));
            entry.time = Some(now);
        }
        None => entries.push(ManagedFieldsEntry {
            api_version: Some("v1".to_string()),
            fields_type: Some("FieldsV1".to_string()),
            fields_v1: Some(FieldsV1(fields)),
            manager: Some(manager.to_string()),
            operation: Some("Update".to_string()),
            subresource,
            time: Some(now),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_follow_the_request_document() {
        let patch = json!({"metadata": {"annotations": {"a/b": "1"}, "resourceVersion": "4"},
            "status": {"conditions": [{"type": "Ready"}]}, "spec": {"podCIDR": "x"}});
        assert_eq!(
            touched(&patch, false, Subresource::Status),
            json!({"f:metadata": {"f:annotations": {"f:a/b": {}}}, "f:status": {"f:conditions": {}}})
        );
        let ops = json!([{"op": "add", "path": "/metadata/labels/x~1y", "value": "1"},
            {"op": "replace", "path": "/spec/taints/0", "value": {}}]);
        assert_eq!(
            touched(&ops, true, Subresource::Main),
            json!({"f:metadata": {"f:labels": {"f:x/y": {}}}, "f:spec": {"f:taints": {}}})
        );
        let mut node = Node::default();
        record(
            &mut node,
            "flanneld",
            Subresource::Main,
            json!({"f:spec": {}}),
        );
        record(
            &mut node,
            "flanneld",
            Subresource::Main,
            json!({"f:metadata": {}}),
        );
        record(
            &mut node,
            "flanneld",
            Subresource::Status,
            json!({"f:status": {}}),
        );
        let entries = node.metadata.managed_fields.unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0].fields_v1.as_ref().unwrap().0,
            json!({"f:spec": {}, "f:metadata": {}})
        );
        assert_eq!(entries[1].subresource.as_deref(), Some("status"));
    }
}
