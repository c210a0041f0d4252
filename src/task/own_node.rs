//! This node's own Node object, reconciled level-triggered like the peer
//! path: a watch on it (field selector on its name), and on every change
//! the annotations and the NetworkUnavailable condition it should carry
//! are compared with what it carries; only a difference is patched (so the
//! echo of our own patch changes nothing). Someone removing an annotation
//! or flipping the condition with kubectl sees it put back within a
//! moment. A changed podCIDR is reported, not followed (see
//! vendor-notes/health.md).

use std::net::IpAddr;
use std::pin::pin;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::drive::at;
use super::{Part, Progress};
use crate::backoff::Backoff;
use crate::config::NetConf;
use crate::kube_subnet::{
    annotation_patch, desired_annotations, explain, explain_watch, lease_state,
    network_unavailable_patch, AnnotationKeys, Lease, LeaseState, OwnAttrs, Permission, SlimNode,
};

/// What this node's Node object must say.
#[derive(Debug, Clone)]
pub(super) struct OwnNodeSpec {
    pub name: String,
    pub keys: AnnotationKeys,
    pub attrs: OwnAttrs,
    /// k3s `--flannel-external-ip`: publish the Node's ExternalIP.
    pub external_ip: bool,
    /// Whether NetworkUnavailable=False is ours to set.
    pub set_condition: bool,
    /// The lease the task runs with.
    pub lease: Lease,
    pub netconf: NetConf,
    /// The client's credential, named in 401/403 messages.
    pub credential: String,
}

/// The field manager of our writes, as kube-apiserver records it in
/// `managedFields` (what upstream flanneld's client-go user agent makes
/// it: `flanneld`; k3s's embedded flannel records the k3s binary).
pub(super) const FIELD_MANAGER: &str = "flannel";

/// What one look at the Node decided.
#[derive(Debug, Default, PartialEq)]
pub(super) struct NodeChanges {
    /// Annotation patch (on `nodes/status`), if any differ.
    pub annotations: Option<Value>,
    /// Condition patch, if NetworkUnavailable is not False/FlannelIsUp.
    pub condition: Option<Value>,
    /// Warnings from the annotations (a bad overwrite value).
    pub warnings: Vec<String>,
    /// The podCIDR no longer matches the lease: why, and what to do.
    pub lease_problem: Option<String>,
}

/// The pure decision: what to patch on `node`, and whether its podCIDR
/// still matches the lease.
pub(super) fn decide(spec: &OwnNodeSpec, node: &Node, now: &str) -> NodeChanges {
    let current = node.metadata.annotations.clone().unwrap_or_default();
    let external_ips = if spec.external_ip {
        external_addresses(node)
    } else {
        Vec::new()
    };
    let (desired, warnings) = desired_annotations(&spec.keys, &current, &spec.attrs, &external_ips);
    let lease_problem = match lease_state(&SlimNode::from(node), &spec.netconf) {
        Ok(LeaseState::Ready(lease)) if lease == spec.lease => None,
        Ok(LeaseState::Ready(lease)) => Some(format!(
            "node {}'s podCIDR changed from {} to {lease}: flannel keeps serving {} (pods and peers use it) and does not move to the new one while running; restart flannel (the host) to re-lease, after draining the node",
            spec.name, spec.lease, spec.lease
        )),
        Ok(_) => Some(format!(
            "node {}'s podCIDR was removed or lost a family: flannel keeps serving {}; restore spec.podCIDRs or restart flannel to re-lease",
            spec.name, spec.lease
        )),
        Err(error) => Some(format!(
            "node {}'s podCIDR is unusable ({error}): flannel keeps serving {}",
            spec.name, spec.lease
        )),
    };
    NodeChanges {
        annotations: annotation_patch(&current, &desired),
        condition: spec
            .set_condition
            .then(|| network_unavailable_patch(node, now))
            .flatten(),
        warnings,
        lease_problem,
    }
}

