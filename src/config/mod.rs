//! Everything the host decides before the network task starts: the backend,
//! the cluster CIDRs, where files go, and which interface carries traffic.
//!
//! [`Config`] is built once, validated as a whole by [`ConfigBuilder::build`],
//! and never changes while the task runs.

mod backend;
mod netconf;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

pub use backend::{Backend, BackendError};
pub use netconf::{
    render_k3s_netconf, BackendConf, NetConf, NetConfError, VxlanConf, WireguardConf,
    WireguardMode, DEFAULT_VNI, DEFAULT_VXLAN_PORT, DEFAULT_WG_LISTEN_PORT,
    DEFAULT_WG_LISTEN_PORT_V6,
};

/// k3s's default `--cluster-cidr`.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
/// k3s's default `--cluster-cidr` when the node's primary address is IPv6.
pub const DEFAULT_CLUSTER_CIDR_IPV6: &str = "fd00:42::/56";
/// k3s's default `--data-dir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/rancher/k3s";
/// flannel's default subnet file, read by the `flannel` CNI plugin.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// flannel's default annotation prefix.
pub const DEFAULT_ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";

/// A configuration that cannot run, naming the setting (by its k3s flag
/// name) and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `--flannel-backend` has a value we do not run.
    #[error("--flannel-backend: {0}")]
    Backend(#[from] BackendError),
    /// A setting has a value that cannot work.
    #[error("{setting}: {problem}")]
    Invalid {
        /// The flag (k3s spelling) or builder setting.
        setting: &'static str,
        /// What is wrong and what to do about it.
        problem: String,
    },
}

impl ConfigError {
    fn invalid(setting: &'static str, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            setting,
            problem: problem.into(),
        }
    }
}

/// The cluster's pod networks: at most one per family (k3s `--cluster-cidr`,
/// which flannel writes to net-conf.json as `Network` / `IPv6Network`).
///
/// ```
/// use flannel_embed::config::ClusterCidrs;
///
/// let dual: ClusterCidrs = "10.42.0.0/16,fd00:42::/56".parse()?;
/// assert_eq!(dual.ipv4.unwrap().to_string(), "10.42.0.0/16");
/// assert_eq!(dual.ipv6.unwrap().to_string(), "fd00:42::/56");
/// assert!("10.42.0.1/16".parse::<ClusterCidrs>().is_err()); // host bits set
/// # Ok::<(), flannel_embed::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCidrs {
    /// The IPv4 pod network, if the cluster has IPv4.
    pub ipv4: Option<Ipv4Network>,
    /// The IPv6 pod network, if the cluster has IPv6.
    pub ipv6: Option<Ipv6Network>,
}

impl Default for ClusterCidrs {
    fn default() -> Self {
        ClusterCidrs {
            ipv4: DEFAULT_CLUSTER_CIDR.parse().ok(),
            ipv6: None,
        }
    }
}

impl FromStr for ClusterCidrs {
    type Err = ConfigError;

    /// Parses k3s's comma-separated `--cluster-cidr` value.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const SETTING: &str = "--cluster-cidr";
        let mut cidrs = ClusterCidrs {
            ipv4: None,
            ipv6: None,
        };
        for part in text.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(ConfigError::invalid(
                    SETTING,
                    format!("'{text}' has an empty entry; give one or two CIDRs separated by a comma, e.g. {DEFAULT_CLUSTER_CIDR},{DEFAULT_CLUSTER_CIDR_IPV6}"),
                ));
            }
            let net: IpNetwork = part.parse().map_err(|e| {
                ConfigError::invalid(SETTING, format!("'{part}' is not a CIDR ({e})"))
            })?;
            if net.network() != net.ip() {
                return Err(ConfigError::invalid(
                    SETTING,
                    format!(
                        "'{part}' has host bits set; did you mean {}/{}?",
                        net.network(),
                        net.prefix()
                    ),
                ));
            }
            if net.prefix() == 0 {
                return Err(ConfigError::invalid(
                    SETTING,
                    format!("'{part}' covers every address; give the pod network itself"),
                ));
            }
            match net {
                IpNetwork::V4(v4) => {
                    if let Some(first) = cidrs.ipv4 {
                        return Err(ConfigError::invalid(
                            SETTING,
                            format!("more than one IPv4 CIDR ({first} and {v4}); flannel runs one network per family"),
                        ));
                    }
                    cidrs.ipv4 = Some(v4);
                }
                IpNetwork::V6(v6) => {
                    if let Some(first) = cidrs.ipv6 {
                        return Err(ConfigError::invalid(
                            SETTING,
                            format!("more than one IPv6 CIDR ({first} and {v6}); flannel runs one network per family"),
                        ));
                    }
                    cidrs.ipv6 = Some(v6);
                }
            }
        }
        Ok(cidrs)
    }
}

