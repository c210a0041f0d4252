//! The steps of the network task, in order: configuration files, this
//! node's lease, the external interface, the backend's attributes, the
//! Node annotations and condition, then the peer watch.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Error, Failure, Phase, Progress, Step};
use crate::config::{BackendConf, Config, NetConf};
use crate::files;
use crate::kube_subnet::{
    self, annotation_patch, desired_annotations, network_unavailable_patch, node_public_ip,
    stored_vtep_mac, vxlan_backend_data, AnnotationKeys, OwnAttrs, PeerContext, PeerSnapshot,
    HOST_GW_BACKEND_DATA,
};
use crate::mac::MacAddr;
use crate::netlink::{ExternalInterface, NetlinkHandle};

/// The backend's decisions that peers see through annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackendAttrs {
    /// What is published.
    pub own: OwnAttrs,
    /// vxlan: the MACs the devices get (IPv4, IPv6).
    pub vtep_macs: (Option<MacAddr>, Option<MacAddr>),
}

pub(super) async fn run(client: Client, config: &Config, progress: &Progress) -> Result<(), Error> {
    info!(backend = %config.backend(), "Starting flannel");
    if let Some(path) = config.netns() {
        check_netns(path).map_err(|f| Error::new(Step::OpenNetns, f))?;
    }
    let netconf = {
        let config = config.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| prepare_files(&config)))
            .await
            .map_err(|e| Error::new(Step::Run, Failure::Panicked(e.to_string())))??
    };
    if netconf.backend.backend() != config.backend() {
        info!(
            "net-conf.json selects backend type {}; it takes precedence over --flannel-backend={}",
            netconf.backend.type_name(),
            config.backend()
        );
    }
    progress.update(|s| {
        s.backend_type = Some(netconf.backend.type_name());
        s.phase = Phase::WaitingForPodCidr;
    });

    let (lease, own_node) =
        kube_subnet::wait_for_lease(client.clone(), config.node_name(), &netconf)
            .await
            .map_err(|e| Error::new(Step::WaitForPodCidr, e))?;
    progress.update(|s| {
        s.lease = Some(lease);
        s.phase = Phase::Programming;
    });

    let netlink = NetlinkHandle::open(config.netns())
        .await
        .map_err(|e| Error::new(Step::FindInterface, e))?;
    let ext = netlink
        .external_interface(config.iface(), netconf.enable_ipv4, netconf.enable_ipv6)
        .await
        .map_err(|e| Error::new(Step::FindInterface, e))?;
    info!(
        iface = %ext.name,
        mtu = ext.mtu,
        ipv4 = ?ext.ipv4,
        ipv6 = ?ext.ipv6,
        "Using interface {}",
        ext.name
    );

    let keys = AnnotationKeys::new(config.annotation_prefix());
    let own_annotations = own_node.metadata.annotations.clone().unwrap_or_default();
    let attrs = backend_attrs(&netconf, &keys, &own_annotations, &ext)
        .map_err(|f| Error::new(Step::RegisterNetwork, f))?;
    progress.update(|s| s.public_ip = attrs.own.ipv4.as_ref().map(|(_, ip)| IpAddr::V4(*ip)));

    let nodes: Api<Node> = Api::all(client.clone());
    publish_annotations(&nodes, config, &keys, &attrs.own).await;
    if config.set_node_network_unavailable() {
        set_network_available(&nodes, config.node_name()).await;
    }

    warn!(
        "the {} data path is not implemented in flannel-embed {} yet: peers are tracked (see the task status), nothing is programmed and subnet.env is not written",
        netconf.backend.type_name(),
        env!("CARGO_PKG_VERSION")
    );
    let (publish, mut peers) = watch::channel(PeerSnapshot::default());
    let ctx = PeerContext {
        own_name: config.node_name().to_string(),
        own_lease: lease,
        keys,
        netconf,
    };
    let watch = kube_subnet::watch_peers(client, ctx, publish);
    let follow = async {
        while peers.changed().await.is_ok() {
            let snapshot = peers.borrow_and_update().clone();
            progress.update(|s| {
                s.peers_known = snapshot.peers.len();
                s.peers_skipped = snapshot.skipped;
                s.peers_synced = snapshot.synced;
                s.last_peer_update = Some(SystemTime::now());
            });
        }
    };
    tokio::join!(watch, follow);
    Ok(())
}

/// What this node publishes, per backend. vxlan reuses the VTEP MAC stored
/// in its own annotation so peers never keep a stale one.
pub(crate) fn backend_attrs(
    netconf: &NetConf,
    keys: &AnnotationKeys,
    own_annotations: &BTreeMap<String, String>,
    ext: &ExternalInterface,
) -> Result<BackendAttrs, Failure> {
    // A person may pin the public address with node-public-ip(v6).
    let public_v4 = pinned::<Ipv4Addr>(own_annotations, &keys.node_public_ip).or(ext.ipv4);
    let public_v6 = pinned::<Ipv6Addr>(own_annotations, &keys.node_public_ipv6).or(ext.ipv6);
    let v4 = netconf.enable_ipv4;
    let v6 = netconf.enable_ipv6;
    let (data_v4, data_v6, macs) = match &netconf.backend {
        BackendConf::Vxlan(vxlan) => {
            let mac_v4 = v4.then(|| {
                stored_vtep_mac(own_annotations, &keys.backend_data)
                    .unwrap_or_else(MacAddr::random_local)
            });
            let mac_v6 = v6.then(|| {
                stored_vtep_mac(own_annotations, &keys.backend_v6_data)
                    .unwrap_or_else(MacAddr::random_local)
            });
            (
                mac_v4.map(|mac| vxlan_backend_data(vxlan.vni, mac)),
                mac_v6.map(|mac| vxlan_backend_data(vxlan.vni, mac)),
                (mac_v4, mac_v6),
            )
        }
        BackendConf::HostGw => (
            v4.then(|| HOST_GW_BACKEND_DATA.to_string()),
            v6.then(|| HOST_GW_BACKEND_DATA.to_string()),
            (None, None),
        ),
        BackendConf::Wireguard(_) => return Err(Failure::NotImplemented("wireguard")),
    };
    let own = OwnAttrs {
        backend_type: netconf.backend.type_name(),
        ipv4: data_v4.zip(public_v4),
        ipv6: data_v6.zip(public_v6),
    };
    Ok(BackendAttrs {
        own,
        vtep_macs: macs,
    })
}

