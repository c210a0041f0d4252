//! The steps of the network task, in order: configuration files, this
//! node's lease, the external interface, the backend's attributes, the
//! Node annotations and condition, then the peer watch.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::drive::{
    drive_data_path, follow_peers, DriveContext, NetlinkConnection, NetlinkPlane, Uplink,
};
use super::keep_files::keep_files;
use super::own_node::{external_addresses, keep_own_node, OwnNodeSpec};
use super::{Error, Failure, Fault, Part, Phase, Progress, Step};
use crate::backend::vxlan::{device_spec, DirectRouting};
use crate::config::{BackendConf, Config, NetConf};
use crate::files;
use crate::files::SubnetEnv;
use crate::kube_subnet::Lease;
use crate::kube_subnet::{
    self, node_public_ip, stored_vtep_mac, vxlan_backend_data, wireguard_backend_data,
    AnnotationKeys, OwnAttrs, PeerContext, PeerSnapshot, HOST_GW_BACKEND_DATA,
};
use crate::mac::MacAddr;
use crate::masq::{self, DriverKind, MasqRules, RuleSet};
use crate::netlink::{ExternalInterface, NetlinkHandle};
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
    progress: &Arc<Progress>,
    scope: &Scope,
    faults: mpsc::UnboundedReceiver<Fault>,
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

    let (lease, own_node) = kube_subnet::wait_for_lease(
        client.clone(),
        config.node_name(),
        &netconf,
        config.api_credential(),
        |reason| progress.problem(Part::Node, reason),
    )
    .await
    .map_err(|e| Error::new(Step::WaitForPodCidr, e))?;
    progress.resolved(Part::Node);
    progress.update(|s| {
        s.lease = Some(lease);
        s.phase = Phase::Programming;
    });

    // Watched by the reconcile loop, which reopens it if it ends.
    let connection = NetlinkConnection::open(config.netns(), scope)
        .await
        .map_err(|e| Error::new(Step::FindInterface, e))?;
    let netlink = connection.handle.clone();
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
    let wg_key = match &netconf.backend {
        BackendConf::Wireguard(_) => {
            let path =
                crate::wireguard::keys::key_file_path(config.wireguard().key_file.as_deref());
            let loaded = scope
                .blocking({
                    let path = path.clone();
                    move || crate::wireguard::keys::load_or_generate(&path)
                })
                .await
                .map_err(|e| Error::new(Step::Run, Failure::Panicked(e.to_string())))?
                .map_err(|e| {
                    Error::new(
                        Step::RegisterNetwork,
                        Failure::Backend {
                            backend: "wireguard",
                            problem: e.to_string(),
                        },
                    )
                })?;
            for warning in &loaded.warnings {
                warn!("{warning}");
            }
            let public = loaded.key.public_key();
            if loaded.generated {
                info!(path = %path.display(), public_key = %public, "generated a WireGuard private key");
            } else {
                info!(path = %path.display(), public_key = %public, "using the WireGuard private key");
            }
            Some(loaded.key)
        }
        _ => None,
    };
    let mut attrs = backend_attrs(
        &netconf,
        &keys,
        &own_annotations,
        &ext,
        wg_key.as_ref().map(|k| k.public_key()),
    )
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
                    accept_ra_warned: false,
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
        BackendConf::Wireguard(wg) => {
            let psk = match wg.psk.as_deref().map(crate::wireguard::Key::from_base64) {
                None => None,
                // All zeroes is "no pre-shared key" to both APIs.
                Some(Ok(psk)) => Some(psk).filter(|k| !k.is_zero()),
                Some(Err(e)) => {
                    return Err(Error::new(
                        Step::RegisterNetwork,
                        Failure::Backend {
                            backend: "wireguard",
                            problem: format!("net-conf.json Backend.PSK: {e}"),
                        },
                    ))
                }
            };
            let Some(private_key) = wg_key else {
                return Err(Error::new(
                    Step::Run,
                    Failure::Panicked("no WireGuard key".into()),
                ));
            };
            let specs = crate::backend::wireguard::device_specs(
                wg,
                ext.mtu,
                netconf.enable_ipv4,
                netconf.enable_ipv6,
            );
            if specs.len() == 2 && specs[0].port == specs[1].port {
                return Err(Error::new(
                    Step::RegisterNetwork,
                    Failure::Backend {
                        backend: "wireguard",
                        problem: format!(
                            "net-conf.json Backend.ListenPort and Backend.ListenPortV6 are both {}: separate mode runs two devices, which need two ports",
                            specs[0].port
                        ),
                    },
                ));
            }
            let host = |net: IpNetwork| {
                IpNetwork::new(net.network(), if net.is_ipv6() { 128 } else { 32 }).map_err(|e| {
                    Error::new(
                        Step::RegisterNetwork,
                        Failure::Backend {
                            backend: "wireguard",
                            problem: e.to_string(),
                        },
                    )
                })
            };
            let mut devices = Vec::new();
            for spec in specs {
                let mut addresses = Vec::new();
                if spec.carries_v4 {
                    if let (Some(own), Some(network)) = (lease.ipv4, netconf.active_ipv4_network())
                    {
                        addresses.push((host(IpNetwork::V4(own))?, IpNetwork::V4(network)));
                    }
                }
                if spec.carries_v6 {
                    if let (Some(own), Some(network)) = (lease.ipv6, netconf.active_ipv6_network())
                    {
                        addresses.push((host(IpNetwork::V6(own))?, IpNetwork::V6(network)));
                    }
                }
                devices.push(super::wg_path::WgDevicePath::new(spec, addresses));
            }
            let mut path = super::wg_path::WireguardDataPath {
                netlink: netlink.clone(),
                netns: config.netns().map(Path::to_path_buf),
                settings: config.wireguard().clone(),
                conf: wg.clone(),
                public_key: private_key.public_key(),
                private_key,
                psk,
                own: crate::backend::wireguard::OwnPublic {
                    ipv4: ext.ipv4,
                    ipv6: ext.ipv6,
                },
                log_dir: config.subnet_file().parent().map_or_else(
                    || Path::new("/run/flannel").to_path_buf(),
                    Path::to_path_buf,
                ),
                devices,
            };
            // The devices before the annotations, as for vxlan. A failure
            // here is the first pass's too, which reports it (once) and
            // retries with backoff.
            if let Err(error) = path.ensure_devices().await {
                tracing::debug!("setting up the wireguard devices: {error}");
            }
            Some(DataPath::Wireguard(Box::new(path)))
        }
    };
    progress.update(|s| s.public_ip = attrs.own.ipv4.as_ref().map(|(_, ip)| IpAddr::V4(*ip)));

    // Our Node's annotations and condition, kept from now on; peers need
    // the annotations before we are of any use, so start-up waits for the
    // first time they are in place (retrying, with the error in Status).
    let (published_tx, mut published) = watch::channel(false);
    let (attrs_tx, attrs_rx) = watch::channel(attrs.own.clone());
    let own = OwnNodeSpec {
        name: config.node_name().to_string(),
        keys: keys.clone(),
        attrs: attrs.own.clone(),
        external_ip: config.external_ip(),
        set_condition: config.set_node_network_unavailable(),
        lease,
        netconf: netconf.clone(),
        credential: config.api_credential().to_string(),
    };
    let nodes: Api<Node> = Api::all(client.clone());
    scope.spawn_graceful("the own-node keeper", {
        let progress = progress.clone();
        move |stopping| keep_own_node(nodes, own, attrs_rx, progress, published_tx, stopping)
    });
    let _ = published.wait_for(|done| *done).await;
    let masq = setup_masq(config, &netconf, &lease, scope, progress).await?;

    let (publish, peers) = watch::channel(PeerSnapshot::default());
    let mtu = match &data_path {
        // Pods get one MTU for both families: the smaller device's.
        Some(DataPath::Vxlan(paths)) => paths.iter().map(|p| p.spec.mtu).min().unwrap_or(ext.mtu),
        Some(DataPath::Wireguard(path)) => path
            .devices
            .iter()
            .map(|d| d.spec.mtu)
            .min()
            .unwrap_or(ext.mtu),
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
    let (netconf_v4, netconf_v6) = (netconf.enable_ipv4, netconf.enable_ipv6);
    let ctx = PeerContext {
        own_name: config.node_name().to_string(),
        own_lease: lease,
        keys,
        netconf,
    };
    let watch = {
        let progress = progress.clone();
        kube_subnet::watch_peers(
            client,
            ctx,
            publish,
            config.api_credential().to_string(),
            move |problem| match problem {
                Some(message) => progress.problem(Part::NodeWatch, message),
                None => progress.resolved(Part::NodeWatch),
            },
        )
    };
    let (keep_subnet_env, subnet_env_kept) = watch::channel(None);
    scope.spawn_graceful("the file keeper", {
        let (config, progress, scope) = (config.clone(), progress.clone(), scope.clone());
        move |stopping| keep_files(config, subnet_env_kept, progress, scope, stopping)
    });
    let drive = async {
        match data_path.as_mut() {
            Some(path) => {
                let ctx = DriveContext {
                    subnet_file: config.subnet_file(),
                    progress,
                    scope,
                    faults,
                    keep_subnet_env: &keep_subnet_env,
                };
                // A published address that is the interface's follows it;
                // one pinned with `node-public-ip` stays.
                let follow = (
                    attrs.own.ipv4.as_ref().map(|(_, ip)| *ip) == ext.ipv4,
                    attrs.own.ipv6.as_ref().map(|(_, ip)| *ip) == ext.ipv6,
                );
                let mut plane = NetlinkPlane {
                    path,
                    netns: config.netns().map(Path::to_path_buf),
                    label: netlink.netns().to_string(),
                    uplink: Uplink {
                        selector: config.iface().cloned(),
                        ipv4: netconf_v4,
                        ipv6: netconf_v6,
                        current: ext.clone(),
                        attrs: attrs_tx,
                        follow,
                        dirty: false,
                    },
                    progress,
                };
                drive_data_path(ctx, &mut plane, connection.reader, peers, &subnet_env).await
            }
            None => follow_peers(peers, progress).await,
        }
    };
    if let Some(masq) = masq {
        scope.spawn_graceful("the masquerade rule keeper", {
            let progress = progress.clone();
            move |stopping| {
                masq::keep_rules(
                    masq,
                    masq::RESYNC_PERIOD,
                    stopping,
                    move |result| match result {
                        Ok(_) => progress.resolved(Part::Masquerade),
                        Err(error) => progress.problem(
                            Part::Masquerade,
                            format!("failed to ensure masq rules: {error}"),
                        ),
                    },
                )
            }
        });
    }
    tokio::select! {
        () = watch => Ok(()),
        () = drive => Ok(()),
    }
}

