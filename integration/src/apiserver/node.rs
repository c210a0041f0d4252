//! What the real API server does to a Node on its way in: decoding (with
//! unknown-field detection for `fieldValidation`), the v1 conversion quirk of
//! `podCIDR`/`podCIDRs`, the create/update strategies of
//! `pkg/registry/core/node/strategy.go`, and the part of `ValidateNode` /
//! `ValidateNodeUpdate` that clients can trip over.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use serde_json::Value;

use super::status::{field_forbidden, field_invalid, field_required, ApiError};

/// Which endpoint a write came through: the strategies differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `/api/v1/nodes/NAME`: status changes are dropped
    /// (`nodeStrategy.PrepareForUpdate` copies the old status).
    Main,
    /// `/api/v1/nodes/NAME/status`: spec changes are dropped
    /// (`nodeStatusStrategy.PrepareForUpdate` copies the old spec); metadata
    /// changes (labels, annotations) are kept, which is what flannel and k3s
    /// rely on when they patch annotations through `nodes/status`.
    Status,
}

/// Decodes a request body (already parsed as JSON) into a Node, the way the
/// API server's JSON decoder would: wrong types are a 400, unknown fields are
/// returned as paths (`spec.foo`) for the `fieldValidation` handling.
pub fn decode(mut value: Value) -> Result<(Node, Vec<String>), ApiError> {
    let Some(map) = value.as_object_mut() else {
        return Err(ApiError::bad_request(
            "Node in version \"v1\" cannot be handled as a Node: the request body is not a JSON object",
        ));
    };
    match map.get("apiVersion") {
        None | Some(Value::Null) => {
            map.insert("apiVersion".into(), Value::from("v1"));
        }
        Some(Value::String(v)) if v == "v1" => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version (v1)",
                other.as_str().unwrap_or("?")
            )))
        }
    }
    match map.get("kind") {
        None | Some(Value::Null) => {
            map.insert("kind".into(), Value::from("Node"));
        }
        Some(Value::String(k)) if k == "Node" => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Node in version \"v1\" cannot be handled as a Node: the kind in the data ({}) does not match the expected kind (Node)",
                other.as_str().unwrap_or("?")
            )))
        }
    }
    let node: Node = serde_json::from_value(value.clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "Node in version \"v1\" cannot be handled as a Node: {e}"
        ))
    })?;
    // Whatever the typed round trip drops was not a field of v1.Node.
    let known = serde_json::to_value(&node).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut unknown = Vec::new();
    unknown_fields(&value, &known, "", &mut unknown);
    Ok((node, unknown))
}

