//! How the lab's API server is secured and how each agent authenticates:
//! HTTPS from the server's own CA (ECDSA as k3s, or RSA as kind), RBAC from
//! the shipped `integration/deploy/rbac.yaml`, and per node one of the
//! credentials a real agent has: a client-certificate kubeconfig (k3s), a
//! bearer-token kubeconfig, or the in-cluster service-account directory
//! plus `KUBERNETES_SERVICE_HOST/PORT` (a DaemonSet pod).
//!
//! Files, under the lab directory:
//!
//! ```text
//! auth/ca.crt            the server's CA (written by test-apiserver)
//! auth/rbac.yaml         the shipped ClusterRole + bindings (edit it: the
//!                        server re-reads it)
//! auth/tokens.csv        kube-apiserver --token-auth-file (re-read)
//! auth/node-N.kubeconfig a node's kubeconfig (client-cert and token kinds)
//! nodes/N/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}
//!                        (in-cluster kind; the agent's /run)
//! logs/authz.jsonl       every authorization decision, one JSON per line
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::LabError;
use crate::apiserver::{random_token, AuthzDecision};

/// The ClusterRole flannel-embed ships (and its ServiceAccount binding).
pub const SHIPPED_RBAC: &str = include_str!("../../deploy/rbac.yaml");

/// The service account in-cluster and token agents run as (the subject of
/// the shipped binding).
pub const SERVICE_ACCOUNT: (&str, &str) = ("kube-flannel", "flannel");

/// The group client-certificate agents carry; the lab binds it to the
/// shipped ClusterRole (as k3s binds its own controller user).
pub const CERT_GROUP: &str = "flannel-lab-nodes";

/// The lab's own binding for client-certificate agents, appended to the
/// shipped file.
const CERT_BINDING: &str = "---
# flannel-lab: agents with a client certificate (O=flannel-lab-nodes) get
# the shipped ClusterRole too.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: flannel-lab-nodes
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: flannel
subjects:
  - kind: Group
    apiGroup: rbac.authorization.k8s.io
    name: flannel-lab-nodes
";

/// How an agent authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentCredential {
    /// A kubeconfig with a client certificate (user `flannel:<node>`,
    /// group [`CERT_GROUP`]), as k3s gives its agents.
    #[default]
    ClientCert,
    /// A kubeconfig with the service account's bearer token embedded.
    Token,
    /// No kubeconfig: the service-account directory under the agent's
    /// `/run/secrets` and `KUBERNETES_SERVICE_HOST/PORT`, as in a pod.
    InCluster,
}

impl std::str::FromStr for AgentCredential {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "client-cert" => Ok(AgentCredential::ClientCert),
            "token" => Ok(AgentCredential::Token),
            "in-cluster" => Ok(AgentCredential::InCluster),
            other => Err(format!(
                "unknown agent credential {other:?}: use client-cert, token or in-cluster"
            )),
        }
    }
}

/// The lab API server's security.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiSecurity {
    /// `ecdsa` or `rsa` for HTTPS with that key algorithm; `None` for the
    /// old plain-HTTP server without authentication.
    pub tls: Option<String>,
    /// How the agents authenticate (HTTPS only).
    pub credential: AgentCredential,
}

impl Default for ApiSecurity {
    fn default() -> Self {
        ApiSecurity {
            tls: Some("ecdsa".to_string()),
            credential: AgentCredential::ClientCert,
        }
    }
}

impl ApiSecurity {
    /// Plain HTTP, nobody authenticated (the lab before issue 14).
    pub fn plain() -> ApiSecurity {
        ApiSecurity {
            tls: None,
            credential: AgentCredential::ClientCert,
        }
    }
}

/// The lab's authentication files.
#[derive(Debug, Clone)]
pub struct AuthFiles {
    dir: PathBuf,
    logs: PathBuf,
}

/// A group only node `index`'s token carries (every node's token is the
/// same service account's, as in a DaemonSet): how the decision log tells
/// the nodes apart.
pub fn node_group(index: usize) -> String {
    format!("lab-node-{index}")
}

/// One token line of `tokens.csv`: the token of node `index`.
fn token_line(token: &str, index: usize) -> String {
    let (namespace, name) = SERVICE_ACCOUNT;
    format!(
        "{token},system:serviceaccount:{namespace}:{name},lab-node-{index},\"system:serviceaccounts,system:serviceaccounts:{namespace},{}\"\n",
        node_group(index)
    )
}

impl AuthFiles {
    /// The files of the lab in `lab_dir`.
    pub fn new(lab_dir: &Path) -> AuthFiles {
        AuthFiles {
            dir: lab_dir.join("auth"),
            logs: lab_dir.join("logs"),
        }
    }