impl fmt::Display for ClusterCidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ipv4, self.ipv6) {
            (Some(v4), Some(v6)) => write!(f, "{v4},{v6}"),
            (Some(v4), None) => write!(f, "{v4}"),
            (None, Some(v6)) => write!(f, "{v6}"),
            (None, None) => Ok(()),
        }
    }
}

/// `--flannel-iface`: the interface that carries flannel's traffic, by name
/// or by one of its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceSelector {
    /// An interface name such as `eth0`.
    Name(String),
    /// The interface that holds this address.
    Address(IpAddr),
}

impl FromStr for InterfaceSelector {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = text.parse::<IpAddr>() {
            return Ok(InterfaceSelector::Address(addr));
        }
        // Linux IFNAMSIZ is 16 including the NUL; '/' and whitespace are
        // refused by the kernel.
        let valid = !text.is_empty()
            && text.len() <= 15
            && text != "."
            && text != ".."
            && !text
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace());
        if valid {
            Ok(InterfaceSelector::Name(text.to_string()))
        } else {
            Err(ConfigError::invalid(
                "--flannel-iface",
                format!("'{text}' is neither an IP address nor a valid interface name (1-15 characters, no '/', ':' or spaces)"),
            ))
        }
    }
}

impl fmt::Display for InterfaceSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterfaceSelector::Name(name) => f.write_str(name),
            InterfaceSelector::Address(addr) => write!(f, "{addr}"),
        }
    }
}

/// Everything the network task needs, validated. Build it with
/// [`Config::builder`].
///
/// ```
/// use flannel_embed::{Backend, Config};
///
/// let config = Config::builder("node-a")
///     .backend("host-gw".parse()?)
///     .cluster_cidr("10.42.0.0/16,fd00:42::/56")
///     .data_dir("/var/lib/mydistro")
///     .build()?;
/// assert_eq!(config.backend(), Backend::HostGw);
/// assert_eq!(
///     config.netconf_path(),
///     std::path::Path::new("/var/lib/mydistro/agent/etc/flannel/net-conf.json")
/// );
/// assert_eq!(config.annotation_prefix(), "flannel.alpha.coreos.com/");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    node_name: String,
    backend: Backend,
    cluster_cidrs: ClusterCidrs,
    data_dir: PathBuf,
    subnet_file: PathBuf,
    iface: Option<InterfaceSelector>,
    external_ip: bool,
    ipv6_masq: bool,
    ip_masq: bool,
    netconf_override: Option<PathBuf>,
    cni_conf_override: Option<PathBuf>,
    cni_conf_dir: Option<PathBuf>,
    annotation_prefix: String,
    netns: Option<PathBuf>,
    set_node_network_unavailable: bool,
    wireguard: WireguardSettings,
    api_credential: String,
    iptables_mode: IptablesMode,
}

/// What [`ConfigBuilder::api_credential`] says when the host says nothing.
pub const DEFAULT_API_CREDENTIAL: &str = "the host's Kubernetes credential";

