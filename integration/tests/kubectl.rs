//! The test API server checked with the real `kubectl`: every test starts
//! its own server on an ephemeral loopback port and runs kubectl against a
//! generated kubeconfig (its discovery cache in the test's temp dir).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use integration::apiserver::{
    ready_node, AuthzDecision, Credential, KeyAlgorithm, Options, TestApiServer, UserInfo, Verb,
};
use integration::{workspace_bin, Finished, Running};
use k8s_openapi::api::core::v1::NodeCondition;

const LIMIT: Duration = Duration::from_secs(30);

struct Cluster {
    server: TestApiServer,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn new() -> Cluster {
        let server = TestApiServer::start(Options::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = server.write_kubeconfig(dir.path()).unwrap();
        Cluster {
            server,
            dir,
            kubeconfig,
        }
    }

    fn with(options: Options) -> Cluster {
        let server = TestApiServer::start(options).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = server.write_kubeconfig(dir.path()).unwrap();
        Cluster {
            server,
            dir,
            kubeconfig,
        }
    }

    /// From now on kubectl runs with `credential`.
    fn use_credential(&mut self, name: &str, credential: &Credential) {
        let path = self.dir.path().join(name);
        self.server.write_kubeconfig_for(&path, credential).unwrap();
        self.kubeconfig = path;
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.path().join("cache").display()
            ))
            .args(args)
            .env_remove("KUBECONFIG");
        command
    }

    fn kubectl(&self, args: &[&str]) -> Finished {
        Running::start(self.command(args)).wait(LIMIT)
    }

    /// Runs kubectl, asserts success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let finished = self.kubectl(args);
        assert!(
            finished.status.success(),
            "kubectl {args:?} failed\nstdout:\n{}\nstderr:\n{}",
            finished.stdout,
            finished.stderr
        );
        finished.stdout
    }

    /// Runs kubectl, asserts failure, returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let finished = self.kubectl(args);
        assert!(
            !finished.status.success(),
            "kubectl {args:?} should fail\nstdout:\n{}",
            finished.stdout
        );
        finished.stderr
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

const MANIFEST: &str = "apiVersion: v1
kind: Node
metadata:
  name: manifest-node
  labels:
    node-role.kubernetes.io/worker: \"true\"
spec:
  podCIDR: 10.42.7.0/24
status:
  conditions:
  - type: Ready
    status: \"True\"
  nodeInfo:
    kubeletVersion: v1.33.0
";

#[test]
fn apply_and_create_from_manifests() {
    let c = Cluster::new();
    let file = c.write("node.yaml", MANIFEST);
    assert!(c
        .ok(&["apply", "-f", &file])
        .contains("node/manifest-node created"));
    assert!(c
        .ok(&["apply", "-f", &file])
        .contains("node/manifest-node unchanged"));
    let changed = c.write(
        "node2.yaml",
        &MANIFEST.replace("worker: \"true\"", "worker: \"true\"\n    tier: edge"),
    );
    let before = c.server.requests(Verb::Patch);
    assert!(c
        .ok(&["apply", "-f", &changed])
        .contains("node/manifest-node configured"));
    assert_eq!(c.server.requests(Verb::Patch), before + 1);
    let node = c.server.get_node("manifest-node").unwrap();
    let labels = node.metadata.labels.unwrap();
    assert_eq!(labels.get("tier").map(String::as_str), Some("edge"));
    assert!(node
        .metadata
        .annotations
        .unwrap()
        .contains_key("kubectl.kubernetes.io/last-applied-configuration"));
    // Nodes may be created with a status (kubelets do).
    let status = node.status.unwrap();
    assert_eq!(status.conditions.unwrap()[0].type_, "Ready");
    assert_eq!(node.spec.unwrap().pod_cidrs.unwrap(), ["10.42.7.0/24"]);

    let stderr = c.fails(&["create", "-f", &file]);
    assert!(
        stderr.contains("(AlreadyExists)")
            && stderr.contains("nodes \"manifest-node\" already exists"),
        "{stderr}"
    );
    let other = c.write(
        "other.yaml",
        &MANIFEST.replace("manifest-node", "created-node"),
    );
    assert!(c
        .ok(&["create", "-f", &other])
        .contains("node/created-node created"));
    assert_eq!(c.server.node_count(), 2);

    // kubectl validates on the server (fieldValidation=Strict).
    let bogus = c.write(
        "bogus.yaml",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: bogus\nspec:\n  bogusField: 1\n",
    );
    let stderr = c.fails(&["create", "-f", &bogus]);
    assert!(
        stderr.contains("strict decoding error: unknown field \"spec.bogusField\""),
        "{stderr}"
    );
    assert!(c
        .ok(&["create", "-f", &bogus, "--validate=false"])
        .contains("node/bogus created"));
    // Invalid objects are 422s.
    let invalid = c.write(
        "invalid.yaml",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: Not_Valid\n",
    );
    let stderr = c.fails(&["create", "-f", &invalid]);
    assert!(
        stderr.contains(
            "The Node \"Not_Valid\" is invalid: metadata.name: Invalid value: \"Not_Valid\""
        ),
        "{stderr}"
    );
}

