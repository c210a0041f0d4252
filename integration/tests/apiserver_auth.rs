//! The test API server as a secured cluster, checked with kube-rs: HTTPS
//! (ECDSA and RSA), client certificates, tokens and token files, 401s,
//! RBAC with kube-apiserver's 403 wording and reloads, the decision log,
//! managedFields, and streaming lists with and without server support.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http_body_util::BodyExt;
use integration::apiserver::{
    client_from_kubeconfig, ready_node, AuthzDecision, Credential, KeyAlgorithm, Options,
    TestApiServer, UserInfo,
};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(20);

const UNAUTHORIZED: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;

/// kube-rs over a kubeconfig written for `credential`.
async fn client_for(
    server: &TestApiServer,
    dir: &Path,
    name: &str,
    credential: &Credential,
) -> kube::Client {
    let path = dir.join(name);
    server.write_kubeconfig_for(&path, credential).unwrap();
    client_from_kubeconfig(&path).await.unwrap()
}

/// A raw request: status and body text.
async fn raw(
    client: &kube::Client,
    method: &str,
    uri: &str,
    body: Option<(&str, Value)>,
) -> (u16, String) {
    let mut request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("user-agent", "flannel/v0.26.7 (linux/amd64) kubernetes/abc");
    let bytes = match body {
        Some((content_type, value)) => {
            request = request.header("content-type", content_type);
            serde_json::to_vec(&value).unwrap()
        }
        None => Vec::new(),
    };
    let response = client
        .send(request.body(kube::client::Body::from(bytes)).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn node_names(client: &kube::Client) -> Vec<String> {
    let api: Api<Node> = Api::all(client.clone());
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect()
}

fn last_user(server: &TestApiServer) -> Option<String> {
    server.request_log().last().and_then(|r| r.user.clone())
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + LIMIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn https_serves_kube_rs_with_each_credential_and_key_algorithm() {
    for (algorithm, other) in [
        (KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048),
        (KeyAlgorithm::Rsa2048, KeyAlgorithm::EcdsaP256),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens.csv");
        std::fs::write(&tokens, "file-token-1,alice,1001,\"devs,ops\"\n").unwrap();
        let server =
            TestApiServer::start(Options::default().tls(algorithm).token_auth_file(&tokens))
                .unwrap();
        assert!(
            server.url().starts_with("https://127.0.0.1:"),
            "{}",
            server.url()
        );
        assert!(server
            .ca_pem()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        server.create_node(ready_node("node-a", None)).unwrap();

        // The admin kubeconfig and the in-process client (system:masters).
        let admin_path = server.write_kubeconfig(dir.path()).unwrap();
        let text = std::fs::read_to_string(&admin_path).unwrap();
        assert!(text.contains("certificate-authority-data:") && text.contains("client-key-data:"));
        let admin = client_from_kubeconfig(&admin_path).await.unwrap();
        assert_eq!(node_names(&admin).await, ["node-a"]);
        assert_eq!(last_user(&server).as_deref(), Some("system:admin"));
        assert_eq!(node_names(&server.client().unwrap()).await, ["node-a"]);

        // Client certificates, with the CA's algorithm and the other one.
        for key in [None, Some(other)] {
            let cert = server.issue_client_cert("carol", &["ops"], key).unwrap();
            let carol =
                client_for(&server, dir.path(), "carol", &Credential::ClientCert(cert)).await;
            assert_eq!(
                node_names(&carol).await,
                ["node-a"],
                "{algorithm:?} {key:?}"
            );
            assert_eq!(last_user(&server).as_deref(), Some("carol"));
        }

        // A token from the token file, embedded.
        let alice = client_for(
            &server,
            dir.path(),
            "alice",
            &Credential::Token("file-token-1".into()),
        )
        .await;
        assert_eq!(node_names(&alice).await, ["node-a"]);
        assert_eq!(last_user(&server).as_deref(), Some("alice"));

        // An in-memory token read from a token file by the client.
        server
            .add_token("memory-token", UserInfo::new("dave", &[]))
            .unwrap();
        let token_file = dir.path().join("dave.token");
        // No newline: kube-rs sends the file's content as is.
        std::fs::write(&token_file, "memory-token").unwrap();
        let dave = client_for(
            &server,
            dir.path(),
            "dave",
            &Credential::TokenFile(token_file),
        )
        .await;
        assert_eq!(node_names(&dave).await, ["node-a"]);
        assert_eq!(last_user(&server).as_deref(), Some("dave"));

        // A restart keeps the CA and the port: the kubeconfigs still work.
        server.restart().unwrap();
        let again = client_from_kubeconfig(&admin_path).await.unwrap();
        assert_eq!(node_names(&again).await, ["node-a"]);
    }
}

#[tokio::test]
async fn missing_wrong_foreign_and_revoked_credentials_get_401() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestApiServer::start(Options::default().tls(KeyAlgorithm::EcdsaP256)).unwrap();
    server.create_node(ready_node("node-a", None)).unwrap();

    let anonymous = client_for(&server, dir.path(), "anonymous", &Credential::None).await;
    assert_eq!(
        raw(&anonymous, "GET", "/api/v1/nodes", None).await,
        (401, UNAUTHORIZED.to_string())
    );
    assert_eq!(
        raw(&anonymous, "GET", "/version", None).await,
        (401, UNAUTHORIZED.to_string())
    );
    // Health checks stay open, as kube-apiserver's public-info-viewer.
    assert_eq!(
        raw(&anonymous, "GET", "/healthz", None).await,
        (200, "ok".to_string())
    );

    let wrong = client_for(
        &server,
        dir.path(),
        "wrong",
        &Credential::Token("nope".into()),
    )
    .await;
    assert_eq!(
        raw(&wrong, "GET", "/api/v1/nodes", None).await,
        (401, UNAUTHORIZED.to_string())
    );
    let api: Api<Node> = Api::all(wrong);
    match api.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 401),
        other => panic!("{other:?}"),
    }

    // A certificate another CA signed, for a user in system:masters.
    let elsewhere = TestApiServer::start(Options::default().tls(KeyAlgorithm::EcdsaP256)).unwrap();
    let foreign = elsewhere
        .issue_client_cert("system:admin", &["system:masters"], None)
        .unwrap();
    let foreign = client_for(
        &server,
        dir.path(),
        "foreign",
        &Credential::ClientCert(foreign),
    )
    .await;
    assert_eq!(
        raw(&foreign, "GET", "/api/v1/nodes", None).await,
        (401, UNAUTHORIZED.to_string())
    );

    // A revoked token.
    server
        .add_token("short-lived", UserInfo::new("erin", &[]))
        .unwrap();
    let erin = client_for(
        &server,
        dir.path(),
        "erin",
        &Credential::Token("short-lived".into()),
    )
    .await;
    assert_eq!(raw(&erin, "GET", "/api/v1/nodes/node-a", None).await.0, 200);
    assert!(server.remove_token("short-lived"));
    assert_eq!(
        raw(&erin, "GET", "/api/v1/nodes/node-a", None).await,
        (401, UNAUTHORIZED.to_string())
    );
    let refused = server.request_log().last().cloned().unwrap();
    assert_eq!((refused.status, refused.user), (401, None));
}

const FLANNEL_ROLE: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: flannel
rules:
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["nodes/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: flannel
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: flannel
subjects:
- kind: ServiceAccount
  name: flannel
  namespace: kube-flannel
"#;

const FLANNEL_USER: &str = "system:serviceaccount:kube-flannel:flannel";

fn annotate_status(value: &str) -> Value {
    json!({"metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": value}}})
}

