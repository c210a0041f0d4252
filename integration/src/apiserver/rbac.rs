//! Authorization: kube-apiserver's request attributes (verb, resource,
//! subresource, name or non-resource path), RBAC over ClusterRoles and
//! ClusterRoleBindings read from YAML, its `Forbidden` wording, and the
//! decision log.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use http::Method;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Subject};
use serde_json::{json, Value};

use super::auth::{UserInfo, AUTHENTICATED};
use super::status::ApiError;

/// The group kube-apiserver allows everything, whatever the roles say.
pub const MASTERS: &str = "system:masters";

/// The group of requests without credentials.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";

/// What a request asks to do, as kube-apiserver's RequestInfo sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A resource (`/api/v1/...`, `/apis/GROUP/VERSION/...`).
    Resource {
        /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
        /// `deletecollection`.
        verb: String,
        /// The API group ("" for core).
        api_group: String,
        /// `nodes`.
        resource: String,
        /// `status`, or "".
        subresource: String,
        /// The object's name, or "" (a list or watch of one name by field
        /// selector counts as that name, as in kube-apiserver).
        name: String,
        /// The namespace, or "" at the cluster scope.
        namespace: String,
    },
    /// Anything else (`/version`, `/api`, `/healthz`, ...).
    NonResource {
        /// The lowercase HTTP method.
        verb: String,
        /// The path.
        path: String,
    },
}

impl Target {
    /// The attributes of a request, as kube-apiserver's RequestInfoFactory
    /// derives them.
    pub fn of(method: &Method, path: &str, query: &BTreeMap<String, String>) -> Target {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let non_resource = || Target::NonResource {
            verb: method.as_str().to_ascii_lowercase(),
            path: path.to_string(),
        };
        if parts.len() < 3 {
            return non_resource();
        }
        let (api_group, mut rest) = match parts[0] {
            "api" => (String::new(), &parts[2..]),
            "apis" if parts.len() >= 4 => (parts[1].to_string(), &parts[3..]),
            _ => return non_resource(),
        };
        let mut watch_path = false;
        if rest.first() == Some(&"watch") {
            watch_path = true;
            rest = &rest[1..];
        }
        let mut namespace = String::new();
        if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
            namespace = rest[1].to_string();
            rest = &rest[2..];
        }
        let resource = rest.first().map(|s| s.to_string()).unwrap_or_default();
        let mut name = rest.get(1).map(|s| s.to_string()).unwrap_or_default();
        let subresource = rest.get(2).map(|s| s.to_string()).unwrap_or_default();
        let watch_param = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        let verb = match *method {
            Method::GET | Method::HEAD if watch_path || watch_param => "watch",
            Method::GET | Method::HEAD if name.is_empty() => "list",
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if name.is_empty() => "deletecollection",
            Method::DELETE => "delete",
            _ => "",
        };
        if matches!(verb, "list" | "watch") && name.is_empty() {
            if let Some(selected) = query
                .get("fieldSelector")
                .and_then(|s| s.strip_prefix("metadata.name="))
                .map(|s| s.trim_start_matches('='))
                .filter(|s| !s.contains(','))
            {
                name = selected.to_string();
            }
        }
        Target::Resource {
            verb: verb.to_string(),
            api_group,
            resource,
            subresource,
            name,
            namespace,
        }
    }
}

/// One authorization decision, as kept by `authz_log()` and written to
/// the `--authz-log` file (one JSON object a line).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuthzDecision {
    /// The user name.
    pub user: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// The verb (for non-resource paths the lowercase HTTP method).
    pub verb: String,
    /// The API group ("" for core; "" for non-resource paths).
    pub api_group: String,
    /// The resource ("" for non-resource paths).
    pub resource: String,
    /// The subresource, or "".
    pub subresource: String,
    /// The object's name, or "".
    pub name: String,
    /// The non-resource path, or "".
    pub path: String,
    /// Whether the request was let through.
    pub allowed: bool,
}