fn not_ready(name: &str) -> k8s_openapi::api::core::v1::Node {
    let mut node = ready_node(name, None);
    if let Some(status) = node.status.as_mut() {
        status.conditions = Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "False".into(),
            ..Default::default()
        }]);
    }
    node
}

#[test]
fn get_nodes_as_table_json_and_jsonpath() {
    let c = Cluster::new();
    c.server
        .create_node(ready_node("node-a", Some("10.42.0.0/24")))
        .unwrap();
    c.server.create_node(not_ready("node-b")).unwrap();

    let table = c.ok(&["get", "nodes"]);
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        "{table}"
    );
    let a: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        (a[0], a[1], a[2], a[4]),
        ("node-a", "Ready", "<none>", "v1.33.0"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("node-b") && lines[2].contains("NotReady"),
        "{table}"
    );
    let wide = c.ok(&["get", "nodes", "-o", "wide"]);
    assert!(
        wide.contains("INTERNAL-IP") && wide.contains("192.0.2.10"),
        "{wide}"
    );
    // Short name and singular.
    assert!(c.ok(&["get", "no", "node-a"]).contains("node-a"));

    assert_eq!(
        c.ok(&["get", "node", "node-a", "-o", "jsonpath={.spec.podCIDR}"]),
        "10.42.0.0/24"
    );
    let json: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "node", "node-a", "-o", "json"])).unwrap();
    assert_eq!(json["kind"], "Node");
    assert_eq!(json["metadata"]["name"], "node-a");
    assert!(json["metadata"]["uid"]
        .as_str()
        .is_some_and(|u| u.len() == 36));
    assert!(json["metadata"]["resourceVersion"].as_str().is_some());
    let list: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "nodes", "-o", "json"])).unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        c.ok(&["get", "nodes", "-o", "name"]),
        "node/node-a\nnode/node-b\n"
    );

    // Selectors.
    assert_eq!(
        c.ok(&[
            "get",
            "nodes",
            "-o",
            "name",
            "--field-selector",
            "metadata.name!=node-a"
        ]),
        "node/node-b\n"
    );
    c.ok(&["label", "node", "node-b", "zone=z1"]);
    assert_eq!(
        c.ok(&["get", "nodes", "-o", "name", "-l", "zone in (z1,z2)"]),
        "node/node-b\n"
    );
    assert_eq!(
        c.ok(&["get", "nodes", "-o", "name", "-l", "!zone"]),
        "node/node-a\n"
    );

    let stderr = c.fails(&["get", "node", "nope"]);
    assert!(stderr.contains("nodes \"nope\" not found"), "{stderr}");
    assert!(stderr.contains("(NotFound)"), "{stderr}");
}