#[tokio::test]
async fn rbac_grants_what_the_role_says_and_follows_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let rbac = dir.path().join("rbac.yaml");
    std::fs::write(&rbac, FLANNEL_ROLE).unwrap();
    let log_file = dir.path().join("authz.jsonl");
    let server = TestApiServer::start(
        Options::default()
            .tls(KeyAlgorithm::EcdsaP256)
            .rbac_file(&rbac)
            .authz_log_file(&log_file),
    )
    .unwrap();
    server
        .create_node(ready_node("node-a", Some("10.42.0.0/24")))
        .unwrap();

    // The service account as a pod sees it.
    let sa_dir = dir.path().join("sa");
    let token = server
        .write_service_account_dir(&sa_dir, "kube-flannel", "flannel")
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(sa_dir.join("token")).unwrap(),
        token
    );
    assert_eq!(
        std::fs::read_to_string(sa_dir.join("namespace")).unwrap(),
        "kube-flannel"
    );
    assert_eq!(
        std::fs::read_to_string(sa_dir.join("ca.crt")).unwrap(),
        server.ca_pem().unwrap()
    );
    let flannel = client_for(&server, dir.path(), "flannel", &Credential::Token(token)).await;
    let api: Api<Node> = Api::all(flannel.clone());

    // Granted: discovery, get, list, watch, patch of nodes/status.
    assert_eq!(raw(&flannel, "GET", "/version", None).await.0, 200);
    assert_eq!(raw(&flannel, "GET", "/apis", None).await.0, 200);
    assert_eq!(node_names(&flannel).await, ["node-a"]);
    api.get("node-a").await.unwrap();
    let mut watch = Box::pin(
        api.watch(&kube::api::WatchParams::default().timeout(1), "0")
            .await
            .unwrap(),
    );
    assert!(matches!(
        watch.next().await,
        Some(Ok(kube::api::WatchEvent::Added(_)))
    ));
    let params = PatchParams {
        field_manager: Some("flanneld".into()),
        ..Default::default()
    };
    api.patch_status(
        "node-a",
        &params,
        &Patch::Merge(annotate_status("192.0.2.1")),
    )
    .await
    .unwrap();

    // Refused, worded as kube-apiserver does.
    let expected = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("nodes \"node-a\" is forbidden: User \"{FLANNEL_USER}\" cannot patch resource \"nodes\" in API group \"\" at the cluster scope"),
        "reason": "Forbidden", "details": {"name": "node-a", "kind": "nodes"}, "code": 403});
    let (code, body) = raw(
        &flannel,
        "PATCH",
        "/api/v1/nodes/node-a",
        Some((
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"x": "y"}}}),
        )),
    )
    .await;
    assert_eq!(
        (code, serde_json::from_str::<Value>(&body).unwrap()),
        (403, expected)
    );
    match api.delete("node-a", &DeleteParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
            assert_eq!(status.message, format!("nodes \"node-a\" is forbidden: User \"{FLANNEL_USER}\" cannot delete resource \"nodes\" in API group \"\" at the cluster scope"));
        }
        other => panic!("{other:?}"),
    }
    let (code, body) = raw(
        &flannel,
        "GET",
        "/api/v1/nodes?watch=true&timeoutSeconds=1",
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = raw(&flannel, "DELETE", "/api/v1/nodes", None).await;
    assert_eq!(code, 403);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["message"],
        format!("nodes is forbidden: User \"{FLANNEL_USER}\" cannot deletecollection resource \"nodes\" in API group \"\" at the cluster scope")
    );

    // system:masters may do anything.
    server.create_node(ready_node("node-b", None)).unwrap();
    Api::<Node>::all(server.client().unwrap())
        .delete("node-b", &DeleteParams::default())
        .await
        .unwrap();

    // Breaking the role in its file: the status patch is refused...
    std::fs::write(
        &rbac,
        FLANNEL_ROLE.replace("[\"nodes/status\"]", "[\"nodes/proxy\"]"),
    )
    .unwrap();
    eventually("the broken role", || async {
        api.patch_status(
            "node-a",
            &params,
            &Patch::Merge(annotate_status("192.0.2.2")),
        )
        .await
        .is_err()
    })
    .await;
    let status_denial = format!("nodes \"node-a\" is forbidden: User \"{FLANNEL_USER}\" cannot patch resource \"nodes/status\" in API group \"\" at the cluster scope");
    match api
        .patch_status(
            "node-a",
            &params,
            &Patch::Merge(annotate_status("192.0.2.2")),
        )
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.message, status_denial),
        other => panic!("{other:?}"),
    }
    // ... and fixing the file lets it through again.
    std::fs::write(&rbac, FLANNEL_ROLE).unwrap();
    eventually("the fixed role", || async {
        api.patch_status(
            "node-a",
            &params,
            &Patch::Merge(annotate_status("192.0.2.3")),
        )
        .await
        .is_ok()
    })
    .await;

    // Rules replaced at run time.
    let deleter = FLANNEL_ROLE.replace(
        "[\"get\", \"list\", \"watch\"]",
        "[\"get\", \"list\", \"watch\", \"delete\"]",
    );
    server.set_rbac_yaml(&deleter).unwrap();
    server.create_node(ready_node("node-c", None)).unwrap();
    api.delete("node-c", &DeleteParams::default())
        .await
        .unwrap();

    // The decision log, in memory and in the file.
    let log = server.authz_log();
    let used = |decision: &AuthzDecision| {
        (
            decision.verb.clone(),
            decision.resource.clone(),
            decision.subresource.clone(),
            decision.allowed,
        )
    };
    let flannel_decisions: Vec<_> = log
        .iter()
        .filter(|d| d.user == FLANNEL_USER)
        .map(used)
        .collect();
    let s = |t: &str| t.to_string();
    for expected in [
        (s("list"), s("nodes"), s(""), true),
        (s("get"), s("nodes"), s(""), true),
        (s("watch"), s("nodes"), s(""), true),
        (s("patch"), s("nodes"), s("status"), true),
        (s("patch"), s("nodes"), s(""), false),
        (s("delete"), s("nodes"), s(""), false),
        (s("patch"), s("nodes"), s("status"), false),
        (s("delete"), s("nodes"), s(""), true),
    ] {
        assert!(
            flannel_decisions.contains(&expected),
            "{expected:?} not in {flannel_decisions:?}"
        );
    }
    let denied = log
        .iter()
        .find(|d| d.user == FLANNEL_USER && !d.allowed)
        .unwrap();
    assert_eq!(
        denied.groups,
        [
            "system:serviceaccounts",
            "system:serviceaccounts:kube-flannel",
            "system:authenticated"
        ]
    );
    assert_eq!(denied.name, "node-a");
    let lines: Vec<AuthzDecision> = std::fs::read_to_string(&log_file)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines, log);

    // managedFields name the field manager of the status patches.
    let node = server.get_node("node-a").unwrap();
    let entry = node
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .find(|e| e.manager.as_deref() == Some("flanneld"))
        .unwrap();
    assert_eq!(entry.operation.as_deref(), Some("Update"));
    assert_eq!(entry.subresource.as_deref(), Some("status"));
    assert_eq!(
        entry.fields_v1.unwrap().0,
        json!({"f:metadata": {"f:annotations": {"f:flannel.alpha.coreos.com/public-ip": {}}}})
    );
    let record = server
        .request_log()
        .into_iter()
        .find(|r| r.method == "PATCH" && r.status == 200)
        .unwrap();
    assert_eq!(record.field_manager.as_deref(), Some("flanneld"));
    assert_eq!(record.user.as_deref(), Some(FLANNEL_USER));
}

