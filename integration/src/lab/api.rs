//! The lab's Kubernetes API calls (Nodes only), made synchronously with a
//! small runtime of their own so the lab works from plain code and tests.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;

use super::LabError;

/// A synchronous Node client for the lab's API server.
pub struct NodeApi {
    runtime: tokio::runtime::Runtime,
    nodes: Api<Node>,
}

impl NodeApi {
    /// A client for the plain-HTTP server at `url`.
    pub fn connect(url: &str) -> Result<NodeApi, LabError> {
        let step = "connecting to the lab API server";
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LabError::new(step, format!("cannot start a runtime: {e}")))?;
        let uri = url
            .parse()
            .map_err(|e| LabError::new(step, format!("bad URL {url:?}: {e}")))?;
        let client = runtime
            .block_on(async { kube::Client::try_from(kube::Config::new(uri)) })
            .map_err(|e| LabError::new(step, e.to_string()))?;
        Ok(NodeApi {
            runtime,
            nodes: Api::all(client),
        })
    }

    /// A client from `kubeconfig` (HTTPS, the lab's admin credential).
    pub fn connect_kubeconfig(kubeconfig: &std::path::Path) -> Result<NodeApi, LabError> {
        let step = "connecting to the lab API server";
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LabError::new(step, format!("cannot start a runtime: {e}")))?;
        let client = runtime
            .block_on(crate::apiserver::client_from_kubeconfig(kubeconfig))
            .map_err(|e| LabError::new(step, format!("{}: {e}", kubeconfig.display())))?;
        Ok(NodeApi {
            runtime,
            nodes: Api::all(client),
        })
    }

    /// Creates a Node.
    pub fn create(&self, node: &Node) -> Result<Node, LabError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        self.runtime
            .block_on(self.nodes.create(&PostParams::default(), node))
            .map_err(|e| LabError::new(&format!("creating Node {name}"), e.to_string()))
    }

    /// The Node, or `None` when there is none of that name.
    pub fn get(&self, name: &str) -> Result<Option<Node>, LabError> {
        self.runtime
            .block_on(self.nodes.get_opt(name))
            .map_err(|e| LabError::new(&format!("reading Node {name}"), e.to_string()))
    }

    /// Every Node.
    pub fn list(&self) -> Result<Vec<Node>, LabError> {
        self.runtime
            .block_on(self.nodes.list(&Default::default()))
            .map(|list| list.items)
            .map_err(|e| LabError::new("listing Nodes", e.to_string()))
    }

    /// Deletes a Node (as `kubectl delete node` does).
    pub fn delete(&self, name: &str) -> Result<(), LabError> {
        self.runtime
            .block_on(self.nodes.delete(name, &DeleteParams::default()))
            .map(drop)
            .map_err(|e| LabError::new(&format!("deleting Node {name}"), e.to_string()))
    }

    /// Sets (`Some`) or removes (`None`) annotations with a merge patch.
    pub fn annotate(
        &self,
        name: &str,
        annotations: &BTreeMap<String, Option<String>>,
    ) -> Result<Node, LabError> {
        let patch = serde_json::json!({"metadata": {"annotations": annotations}});
        self.runtime
            .block_on(
                self.nodes
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .map_err(|e| LabError::new(&format!("annotating Node {name}"), e.to_string()))
    }
}
