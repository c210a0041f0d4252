//! The agents against an API server served the way a real cluster serves
//! it: HTTPS from the server's own CA, client authentication, and RBAC from
//! the ClusterRole we ship (integration/deploy/rbac.yaml).
//!
//! - The seed's two-node e2e (pods ping across nodes) with each credential
//!   an agent meets: an ECDSA client-certificate kubeconfig (k3s), an RSA
//!   one (kind), a service-account token kubeconfig, and in-cluster config
//!   (token and CA under /var/run/secrets, KUBERNETES_SERVICE_HOST/PORT).
//! - The decision log of a full lab run lists only the shipped permissions,
//!   and every write carries the field manager `flannel`.
//! - A rotated token is picked up without a restart (kube-rs re-reads the
//!   token file); meanwhile the 401 is in the agent's status.
//! - A ClusterRole without `nodes/status patch` is a 403 in the status that
//!   names the credential and the permission; fixing the role is enough.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use integration::apiserver::AuthzDecision;
use integration::fixtures::PREFIX;
use integration::lab::auth::{node_group, AgentCredential, ApiSecurity, SHIPPED_RBAC};
use integration::lab::{Lab, Options};
use k8s_openapi::api::rbac::v1::ClusterRole;

/// (verb, resource, subresource) triples the shipped ClusterRole grants,
/// read from the file itself.
fn shipped_permissions() -> BTreeSet<(String, String, String)> {
    let first = SHIPPED_RBAC
        .split("\n---\n")
        .next()
        .expect("the file starts with the ClusterRole");
    let role: ClusterRole = serde_saphyr::from_str(first).expect("the ClusterRole parses");
    assert_eq!(role.metadata.name.as_deref(), Some("flannel"));
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
        for resource in rule.resources.unwrap_or_default() {
            let (resource, sub) = resource.split_once('/').unwrap_or((&resource, ""));
            for verb in &rule.verbs {
                granted.insert((verb.clone(), resource.to_string(), sub.to_string()));
            }
        }
    }
    granted
}

fn lab_with(
    tag: &str,
    dir: &std::path::Path,
    security: ApiSecurity,
    tweak: impl FnOnce(&mut Options),
) -> Lab {
    let mut options = Options::for_tests(tag, dir);
    options.nodes = 2;
    options.pods_per_node = 1;
    options.wait = Duration::from_secs(30);
    options.api = security;
    tweak(&mut options);
    Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap()
}

fn assert_pods_ping(lab: &Lab, what: &str) {
    let matrix = lab.ping_matrix();
    assert!(
        matrix.all_ok(),
        "{what}: pods do not ping:\n{}",
        matrix.render()
    );
}

/// The decisions made for the agents (not the lab's admin, nor kubectl).
fn agent_decisions(lab: &Lab) -> Vec<AuthzDecision> {
    lab.authz_decisions()
        .unwrap()
        .into_iter()
        .filter(|d| !d.groups.iter().any(|g| g == "system:masters"))
        .collect()
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], integration::free_local_port()))
}