impl AuthzDecision {
    fn new(user: &UserInfo, target: &Target, allowed: bool) -> AuthzDecision {
        let mut decision = AuthzDecision {
            user: user.name.clone(),
            groups: user.groups.clone(),
            verb: String::new(),
            api_group: String::new(),
            resource: String::new(),
            subresource: String::new(),
            name: String::new(),
            path: String::new(),
            allowed,
        };
        match target {
            Target::Resource {
                verb,
                api_group,
                resource,
                subresource,
                name,
                ..
            } => {
                decision.verb = verb.clone();
                decision.api_group = api_group.clone();
                decision.resource = resource.clone();
                decision.subresource = subresource.clone();
                decision.name = name.clone();
            }
            Target::NonResource { verb, path } => {
                decision.verb = verb.clone();
                decision.path = path.clone();
            }
        }
        decision
    }
}

/// RBAC YAML that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RbacError {
    /// Not YAML.
    #[error("RBAC YAML: {0}")]
    Yaml(String),
    /// A document is not a valid ClusterRole or ClusterRoleBinding.
    #[error("RBAC YAML document {index} ({kind}): {message}")]
    Object {
        /// 0-based, in reading order (list items counted).
        index: usize,
        /// Its kind.
        kind: String,
        /// What is wrong.
        message: String,
    },
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// ClusterRoles by name and the ClusterRoleBindings.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    roles: BTreeMap<String, Vec<PolicyRule>>,
    bindings: Vec<ClusterRoleBinding>,
}

impl Policy {
    /// Reads ClusterRoles and ClusterRoleBindings from (multi-document) YAML;
    /// `kind: List` items are read in place; other kinds (ServiceAccounts,
    /// namespaced Roles, ...) are skipped: nothing here is namespaced.
    pub fn from_yaml(text: &str) -> Result<Policy, RbacError> {
        let documents: Vec<Value> =
            serde_saphyr::from_multiple(text).map_err(|e| RbacError::Yaml(e.to_string()))?;
        let mut objects = Vec::new();
        for document in documents {
            match document.get("kind").and_then(Value::as_str) {
                Some(kind) if kind.ends_with("List") => {
                    if let Some(Value::Array(items)) = document.get("items") {
                        objects.extend(items.iter().cloned());
                    }
                }
                _ if document.is_null() => {}
                _ => objects.push(document),
            }
        }
        let mut policy = Policy::default();
        for (index, object) in objects.into_iter().enumerate() {
            let kind = object
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let bad = |message: String| RbacError::Object {
                index,
                kind: kind.clone(),
                message,
            };
            match kind.as_str() {
                "ClusterRole" => {
                    let role: ClusterRole =
                        serde_json::from_value(object).map_err(|e| bad(e.to_string()))?;
                    let name = role
                        .metadata
                        .name
                        .clone()
                        .ok_or_else(|| bad("metadata.name is missing".into()))?;
                    policy.roles.insert(name, role.rules.unwrap_or_default());
                }
                "ClusterRoleBinding" => {
                    let binding: ClusterRoleBinding =
                        serde_json::from_value(object).map_err(|e| bad(e.to_string()))?;
                    policy.bindings.push(binding);
                }
                _ => {}
            }
        }
        Ok(policy)
    }