impl Config {
    /// Starts a builder for the node called `node_name`, with k3s's defaults
    /// for everything else.
    pub fn builder(node_name: impl Into<String>) -> ConfigBuilder {
        ConfigBuilder {
            node_name: node_name.into(),
            backend: Backend::default(),
            cluster_cidr: None,
            cluster_cidrs: ClusterCidrs::default(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            subnet_file: PathBuf::from(DEFAULT_SUBNET_FILE),
            iface: None,
            external_ip: false,
            ipv6_masq: false,
            ip_masq: true,
            netconf_override: None,
            cni_conf_override: None,
            cni_conf_dir: None,
            annotation_prefix: DEFAULT_ANNOTATION_PREFIX.to_string(),
            netns: None,
            set_node_network_unavailable: true,
            wireguard: WireguardSettings::default(),
            api_credential: DEFAULT_API_CREDENTIAL.to_string(),
            iptables_mode: IptablesMode::default(),
        }
    }

    /// The Kubernetes Node this task runs for.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }
    /// The `--flannel-backend` choice.
    pub fn backend(&self) -> Backend {
        self.backend
    }
    /// The cluster CIDRs (used to render net-conf.json unless overridden).
    pub fn cluster_cidrs(&self) -> &ClusterCidrs {
        &self.cluster_cidrs
    }
    /// k3s `--data-dir`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    /// Where subnet.env is written.
    pub fn subnet_file(&self) -> &Path {
        &self.subnet_file
    }
    /// `--flannel-iface`, if set.
    pub fn iface(&self) -> Option<&InterfaceSelector> {
        self.iface.as_ref()
    }
    /// `--flannel-external-ip`.
    pub fn external_ip(&self) -> bool {
        self.external_ip
    }
    /// `--flannel-ipv6-masq`.
    pub fn ipv6_masq(&self) -> bool {
        self.ipv6_masq
    }
    /// flanneld `--ip-masq` (k3s: always on).
    pub fn ip_masq(&self) -> bool {
        self.ip_masq
    }
    /// The network namespace all kernel work happens in (`None`: the
    /// calling process's own).
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }
    /// The annotation prefix, normalised as flannel does (ends in `/` or
    /// `-`); annotation names are this plus `backend-data` etc.
    pub fn annotation_prefix(&self) -> &str {
        &self.annotation_prefix
    }
    /// Whether the task sets the Node condition NetworkUnavailable=False once
    /// the network is up (flanneld does; k3s turns it off).
    pub fn set_node_network_unavailable(&self) -> bool {
        self.set_node_network_unavailable
    }
    /// `--flannel-conf`: a net-conf.json the user supplies (read, never
    /// written).
    pub fn netconf_override(&self) -> Option<&Path> {
        self.netconf_override.as_deref()
    }
    /// `--flannel-cni-conf`: a conflist copied verbatim.
    pub fn cni_conf_override(&self) -> Option<&Path> {
        self.cni_conf_override.as_deref()
    }
    /// The net-conf.json the task reads: the `--flannel-conf` file, or
    /// `<data-dir>/agent/etc/flannel/net-conf.json`, which it writes.
    pub fn netconf_path(&self) -> PathBuf {
        self.netconf_override
            .clone()
            .unwrap_or_else(|| self.data_dir.join("agent/etc/flannel/net-conf.json"))
    }
    /// The directory the CNI conflist goes in: `--cni-conf-dir`, else
    /// `<data-dir>/agent/etc/cni/net.d` (k3s's).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.cni_conf_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("agent/etc/cni/net.d"))
    }
    /// How the host's Kubernetes credential is named in 401/403 messages
    /// (see [`ConfigBuilder::api_credential`]).
    pub fn api_credential(&self) -> &str {
        &self.api_credential
    }

    /// Which iptables programs the masquerade rules are written with.
    pub fn iptables_mode(&self) -> IptablesMode {
        self.iptables_mode
    }

    /// The wireguard backend's key file and implementation settings.
    pub fn wireguard(&self) -> &WireguardSettings {
        &self.wireguard
    }

    /// `10-flannel.conflist` in [`Config::cni_conf_dir`].
    pub fn cni_conflist_path(&self) -> PathBuf {
        self.cni_conf_dir().join("10-flannel.conflist")
    }
}