/// Polls `GET path` until the body contains `wanted`; returns the body.
fn readyz_until(addr: SocketAddr, wanted: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok((_, body)) = integration::http_get(addr, "/readyz") {
            if body.contains(wanted) {
                return body;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("/readyz of {addr} never said {wanted:?} within {limit:?}; last:\n{last}")
}

/// Polls `GET /readyz` until it answers 200 `ok`.
fn ready_until(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        match integration::http_get(addr, "/readyz") {
            Ok((200, body)) if body == "ok\n" => return,
            answer => assert!(
                Instant::now() < deadline,
                "/readyz of {addr} not ready within {limit:?}: {answer:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every agent node has every other node programmed.
fn assert_programmed(lab: &Lab) {
    let table = lab.wait_peers_programmed(Duration::from_secs(20));
    assert!(table.everyone_has_everyone(), "{}", table.render());
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn has_public_ip(lab: &Lab, index: usize) -> bool {
    lab.node_object(index)
        .unwrap()
        .and_then(|n| n.metadata.annotations)
        .is_some_and(|a| a.contains_key(&format!("{PREFIX}public-ip")))
}

#[test]
fn pods_ping_over_https_with_each_credential_kind() {
    let shipped = shipped_permissions();
    let kinds = [
        ("ecdsa", AgentCredential::ClientCert),
        ("rsa", AgentCredential::ClientCert),
        ("ecdsa", AgentCredential::Token),
        ("ecdsa", AgentCredential::InCluster),
    ];
    for (algorithm, credential) in kinds {
        let what = format!("{algorithm} CA, {credential:?} agents");
        eprintln!("== {what}");
        let tmp = tempfile::tempdir().unwrap();
        let security = ApiSecurity {
            tls: Some(algorithm.to_string()),
            credential,
        };
        let mut lab = lab_with("https", &tmp.path().join("lab"), security, |_| {});
        assert!(
            lab.api_url().starts_with("https://127.0.0.1:"),
            "{}",
            lab.api_url()
        );
        assert_programmed(&lab);
        assert_pods_ping(&lab, &what);

        // Each agent authenticated as its credential says.
        let decisions = agent_decisions(&lab);
        for index in 0..2 {
            let mine: Vec<&AuthzDecision> = decisions
                .iter()
                .filter(|d| match credential {
                    AgentCredential::ClientCert => d.user == format!("flannel:node-{index}"),
                    _ => {
                        d.user == "system:serviceaccount:kube-flannel:flannel"
                            && d.groups.contains(&node_group(index))
                    }
                })
                .collect();
            assert!(
                !mine.is_empty(),
                "{what}: no request of node-{index}'s agent in {decisions:#?}"
            );
        }

        // A full run: also an agent restart, whose relist and re-publish
        // go through the same permissions.
        lab.stop_agent(1);
        lab.start_agent(1).unwrap();
        assert_programmed(&lab);
        assert_pods_ping(&lab, &format!("{what}, after a restart"));

        // Only the shipped permissions were used, and nothing was refused;
        // the agents did use list, watch and the status patch.
        let decisions = agent_decisions(&lab);
        let refused: Vec<&AuthzDecision> = decisions.iter().filter(|d| !d.allowed).collect();
        assert!(refused.is_empty(), "{what}: refused: {refused:#?}");
        let used: BTreeSet<(String, String, String)> = decisions
            .iter()
            .filter(|d| !d.resource.is_empty())
            .map(|d| (d.verb.clone(), d.resource.clone(), d.subresource.clone()))
            .collect();
        assert!(
            used.is_subset(&shipped),
            "{what}: used {used:?}, shipped {shipped:?}"
        );
        for needed in [
            ("list", "nodes", ""),
            ("watch", "nodes", ""),
            ("patch", "nodes", "status"),
        ] {
            let needed = (
                needed.0.to_string(),
                needed.1.to_string(),
                needed.2.to_string(),
            );
            assert!(
                used.contains(&needed),
                "{what}: {needed:?} not used: {used:?}"
            );
        }
        let paths: BTreeSet<&str> = decisions
            .iter()
            .filter(|d| d.resource.is_empty())
            .map(|d| d.path.as_str())
            .collect();
        assert!(
            paths.iter().all(|p| *p == "/version"),
            "{what}: non-resource requests beyond /version: {paths:?}"
        );

        // The writes are recorded under the field manager `flannel`.
        let node = lab.node_object(0).unwrap().unwrap();
        let managers: Vec<(String, String)> = node
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                (
                    m.manager.unwrap_or_default(),
                    m.subresource.unwrap_or_default(),
                )
            })
            .collect();
        assert!(
            managers.contains(&("flannel".to_string(), "status".to_string())),
            "{what}: managedFields {managers:?}"
        );
        lab.down().unwrap();
    }
}

#[test]
fn a_rotated_token_is_picked_up_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let health = free_addr();
    let security = ApiSecurity {
        tls: Some("ecdsa".into()),
        credential: AgentCredential::InCluster,
    };
    let lab = lab_with("rotate", &tmp.path().join("lab"), security, |options| {
        options
            .node_agent_args
            .insert(1, vec![format!("--healthz-bind={health}")]);
    });
    assert_programmed(&lab);
    let pid = lab.node(1).agent.as_ref().unwrap().pid;

    // The server stops accepting node-1's token; its token file gets the
    // new one. kube-rs still holds the old one (it re-reads the file
    // about once a minute), so the next write is refused...
    let rotated_at = lab.authz_decisions().unwrap().len();
    lab.rotate_token(1).unwrap();
    let out = lab
        .kubectl(&["annotate", "node", "node-1", &format!("{PREFIX}public-ip-")])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = readyz_until(health, "401 Unauthorized", Duration::from_secs(30));
    assert!(
        body.contains("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        "the 401 names the credential: {body}"
    );

    // ...until the agent reads the new token by itself: the annotation is
    // put back, with a request only the new token can have made.
    wait_for(
        "node-1's public-ip put back",
        Duration::from_secs(90),
        || has_public_ip(&lab, 1),
    );
    ready_until(health, Duration::from_secs(30));
    let after: Vec<AuthzDecision> = lab.authz_decisions().unwrap().split_off(rotated_at);
    assert!(
        after.iter().any(|d| d.allowed
            && d.verb == "patch"
            && d.subresource == "status"
            && d.groups.contains(&node_group(1))),
        "no status patch by node-1 after the rotation: {after:#?}"
    );
    assert_eq!(
        lab.node(1).agent.as_ref().unwrap().pid,
        pid,
        "the agent was not restarted"
    );
    assert!(lab.agent_running(1));
    assert_programmed(&lab);
    assert_pods_ping(&lab, "after the token rotation");
    lab.down().unwrap();
}

#[test]
fn a_role_without_status_patch_is_a_403_in_status_until_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let health = free_addr();
    let mut lab = lab_with(
        "rbac403",
        &tmp.path().join("lab"),
        ApiSecurity::default(),
        |options| {
            options
                .node_agent_args
                .insert(1, vec![format!("--healthz-bind={health}")]);
        },
    );
    assert_programmed(&lab);

    // node-1's agent restarts under a role that lacks nodes/status patch,
    // and its Node lost its flannel annotations meanwhile.
    lab.stop_agent(1);
    let rbac = lab.auth().rbac();
    let good = std::fs::read_to_string(&rbac).unwrap();
    let broken = good.replacen(
        "  - apiGroups: [\"\"]\n    resources: [\"nodes/status\"]\n    verbs: [\"patch\"]\n",
        "",
        1,
    );
    assert_ne!(broken, good, "the shipped file has the nodes/status rule");
    std::fs::write(&rbac, &broken).unwrap();
    let node = lab.node_object(1).unwrap().unwrap();
    let flannel_keys: Vec<String> = node
        .metadata
        .annotations
        .unwrap_or_default()
        .into_keys()
        .filter(|k| k.starts_with(PREFIX))
        .map(|k| format!("{k}-"))
        .collect();
    let mut args = vec!["annotate", "node", "node-1"];
    args.extend(flannel_keys.iter().map(String::as_str));
    let out = lab.kubectl(&args).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.start_agent(1).unwrap();

    let body = readyz_until(health, "403 Forbidden", Duration::from_secs(30));
    for part in [
        "may not patch nodes/status",
        "kubeconfig",
        "user \"test\"",
        "cannot patch resource \"nodes/status\"",
        "flannel:node-1",
    ] {
        assert!(body.contains(part), "the 403 says {part:?}: {body}");
    }
    assert!(!has_public_ip(&lab, 1));
    assert!(lab.agent_running(1), "a 403 does not end the agent");

    // Fixing the role is all it takes.
    std::fs::write(&rbac, &good).unwrap();
    wait_for(
        "node-1's annotations published",
        Duration::from_secs(30),
        || has_public_ip(&lab, 1),
    );
    ready_until(health, Duration::from_secs(30));
    assert_programmed(&lab);
    assert_pods_ping(&lab, "after the role was fixed");
    lab.down().unwrap();
}
