//! The three patch formats the API server accepts for a built-in type:
//! JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge
//! patch, the latter with the Node's patch strategies written out below
//! (from the `patchStrategy`/`patchMergeKey` tags of `k8s.io/api/core/v1`
//! and `metav1.ObjectMeta`).

use serde_json::{Map, Value};

use super::status::ApiError;

/// The patch content types, as in the `Content-Type` header.
pub const MERGE: &str = "application/merge-patch+json";
/// RFC 6902.
pub const JSON: &str = "application/json-patch+json";
/// Strategic merge patch.
pub const STRATEGIC: &str = "application/strategic-merge-patch+json";

/// Applies `patch` (raw body) of `content_type` to `target`.
pub fn apply(content_type: &str, target: &mut Value, patch: &[u8]) -> Result<(), ApiError> {
    match content_type {
        MERGE => {
            let patch: Value = parse(patch)?;
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: json: cannot unmarshal into Go value of type map[string]interface {}",
                ));
            }
            json_patch::merge(target, &patch);
            Ok(())
        }
        JSON => {
            let ops: json_patch::Patch = serde_json::from_slice(patch)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(target, &ops).map_err(|e| ApiError::unprocessable(e.to_string()))
        }
        STRATEGIC => {
            let patch: Value = parse(patch)?;
            let Value::Object(patch) = patch else {
                return Err(ApiError::bad_request(
                    "error decoding patch: json: cannot unmarshal into Go value of type map[string]interface {}",
                ));
            };
            let Value::Object(map) = target else {
                return Err(ApiError::internal("stored object is not a JSON object"));
            };
            merge_map(map, patch, "")
        }
        _ => Err(ApiError::unsupported_media_type(&[JSON, MERGE, STRATEGIC])),
    }
}

fn parse(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

/// How a list field is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListStrategy {
    /// No patch strategy: the patch's list replaces the list (atomic).
    Replace,
    /// `patchStrategy:"merge"` on a list of scalars: set union.
    MergeScalars,
    /// `patchStrategy:"merge"` with `patchMergeKey`: elements merged by key.
    MergeByKey(&'static str),
}

/// The patch strategies of Node's list fields, by path. Every list not named
/// here is atomic: `spec.taints` (no patchStrategy tag), `status.images`,
/// `status.volumesInUse`, `status.volumesAttached`, `status.runtimeHandlers`.
fn strategy(path: &str) -> ListStrategy {
    match path {
        "status.conditions" | "status.addresses" => ListStrategy::MergeByKey("type"),
        "metadata.ownerReferences" => ListStrategy::MergeByKey("uid"),
        "metadata.finalizers" | "spec.podCIDRs" => ListStrategy::MergeScalars,
        _ => ListStrategy::Replace,
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

/// Strategic merge of a map: `null` deletes, maps recurse, lists follow
/// their strategy, and the directives `$patch` (replace/delete/merge),
/// `$retainKeys`, `$deleteFromPrimitiveList/<field>` are honoured;
/// `$setElementOrder/<field>` only orders elements in the real server and is
/// accepted and ignored here.
fn merge_map(
    target: &mut Map<String, Value>,
    mut patch: Map<String, Value>,
    path: &str,
) -> Result<(), ApiError> {
    match patch.remove(DIRECTIVE) {
        None => {}
        Some(Value::String(d)) if d == "replace" => {
            strip_directives(&mut patch);
            *target = patch;
            return Ok(());
        }
        Some(Value::String(d)) if d == "delete" => {
            target.clear();
            return Ok(());
        }
        Some(Value::String(d)) if d == "merge" => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch type: {other} in map: {}",
                Value::Object(patch)
            )))
        }
    }
    let retain = match patch.remove(RETAIN_KEYS) {
        None => None,
        Some(Value::Array(keys)) => Some(
            keys.into_iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect::<Vec<_>>(),
        ),
        Some(_) => {
            return Err(ApiError::bad_request(
                "$retainKeys must be a list of strings",
            ));
        }
    };
    // Deletions from primitive lists apply before the list's own patch.
    let keys: Vec<String> = patch.keys().cloned().collect();
    for key in keys {
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE) {
            let Some(Value::Array(remove)) = patch.remove(&key) else {
                return Err(ApiError::bad_request(format!("{key} must be a list")));
            };
            if let Some(Value::Array(list)) = target.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
        } else if key.starts_with(SET_ORDER) {
            patch.remove(&key);
        }
    }
    for (key, value) in patch {
        let path = child(path, &key);
        match value {
            Value::Null => {
                target.remove(&key);
            }
            Value::Object(sub) => match target.get_mut(&key) {
                Some(Value::Object(existing)) => merge_map(existing, sub, &path)?,
                _ => {
                    // Nothing to merge with: the patch's map, without
                    // directives, is the new value (a `$patch: delete` map
                    // deletes the key).
                    if sub.get(DIRECTIVE).and_then(Value::as_str) == Some("delete") {
                        target.remove(&key);
                    } else {
                        let mut fresh = Map::new();
                        merge_map(&mut fresh, sub, &path)?;
                        target.insert(key, Value::Object(fresh));
                    }
                }
            },
            Value::Array(items) => {
                let merged = match target.remove(&key) {
                    Some(Value::Array(existing)) => merge_list(existing, items, &path)?,
                    _ => merge_list(Vec::new(), items, &path)?,
                };
                target.insert(key, Value::Array(merged));
            }
            scalar => {
                target.insert(key, scalar);
            }
        }
    }
    if let Some(retain) = retain {
        target.retain(|k, _| retain.iter().any(|r| r == k));
    }
    Ok(())
}

