//! The wireguard data path: per device (`flannel-wg`, `flannel-wg-v6`)
//! make sure the device exists (kernel link, or a userspace implementation
//! we start when the kernel has none), has the right MTU, is up, holds
//! exactly the lease address, and has the one route for the cluster
//! network; then read the device's peers and write only the difference to
//! what the peer set wants. WireGuard sends no notifications about peers,
//! so every pass reads the device (a cheap dump); the device checks run on
//! start, on link, address or route events, and at every periodic resync.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use ipnetwork::IpNetwork;
use tracing::{debug, info, warn};

use super::dataplane::Report;
use crate::backend::wireguard::{desired_peers, device_update, OwnPublic, Roaming, WgDeviceSpec};
use crate::backend::Observation;
use crate::config::WireguardConf;
use crate::kube_subnet::PeerSnapshot;
use crate::netlink::{AcceptRa, NetlinkError, NetlinkHandle, EOPNOTSUPP};
use crate::wireguard::genl::GenlSocket;
use crate::wireguard::uapi::UapiClient;
use crate::wireguard::userspace::{socket_owner, SocketOwner, UserspaceProcess};
use crate::wireguard::{
    Driver, Implementation, Key, PeerChange, PrivateKey, WgError, WireguardSettings,
};

/// One device and what we know about it.
pub(crate) struct WgDevicePath {
    pub spec: WgDeviceSpec,
    /// `(lease network address /32 or /128, the family's cluster network)`.
    pub addresses: Vec<(IpNetwork, IpNetwork)>,
    /// ifindex once found.
    pub index: Option<u32>,
    /// How it is configured, once known.
    pub driver: Option<Driver>,
    /// The userspace implementation we started for it, if any.
    pub process: Option<UserspaceProcess>,
    /// Whether the link, MTU, addresses and route were checked since the
    /// last event that could have changed them.
    pub checked: bool,
    /// Node → the reason already warned about.
    pub warned: BTreeMap<String, String>,
    /// Whether a read-only /proc/sys was warned about.
    pub accept_ra_warned: bool,
    /// Per peer, the endpoint last written (a different one on the device
    /// with a recent handshake was learnt by WireGuard: roaming, NAT).
    pub written: BTreeMap<Key, std::net::SocketAddr>,
}

impl WgDevicePath {
    pub fn new(spec: WgDeviceSpec, addresses: Vec<(IpNetwork, IpNetwork)>) -> WgDevicePath {
        WgDevicePath {
            spec,
            addresses,
            index: None,
            driver: None,
            process: None,
            checked: false,
            warned: BTreeMap::new(),
            accept_ra_warned: false,
            written: BTreeMap::new(),
        }
    }
}

/// The wireguard data path (every device).
pub(crate) struct WireguardDataPath {
    pub netlink: NetlinkHandle,
    pub netns: Option<PathBuf>,
    pub settings: WireguardSettings,
    pub conf: WireguardConf,
    pub private_key: PrivateKey,
    pub public_key: Key,
    pub psk: Option<Key>,
    pub own: OwnPublic,
    /// Where a userspace implementation's log goes.
    pub log_dir: PathBuf,
    pub devices: Vec<WgDevicePath>,
}

impl WireguardDataPath {
    /// Makes every device exist and be right (start-up: peers need our key
    /// only, but a device that cannot be made is better known early).
    pub async fn ensure_devices(&mut self) -> Result<(), NetlinkError> {
        for i in 0..self.devices.len() {
            self.ensure_device(i).await?;
        }
        Ok(())
    }