#[test]
fn discovery_version_and_unknown_resources() {
    let c = Cluster::new();
    let resources = c.ok(&["api-resources"]);
    let nodes = resources
        .lines()
        .find(|l| l.starts_with("nodes"))
        .unwrap_or_else(|| panic!("{resources}"));
    let columns: Vec<&str> = nodes.split_whitespace().collect();
    assert_eq!(
        columns,
        ["nodes", "no", "v1", "false", "Node"],
        "{resources}"
    );
    let version = c.ok(&["version"]);
    assert!(version.contains("Server Version: v1.33.0"), "{version}");
    let stderr = c.fails(&["get", "pods"]);
    assert!(
        stderr.contains("the server doesn't have a resource type \"pods\""),
        "{stderr}"
    );
    // kubectl asks for aggregated discovery first; the plain JSON answers
    // (APIVersions, APIGroupList) make it fall back to /api/v1.
    let log = c.server.request_log();
    for path in ["/api", "/apis", "/api/v1"] {
        assert!(
            log.iter().any(|r| r.path.split('?').next() == Some(path)
                && r.status == 200
                && r.verb == Verb::Discovery),
            "{path} not served: {log:?}"
        );
    }
}

#[test]
fn annotate_and_label() {
    let c = Cluster::new();
    c.server.create_node(ready_node("n", None)).unwrap();
    assert!(c
        .ok(&["annotate", "node", "n", "a=b"])
        .contains("node/n annotated"));
    let annotations = |c: &Cluster| c.server.get_node("n").unwrap().metadata.annotations;
    assert_eq!(annotations(&c).unwrap()["a"], "b");
    // Changing a value needs --overwrite, as with a real server.
    let stderr = c.fails(&["annotate", "node", "n", "a=c"]);
    assert!(stderr.contains("already has a value (b)"), "{stderr}");
    c.ok(&["annotate", "node", "n", "a=c", "--overwrite"]);
    assert_eq!(annotations(&c).unwrap()["a"], "c");
    c.ok(&["annotate", "node", "n", "a-"]);
    assert!(annotations(&c).is_none(), "{:?}", annotations(&c));

    c.ok(&["label", "node", "n", "role=edge"]);
    let shown = c.ok(&["get", "node", "n", "--show-labels"]);
    assert!(shown.contains("role=edge"), "{shown}");
    c.ok(&["label", "node", "n", "role-"]);
    let labels = c.server.get_node("n").unwrap().metadata.labels.unwrap();
    assert!(!labels.contains_key("role"));
    assert!(c.server.requests(Verb::Patch) >= 4);
}

#[test]
fn patch_merge_json_and_strategic() {
    let c = Cluster::new();
    let mut node = ready_node("p", Some("10.42.3.0/24"));
    if let Some(conditions) = node.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        conditions.push(NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: "True".into(),
            reason: Some("NoRouteCreated".into()),
            ..Default::default()
        });
    }
    c.server.create_node(node).unwrap();

    c.ok(&[
        "patch",
        "node",
        "p",
        "--type=merge",
        "-p",
        r#"{"spec":{"unschedulable":true}}"#,
    ]);
    assert!(c
        .ok(&["get", "node", "p"])
        .contains("Ready,SchedulingDisabled"));
    c.ok(&[
        "patch", "node", "p", "--type=json", "-p",
        r#"[{"op":"add","path":"/metadata/labels/patched","value":"yes"},{"op":"remove","path":"/spec/unschedulable"}]"#,
    ]);
    let got = c.server.get_node("p").unwrap();
    assert_eq!(got.metadata.labels.unwrap()["patched"], "yes");
    assert_eq!(got.spec.unwrap().unschedulable, None);
    let stderr = c.fails(&[
        "patch",
        "node",
        "p",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/nothing"}]"#,
    ]);
    assert!(
        stderr.contains("The request is invalid") && stderr.contains("/spec/nothing"),
        "{stderr}"
    );

    // Strategic merge on the status subresource: one condition by type,
    // the others survive.
    c.ok(&[
        "patch", "node", "p", "--subresource=status", "--type=strategic", "-p",
        r#"{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","reason":"FlannelIsUp"}]}}"#,
    ]);
    let conditions = c
        .server
        .get_node("p")
        .unwrap()
        .status
        .unwrap()
        .conditions
        .unwrap();
    let by_type = |t: &str| conditions.iter().find(|c| c.type_ == t).cloned().unwrap();
    assert_eq!(conditions.len(), 2, "{conditions:?}");
    assert_eq!(by_type("Ready").status, "True");
    assert_eq!(by_type("NetworkUnavailable").status, "False");
    assert_eq!(
        by_type("NetworkUnavailable").reason.as_deref(),
        Some("FlannelIsUp")
    );

    // The main endpoint ignores status changes, like the real registry.
    let rv = c.server.resource_version();
    let out = c.ok(&[
        "patch",
        "node",
        "p",
        "--type=strategic",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
    ]);
    assert!(out.contains("(no change)"), "{out}");
    assert_eq!(c.server.resource_version(), rv);
    // The status endpoint ignores spec changes but keeps metadata ones
    // (flannel and k3s patch annotations through nodes/status).
    c.ok(&[
        "patch", "node", "p", "--subresource=status", "--type=merge", "-p",
        r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-type":"vxlan"}},"spec":{"unschedulable":true},"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
    ]);
    let got = c.server.get_node("p").unwrap();
    assert_eq!(
        got.metadata.annotations.unwrap()["flannel.alpha.coreos.com/backend-type"],
        "vxlan"
    );
    assert_eq!(got.spec.unwrap().unschedulable, None);
    // A merge patch replaces the whole list.
    assert_eq!(got.status.unwrap().conditions.unwrap().len(), 1);
    assert!(c.ok(&["get", "nodes"]).contains("NotReady"));

    // Pod CIDRs may not change once set.
    let stderr = c.fails(&[
        "patch",
        "node",
        "p",
        "--type=merge",
        "-p",
        r#"{"spec":{"podCIDRs":["10.42.9.0/24"]}}"#,
    ]);
    assert!(
        stderr.contains("node updates may not change podCIDR except from \"\" to valid"),
        "{stderr}"
    );
}