fn merge_list(
    mut existing: Vec<Value>,
    patch: Vec<Value>,
    path: &str,
) -> Result<Vec<Value>, ApiError> {
    // `{"$patch": "replace"}` as an element replaces the whole list with the
    // other elements, whatever the strategy.
    let replace = patch
        .iter()
        .any(|v| v.get(DIRECTIVE).and_then(Value::as_str) == Some("replace"));
    if replace {
        return Ok(patch
            .into_iter()
            .filter(|v| v.get(DIRECTIVE).is_none())
            .map(|mut v| {
                if let Value::Object(map) = &mut v {
                    strip_directives(map);
                }
                v
            })
            .collect());
    }
    match strategy(path) {
        ListStrategy::Replace => Ok(patch
            .into_iter()
            .map(|mut v| {
                if let Value::Object(map) = &mut v {
                    strip_directives(map);
                }
                v
            })
            .collect()),
        ListStrategy::MergeScalars => {
            for value in patch {
                if !existing.contains(&value) {
                    existing.push(value);
                }
            }
            Ok(existing)
        }
        ListStrategy::MergeByKey(merge_key) => {
            for element in patch {
                let Value::Object(mut element) = element else {
                    return Err(ApiError::bad_request(format!(
                        "{path}: the list's elements must be maps with the merge key {merge_key:?}"
                    )));
                };
                let Some(key) = element.get(merge_key).cloned() else {
                    return Err(ApiError::bad_request(format!(
                        "map: {} does not contain declared merge key: {merge_key}",
                        Value::Object(element)
                    )));
                };
                let position = existing.iter().position(|v| v.get(merge_key) == Some(&key));
                match element.get(DIRECTIVE).and_then(Value::as_str) {
                    Some("delete") => {
                        existing.retain(|v| v.get(merge_key) != Some(&key));
                        continue;
                    }
                    Some("replace") => {
                        element.remove(DIRECTIVE);
                        strip_directives(&mut element);
                        match position {
                            Some(i) => existing[i] = Value::Object(element),
                            None => existing.push(Value::Object(element)),
                        }
                        continue;
                    }
                    _ => {}
                }
                match position.and_then(|i| existing.get_mut(i)) {
                    Some(Value::Object(current)) => merge_map(current, element, path)?,
                    _ => {
                        let mut fresh = Map::new();
                        merge_map(&mut fresh, element, path)?;
                        existing.push(Value::Object(fresh));
                    }
                }
            }
            Ok(existing)
        }
    }
}