    /// The bootstrap roles the checks below always include: discovery for
    /// every authenticated user (`system:discovery`, `system:basic-user`),
    /// version and health for everyone (`system:public-info-viewer`).
    fn bootstrap() -> Policy {
        let rule = |urls: &[&str]| PolicyRule {
            non_resource_urls: Some(urls.iter().map(|s| s.to_string()).collect()),
            verbs: vec!["get".to_string()],
            ..Default::default()
        };
        let bind = |role: &str, groups: &[&str]| -> ClusterRoleBinding {
            ClusterRoleBinding {
                metadata: Default::default(),
                role_ref: k8s_openapi::api::rbac::v1::RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: role.into(),
                },
                subjects: Some(
                    groups
                        .iter()
                        .map(|g| Subject {
                            api_group: Some("rbac.authorization.k8s.io".into()),
                            kind: "Group".into(),
                            name: g.to_string(),
                            namespace: None,
                        })
                        .collect(),
                ),
            }
        };
        Policy {
            roles: BTreeMap::from([
                (
                    "system:discovery".to_string(),
                    vec![rule(&[
                        "/api",
                        "/api/*",
                        "/apis",
                        "/apis/*",
                        "/openapi",
                        "/openapi/*",
                        "/version",
                        "/version/",
                    ])],
                ),
                (
                    "system:public-info-viewer".to_string(),
                    vec![rule(&[
                        "/healthz",
                        "/livez",
                        "/readyz",
                        "/version",
                        "/version/",
                    ])],
                ),
            ]),
            bindings: vec![
                bind("system:discovery", &[AUTHENTICATED]),
                bind(
                    "system:public-info-viewer",
                    &[AUTHENTICATED, UNAUTHENTICATED],
                ),
            ],
        }
    }

    /// Whether some binding of `user` grants `target`.
    pub fn allows(&self, user: &UserInfo, target: &Target) -> bool {
        self.bindings.iter().any(|binding| {
            binding.role_ref.kind == "ClusterRole"
                && binding
                    .subjects
                    .iter()
                    .flatten()
                    .any(|subject| subject_matches(subject, user))
                && self
                    .roles
                    .get(&binding.role_ref.name)
                    .is_some_and(|rules| rules.iter().any(|rule| rule_matches(rule, target)))
        })
    }
}

fn subject_matches(subject: &Subject, user: &UserInfo) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == user.name,
        "Group" => user.groups.contains(&subject.name),
        "ServiceAccount" => {
            let namespace = subject.namespace.as_deref().unwrap_or("");
            user.name == format!("system:serviceaccount:{namespace}:{}", subject.name)
        }
        _ => false,
    }
}

fn has(list: &[String], wanted: &str) -> bool {
    list.iter().any(|item| item == "*" || item == wanted)
}

/// kube's `ResourceMatches`: `*`, `resource/subresource`, `*/subresource`.
fn resource_matches(rule_resources: &[String], resource: &str, subresource: &str) -> bool {
    let combined = if subresource.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}/{subresource}")
    };
    rule_resources.iter().any(|r| {
        r == "*"
            || *r == combined
            || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
    })
}

/// kube's `NonResourceURLMatches`: exact, `*`, or a prefix ending in `*`.
fn url_matches(rule_urls: &[String], path: &str) -> bool {
    rule_urls.iter().any(|u| {
        u == "*"
            || u == path
            || u.strip_suffix('*')
                .is_some_and(|prefix| path.starts_with(prefix))
    })
}

/// Whether one rule grants `target`.
pub fn rule_matches(rule: &PolicyRule, target: &Target) -> bool {
    match target {
        Target::Resource {
            verb,
            api_group,
            resource,
            subresource,
            name,
            ..
        } => {
            let names = rule.resource_names.as_deref().unwrap_or(&[]);
            has(&rule.verbs, verb)
                && has(rule.api_groups.as_deref().unwrap_or(&[]), api_group)
                && resource_matches(
                    rule.resources.as_deref().unwrap_or(&[]),
                    resource,
                    subresource,
                )
                && (names.is_empty() || (!name.is_empty() && names.iter().any(|n| n == name)))
        }
        Target::NonResource { verb, path } => {
            has(&rule.verbs, verb)
                && url_matches(rule.non_resource_urls.as_deref().unwrap_or(&[]), path)
        }
    }
}