#[test]
fn delete_and_replace() {
    let c = Cluster::new();
    c.server.create_node(ready_node("d", None)).unwrap();
    c.server.create_node(ready_node("r", None)).unwrap();
    assert!(c
        .ok(&["delete", "node", "d"])
        .contains("node \"d\" deleted"));
    assert!(c.server.get_node("d").is_none());
    let stderr = c.fails(&["delete", "node", "d"]);
    assert!(stderr.contains("nodes \"d\" not found"), "{stderr}");

    // replace with a stale resourceVersion: conflict.
    let stale = c.ok(&["get", "node", "r", "-o", "yaml"]);
    let file = c.write("stale.yaml", &stale);
    c.ok(&["label", "node", "r", "bump=1"]);
    let stderr = c.fails(&["replace", "-f", &file]);
    assert!(
        stderr.contains("(Conflict)") && stderr.contains("the object has been modified"),
        "{stderr}"
    );
    let fresh = c.ok(&["get", "node", "r", "-o", "yaml"]);
    let file = c.write("fresh.yaml", &fresh.replace("bump: \"1\"", "bump: \"2\""));
    assert!(c.ok(&["replace", "-f", &file]).contains("node/r replaced"));
    assert_eq!(
        c.server.get_node("r").unwrap().metadata.labels.unwrap()["bump"],
        "2"
    );
    assert_eq!(c.server.requests(Verb::Update), 2);
}