/// Builder for [`Config`]; every setter is optional except the node name.
#[derive(Debug, Clone)]
#[must_use = "call build() to get a Config"]
pub struct ConfigBuilder {
    node_name: String,
    backend: Backend,
    cluster_cidr: Option<String>,
    cluster_cidrs: ClusterCidrs,
    data_dir: PathBuf,
    subnet_file: PathBuf,
    iface: Option<String>,
    external_ip: bool,
    ipv6_masq: bool,
    ip_masq: bool,
    netconf_override: Option<PathBuf>,
    cni_conf_override: Option<PathBuf>,
    cni_conf_dir: Option<PathBuf>,
    annotation_prefix: String,
    netns: Option<PathBuf>,
    set_node_network_unavailable: bool,
    wireguard: WireguardSettings,
    api_credential: String,
    iptables_mode: IptablesMode,
}

impl ConfigBuilder {
    /// `--flannel-backend` (default vxlan).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }
    /// `--cluster-cidr` as k3s takes it: one CIDR, or a v4 and a v6 one
    /// separated by a comma. Checked by [`ConfigBuilder::build`].
    pub fn cluster_cidr(mut self, text: impl Into<String>) -> Self {
        self.cluster_cidr = Some(text.into());
        self
    }
    /// The cluster CIDRs, already typed.
    pub fn cluster_cidrs(mut self, cidrs: ClusterCidrs) -> Self {
        self.cluster_cidr = None;
        self.cluster_cidrs = cidrs;
        self
    }
    /// `--data-dir` (default `/var/lib/rancher/k3s`).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }
    /// Where subnet.env goes (default `/run/flannel/subnet.env`).
    pub fn subnet_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.subnet_file = path.into();
        self
    }
    /// `--flannel-iface`: interface name or address. Checked by `build`.
    pub fn iface(mut self, iface: impl Into<String>) -> Self {
        self.iface = Some(iface.into());
        self
    }
    /// `--flannel-external-ip`.
    pub fn external_ip(mut self, on: bool) -> Self {
        self.external_ip = on;
        self
    }
    /// `--flannel-ipv6-masq`.
    pub fn ipv6_masq(mut self, on: bool) -> Self {
        self.ipv6_masq = on;
        self
    }
    /// flanneld `--ip-masq` (default on, as in k3s).
    pub fn ip_masq(mut self, on: bool) -> Self {
        self.ip_masq = on;
        self
    }
    /// `--flannel-conf`.
    pub fn netconf_override(mut self, path: impl Into<PathBuf>) -> Self {
        self.netconf_override = Some(path.into());
        self
    }
    /// `--flannel-cni-conf`.
    pub fn cni_conf_override(mut self, path: impl Into<PathBuf>) -> Self {
        self.cni_conf_override = Some(path.into());
        self
    }
    /// `--cni-conf-dir`: where the conflist is written and kept, instead
    /// of `<data-dir>/agent/etc/cni/net.d`; a DaemonSet points it at the
    /// host's `/etc/cni/net.d` so the runtime's copy is reconciled too.
    pub fn cni_conf_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cni_conf_dir = Some(dir.into());
        self
    }
    /// flanneld `--kube-annotation-prefix` (default
    /// `flannel.alpha.coreos.com`).
    pub fn annotation_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.annotation_prefix = prefix.into();
        self
    }
    /// Do all kernel work in the network namespace at this path (e.g.
    /// `/var/run/netns/node1`), for labs and tests.
    pub fn netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self
    }
    /// Whether to set NetworkUnavailable=False on the Node (default on).
    pub fn set_node_network_unavailable(mut self, on: bool) -> Self {
        self.set_node_network_unavailable = on;
        self
    }

    /// wireguard-native: the private key file (default
    /// `$WIREGUARD_KEY_FILE`, else `/run/flannel/wgkey`). Point it at
    /// persistent storage to keep the node's key across reboots (upstream's
    /// `/run` is a tmpfs: a new key, and a peer change on every node, at
    /// every boot).
    ///
    /// ```
    /// use flannel_embed::config::WireguardImplementation;
    /// use flannel_embed::{Backend, Config};
    ///
    /// let config = Config::builder("node-a")
    ///     .backend(Backend::WireguardNative)
    ///     .wireguard_key_file("/var/lib/mydistro/wgkey")
    ///     .wireguard_implementation(WireguardImplementation::Auto)
    ///     .build()?;
    /// assert_eq!(
    ///     config.wireguard().key_file.as_deref(),
    ///     Some(std::path::Path::new("/var/lib/mydistro/wgkey"))
    /// );
    /// # Ok::<(), flannel_embed::config::ConfigError>(())
    /// ```
    pub fn wireguard_key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.wireguard.key_file = Some(path.into());
        self
    }
    /// wireguard-native: kernel WireGuard, a userspace implementation, or
    /// the kernel's when it has one (default).
    pub fn wireguard_implementation(mut self, implementation: WireguardImplementation) -> Self {
        self.wireguard.implementation = implementation;
        self
    }
    /// wireguard-native: the userspace program, started as
    /// `PROGRAM -f IFNAME` (default `$WG_QUICK_USERSPACE_IMPLEMENTATION`,
    /// else `wireguard-go`).
    pub fn wireguard_userspace_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.wireguard.userspace_program = program.into();
        self
    }

    /// Names the credential the host's Kubernetes client uses, for the
    /// messages in [`Status`](crate::Status) when the API server answers
    /// 401 or 403 (the client does not say which credential it holds), e.g.
    /// `kubeconfig /var/lib/mydistro/agent/flannel.kubeconfig (user
    /// "flannel", client certificate)`. Default: "the host's Kubernetes
    /// credential".
    ///
    /// ```
    /// use flannel_embed::Config;
    ///
    /// let config = Config::builder("node-a")
    ///     .api_credential("service account token /var/run/secrets/kubernetes.io/serviceaccount/token")
    ///     .build()?;
    /// assert!(config.api_credential().starts_with("service account token"));
    /// # Ok::<(), flannel_embed::config::ConfigError>(())
    /// ```
    pub fn api_credential(mut self, description: impl Into<String>) -> Self {
        self.api_credential = description.into();
        self
    }

    /// `--iptables-mode`: which iptables programs write the masquerade
    /// rules when net-conf.json does not choose nftables (default
    /// [`IptablesMode::Path`], the `iptables` on `PATH`, as the host set
    /// it up). An image that carries both iptables variants uses
    /// [`IptablesMode::Detect`] to write where the node's kubelet and
    /// kube-proxy write.
    ///
    /// ```
    /// use flannel_embed::config::IptablesMode;
    /// use flannel_embed::Config;
    ///
    /// let config = Config::builder("node-a")
    ///     .iptables_mode("detect".parse()?)
    ///     .build()?;
    /// assert_eq!(config.iptables_mode(), IptablesMode::Detect);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iptables_mode(mut self, mode: IptablesMode) -> Self {
        self.iptables_mode = mode;
        self
    }

    /// Checks every setting and returns the [`Config`], or the first
    /// problem, naming the setting.
    pub fn build(self) -> Result<Config, ConfigError> {
        validate_node_name(&self.node_name)?;
        let cluster_cidrs = match &self.cluster_cidr {
            Some(text) => text.parse()?,
            None => self.cluster_cidrs,
        };
        if cluster_cidrs.ipv4.is_none() && cluster_cidrs.ipv6.is_none() {
            return Err(ConfigError::invalid(
                "--cluster-cidr",
                format!("no cluster CIDR; give at least one, e.g. {DEFAULT_CLUSTER_CIDR}"),
            ));
        }
        let iface = self.iface.as_deref().map(str::parse).transpose()?;
        let annotation_prefix = normalize_annotation_prefix(&self.annotation_prefix)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("--data-dir", "must not be empty"));
        }
        if self.subnet_file.file_name().is_none() {
            return Err(ConfigError::invalid(
                "--subnet-file",
                format!("'{}' does not name a file", self.subnet_file.display()),
            ));
        }
        for (setting, path) in [
            ("--flannel-conf", &self.netconf_override),
            ("--flannel-cni-conf", &self.cni_conf_override),
            ("--cni-conf-dir", &self.cni_conf_dir),
            ("--netns", &self.netns),
            ("--wireguard-key-file", &self.wireguard.key_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(ConfigError::invalid(
                    setting,
                    "must not be empty when given",
                ));
            }
        }
        Ok(Config {
            node_name: self.node_name,
            backend: self.backend,
            cluster_cidrs,
            data_dir: self.data_dir,
            subnet_file: self.subnet_file,
            iface,
            external_ip: self.external_ip,
            ipv6_masq: self.ipv6_masq,
            ip_masq: self.ip_masq,
            netconf_override: self.netconf_override,
            cni_conf_override: self.cni_conf_override,
            cni_conf_dir: self.cni_conf_dir,
            annotation_prefix,
            netns: self.netns,
            set_node_network_unavailable: self.set_node_network_unavailable,
            wireguard: self.wireguard,
            api_credential: self.api_credential,
            iptables_mode: self.iptables_mode,
        })
    }
}

