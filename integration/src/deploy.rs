//! The shipped deployment files under `integration/deploy/`, read the way
//! the cluster would read them: the manifest's documents as Kubernetes
//! objects, `$(VAR)` expansion as kubelet does it, and the image name
//! `integration/build-image.sh` gives the archive.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar};
use serde_json::Value;

/// The one file a user applies.
pub const MANIFEST: &str = include_str!("../deploy/flannel-embed.yaml");
/// The ClusterRole and its binding (the RBAC tests load this file).
pub const RBAC: &str = include_str!("../deploy/rbac.yaml");
/// kind's cluster config.
pub const KIND_CONFIG: &str = include_str!("../deploy/kind-config.yaml");
/// k3d's cluster config.
pub const K3D_CONFIG: &str = include_str!("../deploy/k3d-config.yaml");

/// The documents of a multi-document YAML text, as JSON values (comment-only
/// documents skipped).
pub fn documents(yaml: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (index, document) in yaml.split("\n---").enumerate() {
        let value: Value =
            serde_saphyr::from_str(document).map_err(|e| format!("document {index}: {e}"))?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// The manifest's document of `kind`, as `T`.
pub fn object<T: serde::de::DeserializeOwned>(kind: &str) -> Result<T, String> {
    let documents = documents(MANIFEST)?;
    let mut found = documents.into_iter().filter(|d| d["kind"] == kind);
    let value = found
        .next()
        .ok_or_else(|| format!("the manifest has no {kind}"))?;
    if found.next().is_some() {
        return Err(format!("the manifest has more than one {kind}"));
    }
    serde_json::from_value(value).map_err(|e| format!("the manifest's {kind}: {e}"))
}

/// The manifest's DaemonSet and ConfigMap.
pub fn daemonset_and_configmap() -> Result<(DaemonSet, ConfigMap), String> {
    Ok((object("DaemonSet")?, object("ConfigMap")?))
}

/// The version `integration/build-image.sh` tags the image with: the
/// library package's version in the top-level Cargo.toml.
pub fn image_version() -> Result<String, String> {
    let path = crate::builds::repo_dir().join("Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .find_map(|line| {
            line.strip_prefix("version = \"")
                .and_then(|rest| rest.strip_suffix('"'))
        })
        .map(str::to_string)
        .ok_or_else(|| format!("{}: no version line", path.display()))
}

/// The name the image archive carries (`io.containerd.image.name`).
pub fn image_name() -> Result<String, String> {
    Ok(format!(
        "docker.io/library/flannel-embed:{}",
        image_version()?
    ))
}

/// A container's environment as kubelet resolves it for one node: literal
/// values, `spec.nodeName` from the downward API, ConfigMap keys.
pub fn container_env(
    container: &Container,
    configmap: &ConfigMap,
    node_name: &str,
) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for var in container.env.iter().flatten() {
        env.insert(var.name.clone(), env_value(var, configmap, node_name)?);
    }
    Ok(env)
}

fn env_value(var: &EnvVar, configmap: &ConfigMap, node_name: &str) -> Result<String, String> {
    if let Some(value) = &var.value {
        return Ok(value.clone());
    }
    let from = var
        .value_from
        .as_ref()
        .ok_or_else(|| format!("env {} has neither value nor valueFrom", var.name))?;
    if let Some(field) = &from.field_ref {
        return match field.field_path.as_str() {
            "spec.nodeName" => Ok(node_name.to_string()),
            other => Err(format!("env {}: unsupported fieldPath {other}", var.name)),
        };
    }
    if let Some(key) = &from.config_map_key_ref {
        if Some(&key.name) != configmap.metadata.name.as_ref() {
            return Err(format!(
                "env {} names ConfigMap {}, not the manifest's",
                var.name, key.name
            ));
        }
        return configmap
            .data
            .as_ref()
            .and_then(|d| d.get(&key.key))
            .cloned()
            .ok_or_else(|| format!("env {}: the ConfigMap has no key {}", var.name, key.key));
    }
    Err(format!("env {}: unsupported valueFrom", var.name))
}

/// `command` + `args` with `$(VAR)` expanded from `env` as Kubernetes
/// does (`$$` is a literal `$`; an unknown `$(VAR)` stays as written).
pub fn command_line(container: &Container, env: &BTreeMap<String, String>) -> Vec<String> {
    container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .map(|a| expand(a, env))
        .collect()
}

/// Kubernetes' `$(VAR)` expansion.
pub fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out += &rest[..at];
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(close) = rest.strip_prefix("$(").and_then(|r| r.find(')')) {
            let name = &rest[2..2 + close];
            match env.get(name) {
                Some(value) => out += value,
                None => out += &rest[..close + 3],
            }
            rest = &rest[close + 3..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out + rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_as_kubernetes_does_it() {
        let env: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into();
        for (text, want) in [
            ("--a=$(A)", "--a=x"),
            ("$(A)$(A)", "xx"),
            ("$(B)", "$(B)"),
            ("$$(A)", "$(A)"),
            ("cost $5", "cost $5"),
            ("$(A", "$(A"),
        ] {
            assert_eq!(expand(text, &env), want, "{text}");
        }
    }
}