/// Masquerade and forward rules for this lease (iptables, or nftables with
/// `EnableNFTables`), replacing those of a previous lease or Network that
/// the old subnet.env names. Kept in place every 5 s afterwards. A missing
/// program is a configuration error and ends the task; any other failure
/// (a held xtables lock, a timeout) is a problem the rule keeper retries.
async fn setup_masq(
    config: &Config,
    netconf: &NetConf,
    lease: &Lease,
    scope: &Scope,
    progress: &Progress,
) -> Result<Option<MasqRules>, Error> {
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
    let mode = config.iptables_mode();
    // Made but not used unless setup fails: a driver looks at the node
    // (detect mode) only when it is first used.
    let keeper = MasqRules::new(kind.driver_with(netns.as_deref(), mode), desired);
    let setup = scope
        .blocking(move || {
            MasqRules::setup_with(kind, mode, netns.as_deref(), desired, previous.as_ref())
        })
        .await
        .map_err(|e| Error::new(Step::Run, Failure::Panicked(e.to_string())))?;
    match setup {
        Ok((rules, _)) => Ok(Some(rules)),
        Err(error @ masq::MasqError::Missing { .. }) => Err(Error::new(Step::SetupMasq, error)),
        Err(error) => {
            progress.problem(
                Part::Masquerade,
                format!("{}: {error}; retrying", Step::SetupMasq),
            );
            Ok(Some(keeper))
        }
    }
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
    wg_public_key: Option<crate::wireguard::Key>,
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
        BackendConf::Wireguard(wg) => {
            let key = wg_public_key
                .ok_or_else(|| Failure::Panicked("the WireGuard key was not loaded".into()))?
                .to_base64();
            let (port_v4, port_v6) = crate::backend::wireguard::published_ports(wg);
            (
                v4.then(|| wireguard_backend_data(&key, port_v4)),
                v6.then(|| wireguard_backend_data(&key, port_v6)),
                (None, None),
            )
        }
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