/// Where wireguard-go, boringtun and `wg` keep their control sockets.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/wireguard";

/// The program wg-quick starts when the kernel has no WireGuard.
pub const DEFAULT_USERSPACE_PROGRAM: &str = "wireguard-go";

/// Which WireGuard implementation configures the devices.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum WireguardImplementation {
    /// The kernel's when it has one; otherwise start the userspace program
    /// (as wg-quick does). A device that already exists is configured the
    /// way it answers (a control socket means userspace).
    #[default]
    Auto,
    /// Only the kernel module; a kernel without it is an error.
    Kernel,
    /// Only the userspace program.
    Userspace,
}

impl WireguardImplementation {
    /// The setting's value as written on a command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            WireguardImplementation::Auto => "auto",
            WireguardImplementation::Kernel => "kernel",
            WireguardImplementation::Userspace => "userspace",
        }
    }
}

impl std::str::FromStr for WireguardImplementation {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(WireguardImplementation::Auto),
            "kernel" => Ok(WireguardImplementation::Kernel),
            "userspace" => Ok(WireguardImplementation::Userspace),
            other => Err(format!("'{other}' is not one of auto, kernel, userspace")),
        }
    }
}

/// Which iptables programs the iptables driver runs (`--iptables-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IptablesMode {
    /// `iptables-save` / `iptables-restore` from `PATH`: whatever the
    /// host's `iptables` is (update-alternatives, a distribution's own).
    #[default]
    Path,
    /// `iptables-nft-save` / `iptables-nft-restore`.
    Nft,
    /// `iptables-legacy-save` / `iptables-legacy-restore`.
    Legacy,
    /// Look once at start-up, as kube-flannel's image does
    /// (kubernetes-sigs/iptables-wrappers): the variant holding kubelet's
    /// `KUBE-IPTABLES-HINT` or `KUBE-KUBELET-CANARY` chain, else the one
    /// with more rules, else nft.
    Detect,
}