/// 403 as kube-apiserver words it (`responsewriters.forbiddenMessage` and
/// `errors.NewForbidden`).
pub fn forbidden(user: &UserInfo, target: &Target) -> ApiError {
    match target {
        Target::Resource {
            verb,
            api_group,
            resource,
            subresource,
            name,
            namespace,
        } => {
            let shown = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            let scope = if namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace \"{namespace}\"")
            };
            let reason = format!(
                "User \"{}\" cannot {verb} resource \"{shown}\" in API group \"{api_group}\" {scope}",
                user.name
            );
            let qualified = if api_group.is_empty() {
                resource.clone()
            } else {
                format!("{resource}.{api_group}")
            };
            let message = if name.is_empty() {
                format!("{qualified} is forbidden: {reason}")
            } else {
                format!("{qualified} \"{name}\" is forbidden: {reason}")
            };
            let mut details = serde_json::Map::new();
            if !name.is_empty() {
                details.insert("name".into(), json!(name));
            }
            if !api_group.is_empty() {
                details.insert("group".into(), json!(api_group));
            }
            details.insert("kind".into(), json!(resource));
            ApiError::forbidden(message, Value::Object(details))
        }
        Target::NonResource { verb, path } => ApiError::forbidden(
            format!(
                "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
                user.name
            ),
            json!({}),
        ),
    }
}

/// Where the rules come from and what was decided.
pub struct Authorizer {
    /// None: every authenticated request is allowed (no RBAC).
    policy: Mutex<Option<Policy>>,
    bootstrap: Policy,
    file: Option<RbacFile>,
    log: Mutex<VecDeque<AuthzDecision>>,
    log_file: Option<Mutex<std::fs::File>>,
}

struct RbacFile {
    path: PathBuf,
    stamp: Mutex<Option<(SystemTime, u64)>>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// How many decisions the in-memory log keeps (the oldest go first).
const LOG_LIMIT: usize = 100_000;

fn read_policy(path: &Path) -> Result<Policy, RbacError> {
    let text = std::fs::read_to_string(path).map_err(|source| RbacError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Policy::from_yaml(&text)
}

impl Authorizer {
    /// RBAC from `file` or `yaml` when given (the file wins), else allow
    /// every authenticated request; decisions appended to `log_path`.
    pub fn new(
        file: Option<&Path>,
        yaml: Option<&str>,
        log_path: Option<&Path>,
    ) -> Result<Authorizer, super::Error> {
        let policy = match (file, yaml) {
            (Some(path), _) => Some(read_policy(path)?),
            (None, Some(text)) => Some(Policy::from_yaml(text)?),
            (None, None) => None,
        };
        let log_file = log_path
            .map(|path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| super::Error::File {
                        path: path.to_path_buf(),
                        source,
                    })
            })
            .transpose()?
            .map(Mutex::new);
        Ok(Authorizer {
            policy: Mutex::new(policy),
            bootstrap: Policy::bootstrap(),
            file: file.map(|path| RbacFile {
                path: path.to_path_buf(),
                stamp: Mutex::new(stamp(path)),
            }),
            log: Mutex::new(VecDeque::new()),
            log_file,
        })
    }

    /// Replaces the rules (RBAC on from now on).
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = Some(policy);
    }

    /// Re-reads the RBAC file when its modification time or length
    /// changed; a file that does not parse keeps the previous rules.
    fn reload(&self) {
        let Some(file) = &self.file else { return };
        let mut last = file.stamp.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&file.path);
        if now == *last {
            return;
        }
        match read_policy(&file.path) {
            Ok(policy) => {
                *last = now;
                self.set_policy(policy);
            }
            Err(error) => eprintln!("test-apiserver: keeping the previous RBAC rules: {error}"),
        }
    }

    /// Decides, logs the decision, and answers 403 when denied.
    pub fn authorize(&self, user: &UserInfo, target: &Target) -> Result<(), ApiError> {
        self.reload();
        let allowed = user.groups.iter().any(|g| g == MASTERS)
            || match &*self.policy.lock().unwrap_or_else(|p| p.into_inner()) {
                None => true,
                Some(policy) => policy.allows(user, target) || self.bootstrap.allows(user, target),
            };
        let decision = AuthzDecision::new(user, target, allowed);
        if let Some(file) = &self.log_file {
            if let Ok(mut line) = serde_json::to_vec(&decision) {
                line.push(b'\n');
                let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(error) = file.write_all(&line) {
                    eprintln!("test-apiserver: authorization log: {error}");
                }
            }
        }
        {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            if log.len() >= LOG_LIMIT {
                log.pop_front();
            }
            log.push_back(decision);
        }
        if allowed {
            Ok(())
        } else {
            Err(forbidden(user, target))
        }
    }

    /// The decisions so far, oldest first.
    pub fn log(&self) -> Vec<AuthzDecision> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNEL: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: flannel}