    async fn ensure_device(&mut self, i: usize) -> Result<(), NetlinkError> {
        let netlink = self.netlink.clone();
        // (A userspace implementation that ended is noticed by the pass,
        // before it asks for this.)
        let name = self.devices[i].spec.name.clone();
        let socket = self.settings.socket_path(&name);
        let implementation = self.settings.implementation.clone();
        let mut found = netlink.find_tunnel(&name).await?;
        let mut owner = socket_owner(&socket, self.netns.as_deref()).await;
        // A link with our name that is no WireGuard device we can configure
        // (a leftover of another backend, a userspace device whose
        // implementation is gone), or not of the forced implementation, is
        // replaced.
        if let Some(link) = &found {
            let kind = link.kind.as_deref();
            let usable = match kind {
                Some("wireguard") => implementation != Implementation::Userspace,
                // wireguard-go's TUN device: usable while its socket answers.
                Some("tun") | None => {
                    matches!(owner, SocketOwner::Ours(_))
                        && implementation != Implementation::Kernel
                }
                _ => false,
            };
            if !usable {
                warn!(device = %name, kind = ?kind, implementation = implementation.as_str(), "a link called {name} exists but is no WireGuard device this node can configure; recreating it");
                netlink.delete_link(link.index).await?;
                found = None;
                owner = SocketOwner::Nobody;
            }
        }
        let mut created = false;
        let link = match found {
            Some(link) => link,
            None => {
                if let Some(process) = self.devices[i].process.take() {
                    warn!(device = %name, "{}; starting it again", process.device_gone().await);
                    self.devices[i].driver = None;
                }
                self.create_device(i, &socket).await?;
                created = true;
                netlink.find_tunnel(&name).await?.ok_or_else(|| {
                    NetlinkError::NoInterface(format!("{name} vanished right after creation"))
                })?
            }
        };
        let device = &mut self.devices[i];
        if device.index != Some(link.index) {
            device.driver = None;
        }
        device.index = Some(link.index);
        if link.mtu != device.spec.mtu || !link.up {
            netlink.set_link(link.index, device.spec.mtu).await?;
            if !created {
                info!(device = %name, mtu = device.spec.mtu, "set the wireguard device's MTU and brought it up");
            }
        }
        if device.spec.carries_v6 {
            match netlink.disable_accept_ra(&name).await? {
                AcceptRa::NotWritable(problem) if !device.accept_ra_warned => {
                    device.accept_ra_warned = true;
                    warn!(device = %name, "{problem}: /proc/sys is read-only here; going on without it");
                }
                _ => {}
            }
        }
        for (address, network) in device.addresses.clone() {
            if netlink
                .ensure_only_address(link.index, address, network)
                .await?
                && !created
            {
                info!(device = %name, %address, "restored the wireguard device's address");
            }
            if netlink.ensure_link_route(link.index, network).await? && !created {
                info!(device = %name, %network, "restored the route for the cluster network");
            }
        }
        if device.driver.is_none() {
            if created {
                owner = socket_owner(&socket, self.netns.as_deref()).await;
            }
            // As `wg` does: a control socket (of our namespace) means
            // userspace.
            let driver = if matches!(owner, SocketOwner::Ours(_)) {
                Driver::Userspace(UapiClient::new(&name, &socket))
            } else {
                Driver::Kernel(
                    GenlSocket::open(self.netns.as_deref())
                        .await
                        .map_err(NetlinkError::from)?,
                )
            };
            debug!(device = %name, driver = driver.kind(), "configuring through the {} interface", driver.kind());
            device.driver = Some(driver);
        }
        device.checked = true;
        Ok(())
    }

    /// Creates device `i`: a kernel link, or (no kernel WireGuard, or
    /// userspace asked for) the userspace program.
    async fn create_device(
        &mut self,
        i: usize,
        socket: &std::path::Path,
    ) -> Result<(), NetlinkError> {
        let name = self.devices[i].spec.name.clone();
        let mtu = self.devices[i].spec.mtu;
        let kernel = match self.settings.implementation {
            Implementation::Userspace => false,
            Implementation::Kernel | Implementation::Auto => {
                match self.netlink.create_wireguard(&name, mtu).await {
                    Ok(()) => {
                        info!(device = %name, mtu, "created kernel wireguard device");
                        true
                    }
                    Err((Some(EOPNOTSUPP), error))
                        if self.settings.implementation == Implementation::Auto =>
                    {
                        info!(
                            device = %name,
                            program = %self.settings.userspace_program.display(),
                            "the kernel has no WireGuard ({error}); starting the userspace implementation {} instead",
                            self.settings.userspace_program.display()
                        );
                        false
                    }
                    Err((Some(EOPNOTSUPP), error)) => {
                        return Err(NetlinkError::from(WgError::NoKernelSupport(format!(
                            "{error}; the wireguard implementation is set to kernel"
                        ))))
                    }
                    Err((_, error)) => return Err(error),
                }
            }
        };
        if kernel {
            return Ok(());
        }
        let log = self.log_dir.join(format!("{name}.log"));
        let process = UserspaceProcess::start(
            &self.settings.userspace_program,
            &name,
            self.netns.as_deref(),
            socket,
            &log,
        )
        .await
        .map_err(NetlinkError::from)?;
        info!(
            device = %name,
            pid = process.pid(),
            socket = %socket.display(),
            "started userspace wireguard ({})",
            self.settings.userspace_program.display()
        );
        let device = &mut self.devices[i];
        device.process = Some(process);
        device.driver = Some(Driver::Userspace(UapiClient::new(&name, socket)));
        Ok(())
    }

    /// One pass over every device; a device that fails does not keep the
    /// other from converging.
    pub async fn reconcile(&mut self, peers: &PeerSnapshot) -> Report {
        let mut total = Report::default();
        let mut programmed = Vec::new();
        for i in 0..self.devices.len() {
            let name = self.devices[i].spec.name.clone();
            match self.reconcile_device(i, peers).await {
                Ok((count, applied, dumped)) => {
                    programmed.push(count);
                    total.applied += applied;
                    total.dumps += dumped;
                }
                Err(error) => {
                    // Look at the device again next time.
                    let device = &mut self.devices[i];
                    device.checked = false;
                    device.driver = None;
                    programmed.push(0);
                    total.errors.push((name, error));
                }
            }
        }
        total.peers_programmed = programmed.into_iter().min().unwrap_or(0);
        total
    }