/// A child process whose stdout lines arrive on a channel; killed on drop.
struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Streaming {
    fn start(mut command: Command) -> Streaming {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Streaming {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line that satisfies `matches`; panics with what was seen.
    fn expect(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LIMIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line with {what}; seen:\n{}", self.seen.join("\n"));
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn get_nodes_watch_prints_changes() {
    let c = Cluster::new();
    c.server.create_node(ready_node("w1", None)).unwrap();
    let mut watch = Streaming::start(c.command(&["get", "nodes", "--watch"]));
    watch.expect("the header", |l| {
        l.starts_with("NAME") && l.contains("STATUS")
    });
    watch.expect("w1 ready", |l| l.starts_with("w1 ") && l.contains("Ready"));
    assert!(c.server.wait_for_watches(1, LIMIT), "kubectl never watched");

    // A change through the library...
    c.server
        .update_node("w1", |node| {
            if let Some(conditions) = node.status.as_mut().and_then(|s| s.conditions.as_mut()) {
                conditions[0].status = "False".into();
            }
        })
        .unwrap();
    watch.expect("w1 not ready", |l| {
        l.starts_with("w1 ") && l.contains("NotReady")
    });
    // ...and one through another kubectl.
    let file = c.write("w2.yaml", &MANIFEST.replace("manifest-node", "w2"));
    c.ok(&["create", "-f", &file]);
    watch.expect("w2", |l| l.starts_with("w2 ") && l.contains("worker"));
    c.ok(&["label", "node", "w2", "node-role.kubernetes.io/gateway="]);
    watch.expect("w2 with two roles", |l| {
        l.starts_with("w2 ") && l.contains("gateway,worker")
    });
    drop(watch);
}

#[test]
fn binary_serves_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kc");
    let nodes = dir.path().join("nodes.json");
    let list = serde_json::json!({"kind": "NodeList", "apiVersion": "v1", "items": [
        ready_node("from-file-1", Some("10.42.1.0/24")),
        ready_node("from-file-2", Some("10.42.2.0/24")),
    ]});
    std::fs::write(&nodes, list.to_string()).unwrap();
    let mut command = Command::new(workspace_bin("test-apiserver"));
    command
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--nodes-file")
        .arg(&nodes);
    let mut server = Streaming::start(command);
    let url = server.expect("the URL", |l| l.starts_with("http://127.0.0.1:"));
    let pid = server.child.id();

    let finished = Running::start({
        let mut kubectl = Command::new("kubectl");
        kubectl
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                dir.path().join("cache").display()
            ))
            .args(["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"]);
        kubectl
    })
    .wait(LIMIT);
    assert!(finished.status.success(), "{finished:?} ({url})");
    assert_eq!(finished.stdout, "10.42.1.0/24 10.42.2.0/24");

    let status = Command::new("kill").arg(pid.to_string()).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + LIMIT;
    let code = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "test-apiserver ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "{code:?}");
}

/// What the `operator` user may do in the secured tests: read and patch
/// Nodes, but not delete them.
const OPERATOR_ROLE: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: node-operator}
rules:
- apiGroups: [""]
  resources: ["nodes", "nodes/status"]
  verbs: ["get", "list", "watch", "patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: node-operator}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-operator}
subjects:
- {kind: User, name: operator}
"#;

#[test]
fn https_with_client_certificates_and_tokens_under_rbac() {
    let forbidden = "Error from server (Forbidden): nodes \"node-a\" is forbidden: User \"operator\" cannot delete resource \"nodes\" in API group \"\" at the cluster scope";
    for (server_key, credential) in [
        (KeyAlgorithm::EcdsaP256, "cert"),
        (KeyAlgorithm::Rsa2048, "cert"),
        (KeyAlgorithm::EcdsaP256, "cert-rsa"),
        (KeyAlgorithm::Rsa2048, "token"),
    ] {
        let mut cluster =
            Cluster::with(Options::default().tls(server_key).rbac_yaml(OPERATOR_ROLE));
        cluster
            .server
            .create_node(ready_node("node-a", Some("10.42.0.0/24")))
            .unwrap();
        // The admin kubeconfig (system:masters).
        assert!(cluster.ok(&["get", "nodes"]).contains("node-a"));

        let credential = match credential {
            "token" => {
                cluster
                    .server
                    .add_token("operator-token", UserInfo::new("operator", &[]))
                    .unwrap();
                Credential::Token("operator-token".into())
            }
            "cert-rsa" => Credential::ClientCert(
                cluster
                    .server
                    .issue_client_cert("operator", &["ops"], Some(KeyAlgorithm::Rsa2048))
                    .unwrap(),
            ),
            _ => Credential::ClientCert(
                cluster
                    .server
                    .issue_client_cert("operator", &[], None)
                    .unwrap(),
            ),
        };
        cluster.use_credential("operator.kubeconfig", &credential);
        let table = cluster.ok(&["get", "nodes"]);
        assert!(
            table.contains("node-a") && table.contains("Ready"),
            "{table}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&cluster.ok(&["get", "node", "node-a", "-o", "json"])).unwrap();
        assert_eq!(json["spec"]["podCIDR"], "10.42.0.0/24");
        cluster.ok(&["label", "node", "node-a", "flannel=yes"]);
        cluster.ok(&[
            "annotate",
            "node",
            "node-a",
            "flannel.alpha.coreos.com/public-ip=192.0.2.9",
        ]);
        cluster.ok(&[
            "patch",
            "node",
            "node-a",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running"}}"#,
        ]);
        let node = cluster.server.get_node("node-a").unwrap();
        assert_eq!(node.metadata.labels.unwrap()["flannel"], "yes");
        let managers: Vec<_> = node
            .metadata
            .managed_fields
            .unwrap()
            .into_iter()
            .filter_map(|e| e.manager)
            .collect();
        assert!(
            managers.iter().any(|m| m.starts_with("kubectl")),
            "{managers:?}"
        );

        let stderr = cluster.fails(&["delete", "node", "node-a"]);
        assert!(
            stderr.contains(forbidden),
            "{server_key:?} {credential:?}: {stderr}"
        );
        assert!(cluster.server.get_node("node-a").is_some());
        let users: Vec<_> = cluster
            .server
            .request_log()
            .into_iter()
            .filter_map(|r| r.user)
            .collect();
        assert!(users.iter().any(|u| u == "operator"));
    }
}

#[test]
fn binary_with_tls_tokens_rbac_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("tokens.csv"), "op-token,operator,1001,ops\n").unwrap();
    std::fs::write(path("rbac.yaml"), OPERATOR_ROLE).unwrap();
    let mut command = Command::new(workspace_bin("test-apiserver"));
    command
        .args(["--tls", "ecdsa"])
        .arg("--cert-dir")
        .arg(path("certs"))
        .arg("--kubeconfig")
        .arg(path("admin.kubeconfig"))
        .arg("--token-auth-file")
        .arg(path("tokens.csv"))
        .arg("--rbac")
        .arg(path("rbac.yaml"))
        .arg("--authz-log")
        .arg(path("authz.jsonl"))
        .arg("--client-kubeconfig")
        .arg(format!(
            "operator/ops={}",
            path("cert.kubeconfig").display()
        ))
        .arg("--token-kubeconfig")
        .arg(format!("op-token={}", path("token.kubeconfig").display()))
        .arg("--service-account")
        .arg(format!("kube-flannel/flannel={}", path("sa").display()));
    let mut server = Streaming::start(command);
    let url = server.expect("the URL", |l| l.starts_with("https://127.0.0.1:"));
    let ca = std::fs::read_to_string(path("certs").join("ca.crt")).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        std::fs::read_to_string(path("sa").join("ca.crt")).unwrap(),
        ca
    );
    let kubectl = |kubeconfig: &str, args: &[&str]| {
        let mut command = Command::new("kubectl");
        command
            .arg(format!("--kubeconfig={}", path(kubeconfig).display()))
            .arg(format!("--cache-dir={}", path("cache").display()))
            .args(args)
            .env_remove("KUBECONFIG");
        Running::start(command).wait(LIMIT)
    };
    for kubeconfig in ["admin.kubeconfig", "cert.kubeconfig", "token.kubeconfig"] {
        let finished = kubectl(kubeconfig, &["get", "nodes"]);
        assert!(
            finished.status.success(),
            "{kubeconfig}: {finished:?} ({url})"
        );
    }
    let finished = kubectl("token.kubeconfig", &["delete", "node", "node-x"]);
    assert!(!finished.status.success());
    assert!(
        finished.stderr.contains(
            "nodes \"node-x\" is forbidden: User \"operator\" cannot delete resource \"nodes\""
        ),
        "{}",
        finished.stderr
    );
    let decisions: Vec<AuthzDecision> = std::fs::read_to_string(path("authz.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(decisions
        .iter()
        .any(|d| d.user == "operator" && d.verb == "list" && d.resource == "nodes" && d.allowed));
    assert!(decisions
        .iter()
        .any(|d| d.user == "operator" && d.verb == "delete" && d.name == "node-x" && !d.allowed));
    assert!(decisions
        .iter()
        .any(|d| d.user == "system:admin" && d.groups.contains(&"system:masters".to_string())));
    let status = Command::new("kill")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let _ = server.child.wait();
}