rules:
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [nodes/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get]
---
apiVersion: v1
kind: List
items:
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: flannel}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: flannel}
  subjects:
  - {kind: ServiceAccount, name: flannel, namespace: kube-flannel}
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRole
  metadata: {name: node-a-only}
  rules:
  - {apiGroups: [""], resources: [nodes], resourceNames: [node-a], verbs: [get, update]}
  - {apiGroups: ["*"], resources: ["*/status"], verbs: ["*"]}
  - {nonResourceURLs: ["/metrics", "/debug/*"], verbs: [get]}
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: node-a-only}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-a-only}
  subjects:
  - {kind: User, name: alice}
  - {kind: Group, name: ops}
"#;

    fn request(method: Method, path: &str, query: &[(&str, &str)]) -> Target {
        let query = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Target::of(&method, path, &query)
    }

    #[test]
    fn rbac_grants_exactly_what_the_roles_say() {
        let policy = Policy::from_yaml(FLANNEL).unwrap();
        let flannel = UserInfo::service_account("kube-flannel", "flannel");
        let other_sa = UserInfo::service_account("default", "flannel");
        let alice = UserInfo::new("alice", &[]);
        let ops = UserInfo::new("bob", &["ops"]);
        let nobody = UserInfo::new("nobody", &[]);
        use Method as M;
        type Case<'a> = (
            &'a UserInfo,
            Method,
            &'a str,
            &'a [(&'a str, &'a str)],
            bool,
        );
        let table: &[Case] = &[
            (&flannel, M::GET, "/api/v1/nodes", &[], true),
            (
                &flannel,
                M::GET,
                "/api/v1/nodes",
                &[("watch", "true")],
                true,
            ),
            (&flannel, M::GET, "/api/v1/watch/nodes/x", &[], true),
            (&flannel, M::GET, "/api/v1/nodes/node-a", &[], true),
            (&flannel, M::PATCH, "/api/v1/nodes/node-a/status", &[], true),
            (&flannel, M::PATCH, "/api/v1/nodes/node-a", &[], false),
            (&flannel, M::PUT, "/api/v1/nodes/node-a/status", &[], false),
            (&flannel, M::DELETE, "/api/v1/nodes/node-a", &[], false),
            (&flannel, M::GET, "/api/v1/namespaces/x/pods/p", &[], true),
            (&flannel, M::GET, "/api/v1/namespaces/x/pods", &[], false),
            (&flannel, M::GET, "/apis/apps/v1/deployments", &[], false),
            (&flannel, M::GET, "/metrics", &[], false),
            (&other_sa, M::GET, "/api/v1/nodes", &[], false),
            (&alice, M::GET, "/api/v1/nodes/node-a", &[], true),
            (&alice, M::PUT, "/api/v1/nodes/node-a", &[], true),
            (&alice, M::GET, "/api/v1/nodes/node-b", &[], false),
            (&alice, M::GET, "/api/v1/nodes", &[], false),
            (
                &alice,
                M::GET,
                "/api/v1/nodes",
                &[("fieldSelector", "metadata.name=node-a")],
                false,
            ),
            (&alice, M::DELETE, "/api/v1/nodes/node-b/status", &[], true),
            (
                &ops,
                M::PATCH,
                "/apis/apps/v1/namespaces/n/deployments/d/status",
                &[],
                true,
            ),
            (&ops, M::GET, "/metrics", &[], true),
            (&ops, M::GET, "/debug/pprof/heap", &[], true),
            (&ops, M::POST, "/metrics", &[], false),
            (&ops, M::GET, "/api/v1/nodes/node-a", &[], true),
            (&nobody, M::GET, "/api/v1/nodes", &[], false),
        ];
        for (user, method, path, query, allowed) in table {
            let target = request(method.clone(), path, query);
            assert_eq!(
                policy.allows(user, &target),
                *allowed,
                "{} {method} {path} {query:?} ({target:?})",
                user.name
            );
        }
    }

    #[test]
    fn list_by_name_selector_is_the_name() {
        let target = request(
            Method::GET,
            "/api/v1/nodes",
            &[("fieldSelector", "metadata.name=node-a"), ("watch", "1")],
        );
        let Target::Resource { verb, name, .. } = &target else {
            panic!("{target:?}")
        };
        assert_eq!((verb.as_str(), name.as_str()), ("watch", "node-a"));
        let yaml = "kind: ClusterRole\napiVersion: rbac.authorization.k8s.io/v1\nmetadata: {name: r}\nrules:\n- {apiGroups: [''], resources: [nodes], resourceNames: [node-a], verbs: [watch]}\n---\nkind: ClusterRoleBinding\napiVersion: rbac.authorization.k8s.io/v1\nmetadata: {name: r}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: r}\nsubjects: [{kind: User, name: u}]\n";
        let policy = Policy::from_yaml(yaml).unwrap();
        assert!(policy.allows(&UserInfo::new("u", &[]), &target));
    }

    #[test]
    fn masters_and_discovery_and_forbidden_wording() {
        let authorizer = Authorizer::new(None, Some(FLANNEL), None).unwrap();
        let admin = UserInfo::new("system:admin", &[MASTERS]);
        let delete = request(Method::DELETE, "/api/v1/nodes/node-a", &[]);
        assert!(authorizer.authorize(&admin, &delete).is_ok());
        let user = UserInfo::new("u", &[AUTHENTICATED]);
        assert!(authorizer
            .authorize(&user, &request(Method::GET, "/apis", &[]))
            .is_ok());
        assert!(authorizer
            .authorize(&user, &request(Method::GET, "/openapi/v3/api/v1", &[]))
            .is_ok());
        let flannel = UserInfo::service_account("kube-flannel", "flannel");
        let error = authorizer
            .authorize(
                &flannel,
                &request(Method::PATCH, "/api/v1/nodes/node-a", &[]),
            )
            .unwrap_err();
        assert_eq!(
            error.to_status(),
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "nodes \"node-a\" is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot patch resource \"nodes\" in API group \"\" at the cluster scope",
                "reason": "Forbidden", "details": {"name": "node-a", "kind": "nodes"}, "code": 403})
        );
        let error = authorizer
            .authorize(
                &user,
                &request(Method::GET, "/api/v1/nodes", &[("watch", "true")]),
            )
            .unwrap_err();
        assert_eq!(
            error.message,
            "nodes is forbidden: User \"u\" cannot watch resource \"nodes\" in API group \"\" at the cluster scope"
        );
        let error = authorizer
            .authorize(&user, &request(Method::GET, "/metrics", &[]))
            .unwrap_err();
        assert_eq!(
            error.to_status()["message"],
            "forbidden: User \"u\" cannot get path \"/metrics\""
        );
        assert_eq!(error.to_status()["details"], json!({}));
        let log = authorizer.log();
        assert_eq!(log.len(), 6);
        assert!(log[0].allowed && !log[3].allowed);
        assert_eq!(
            (
                log[3].verb.as_str(),
                log[3].resource.as_str(),
                log[3].name.as_str()
            ),
            ("patch", "nodes", "node-a")
        );
    }
}