fn pinned<T: std::str::FromStr>(annotations: &BTreeMap<String, String>, key: &str) -> Option<T> {
    match node_public_ip::<T>(annotations, key) {
        Ok(ip) => ip,
        Err(problem) => {
            warn!("{problem}; using the interface address instead");
            None
        }
    }
}

/// Retries an API write until it succeeds: a transient API error must not
/// end the task (upstream crash-loops here). Each distinct error is logged
/// once.
async fn retry<F, Fut>(what: &str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let mut delay = Duration::from_millis(200);
    let mut last = String::new();
    loop {
        match attempt().await {
            Ok(()) => return,
            Err(error) => {
                let text = error.to_string();
                if text != last {
                    warn!("{what} failed, retrying: {text}");
                    last = text;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Publishes this node's annotations with a strategic merge patch on
/// `nodes/status`, only the ones that differ, and only when any differ.
async fn publish_annotations(
    nodes: &Api<Node>,
    config: &Config,
    keys: &AnnotationKeys,
    attrs: &OwnAttrs,
) {
    let name = config.node_name();
    retry("publishing the flannel annotations", || async {
        let node = nodes.get(name).await?;
        let current = node.metadata.annotations.clone().unwrap_or_default();
        let external_ips = if config.external_ip() {
            external_addresses(&node)
        } else {
            Vec::new()
        };
        let (desired, warnings) = desired_annotations(keys, &current, attrs, &external_ips);
        for warning in warnings {
            warn!("{warning}");
        }
        if let Some(patch) = annotation_patch(&current, &desired) {
            let changed: Vec<String> = patch["metadata"]["annotations"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            patch_status(nodes, name, patch).await?;
            info!(annotations = ?changed, "published flannel annotations on node {name}");
        }
        Ok(())
    })
    .await;
}

/// NetworkUnavailable=False, reason FlannelIsUp, merged by condition type so
/// kubelet's conditions stay.
async fn set_network_available(nodes: &Api<Node>, name: &str) {
    retry("setting the NetworkUnavailable condition", || async {
        let node = nodes.get(name).await?;
        let now = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        if let Some(patch) = network_unavailable_patch(&node, &now) {
            patch_status(nodes, name, patch).await?;
            info!("set NetworkUnavailable=False (FlannelIsUp) on node {name}");
        }
        Ok(())
    })
    .await;
}

async fn patch_status(nodes: &Api<Node>, name: &str, patch: Value) -> Result<(), kube::Error> {
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map(drop)
}

fn external_addresses(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// Writes the CNI conflist and net-conf.json as k3s does (or takes the
/// user's files), and returns the parsed net-conf.json. Blocking I/O.
fn prepare_files(config: &Config) -> Result<NetConf, Error> {
    let conflist = config.cni_conflist_path();
    if files::write_cni_conflist(&conflist, config.cni_conf_override())
        .map_err(|e| Error::new(Step::WriteCniConf, e))?
    {
        info!(path = %conflist.display(), "wrote CNI configuration");
    }

    let path = config.netconf_path();
    let text = match config.netconf_override() {
        Some(path) => {
            info!(path = %path.display(), "Using custom flannel conf");
            files::read_netconf(path).map_err(|e| Error::new(Step::ReadNetConf, e))?
        }
        None => {
            // `spawn` never runs the task for Backend::None.
            let text = crate::config::render_k3s_netconf(config.cluster_cidrs(), config.backend())
                .ok_or_else(|| Error::new(Step::WriteNetConf, Failure::Disabled))?;
            if files::write_atomic(&path, text.as_bytes())
                .map_err(|e| Error::new(Step::WriteNetConf, e))?
            {
                info!(path = %path.display(), "wrote flannel configuration");
            }
            text
        }
    };
    NetConf::parse(&text).map_err(|source| {
        Error::new(
            Step::ReadNetConf,
            Failure::NetConf {
                path: path.clone(),
                source,
            },
        )
    })
}

/// nsfs's magic number (`NSFS_MAGIC` in linux/magic.h).
const NSFS_MAGIC: libc::c_long = 0x6e73_6673;

/// Checks that `path` is a network namespace handle (a bind mount of
/// `/proc/<pid>/ns/net`, as `ip netns add` makes).
pub(super) fn check_netns(path: &Path) -> Result<(), Failure> {
    let problem = |problem: String| Failure::Netns {
        path: path.to_path_buf(),
        problem,
    };
    let file = File::open(path).map_err(|e| problem(format!("cannot open it: {e}")))?;
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs only writes into `stat`, which is a valid statfs.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) } != 0 {
        return Err(problem(format!(
            "cannot inspect it: {}",
            std::io::Error::last_os_error()
        )));
    }
    #[allow(clippy::unnecessary_cast)]
    if stat.f_type as libc::c_long != NSFS_MAGIC {
        return Err(problem(
            "is not a network namespace (expected a path such as /var/run/netns/NAME, made by `ip netns add NAME`)".into(),
        ));
    }
    Ok(())
}