/// Keeps the Node right until `stopping`, publishing the latest of `attrs`
/// (they change when the uplink's address does). `published` turns true after the
/// first time the annotations (and condition) are in place: start-up waits
/// for it, since peers need our annotations before we are of any use.
pub(super) async fn keep_own_node(
    nodes: Api<Node>,
    mut spec: OwnNodeSpec,
    mut attrs: watch::Receiver<OwnAttrs>,
    progress: std::sync::Arc<Progress>,
    published: watch::Sender<bool>,
    stopping: impl std::future::Future<Output = ()>,
) {
    let selector = format!("metadata.name={}", spec.name);
    let mut events = pin!(
        watcher(nodes.clone(), watcher::Config::default().fields(&selector)).default_backoff()
    );
    let mut stopping = pin!(stopping);
    let mut latest: Option<Node> = None;
    let mut backoff = Backoff::API;
    let mut retry: Option<Instant> = None;
    let mut warned: Vec<String> = Vec::new();
    let mut attrs_open = true;
    loop {
        tokio::select! {
            () = &mut stopping => return,
            event = events.next() => match event {
                Some(Ok(Event::Apply(node) | Event::InitApply(node))) => latest = Some(node),
                Some(Ok(Event::Delete(_))) => {
                    latest = None;
                    progress.problem(Part::Node, format!("node {} was deleted; waiting for it to come back", spec.name));
                    continue;
                }
                Some(Ok(Event::Init | Event::InitDone)) => continue,
                Some(Err(error)) => {
                    progress.problem(Part::Node, format!(
                        "watching node {} failed, retrying: {}",
                        spec.name,
                        explain_watch(&error, &spec.credential, Permission::ListWatchOwnNode)
                    ));
                    continue;
                }
                None => return,
            },
            () = at(retry) => {}
            // The data path moved to a new uplink address.
            changed = attrs.changed(), if attrs_open => {
                attrs_open = changed.is_ok();
                spec.attrs = attrs.borrow_and_update().clone();
            }
        }
        // Act on the newest view only: events already queued (the echo of
        // our own patch, a second kubectl edit) would make this one stale.
        while let Some(Some(Ok(event))) = events.next().now_or_never() {
            match event {
                Event::Apply(node) | Event::InitApply(node) => latest = Some(node),
                Event::Delete(_) => latest = None,
                Event::Init | Event::InitDone => {}
            }
        }
        let Some(node) = latest.as_ref() else {
            continue;
        };
        retry = None;
        match reconcile(&nodes, &spec, node, &mut warned).await {
            Ok(lease_problem) => {
                backoff.succeeded();
                match lease_problem {
                    Some(problem) => progress.problem(Part::Node, problem),
                    None => progress.resolved(Part::Node),
                }
                published.send_if_modified(|done| !std::mem::replace(done, true));
            }
            Err(error) => {
                progress.problem(
                    Part::Node,
                    format!(
                        "updating node {}: {}",
                        spec.name,
                        explain(&error, &spec.credential, Permission::PatchNodeStatus)
                    ),
                );
                retry = Some(Instant::now() + backoff.failed());
            }
        }
    }
}

/// Applies what [`decide`] says for `node`; returns the lease problem, if
/// any. Each annotation warning is logged once.
async fn reconcile(
    nodes: &Api<Node>,
    spec: &OwnNodeSpec,
    node: &Node,
    warned: &mut Vec<String>,
) -> Result<Option<String>, kube::Error> {
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let changes = decide(spec, node, &now);
    for warning in &changes.warnings {
        if !warned.contains(warning) {
            warn!("{warning}");
            warned.push(warning.clone());
        }
    }
    let name = &spec.name;
    if let Some(patch) = changes.annotations {
        let changed: Vec<String> = patch["metadata"]["annotations"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        patch_status(nodes, name, patch).await?;
        info!(annotations = ?changed, "published flannel annotations on node {name}");
    }
    if let Some(patch) = changes.condition {
        patch_status(nodes, name, patch).await?;
        info!("set NetworkUnavailable=False (FlannelIsUp) on node {name}");
    }
    Ok(changes.lease_problem)
}

async fn patch_status(nodes: &Api<Node>, name: &str, patch: Value) -> Result<(), kube::Error> {
    // A request that hangs must not stall the loop: the watch would keep
    // delivering changes nobody acts on.
    match tokio::time::timeout(
        API_WRITE_TIMEOUT,
        nodes.patch_status(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PatchParams::default()
            },
            &Patch::Strategic(patch),
        ),
    )
    .await
    {
        Ok(result) => result.map(drop),
        Err(_) => Err(kube::Error::Service(
            format!("no answer within {API_WRITE_TIMEOUT:?}").into(),
        )),
    }
}