/// Removes directive keys from a value that is stored as is.
fn strip_directives(map: &mut Map<String, Value>) {
    map.retain(|k, _| !k.starts_with('$'));
    for value in map.values_mut() {
        if let Value::Object(sub) = value {
            strip_directives(sub);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(target: Value, patch: Value) -> Value {
        let mut target = target;
        apply(STRATEGIC, &mut target, patch.to_string().as_bytes()).unwrap();
        target
    }

    #[test]
    fn conditions_merge_by_type() {
        let node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "NetworkUnavailable", "status": "True", "reason": "NoRoute"},
        ]}});
        let patched = smp(
            node,
            json!({"status": {"conditions": [
                {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp"},
                {"type": "MemoryPressure", "status": "False"},
            ]}}),
        );
        assert_eq!(
            patched,
            json!({"status": {"conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp"},
                {"type": "MemoryPressure", "status": "False"},
            ]}})
        );
    }

    #[test]
    fn delete_directive_and_null() {
        let node = json!({"metadata": {"annotations": {"a": "1", "b": "2"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "n"}]}});
        let patched = smp(
            node,
            json!({"metadata": {"annotations": {"a": null}},
            "status": {"addresses": [{"type": "Hostname", "$patch": "delete"}], "$setElementOrder/addresses": [{"type": "InternalIP"}]}}),
        );
        assert_eq!(
            patched,
            json!({"metadata": {"annotations": {"b": "2"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}})
        );
    }

    #[test]
    fn taints_are_atomic_and_pod_cidrs_a_set() {
        let node = json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}], "podCIDRs": ["10.0.0.0/24"]}});
        let patched = smp(
            node,
            json!({"spec": {"taints": [{"key": "b", "effect": "NoExecute"}], "podCIDRs": ["10.0.0.0/24", "fd00::/64"]}}),
        );
        assert_eq!(
            patched,
            json!({"spec": {"taints": [{"key": "b", "effect": "NoExecute"}], "podCIDRs": ["10.0.0.0/24", "fd00::/64"]}})
        );
    }

    #[test]
    fn retain_keys_and_replace() {
        let patched = smp(
            json!({"spec": {"a": 1, "b": 2}}),
            json!({"spec": {"$retainKeys": ["b", "c"], "c": 3}}),
        );
        assert_eq!(patched, json!({"spec": {"b": 2, "c": 3}}));
        let patched = smp(
            json!({"spec": {"a": 1, "b": 2}}),
            json!({"spec": {"$patch": "replace", "c": 3}}),
        );
        assert_eq!(patched, json!({"spec": {"c": 3}}));
    }

    #[test]
    fn merge_and_json_patch() {
        let mut doc =
            json!({"spec": {"taints": [{"key": "a"}]}, "metadata": {"labels": {"x": "1"}}});
        apply(
            MERGE,
            &mut doc,
            br#"{"metadata":{"labels":{"x":null,"y":"2"}},"spec":{"taints":null}}"#,
        )
        .unwrap();
        assert_eq!(doc, json!({"spec": {}, "metadata": {"labels": {"y": "2"}}}));
        apply(
            JSON,
            &mut doc,
            br#"[{"op":"add","path":"/spec/podCIDR","value":"10.0.0.0/24"}]"#,
        )
        .unwrap();
        assert_eq!(doc["spec"]["podCIDR"], "10.0.0.0/24");
        let error = apply(
            JSON,
            &mut doc,
            br#"[{"op":"remove","path":"/spec/nothing"}]"#,
        )
        .unwrap_err();
        assert_eq!(error.code, 422);
        assert_eq!(
            apply("application/apply-patch+yaml", &mut doc, b"{}")
                .unwrap_err()
                .code,
            415
        );
    }
}