impl IptablesMode {
    /// The setting's value as written on a command line.
    pub fn as_str(self) -> &'static str {
        match self {
            IptablesMode::Path => "path",
            IptablesMode::Nft => "nft",
            IptablesMode::Legacy => "legacy",
            IptablesMode::Detect => "detect",
        }
    }
}

impl std::str::FromStr for IptablesMode {
    type Err = ConfigError;
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        match text {
            "path" => Ok(IptablesMode::Path),
            "nft" => Ok(IptablesMode::Nft),
            "legacy" => Ok(IptablesMode::Legacy),
            "detect" => Ok(IptablesMode::Detect),
            other => Err(ConfigError::invalid(
                "--iptables-mode",
                format!("'{other}' is not one of path, nft, legacy, detect"),
            )),
        }
    }
}

/// How the wireguard backend finds its key and its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardSettings {
    /// The private key file; `None`: `$WIREGUARD_KEY_FILE`, else
    /// `/run/flannel/wgkey`.
    pub key_file: Option<PathBuf>,
    /// Kernel, userspace, or whichever works.
    pub implementation: WireguardImplementation,
    /// Where the userspace control sockets live: `/var/run/wireguard`,
    /// which wireguard-go and boringtun both have built in (each node
    /// needs its own, so several nodes on one machine need one mount
    /// namespace each).
    pub socket_dir: PathBuf,
    /// The userspace program (run as `PROGRAM -f IFNAME`).
    pub userspace_program: PathBuf,
}