#[tokio::test]
async fn token_file_rotation_over_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "old-token,kubelet,42,system:nodes\n").unwrap();
    let server = TestApiServer::start(Options::default().token_auth_file(&tokens)).unwrap();
    assert!(server.url().starts_with("http://"));
    let old = client_for(
        &server,
        dir.path(),
        "old",
        &Credential::Token("old-token".into()),
    )
    .await;
    let new = client_for(
        &server,
        dir.path(),
        "new",
        &Credential::Token("new-token".into()),
    )
    .await;
    assert_eq!(raw(&old, "GET", "/api/v1/nodes", None).await.0, 200);
    assert_eq!(raw(&new, "GET", "/api/v1/nodes", None).await.0, 401);

    std::fs::write(&tokens, "new-token,kubelet,42,system:nodes\n").unwrap();
    assert_eq!(
        raw(&old, "GET", "/api/v1/nodes", None).await,
        (401, UNAUTHORIZED.to_string())
    );
    assert_eq!(raw(&new, "GET", "/api/v1/nodes", None).await.0, 200);
    assert_eq!(last_user(&server).as_deref(), Some("kubelet"));
}

#[tokio::test]
async fn managed_fields_name_the_manager_or_the_user_agent() {
    let server = TestApiServer::start(Options::default()).unwrap();
    server.create_node(ready_node("node-a", None)).unwrap();
    let client = server.client().unwrap();
    let patch = json!({"metadata": {"labels": {"flannel": "yes"}}});
    let (code, _) = raw(
        &client,
        "PATCH",
        "/api/v1/nodes/node-a",
        Some(("application/strategic-merge-patch+json", patch.clone())),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = raw(
        &client,
        "PATCH",
        "/api/v1/nodes/node-a?fieldManager=flanneld",
        Some((
            "application/merge-patch+json",
            json!({"spec": {"unschedulable": true}}),
        )),
    )
    .await;
    assert_eq!(code, 200);
    let entries = server
        .get_node("node-a")
        .unwrap()
        .metadata
        .managed_fields
        .unwrap();
    let managers: Vec<_> = entries
        .iter()
        .map(|e| {
            (
                e.manager.clone().unwrap(),
                e.subresource.clone(),
                e.fields_v1.clone().unwrap().0,
            )
        })
        .collect();
    assert_eq!(
        managers,
        [
            (
                s("flannel"),
                None,
                json!({"f:metadata": {"f:labels": {"f:flannel": {}}}})
            ),
            (
                s("flanneld"),
                None,
                json!({"f:spec": {"f:unschedulable": {}}})
            ),
        ]
    );
    let entry = &entries[0];
    assert_eq!(
        (
            entry.operation.as_deref(),
            entry.api_version.as_deref(),
            entry.fields_type.as_deref()
        ),
        (Some("Update"), Some("v1"), Some("FieldsV1"))
    );
    assert!(entry.time.is_some());
    // Served as stored.
    let (_, body) = raw(&client, "GET", "/api/v1/nodes/node-a", None).await;
    let served: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        served["metadata"]["managedFields"][1]["manager"],
        "flanneld"
    );

    // A write that changes nothing is no write: same resourceVersion and
    // managedFields, even once the entry's timestamp (whole seconds) would
    // differ (kubectl reports "(no change)" from the unchanged version).
    let before = server.get_node("node-a").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (code, _) = raw(
        &client,
        "PATCH",
        "/api/v1/nodes/node-a?fieldManager=flanneld",
        Some((
            "application/merge-patch+json",
            json!({"spec": {"unschedulable": true}}),
        )),
    )
    .await;
    assert_eq!(code, 200);
    let after = server.get_node("node-a").unwrap();
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(
        after.metadata.managed_fields,
        before.metadata.managed_fields
    );
}

