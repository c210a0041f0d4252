//! The Kubernetes side of the network task, after flannel's kube subnet
//! manager: this node's lease from its Node object, the annotations it
//! publishes, and the validated set of peers from every other Node.

mod annotations;
mod api_error;
mod initial_list;
mod lease;
mod node;
mod peer_set;
mod peers;
mod watch;

use std::pin::pin;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tracing::{info, warn};

pub use annotations::{
    annotation_patch, desired_annotations, network_unavailable_patch, node_public_ip,
    stored_vtep_mac, vxlan_backend_data, wireguard_backend_data, AnnotationKeys, OwnAttrs,
    FLANNEL_IS_UP_MESSAGE, FLANNEL_IS_UP_REASON, HOST_GW_BACKEND_DATA, NETWORK_UNAVAILABLE,
};
pub use api_error::{explain, explain_watch, Permission, CLUSTER_ROLE_RULES};
use initial_list::node_events;
pub use initial_list::{refuses_streaming, InitialList, INITIAL_LIST_ENV};
pub use lease::{lease_state, Lease, LeaseError, LeaseState};
pub use node::{SlimNode, SlimNodeSpec, PEER_ANNOTATION_NAMES};
pub use peers::{
    assemble_peer_set, build_peer_set, Candidate, Peer, PeerBackend, PeerContext, PeerResolver,
    PeerSet, PeerSetBuild, SkipReason,
};
pub use watch::{watch_peers, watch_peers_with, PeerReceiver, PeerSnapshot};

use crate::config::NetConf;

/// Waiting for the lease failed for a reason waiting longer cannot fix.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The Node's Pod CIDRs are unusable.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The watch stream ended, which kube-runtime's watcher never does on
    /// its own.
    #[error("the watch on node {0} ended unexpectedly")]
    WatchEnded(String),
}

/// Watches this node's own Node object (field selector on its name, initial
/// list as [`InitialList::choose`] picks it) until
/// every family net-conf.json enables has a Pod CIDR, like k3s does before
/// starting flannel: no crash loop and no polling. API errors are retried
/// with kube-runtime's default backoff and logged; only an unusable Pod CIDR
/// ends the wait with an error. Returns the lease and the Node as seen then.
/// `credential` names the client's credential in 401/403 messages.
/// `report` sees every reason worth a warning (a failing watch, a missing
/// family) while the wait goes on, for a status.
pub async fn wait_for_lease(
    client: Client,
    node_name: &str,
    netconf: &NetConf,
    credential: &str,
    mut report: impl FnMut(&str),
) -> Result<(Lease, Node), KubeError> {
    // One Node by a field selector: from the watch cache either way (a
    // quorum list would have etcd read every Node to filter one, from
    // every node of a restarting cluster at once).
    let strategy = InitialList::choose(&client).await;
    let api: Api<Node> = Api::all(client);
    let selector = format!("metadata.name={node_name}");
    let mut events = pin!(node_events(
        api,
        watcher::Config::default().fields(&selector),
        strategy,
        "this node's Node"
    ));
    // Log each distinct waiting reason once, not on every event.
    let mut last_reason = String::new();
    let mut note = |reason: String, as_warning: bool| {
        if as_warning {
            report(&reason);
        }
        if reason != last_reason {
            if as_warning {
                warn!("{reason}");
            } else {
                info!("{reason}");
            }
            last_reason = reason;
        }
    };
    let mut seen = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(node) | Event::InitApply(node)) => {
                seen = true;
                let slim = SlimNode::from(&node);
                match lease_state(&slim, netconf)? {
                    LeaseState::Ready(lease) => {
                        info!(%lease, "Flannel found PodCIDR assigned for node {node_name}");
                        return Ok((lease, node));
                    }
                    LeaseState::NotAssigned => note(
                        format!("waiting for node {node_name}: PodCIDR not assigned yet"),
                        false,
                    ),
                    LeaseState::MissingFamily(family) => note(
                        format!(
                            "waiting for node {node_name}: it has podCIDRs [{}] but no {family} one, and net-conf.json enables {family}; check kube-controller-manager's --cluster-cidr",
                            slim.pod_cidrs().join(",")
                        ),
                        true,
                    ),
                }
            }
            Ok(Event::Delete(_)) => {
                seen = false;
                note(
                    format!("waiting for node {node_name}: the Node was deleted"),
                    true,
                )
            }
            Ok(Event::InitDone) if !seen => note(
                format!("waiting for node {node_name}: no such Node registered yet"),
                false,
            ),
            Ok(Event::Init | Event::InitDone) => {}
            Err(error) => note(
                format!(
                    "waiting for node {node_name}: watching the Node failed, retrying: {}",
                    explain_watch(&error, credential, Permission::ListWatchOwnNode)
                ),
                true,
            ),
        }
    }
    Err(KubeError::WatchEnded(node_name.to_string()))
}