    async fn reconcile_device(
        &mut self,
        i: usize,
        peers: &PeerSnapshot,
    ) -> Result<(usize, usize, u64), NetlinkError> {
        let started = Instant::now();
        if let Some(process) = self.devices[i].process.as_mut() {
            if let Some(why) = process.ended() {
                warn!(device = %self.devices[i].spec.name, "{why}");
                let device = &mut self.devices[i];
                device.process = None;
                device.checked = false;
                device.driver = None;
            }
        }
        if !self.devices[i].checked || self.devices[i].driver.is_none() {
            self.ensure_device(i).await?;
        }
        let device = &mut self.devices[i];
        let name = device.spec.name.clone();
        let Some(driver) = device.driver.as_ref() else {
            return Err(NetlinkError::NoInterface(format!(
                "{name}: no way to configure it"
            )));
        };
        let actual = driver.get(&name).await.map_err(NetlinkError::from)?;
        let (desired, unusable) = desired_peers(
            &peers.peers,
            self.public_key,
            &device.spec,
            &self.conf,
            self.psk,
            &self.own,
        );
        for bad in &unusable {
            if device.warned.get(&bad.node) != Some(&bad.reason) {
                warn!(device = %name, peer = %bad.node, "no wireguard peer for node {}: {}", bad.node, bad.reason);
                device.warned.insert(bad.node.clone(), bad.reason.clone());
            }
        }
        device
            .warned
            .retain(|node, _| unusable.iter().any(|u| &u.node == node));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let update = device_update(
            &actual,
            &self.private_key,
            device.spec.port,
            &desired,
            peers.synced,
            &Roaming {
                written: &device.written,
                now,
            },
        );
        if update.is_empty() {
            return Ok((desired.len(), 0, 1));
        }
        driver
            .set(&name, &update)
            .await
            .map_err(NetlinkError::from)?;
        for change in &update.peers {
            match change {
                PeerChange::Set(peer) => {
                    device.written.insert(peer.public_key, peer.endpoint);
                }
                PeerChange::Remove(key) => {
                    device.written.remove(key);
                }
            }
        }
        let changes = update.peers.len();
        if update.private_key.is_some() || update.listen_port.is_some() {
            info!(device = %name, port = device.spec.port, public_key = %self.public_key, "set the wireguard device's key and port");
        }
        if changes <= 32 {
            for change in &update.peers {
                info!("{change} on {name}");
            }
        } else {
            let removed = update
                .peers
                .iter()
                .filter(|c| matches!(c, PeerChange::Remove(_)))
                .count();
            info!(device = %name, set = changes - removed, removed, "wireguard peers changed");
        }
        info!(
            device = %name,
            applied = changes,
            driver = driver.kind(),
            took_ms = started.elapsed().as_millis() as u64,
            "reconciled"
        );
        Ok((desired.len(), changes, 1))
    }

    /// A pass is due when one of our devices, its addresses or our route
    /// changed (or notifications were lost).
    pub fn observe(&mut self, observation: &Observation) -> bool {
        let mut due = false;
        for device in &mut self.devices {
            let stale = match observation {
                Observation::Link { index, name } => {
                    Some(*index) == device.index
                        || name.as_deref() == Some(device.spec.name.as_str())
                }
                // Only what `ensure_device` manages: the lease address and
                // addresses inside the cluster network (not the IPv6
                // link-local address the kernel adds when the device comes
                // up).
                Observation::Address { index, address } => {
                    Some(*index) == device.index
                        && address.is_none_or(|a| {
                            device
                                .addresses
                                .iter()
                                .any(|(own, network)| own.ip() == a || network.contains(a))
                        })
                }
                Observation::ForeignRoute { dst, .. } => {
                    device.addresses.iter().any(|(_, network)| network == dst)
                }
                // Our cluster-network route: its echo changes nothing; its
                // deletion, or one of ours pointing elsewhere, does.
                Observation::LinkRoute { dst, oif, deleted } => {
                    device.addresses.iter().any(|(_, network)| network == dst)
                        && (*deleted || Some(*oif) != device.index)
                }
                Observation::Overrun | Observation::MonitorEnded => true,
                _ => false,
            };
            if stale {
                device.checked = false;
                due = true;
            }
        }
        due
    }

    /// The periodic resync: every device is checked again.
    pub fn forget_models(&mut self) {
        for device in &mut self.devices {
            device.checked = false;
        }
    }

    /// A reopened netlink connection: use it, and check every device.
    pub fn use_netlink(&mut self, netlink: &NetlinkHandle) {
        self.netlink = netlink.clone();
        for device in &mut self.devices {
            device.checked = false;
            if matches!(device.driver, Some(Driver::Kernel(_))) {
                device.driver = None;
            }
        }
    }
}