/// How long one patch of the Node may take.
const API_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn external_addresses(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};
    use std::collections::BTreeMap;

    const PREFIX: &str = "flannel.alpha.coreos.com/";

    fn spec() -> OwnNodeSpec {
        OwnNodeSpec {
            name: "node-a".into(),
            keys: AnnotationKeys::new(PREFIX),
            attrs: OwnAttrs {
                backend_type: "vxlan",
                ipv4: Some((
                    r#"{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}"#.into(),
                    "192.168.1.12".parse().unwrap(),
                )),
                ipv6: None,
            },
            external_ip: false,
            set_condition: true,
            lease: Lease {
                ipv4: Some("10.42.0.0/24".parse().unwrap()),
                ipv6: None,
            },
            netconf: NetConf::parse(r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}"#)
                .unwrap(),
            credential: "test credential".into(),
        }
    }

    /// A Node with `annotations` (flannel's, without the prefix), podCIDR
    /// `cidr` and NetworkUnavailable `(status, reason)` if given.
    fn node(
        annotations: &[(&str, &str)],
        cidr: Option<&str>,
        condition: Option<(&str, &str)>,
    ) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some("node-a".into());
        node.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        node.spec = Some(NodeSpec {
            pod_cidr: cidr.map(str::to_string),
            pod_cidrs: cidr.map(|c| vec![c.to_string()]),
            ..NodeSpec::default()
        });
        node.status = Some(NodeStatus {
            conditions: condition.map(|(status, reason)| {
                vec![NodeCondition {
                    type_: "NetworkUnavailable".into(),
                    status: status.into(),
                    reason: Some(reason.into()),
                    message: Some(crate::kube_subnet::FLANNEL_IS_UP_MESSAGE.into()),
                    ..NodeCondition::default()
                }]
            }),
            ..NodeStatus::default()
        });
        node
    }

    const PUBLISHED: &[(&str, &str)] = &[
        ("backend-data", r#"{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}"#),
        ("backend-type", "vxlan"),
        ("kube-subnet-manager", "true"),
        ("public-ip", "192.168.1.12"),
    ];

    fn patched_keys(changes: &NodeChanges) -> Vec<String> {
        changes
            .annotations
            .as_ref()
            .and_then(|p| p["metadata"]["annotations"].as_object())
            .map(|m| {
                m.keys()
                    .map(|k| k.trim_start_matches(PREFIX).to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn what_the_node_needs_is_decided_from_what_it_carries() {
        let up = Some(("False", crate::kube_subnet::FLANNEL_IS_UP_REASON));
        let cidr = Some("10.42.0.0/24");
        // (case, node, annotation keys patched, condition patched, lease problem)
        let table: Vec<(&str, Node, Vec<&str>, bool, bool)> = vec![
            (
                "in place: nothing to do",
                node(PUBLISHED, cidr, up),
                vec![],
                false,
                false,
            ),
            (
                "annotations removed by hand",
                node(&[], cidr, up),
                vec![
                    "backend-data",
                    "backend-type",
                    "kube-subnet-manager",
                    "public-ip",
                ],
                false,
                false,
            ),
            (
                "public-ip edited",
                node(
                    &[
                        PUBLISHED[0],
                        PUBLISHED[1],
                        PUBLISHED[2],
                        ("public-ip", "10.9.9.9"),
                    ],
                    cidr,
                    up,
                ),
                vec!["public-ip"],
                false,
                false,
            ),
            (
                "condition flipped",
                node(PUBLISHED, cidr, Some(("True", "ByHand"))),
                vec![],
                true,
                false,
            ),
            (
                "condition missing",
                node(PUBLISHED, cidr, None),
                vec![],
                true,
                false,
            ),
            (
                "podCIDR changed",
                node(PUBLISHED, Some("10.42.7.0/24"), up),
                vec![],
                false,
                true,
            ),
            (
                "podCIDR removed",
                node(PUBLISHED, None, up),
                vec![],
                false,
                true,
            ),
        ];
        for (case, node, keys, condition, lease_problem) in table {
            let changes = decide(&spec(), &node, "2026-12-03T10:00:00Z");
            assert_eq!(patched_keys(&changes), keys, "{case}");
            assert_eq!(changes.condition.is_some(), condition, "{case}");
            assert_eq!(
                changes.lease_problem.is_some(),
                lease_problem,
                "{case}: {:?}",
                changes.lease_problem
            );
        }
    }

    #[test]
    fn the_condition_is_left_alone_when_it_is_not_ours() {
        let spec = OwnNodeSpec {
            set_condition: false,
            ..spec()
        };
        let changes = decide(
            &spec,
            &node(PUBLISHED, Some("10.42.0.0/24"), Some(("True", "x"))),
            "t",
        );
        assert_eq!(changes.condition, None);
    }

    #[test]
    fn a_changed_pod_cidr_names_both_and_the_fix() {
        let changes = decide(&spec(), &node(PUBLISHED, Some("10.42.7.0/24"), None), "t");
        let problem = changes.lease_problem.unwrap();
        for wanted in ["10.42.0.0/24", "10.42.7.0/24", "restart flannel"] {
            assert!(problem.contains(wanted), "{wanted:?} not in {problem}");
        }
    }
}
