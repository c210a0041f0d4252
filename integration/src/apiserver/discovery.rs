//! Discovery and OpenAPI documents: just enough for kubectl to find `nodes`
//! (legacy, non-aggregated discovery) and to learn from OpenAPI v3 that the
//! server validates fields itself (`fieldValidation` on the Node PATCH
//! operation), so `kubectl apply/create/replace` work with their default
//! `--validate=strict` and leave the validation to the server.

use serde_json::{json, Value};

/// The Kubernetes version the server claims (the API level of the
/// k8s-openapi types it serves).
pub const GIT_VERSION: &str = "v1.33.0";

/// `GET /version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `GET /api`. Answered as plain `application/json` also when the client
/// asks for aggregated discovery (`as=APIGroupDiscoveryList`): client-go
/// sees the content type and falls back to the legacy documents.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ]
    })
}

/// `GET /apis`: no API groups.
pub fn api_groups() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
}

/// `GET /api/v1`: only Nodes.
pub fn core_v1_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {
                "name": "nodes",
                "singularName": "node",
                "namespaced": false,
                "kind": "Node",
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                "shortNames": ["no"],
                "storageVersionHash": "XwShjMxG9Fs="
            },
            {
                "name": "nodes/status",
                "singularName": "",
                "namespaced": false,
                "kind": "Node",
                "verbs": ["get", "patch", "update"]
            }
        ]
    })
}

/// `GET /openapi/v3`: where the per-group-version documents are.
pub fn openapi_v3_index() -> Value {
    json!({"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=FLANNELEMBEDTEST0001"}}})
}

fn query_param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(id: &str, action: &str, params: &[&str]) -> Value {
    let parameters: Vec<Value> = params.iter().map(|p| query_param(p)).collect();
    json!({
        "tags": ["core_v1"],
        "operationId": id,
        "parameters": parameters,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/io.k8s.api.core.v1.Node"}}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": "Node"}
    })
}

/// `GET /openapi/v3/api/v1`: the Node paths with their query parameters.
///
/// The Node schema is deliberately a bare object without the
/// `x-kubernetes-group-version-kind` extension: kubectl then finds no schema
/// for Node and computes `apply` patches from its compiled-in Node type
/// (which knows the merge keys), exactly as it would with the full schema.
pub fn openapi_v3_core_v1() -> Value {
    let write = ["dryRun", "fieldManager", "fieldValidation", "pretty"];
    let list = [
        "allowWatchBookmarks",
        "continue",
        "fieldSelector",
        "labelSelector",
        "limit",
        "resourceVersion",
        "resourceVersionMatch",
        "sendInitialEvents",
        "timeoutSeconds",
        "watch",
        "pretty",
    ];
    let name_param = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}});
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": {
            "/api/v1/nodes": {
                "get": operation("listCoreV1Node", "list", &list),
                "post": operation("createCoreV1Node", "post", &write),
                "delete": operation("deleteCoreV1CollectionNode", "deletecollection", &list),
            },
            "/api/v1/nodes/{name}": {
                "parameters": [name_param.clone()],
                "get": operation("readCoreV1Node", "get", &["pretty"]),
                "put": operation("replaceCoreV1Node", "put", &write),
                "patch": operation("patchCoreV1Node", "patch", &["dryRun", "fieldManager", "fieldValidation", "force", "pretty"]),
                "delete": operation("deleteCoreV1Node", "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy", "pretty"]),
            },
            "/api/v1/nodes/{name}/status": {
                "parameters": [name_param],
                "get": operation("readCoreV1NodeStatus", "get", &["pretty"]),
                "put": operation("replaceCoreV1NodeStatus", "put", &write),
                "patch": operation("patchCoreV1NodeStatus", "patch", &["dryRun", "fieldManager", "fieldValidation", "force", "pretty"]),
            },
        },
        "components": {
            "schemas": {
                "io.k8s.api.core.v1.Node": {
                    "description": "Node is a worker node in Kubernetes.",
                    "type": "object"
                }
            }
        }
    })
}
