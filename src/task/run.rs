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
use crate::backend::vxlan::{device_spec, DirectRouting};
use crate::backend::Observation;
use crate::config::{BackendConf, Config, NetConf};
use crate::files;
use crate::files::SubnetEnv;
use crate::kube_subnet::Lease;
use crate::kube_subnet::{
    self, annotation_patch, desired_annotations, network_unavailable_patch, node_public_ip,
    stored_vtep_mac, vxlan_backend_data, AnnotationKeys, OwnAttrs, PeerContext, PeerSnapshot,
    HOST_GW_BACKEND_DATA,
};
use crate::mac::MacAddr;
use crate::masq::{self, DriverKind, MasqRules, RuleSet};
use crate::netlink::{self, ExternalInterface, NetlinkHandle};
use ipnetwork::IpNetwork;

use super::dataplane::{DataPath, HostGwDataPath, VxlanDataPath};
use super::scope::Scope;

/// The backend's decisions that peers see through annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackendAttrs {
    /// What is published.
    pub own: OwnAttrs,
    /// vxlan: the MACs the devices get (IPv4, IPv6).
    pub vtep_macs: (Option<MacAddr>, Option<MacAddr>),
}

pub(super) async fn run(
    client: Client,
    config: &Config,
    progress: &Progress,
    scope: &Scope,
) -> Result<(), Error> {
    info!(backend = %config.backend(), "Starting flannel");
    if let Some(path) = config.netns() {
        check_netns(path).map_err(|f| Error::new(Step::OpenNetns, f))?;
    }
    let netconf = {
        let config = config.clone();
        scope
            .blocking(move || prepare_files(&config))
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

    let (netlink, connection) = NetlinkHandle::open(config.netns())
        .await
        .map_err(|e| Error::new(Step::FindInterface, e))?;
    // It also ends by itself once run() and its handles are gone; a lost
    // socket shows as failing passes (in Status and the log).
    scope.spawn("the netlink connection", connection);
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
    let mut attrs = backend_attrs(&netconf, &keys, &own_annotations, &ext)
        .map_err(|f| Error::new(Step::RegisterNetwork, f))?;

    // The data path first: for vxlan the devices must exist so the MAC
    // peers learn from our annotations is the device's real one.
    let mut data_path = match &netconf.backend {
        BackendConf::Vxlan(vxlan) => {
            let direct = if vxlan.direct_routing {
                Some(
                    direct_routing(&netlink, ext.index)
                        .await
                        .map_err(|e| Error::new(Step::RegisterNetwork, e))?,
                )
            } else {
                None
            };
            let families = [
                (
                    lease.ipv4.map(IpNetwork::V4),
                    netconf.active_ipv4_network().map(IpNetwork::V4),
                    ext.ipv4.map(IpAddr::V4),
                    attrs.vtep_macs.0,
                ),
                (
                    lease.ipv6.map(IpNetwork::V6),
                    netconf.active_ipv6_network().map(IpNetwork::V6),
                    ext.ipv6.map(IpAddr::V6),
                    attrs.vtep_macs.1,
                ),
            ];
            let mut paths = Vec::new();
            for (own_lease, network, local, mac) in families {
                let (Some(own_lease), Some(network), Some(local)) = (own_lease, network, local)
                else {
                    continue;
                };
                let mac = mac.unwrap_or_else(MacAddr::random_local);
                let mut path = VxlanDataPath {
                    netlink: netlink.clone(),
                    spec: device_spec(vxlan, local, ext.index, ext.mtu, mac),
                    lease: own_lease,
                    network,
                    direct: direct.clone(),
                    device: None,
                    model: None,
                    last: None,
                };
                let (device, _) = path
                    .ensure_device()
                    .await
                    .map_err(|e| Error::new(Step::RegisterNetwork, e))?;
                let published = if local.is_ipv6() {
                    attrs.own.ipv6.as_mut().map(|(data, _)| data)
                } else {
                    attrs.own.ipv4.as_mut().map(|(data, _)| data)
                };
                if let Some(data) = published {
                    *data = vxlan_backend_data(vxlan.vni, device.mac);
                }
                paths.push(path);
            }
            Some(DataPath::Vxlan(paths))
        }
        BackendConf::HostGw => {
            refuse_nat_for_host_gw(config, &keys, &own_annotations, &own_node, &attrs, &ext)
                .map_err(|f| Error::new(Step::RegisterNetwork, f))?;
            let connected = direct_routing(&netlink, ext.index)
                .await
                .map_err(|e| Error::new(Step::RegisterNetwork, e))?
                .connected;
            Some(DataPath::HostGw(Box::new(HostGwDataPath {
                netlink: netlink.clone(),
                uplink_name: ext.name.clone(),
                uplink_index: ext.index,
                connected,
                ipv4: netconf.enable_ipv4,
                ipv6: netconf.enable_ipv6,
                warned: BTreeMap::new(),
                model: None,
            })))
        }
        BackendConf::Wireguard(_) => None,
    };
    progress.update(|s| s.public_ip = attrs.own.ipv4.as_ref().map(|(_, ip)| IpAddr::V4(*ip)));

    let nodes: Api<Node> = Api::all(client.clone());
    publish_annotations(&nodes, config, &keys, &attrs.own).await;
    if config.set_node_network_unavailable() {
        set_network_available(&nodes, config.node_name()).await;
    }
    let masq = setup_masq(config, &netconf, &lease, scope).await?;
    if data_path.is_none() {
        warn!(
            "the {} data path is not implemented in flannel-embed {} yet: peers are tracked (see the task status), nothing is programmed and subnet.env is not written",
            netconf.backend.type_name(),
            env!("CARGO_PKG_VERSION")
        );
    }

    let (publish, peers) = watch::channel(PeerSnapshot::default());
    let mtu = match &data_path {
        // Pods get one MTU for both families: the smaller device's.
        Some(DataPath::Vxlan(paths)) => paths.iter().map(|p| p.spec.mtu).min().unwrap_or(ext.mtu),
        _ => ext.mtu,
    };
    let subnet_env = SubnetEnv::for_lease(
        lease
            .ipv4
            .zip(netconf.active_ipv4_network())
            .map(|(l, n)| (n, l)),
        lease
            .ipv6
            .zip(netconf.active_ipv6_network())
            .map(|(l, n)| (n, l)),
        mtu,
        config.ip_masq(),
    );
    let ctx = PeerContext {
        own_name: config.node_name().to_string(),
        own_lease: lease,
        keys,
        netconf,
    };
    let watch = kube_subnet::watch_peers(client, ctx, publish);
    let drive = async {
        match data_path.as_mut() {
            Some(path) => drive_data_path(config, path, peers, &subnet_env, progress, scope).await,
            None => {
                follow_peers(peers, progress).await;
                Ok(())
            }
        }
    };
    scope.spawn_graceful("the masquerade rule keeper", |stopping| {
        masq::keep_rules(masq, masq::RESYNC_PERIOD, stopping)
    });
    tokio::select! {
        () = watch => Ok(()),
        result = drive => result,
    }
}

/// Masquerade and forward rules for this lease (iptables, or nftables with
/// `EnableNFTables`), replacing those of a previous lease or Network that
/// the old subnet.env names. Kept in place every 5 s afterwards.
async fn setup_masq(
    config: &Config,
    netconf: &NetConf,
    lease: &Lease,
    scope: &Scope,
) -> Result<MasqRules, Error> {
    let desired = RuleSet::for_lease(
        lease
            .ipv4
            .zip(netconf.active_ipv4_network())
            .map(|(l, n)| (n, l)),
        lease
            .ipv6
            .zip(netconf.active_ipv6_network())
            .map(|(l, n)| (n, l)),
        config.ip_masq(),
        config.ipv6_masq(),
    );
    let kind = DriverKind::from_enable_nftables(netconf.enable_nftables);
    let netns = config.netns().map(Path::to_path_buf);
    // Read before anything rewrites it: it names the previous lease.
    let previous = SubnetEnv::read(config.subnet_file()).ok();
    let (rules, _) = scope
        .blocking(move || MasqRules::setup(kind, netns.as_deref(), desired, previous.as_ref()))
        .await
        .map_err(|e| Error::new(Step::Run, Failure::Panicked(e.to_string())))?
        .map_err(|e| Error::new(Step::SetupMasq, e))?;
    Ok(rules)
}

/// How often the data path is reconciled even without any trigger.
const RESYNC: Duration = Duration::from_secs(30);
/// How long to gather further triggers before a reconcile: a burst of
/// kernel notifications (a device deleted with thousands of entries) is
/// folded into one pass, at little cost to a single change's latency.
const COALESCE: Duration = Duration::from_millis(5);

/// The reconcile loop: on every peer-set change, on kernel notifications
/// about what we own (a deleted device, route, neighbour or FDB entry), on a
/// slow timer, and after a failed pass. subnet.env is written and `ready()`
/// resolves after the first complete pass with the full peer list.
async fn drive_data_path(
    config: &Config,
    path: &mut DataPath,
    mut peers: watch::Receiver<PeerSnapshot>,
    subnet_env: &SubnetEnv,
    progress: &Progress,
    scope: &Scope,
) -> Result<(), Error> {
    let (mut kernel, monitor) = netlink::observations(config.netns())
        .await
        .map_err(|e| Error::new(Step::RegisterNetwork, e))?;
    scope.spawn("the kernel monitor", monitor);
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry: Option<tokio::time::Instant> = None;
    let mut ready = false;
    let mut monitor_ended = false;
    loop {
        tokio::select! {
            changed = peers.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            Some(observation) = kernel.recv() => {
                if observation == Observation::MonitorEnded {
                    warn!("the kernel monitor stopped: every pass dumps the kernel from now on");
                    monitor_ended = true;
                } else if !path.observe(&observation) {
                    continue;
                }
            }
            _ = resync.tick() => path.forget_models(),
            () = sleep_until_or_never(retry) => {}
        }
        tokio::time::sleep(COALESCE).await;
        while let Some(observation) = kernel.try_recv() {
            if observation == Observation::MonitorEnded {
                warn!("the kernel monitor stopped: every pass dumps the kernel from now on");
                monitor_ended = true;
            } else {
                path.observe(&observation);
            }
        }
        if monitor_ended {
            // Without notifications nothing can vouch for the models.
            path.forget_models();
        }
        let snapshot = peers.borrow_and_update().clone();
        progress.update(|s| {
            s.peers_known = snapshot.peers.len();
            s.peers_skipped = snapshot.skipped;
            s.peers_synced = snapshot.synced;
        });
        retry = None;
        match path.reconcile(&snapshot).await {
            Ok(report) => {
                if !report.failures.is_empty() {
                    retry = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
                progress.update(|s| {
                    s.peers_programmed = report.peers_programmed;
                    s.last_reconcile = Some(SystemTime::now());
                    s.last_error = report.failures.first().map(|(op, error)| {
                        format!(
                            "{op}: {error} ({} operations failed)",
                            report.failures.len()
                        )
                    });
                });
                if snapshot.synced && report.failures.is_empty() {
                    write_subnet_env(config.subnet_file(), subnet_env, scope).await?;
                    if !ready {
                        ready = true;
                        info!(subnet_file = %config.subnet_file().display(), peers = report.peers_programmed, "flannel is ready");
                        progress.mark_ready();
                    }
                }
            }
            Err(error) => {
                warn!("reconciling the data path failed, retrying in 1 s: {error}");
                progress.update(|s| s.last_error = Some(error.to_string()));
                retry = Some(tokio::time::Instant::now() + Duration::from_secs(1));
            }
        }
    }
}

async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Without a data path: keep the status current with the peer set.
async fn follow_peers(mut peers: watch::Receiver<PeerSnapshot>, progress: &Progress) {
    while peers.changed().await.is_ok() {
        let snapshot = peers.borrow_and_update().clone();
        progress.update(|s| {
            s.peers_known = snapshot.peers.len();
            s.peers_skipped = snapshot.skipped;
            s.peers_synced = snapshot.synced;
            s.last_peer_update = Some(SystemTime::now());
        });
    }
}

/// subnet.env, atomically; unchanged content is not rewritten.
async fn write_subnet_env(path: &Path, env: &SubnetEnv, scope: &Scope) -> Result<(), Error> {
    let path = path.to_path_buf();
    let env = env.clone();
    let written = scope
        .blocking(move || env.write(&path).map(|w| (w, path)))
        .await
        .map_err(|e| Error::new(Step::Run, Failure::Panicked(e.to_string())))?
        .map_err(|e| Error::new(Step::WriteSubnetFile, e))?;
    if let (true, path) = written {
        info!(path = %path.display(), "wrote subnet file");
    }
    Ok(())
}

/// host-gw routes to the peers' public IPs directly, so a public IP that is
/// not the interface's own address (NAT, an overwrite annotation, k3s
/// `--flannel-external-ip`) cannot work: refuse to start, as upstream does.
fn refuse_nat_for_host_gw(
    config: &Config,
    keys: &AnnotationKeys,
    own_annotations: &BTreeMap<String, String>,
    own_node: &Node,
    attrs: &BackendAttrs,
    ext: &ExternalInterface,
) -> Result<(), Failure> {
    let external = if config.external_ip() {
        external_addresses(own_node)
    } else {
        Vec::new()
    };
    let overwrite_v4 = own_annotations
        .get(&keys.public_ip_overwrite)
        .and_then(|v| v.parse::<IpAddr>().ok());
    let overwrite_v6 = own_annotations
        .get(&keys.public_ipv6_overwrite)
        .and_then(|v| v.parse::<IpAddr>().ok());
    let published = [
        attrs.own.ipv4.as_ref().map(|(_, ip)| IpAddr::V4(*ip)),
        attrs.own.ipv6.as_ref().map(|(_, ip)| IpAddr::V6(*ip)),
        overwrite_v4,
        overwrite_v6,
    ];
    let own_addresses = [ext.ipv4.map(IpAddr::V4), ext.ipv6.map(IpAddr::V6)];
    for public in published.into_iter().flatten().chain(external) {
        if !own_addresses.contains(&Some(public)) {
            return Err(Failure::Backend {
                backend: "host-gw",
                problem: format!(
                    "host-gw needs the public IP to be the interface's own address, but the public IP would be {public}; host-gw cannot work through NAT: use the vxlan backend, or drop the public-ip overwrite"
                ),
            });
        }
    }
    Ok(())
}

/// The uplink's connected subnets, for DirectRouting.
async fn direct_routing(
    netlink: &NetlinkHandle,
    uplink_index: u32,
) -> Result<DirectRouting, crate::netlink::NetlinkError> {
    let connected = netlink
        .addresses()
        .await?
        .into_iter()
        .filter(|a| a.index == uplink_index && a.global)
        .filter_map(|a| IpNetwork::new(a.address, a.prefix_len).ok())
        .filter_map(|n| IpNetwork::new(n.network(), n.prefix()).ok())
        .collect();
    Ok(DirectRouting {
        uplink_index,
        connected,
    })
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