fn s(text: &str) -> String {
    text.to_string()
}

#[tokio::test]
async fn streaming_lists_reach_init_done_then_follow_changes() {
    let server = TestApiServer::start(Options::default().tls(KeyAlgorithm::EcdsaP256)).unwrap();
    for name in ["node-a", "node-b", "node-c"] {
        server.create_node(ready_node(name, None)).unwrap();
    }
    let api: Api<Node> = Api::all(server.client().unwrap());
    let mut events = Box::pin(watcher(api, watcher::Config::default().streaming_lists()));
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(LIMIT, events.next()).await.unwrap() {
            Some(Ok(watcher::Event::Init)) => {}
            Some(Ok(watcher::Event::InitApply(node))) => initial.push(node.metadata.name.unwrap()),
            Some(Ok(watcher::Event::InitDone)) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(initial, ["node-a", "node-b", "node-c"]);
    assert_eq!(server.requests(integration::apiserver::Verb::List), 0);
    server
        .update_node("node-b", |n| {
            n.spec.get_or_insert_default().unschedulable = Some(true)
        })
        .unwrap();
    match tokio::time::timeout(LIMIT, events.next()).await.unwrap() {
        Some(Ok(watcher::Event::Apply(node))) => {
            assert_eq!(node.metadata.name.as_deref(), Some("node-b"));
            assert_eq!(node.spec.unwrap().unschedulable, Some(true));
        }
        other => panic!("{other:?}"),
    }

    // The initial-events-end bookmark, raw.
    let client = server.client().unwrap();
    let (code, body) = raw(&client, "GET", "/api/v1/nodes?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1", None).await;
    assert_eq!(code, 200);
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        events
            .iter()
            .take(3)
            .map(|e| e["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["ADDED"; 3]
    );
    assert_eq!(events[3]["type"], "BOOKMARK");
    assert_eq!(
        events[3]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(
        events[3]["object"]["metadata"]["resourceVersion"],
        server.resource_version().to_string()
    );

    // Validation as kube-apiserver's.
    let (code, body) = raw(
        &client,
        "GET",
        "/api/v1/nodes?watch=true&sendInitialEvents=true&allowWatchBookmarks=true",
        None,
    )
    .await;
    assert_eq!(code, 422);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(status["message"], "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan");
}

#[tokio::test]
async fn without_watch_list_streaming_lists_are_invalid() {
    let server = TestApiServer::start(Options::default().watch_list(false)).unwrap();
    server.create_node(ready_node("node-a", None)).unwrap();
    let client = server.client().unwrap();
    let (code, body) = raw(&client, "GET", "/api/v1/nodes?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true", None).await;
    assert_eq!(code, 422);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
            "reason": "Invalid",
            "details": {"group": "meta.k8s.io", "kind": "ListOptions", "causes": [{"reason": "FieldValueForbidden",
                "message": "Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                "field": "sendInitialEvents"}]},
            "code": 422})
    );
    // kube-rs's streaming watcher sees the refusal (a client falls back to
    // list+watch); plain list+watch still works.
    let api: Api<Node> = Api::all(client);
    let mut streaming = Box::pin(watcher(
        api.clone(),
        watcher::Config::default().streaming_lists(),
    ));
    loop {
        match tokio::time::timeout(LIMIT, streaming.next()).await.unwrap() {
            Some(Ok(watcher::Event::Init)) => continue,
            Some(Err(error)) => {
                assert!(
                    error.to_string().contains("422") || format!("{error:?}").contains("422"),
                    "{error:?}"
                );
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let mut listing = Box::pin(watcher(api, watcher::Config::default()));
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(LIMIT, listing.next()).await.unwrap() {
            Some(Ok(watcher::Event::InitApply(node))) => seen.push(node.metadata.name.unwrap()),
            Some(Ok(watcher::Event::InitDone)) => break,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, ["node-a"]);
}