/// Collects the paths of object keys present in `input` but not in `known`.
fn unknown_fields(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(input), Value::Object(known)) => {
            for (key, value) in input {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match known.get(key) {
                    Some(k) => unknown_fields(value, k, &child, out),
                    None if value.is_null() => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(input), Value::Array(known)) => {
            for (i, (value, k)) in input.iter().zip(known.iter()).enumerate() {
                unknown_fields(value, k, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The message of a strict-decoding failure, as the API server words it.
pub fn strict_error(unknown: &[String]) -> ApiError {
    let fields: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    ApiError::bad_request(format!(
        "Node in version \"v1\" cannot be handled as a Node: strict decoding error: {}",
        fields.join(", ")
    ))
}

/// Conversion and defaulting the API server applies to every stored Node:
/// the internal type only has `podCIDRs`, so v1 `podCIDR` is always
/// `podCIDRs[0]` on the way out and `podCIDRs` wins on the way in; empty
/// maps and lists are dropped like Go's `omitempty` does; `spec` and
/// `status` are always present.
pub fn normalize(node: &mut Node) {
    let meta = &mut node.metadata;
    if meta.labels.as_ref().is_some_and(|m| m.is_empty()) {
        meta.labels = None;
    }
    if meta.annotations.as_ref().is_some_and(|m| m.is_empty()) {
        meta.annotations = None;
    }
    if meta.finalizers.as_ref().is_some_and(|m| m.is_empty()) {
        meta.finalizers = None;
    }
    if meta.owner_references.as_ref().is_some_and(|m| m.is_empty()) {
        meta.owner_references = None;
    }
    if meta.namespace.as_deref() == Some("") {
        meta.namespace = None;
    }
    let spec = node.spec.get_or_insert_with(NodeSpec::default);
    let cidrs: Vec<String> = spec.pod_cidrs.clone().unwrap_or_default();
    if let Some(first) = cidrs.first() {
        spec.pod_cidr = Some(first.clone());
    } else if let Some(cidr) = spec.pod_cidr.clone().filter(|c| !c.is_empty()) {
        spec.pod_cidrs = Some(vec![cidr]);
    } else {
        spec.pod_cidr = None;
        spec.pod_cidrs = None;
    }
    if spec.taints.as_ref().is_some_and(|t| t.is_empty()) {
        spec.taints = None;
    }
    if spec.provider_id.as_deref() == Some("") {
        spec.provider_id = None;
    }
    if spec.unschedulable == Some(false) {
        spec.unschedulable = None;
    }
    node.status.get_or_insert_with(NodeStatus::default);
}

/// `nodeStrategy.PrepareForCreate` + `rest.BeforeCreate`: everything the
/// client sent is kept (Nodes may be created with a status), except the
/// fields the server owns.
pub fn prepare_for_create(node: &mut Node) {
    if let Some(spec) = node.spec.as_mut() {
        spec.config_source = None;
    }
    if let Some(status) = node.status.as_mut() {
        status.config = None;
    }
    let meta = &mut node.metadata;
    meta.namespace = None;
    meta.deletion_timestamp = None;
    meta.deletion_grace_period_seconds = None;
    meta.generation = None;
    meta.self_link = None;
    meta.managed_fields = None;
}

/// `nodeStrategy.PrepareForUpdate` / `nodeStatusStrategy.PrepareForUpdate`
/// plus `rest.BeforeUpdate`: which half of the object an endpoint may change,
/// and the metadata the server owns.
pub fn prepare_for_update(new: &mut Node, old: &Node, subresource: Subresource) {
    match subresource {
        Subresource::Main => new.status = old.status.clone(),
        Subresource::Status => {
            new.spec = old.spec.clone();
            if old
                .status
                .as_ref()
                .and_then(|s| s.config.as_ref())
                .is_none()
            {
                if let Some(status) = new.status.as_mut() {
                    status.config = None;
                }
            }
        }
    }
    if subresource == Subresource::Main
        && old
            .spec
            .as_ref()
            .and_then(|s| s.config_source.as_ref())
            .is_none()
    {
        if let Some(spec) = new.spec.as_mut() {
            spec.config_source = None;
        }
    }
    let meta = &mut new.metadata;
    let old_meta = &old.metadata;
    meta.uid = old_meta.uid.clone();
    meta.creation_timestamp = old_meta.creation_timestamp.clone();
    meta.deletion_timestamp = old_meta.deletion_timestamp.clone();
    meta.deletion_grace_period_seconds = old_meta.deletion_grace_period_seconds;
    meta.generation = old_meta.generation;
    meta.namespace = None;
    meta.self_link = None;
    // The writer's entry is added by the handler (see `managed.rs`).
    meta.managed_fields = old_meta.managed_fields.clone();
}

/// The checks of `ValidateNode` that a test can plausibly trip: name,
/// label and annotation keys, Pod CIDRs, taints.
pub fn validate(node: &Node) -> Result<(), ApiError> {
    let name = node.metadata.name.as_deref().unwrap_or("");
    let mut causes = Vec::new();
    if name.is_empty() {
        causes.push(field_required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if let Err(detail) = dns_subdomain(name) {
        causes.push(field_invalid("metadata.name", name, &detail));
    }
    for (key, value) in node.metadata.labels.iter().flatten() {
        if let Err(detail) = qualified_name(key) {
            causes.push(field_invalid("metadata.labels", key, &detail));
        }
        if let Err(detail) = label_value(value) {
            causes.push(field_invalid("metadata.labels", value, &detail));
        }
    }
    for key in node.metadata.annotations.iter().flatten().map(|(k, _)| k) {
        if let Err(detail) = qualified_name(&key.to_lowercase()) {
            causes.push(field_invalid("metadata.annotations", key, &detail));
        }
    }
    if let Some(spec) = &node.spec {
        let cidrs = spec.pod_cidrs.clone().unwrap_or_default();
        let mut families = Vec::new();
        for (i, cidr) in cidrs.iter().enumerate() {
            match parse_cidr(cidr) {
                Some(ip) => families.push(ip.is_ipv4()),
                None => causes.push(field_invalid(
                    &format!("spec.podCIDRs[{i}]"),
                    cidr,
                    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                )),
            }
        }
        let same_family = families.len() == 2 && families[0] == families[1];
        if cidrs.len() > 2 || same_family {
            causes.push(field_invalid(
                "spec.podCIDRs",
                &cidrs.join(","),
                "may specify no more than one CIDR for each IP family",
            ));
        }
        for (i, taint) in spec.taints.iter().flatten().enumerate() {
            if taint.key.is_empty() {
                causes.push(field_required(&format!("spec.taints[{i}].key"), ""));
            } else if let Err(detail) = qualified_name(&taint.key) {
                causes.push(field_invalid(
                    &format!("spec.taints[{i}].key"),
                    &taint.key,
                    &detail,
                ));
            }
            if !matches!(
                taint.effect.as_str(),
                "NoSchedule" | "PreferNoSchedule" | "NoExecute"
            ) {
                causes.push((
                    "FieldValueNotSupported".into(),
                    format!("spec.taints[{i}].effect"),
                    format!(
                        "Unsupported value: \"{}\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"",
                        taint.effect
                    ),
                ));
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(name, causes))
    }
}

/// `ValidateNodeUpdate`: Pod CIDRs and the provider ID may only go from
/// unset to set.
pub fn validate_update(new: &Node, old: &Node) -> Result<(), ApiError> {
    let name = new.metadata.name.as_deref().unwrap_or("");
    let mut causes = Vec::new();
    let cidrs = |n: &Node| {
        n.spec
            .as_ref()
            .and_then(|s| s.pod_cidrs.clone())
            .unwrap_or_default()
    };
    let (old_cidrs, new_cidrs) = (cidrs(old), cidrs(new));
    if !old_cidrs.is_empty() && old_cidrs != new_cidrs {
        causes.push(field_forbidden(
            "spec.podCIDRs",
            "node updates may not change podCIDR except from \"\" to valid",
        ));
    }
    let provider = |n: &Node| n.spec.as_ref().and_then(|s| s.provider_id.clone());
    if let Some(old_id) = provider(old) {
        if provider(new).as_deref() != Some(old_id.as_str()) {
            causes.push(field_forbidden(
                "spec.providerID",
                "node updates may not change providerID except from \"\" to valid",
            ));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(name, causes))
    }
}

/// An address/prefix pair; `None` when it is not a CIDR.
pub fn parse_cidr(text: &str) -> Option<IpAddr> {
    let (ip, prefix) = text.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(ip)
}

const DNS_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn dns_subdomain(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    let ok = name.split('.').all(|part| {
        let bytes = part.as_bytes();
        !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    });
    if ok {
        Ok(())
    } else {
        Err(DNS_SUBDOMAIN_MSG.into())
    }
}

/// `[prefix/]name` of labels, annotations and taint keys.
fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("prefix part must be non-empty".into());
        }
        dns_subdomain(prefix).map_err(|e| format!("prefix part {e}"))?;
    }
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if valid {
        Ok(())
    } else {
        Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into())
    }
}

fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    let valid = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric();
    if valid {
        Ok(())
    } else {
        Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_reported_by_path() {
        let (_, unknown) = decode(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "a", "labelz": {}},
            "spec": {"podCIDR": "10.0.0.0/24", "foo": 1},
            "status": {"conditions": [{"type": "Ready", "status": "True", "bar": true}]},
        }))
        .unwrap();
        assert_eq!(
            unknown,
            ["metadata.labelz", "spec.foo", "status.conditions[0].bar"]
        );
    }

    #[test]
    fn pod_cidrs_win_over_pod_cidr() {
        let (mut node, _) =
            decode(json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.0.0.0/24"}})).unwrap();
        normalize(&mut node);
        let spec = node.spec.as_ref().unwrap();
        assert_eq!(
            spec.pod_cidrs.as_deref(),
            Some(&["10.0.0.0/24".to_string()][..])
        );
        let (mut node, _) = decode(json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.1.0.0/24"]}})).unwrap();
        normalize(&mut node);
        assert_eq!(node.spec.unwrap().pod_cidr.as_deref(), Some("10.1.0.0/24"));
    }

    #[test]
    fn validation_catches_bad_names_and_cidrs() {
        let (node, _) = decode(json!({"metadata": {"name": "Bad_Name"}, "spec": {"podCIDRs": ["10.0.0.0/24", "10.1.0.0/24"]}})).unwrap();
        let error = validate(&node).unwrap_err();
        assert_eq!(error.code, 422);
        assert!(
            error
                .message
                .starts_with("Node \"Bad_Name\" is invalid: [metadata.name: Invalid value"),
            "{}",
            error.message
        );
        assert!(error
            .message
            .contains("no more than one CIDR for each IP family"));
    }
}