    /// `auth/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The server's CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    /// The RBAC file the server loads (and re-reads).
    pub fn rbac(&self) -> PathBuf {
        self.dir.join("rbac.yaml")
    }
    /// The token file the server loads (and re-reads).
    pub fn tokens(&self) -> PathBuf {
        self.dir.join("tokens.csv")
    }
    /// The decision log.
    pub fn authz_log(&self) -> PathBuf {
        self.logs.join("authz.jsonl")
    }
    /// Node `index`'s kubeconfig (client-cert and token agents).
    pub fn node_kubeconfig(&self, index: usize) -> PathBuf {
        self.dir.join(format!("node-{index}.kubeconfig"))
    }
    /// Node `index`'s token, kept for rotation.
    fn node_token(&self, index: usize) -> PathBuf {
        self.dir.join(format!("node-{index}.token"))
    }
    /// The client-certificate identity of node `name`.
    pub fn cert_user(name: &str) -> String {
        format!("flannel:{name}")
    }

    /// Writes the RBAC file and a token per node, before the server
    /// starts; returns the tokens (by node index).
    pub fn prepare(&self, nodes: usize) -> Result<Vec<String>, LabError> {
        let step = "writing the lab's RBAC and token files";
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| LabError::new(step, format!("{}: {e}", self.dir.display())))?;
        write(&self.rbac(), &format!("{SHIPPED_RBAC}{CERT_BINDING}"), step)?;
        let tokens: Vec<String> = (0..nodes).map(|_| random_token()).collect();
        let mut csv = String::new();
        for (index, token) in tokens.iter().enumerate() {
            csv.push_str(&token_line(token, index));
            write(&self.node_token(index), token, step)?;
        }
        write(&self.tokens(), &csv, step)?;
        Ok(tokens)
    }

    /// The token node `index` has now.
    pub fn token_of(&self, index: usize) -> Result<String, LabError> {
        let path = self.node_token(index);
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .map_err(|e| {
                LabError::new("reading a node's token", format!("{}: {e}", path.display()))
            })
    }

    /// Gives node `index` a new token: the server stops accepting the old
    /// one at once (tokens.csv rewritten) and the new one is what the
    /// agent finds in `sa_token` (its in-cluster token file), written by
    /// rename as the kubelet does. Returns the new token.
    pub fn rotate_token(&self, index: usize, sa_token: Option<&Path>) -> Result<String, LabError> {
        let step = "rotating a node's token";
        let old = self.token_of(index)?;
        let new = random_token();
        let csv = std::fs::read_to_string(self.tokens())
            .map_err(|e| LabError::new(step, format!("{}: {e}", self.tokens().display())))?;
        let rewritten: String = csv
            .lines()
            .filter(|line| !line.starts_with(&format!("{old},")))
            .map(|line| format!("{line}\n"))
            .chain(std::iter::once(token_line(&new, index)))
            .collect();
        write(&self.tokens(), &rewritten, step)?;
        write(&self.node_token(index), &new, step)?;
        if let Some(path) = sa_token {
            write(path, &new, step)?;
        }
        Ok(new)
    }

    /// Writes the in-cluster service-account directory `dir` for node
    /// `index` (token, ca.crt, namespace).
    pub fn write_service_account(&self, dir: &Path, index: usize) -> Result<(), LabError> {
        let step = "writing a node's service-account directory";
        std::fs::create_dir_all(dir)
            .map_err(|e| LabError::new(step, format!("{}: {e}", dir.display())))?;
        let ca = std::fs::read_to_string(self.ca())
            .map_err(|e| LabError::new(step, format!("{}: {e}", self.ca().display())))?;
        write(&dir.join("ca.crt"), &ca, step)?;
        write(&dir.join("namespace"), SERVICE_ACCOUNT.0, step)?;
        write(&dir.join("token"), &self.token_of(index)?, step)
    }

    /// Every authorization decision so far (the server appends them).
    pub fn decisions(&self) -> Result<Vec<AuthzDecision>, LabError> {
        let step = "reading the API server's decision log";
        let text = match std::fs::read_to_string(self.authz_log()) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(LabError::new(
                    step,
                    format!("{}: {e}", self.authz_log().display()),
                ))
            }
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line)
                    .map_err(|e| LabError::new(step, format!("{line:?}: {e}")))
            })
            .collect()
    }
}

/// Writes `text` to `path` through a temporary file and a rename, so a
/// reader (the server, kube-rs) never sees half a file.
fn write(path: &Path, text: &str, step: &str) -> Result<(), LabError> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| LabError::new(step, format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_replaces_only_that_nodes_token() {
        let dir = tempfile::tempdir().unwrap();
        let files = AuthFiles::new(dir.path());
        let tokens = files.prepare(2).unwrap();
        let sa = dir.path().join("sa-token");
        let new = files.rotate_token(1, Some(&sa)).unwrap();
        let csv = std::fs::read_to_string(files.tokens()).unwrap();
        let users = crate::apiserver::parse_token_csv(&csv).unwrap();
        assert!(users.contains_key(&tokens[0]));
        assert!(!users.contains_key(&tokens[1]));
        assert_eq!(
            users[&new].name,
            "system:serviceaccount:kube-flannel:flannel"
        );
        assert_eq!(std::fs::read_to_string(&sa).unwrap(), new);
        assert_eq!(files.token_of(1).unwrap(), new);
        let rbac = std::fs::read_to_string(files.rbac()).unwrap();
        assert!(rbac.starts_with(SHIPPED_RBAC) && rbac.contains(CERT_GROUP));
    }
}