impl Default for WireguardSettings {
    fn default() -> Self {
        WireguardSettings {
            key_file: None,
            implementation: WireguardImplementation::Auto,
            socket_dir: PathBuf::from(DEFAULT_SOCKET_DIR),
            userspace_program: std::env::var_os("WG_QUICK_USERSPACE_IMPLEMENTATION")
                .filter(|p| !p.is_empty())
                .map_or_else(|| PathBuf::from(DEFAULT_USERSPACE_PROGRAM), PathBuf::from),
        }
    }
}

impl WireguardSettings {
    /// The control socket of device `name` (`<socket_dir>/<name>.sock`).
    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.socket_dir.join(format!("{name}.sock"))
    }
}

/// Kubernetes object names: an RFC 1123 subdomain (lowercase alphanumerics,
/// '-' and '.', starting and ending alphanumeric, at most 253 characters).
fn validate_node_name(name: &str) -> Result<(), ConfigError> {
    if is_dns_subdomain(name) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "--node-name",
            format!("'{name}' is not a valid Kubernetes node name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters)"),
        ))
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// flannel's rule (`newAnnotations`): at most one `/`; without one, `/` is
/// appended; a prefix that then ends in neither `/` nor `-` gets a `-`
/// (`example.com/net` → `example.com/net-backend-data`). The result must be
/// `fqdn/` or `fqdn/name-` in lowercase letters, digits, `_` and `-`.
fn normalize_annotation_prefix(prefix: &str) -> Result<String, ConfigError> {
    const SETTING: &str = "annotation prefix";
    let mut normalized = prefix.to_string();
    match prefix.matches('/').count() {
        0 => normalized.push('/'),
        1 => {}
        _ => {
            return Err(ConfigError::invalid(
                SETTING,
                format!("'{prefix}' can contain at most a single '/'"),
            ))
        }
    }
    if !normalized.ends_with('/') && !normalized.ends_with('-') {
        normalized.push('-');
    }
    let allowed = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    let (domain, name) = normalized.split_once('/').unwrap_or((&normalized, ""));
    let domain_ok = domain.contains('.') && domain.split('.').all(allowed);
    let name_ok = name.is_empty() || (name.ends_with('-') && allowed(name));
    if !(domain_ok && name_ok) {
        return Err(ConfigError::invalid(
            SETTING,
            format!("'{prefix}' must be in the format fqdn[/name] (lowercase letters, digits, '_' and '-'), such as {DEFAULT_ANNOTATION_PREFIX}"),
        ));
    }
    Ok(normalized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_k3s_defaults() {
        let config = Config::builder("node-a").build().unwrap();
        assert_eq!(config.backend(), Backend::Vxlan);
        assert_eq!(config.cluster_cidrs().to_string(), "10.42.0.0/16");
        assert_eq!(config.data_dir(), Path::new("/var/lib/rancher/k3s"));
        assert_eq!(config.subnet_file(), Path::new("/run/flannel/subnet.env"));
        assert_eq!(
            config.netconf_path(),
            Path::new("/var/lib/rancher/k3s/agent/etc/flannel/net-conf.json")
        );
        assert_eq!(
            config.cni_conflist_path(),
            Path::new("/var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist")
        );
        assert_eq!(config.annotation_prefix(), "flannel.alpha.coreos.com/");
        assert!(config.ip_masq() && !config.ipv6_masq() && !config.external_ip());
        assert!(config.set_node_network_unavailable());
        assert_eq!(config.iface(), None);
        assert_eq!(config.netns(), None);
    }

    #[test]
    fn overrides_take_effect() {
        let config = Config::builder("node-a")
            .netconf_override("/etc/my/net-conf.json")
            .cni_conf_override("/etc/my/cni.conflist")
            .iface("10.0.0.5")
            .netns("/run/netns/lab-node1")
            .annotation_prefix("example.com/")
            .build()
            .unwrap();
        assert_eq!(config.netconf_path(), Path::new("/etc/my/net-conf.json"));
        assert_eq!(
            config.cni_conf_override(),
            Some(Path::new("/etc/my/cni.conflist"))
        );
        assert_eq!(
            config.iface(),
            Some(&InterfaceSelector::Address("10.0.0.5".parse().unwrap()))
        );
        assert_eq!(config.annotation_prefix(), "example.com/");
        let by_name = Config::builder("node-a").iface("eth1").build().unwrap();
        assert_eq!(
            by_name.iface(),
            Some(&InterfaceSelector::Name("eth1".into()))
        );
    }

    #[test]
    fn cluster_cidr_forms() {
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            ("10.42.0.0/16", Some("10.42.0.0/16"), None),
            ("fd00:42::/56", None, Some("fd00:42::/56")),
            (
                "10.42.0.0/16,fd00:42::/56",
                Some("10.42.0.0/16"),
                Some("fd00:42::/56"),
            ),
            (
                "fd00:42::/56, 10.42.0.0/16",
                Some("10.42.0.0/16"),
                Some("fd00:42::/56"),
            ),
        ];
        for (text, v4, v6) in cases {
            let cidrs: ClusterCidrs = text.parse().unwrap();
            assert_eq!(cidrs.ipv4.map(|n| n.to_string()).as_deref(), *v4, "{text}");
            assert_eq!(cidrs.ipv6.map(|n| n.to_string()).as_deref(), *v6, "{text}");
        }
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let cases: Vec<(ConfigBuilder, &str)> = vec![
            (Config::builder(""), "--node-name: '' is not a valid"),
            (Config::builder("Node_A"), "--node-name: 'Node_A'"),
            (
                Config::builder("n").cluster_cidr("10.42.0.0/33"),
                "--cluster-cidr: '10.42.0.0/33' is not a CIDR",
            ),
            (
                Config::builder("n").cluster_cidr("10.42.0.1/16"),
                "did you mean 10.42.0.0/16?",
            ),
            (
                Config::builder("n").cluster_cidr("banana"),
                "--cluster-cidr: 'banana' is not a CIDR",
            ),
            (
                Config::builder("n").cluster_cidr(""),
                "--cluster-cidr: '' has an empty entry",
            ),
            (
                Config::builder("n").cluster_cidr("10.42.0.0/16,"),
                "has an empty entry",
            ),
            (
                Config::builder("n").cluster_cidr("0.0.0.0/0"),
                "covers every address",
            ),
            (
                Config::builder("n").cluster_cidr("10.42.0.0/16,10.43.0.0/16"),
                "more than one IPv4 CIDR",
            ),
            (
                Config::builder("n").cluster_cidr("fd00:42::/56,fd00:43::/56"),
                "more than one IPv6 CIDR",
            ),
            (
                Config::builder("n").cluster_cidrs(ClusterCidrs {
                    ipv4: None,
                    ipv6: None,
                }),
                "--cluster-cidr: no cluster CIDR",
            ),
            (Config::builder("n").iface("a/b"), "--flannel-iface: 'a/b'"),
            (
                Config::builder("n").iface("averyveryverylongname"),
                "--flannel-iface",
            ),
            (
                Config::builder("n").annotation_prefix("a/b/"),
                "annotation prefix: 'a/b/' can contain at most a single '/'",
            ),
            (
                Config::builder("n").annotation_prefix("Bad_Prefix"),
                "annotation prefix: 'Bad_Prefix'",
            ),
            (
                Config::builder("n").subnet_file("/"),
                "--subnet-file: '/' does not name a file",
            ),
            (
                Config::builder("n").data_dir(""),
                "--data-dir: must not be empty",
            ),
            (Config::builder("n").netns(""), "--netns: must not be empty"),
        ];
        for (builder, wanted) in cases {
            let message = builder.build().unwrap_err().to_string();
            assert!(
                message.contains(wanted),
                "got {message:?}, wanted {wanted:?}"
            );
        }
    }

    #[test]
    fn annotation_prefix_normalisation_matches_flannel() {
        for (input, wanted) in [
            ("flannel.alpha.coreos.com", "flannel.alpha.coreos.com/"),
            ("flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/"),
            ("example.io", "example.io/"),
            ("example.io/net", "example.io/net-"),
            ("example.io/net-", "example.io/net-"),
        ] {
            assert_eq!(normalize_annotation_prefix(input).unwrap(), wanted);
        }
    }
}
