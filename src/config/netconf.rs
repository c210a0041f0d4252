//! net-conf.json: rendering k3s's templates byte for byte, and reading
//! flannel's format the way flanneld does (case-insensitive keys, unknown keys
//! ignored, upstream defaults), with errors that name the field.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde_json::{Map, Value};

use super::{Backend, ClusterCidrs};

/// The vxlan port the kernel uses when a device is created with port 0,
/// which is what flannel does when `Port` is unset.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// flannel's default VNI.
pub const DEFAULT_VNI: u32 = 1;
/// wireguard backend defaults (flannel `backend/wireguard`).
pub const DEFAULT_WG_LISTEN_PORT: u16 = 51820;
/// Default WireGuard port for the separate IPv6 device.
pub const DEFAULT_WG_LISTEN_PORT_V6: u16 = 51821;

/// A net-conf.json that cannot be used, naming the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetConfError {
    /// Not JSON at all, or not a JSON object.
    #[error("net-conf.json is not a JSON object: {0}")]
    Syntax(String),
    /// A field has the wrong JSON type or an unparseable value.
    #[error("net-conf.json field {field}: {problem}")]
    Field {
        /// The field, as flannel spells it (`Backend.VNI` for nested ones).
        field: String,
        /// What is wrong with the value.
        problem: String,
    },
    /// No `Backend`, or a `Backend` without `Type`. flanneld silently falls
    /// back to the `udp` backend here; we refuse (see vendor-notes).
    #[error("net-conf.json has no Backend.Type; set \"Backend\": {{\"Type\": \"vxlan\"}} (or host-gw, wireguard). flanneld would silently fall back to the udp backend here, which flannel-embed does not implement")]
    MissingBackend,
    /// A backend type flannel has but we do not.
    #[error("net-conf.json Backend.Type '{0}' is not supported by flannel-embed; supported types are vxlan, host-gw and wireguard")]
    UnsupportedBackend(String),
    /// Neither family enabled.
    #[error(
        "net-conf.json enables neither IPv4 nor IPv6 (EnableIPv4 and EnableIPv6 are both false)"
    )]
    NoFamilyEnabled,
    /// A family is enabled without a network for it.
    #[error("net-conf.json has {enable} true but no usable {field}; please define a correct {field} parameter in the flannel config")]
    MissingNetwork {
        /// `EnableIPv4` or `EnableIPv6`.
        enable: &'static str,
        /// `Network` or `IPv6Network`.
        field: &'static str,
    },
}

/// Options of the vxlan backend (flannel `backend/vxlan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConf {
    /// VXLAN network identifier; also the device suffix (`flannel.<VNI>`).
    pub vni: u32,
    /// UDP port; `0` means the kernel default ([`DEFAULT_VXLAN_PORT`]).
    pub port: u16,
    /// Device MTU; `None` means external interface MTU − 50.
    pub mtu: Option<u32>,
    /// VXLAN Group Based Policy extension.
    pub gbp: bool,
    /// Kernel FDB learning on the device.
    pub learning: bool,
    /// Route directly (no encapsulation) to peers on the same subnet.
    pub direct_routing: bool,
    /// Optional MAC prefix for the VTEP address.
    pub mac_prefix: Option<String>,
}

impl Default for VxlanConf {
    fn default() -> Self {
        VxlanConf {
            vni: DEFAULT_VNI,
            port: 0,
            mtu: None,
            gbp: false,
            learning: false,
            direct_routing: false,
            mac_prefix: None,
        }
    }
}

impl VxlanConf {
    /// The UDP port packets really use (`Port`, or 8472 when unset).
    pub fn effective_port(&self) -> u16 {
        if self.port == 0 {
            DEFAULT_VXLAN_PORT
        } else {
            self.port
        }
    }
}

/// How the wireguard backend lays out its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireguardMode {
    /// One device per family (`flannel-wg`, `flannel-wg-v6`).
    #[default]
    Separate,
    /// One device, endpoint family chosen per peer.
    Auto,
    /// One device, IPv4 endpoints.
    Ipv4,
    /// One device, IPv6 endpoints.
    Ipv6,
}

/// Options of the wireguard backend (flannel `backend/wireguard`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardConf {
    /// UDP listen port of the IPv4 device.
    pub listen_port: u16,
    /// UDP listen port of the IPv6 device.
    pub listen_port_v6: u16,
    /// Optional pre-shared key.
    pub psk: Option<String>,
    /// Keepalive in seconds; `0` disables it.
    pub persistent_keepalive_interval: u32,
    /// Device MTU; `None` means derived from the external interface.
    pub mtu: Option<u32>,
    /// Device layout.
    pub mode: WireguardMode,
}

impl Default for WireguardConf {
    fn default() -> Self {
        WireguardConf {
            listen_port: DEFAULT_WG_LISTEN_PORT,
            listen_port_v6: DEFAULT_WG_LISTEN_PORT_V6,
            psk: None,
            persistent_keepalive_interval: 0,
            mtu: None,
            mode: WireguardMode::Separate,
        }
    }
}

/// The `Backend` block of net-conf.json, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConf {
    /// `{"Type": "vxlan", ...}`
    Vxlan(VxlanConf),
    /// `{"Type": "host-gw"}`
    HostGw,
    /// `{"Type": "wireguard", ...}`
    Wireguard(WireguardConf),
}

impl BackendConf {
    /// The backend `Type` string, as published in the `backend-type`
    /// annotation.
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendConf::Vxlan(_) => "vxlan",
            BackendConf::HostGw => "host-gw",
            BackendConf::Wireguard(_) => "wireguard",
        }
    }

    /// The `--flannel-backend` value that runs this backend.
    pub fn backend(&self) -> Backend {
        match self {
            BackendConf::Vxlan(_) => Backend::Vxlan,
            BackendConf::HostGw => Backend::HostGw,
            BackendConf::Wireguard(_) => Backend::WireguardNative,
        }
    }
}

/// net-conf.json as flanneld reads it.
///
/// `network`/`ipv6_network` are `None` both when the key is absent and when it
/// holds the all-zero network (`0.0.0.0/0`, `::/0`), as k3s writes for a
/// disabled family: flanneld treats both as empty.
///
/// ```
/// use flannel_embed::config::{BackendConf, NetConf};
///
/// let conf = NetConf::parse(r#"{"network": "10.244.0.0/16", "backend": {"type": "vxlan", "VNI": 4}}"#)?;
/// assert_eq!(conf.network.unwrap().to_string(), "10.244.0.0/16");
/// assert!(conf.enable_ipv4 && !conf.enable_ipv6);
/// match conf.backend {
///     BackendConf::Vxlan(vxlan) => assert_eq!(vxlan.vni, 4),
///     other => panic!("unexpected backend {other:?}"),
/// }
/// # Ok::<(), flannel_embed::config::NetConfError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    /// `EnableIPv4` (default true).
    pub enable_ipv4: bool,
    /// `EnableIPv6` (default false).
    pub enable_ipv6: bool,
    /// `EnableNFTables` (default false): masquerade with nftables instead of
    /// iptables.
    pub enable_nftables: bool,
    /// `Network`: the IPv4 cluster network.
    pub network: Option<Ipv4Network>,
    /// `IPv6Network`: the IPv6 cluster network.
    pub ipv6_network: Option<Ipv6Network>,
    /// `SubnetLen` (only used by flannel's etcd subnet manager; kept for
    /// parity).
    pub subnet_len: Option<u8>,
    /// `SubnetMin`.
    pub subnet_min: Option<Ipv4Addr>,
    /// `SubnetMax`.
    pub subnet_max: Option<Ipv4Addr>,
    /// `IPv6SubnetLen`.
    pub ipv6_subnet_len: Option<u8>,
    /// `IPv6SubnetMin`.
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    /// `IPv6SubnetMax`.
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    /// The typed `Backend` block.
    pub backend: BackendConf,
}

impl NetConf {
    /// Parses net-conf.json text the way flanneld does, then checks that it
    /// can run (see [`NetConf::validate`]).
    pub fn parse(text: &str) -> Result<NetConf, NetConfError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| NetConfError::Syntax(e.to_string()))?;
        let Value::Object(object) = value else {
            return Err(NetConfError::Syntax(format!(
                "the document is a JSON {}",
                json_kind(&value)
            )));
        };
        let top = Fields::new(&object, "");
        let backend = match top.get("Backend") {
            None => return Err(NetConfError::MissingBackend),
            Some(Value::Object(block)) => parse_backend(&Fields::new(block, "Backend."))?,
            Some(other) => return Err(top.wrong_type("Backend", "an object", other)),
        };
        let conf = NetConf {
            enable_ipv4: top.bool("EnableIPv4")?.unwrap_or(true),
            enable_ipv6: top.bool("EnableIPv6")?.unwrap_or(false),
            enable_nftables: top.bool("EnableNFTables")?.unwrap_or(false),
            network: top.ipv4_network("Network")?,
            ipv6_network: top.ipv6_network("IPv6Network")?,
            subnet_len: top.prefix_len("SubnetLen", 32)?,
            subnet_min: top.ipv4_addr("SubnetMin")?,
            subnet_max: top.ipv4_addr("SubnetMax")?,
            ipv6_subnet_len: top.prefix_len("IPv6SubnetLen", 128)?,
            ipv6_subnet_min: top.ipv6_addr("IPv6SubnetMin")?,
            ipv6_subnet_max: top.ipv6_addr("IPv6SubnetMax")?,
            backend,
        };
        conf.validate()?;
        Ok(conf)
    }

    /// Checks the family switches against the networks: at least one family
    /// on, and a real network for every family that is on.
    pub fn validate(&self) -> Result<(), NetConfError> {
        if !self.enable_ipv4 && !self.enable_ipv6 {
            return Err(NetConfError::NoFamilyEnabled);
        }
        if self.enable_ipv4 && self.network.is_none() {
            return Err(NetConfError::MissingNetwork {
                enable: "EnableIPv4",
                field: "Network",
            });
        }
        if self.enable_ipv6 && self.ipv6_network.is_none() {
            return Err(NetConfError::MissingNetwork {
                enable: "EnableIPv6",
                field: "IPv6Network",
            });
        }
        Ok(())
    }

    /// The canonical net-conf.json of this configuration: every field
    /// flanneld reads, in flanneld's spelling and a fixed order, unset
    /// optional fields left out, compact. Parsing it gives this value back
    /// (`NetConf::parse(&conf.render()) == Ok(conf)`), so two files that
    /// mean the same configuration render the same.
    ///
    /// ```
    /// use flannel_embed::config::NetConf;
    ///
    /// let conf = NetConf::parse(r#"{"network": "10.244.0.0/16", "backend": {"type": "vxlan"}}"#)?;
    /// assert_eq!(
    ///     conf.render(),
    ///     r#"{"EnableIPv4":true,"EnableIPv6":false,"EnableNFTables":false,"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1,"Port":0,"GBP":false,"Learning":false,"DirectRouting":false}}"#
    /// );
    /// assert_eq!(NetConf::parse(&conf.render())?, conf);
    /// # Ok::<(), flannel_embed::config::NetConfError>(())
    /// ```
    pub fn render(&self) -> String {
        let mut top = Map::new();
        top.insert("EnableIPv4".into(), self.enable_ipv4.into());
        top.insert("EnableIPv6".into(), self.enable_ipv6.into());
        top.insert("EnableNFTables".into(), self.enable_nftables.into());
        let mut put = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                top.insert(key.into(), Value::String(value));
            }
        };
        put("Network", self.network.map(|n| n.to_string()));
        put("IPv6Network", self.ipv6_network.map(|n| n.to_string()));
        put("SubnetMin", self.subnet_min.map(|a| a.to_string()));
        put("SubnetMax", self.subnet_max.map(|a| a.to_string()));
        put("IPv6SubnetMin", self.ipv6_subnet_min.map(|a| a.to_string()));
        put("IPv6SubnetMax", self.ipv6_subnet_max.map(|a| a.to_string()));
        if let Some(len) = self.subnet_len {
            top.insert("SubnetLen".into(), len.into());
        }
        if let Some(len) = self.ipv6_subnet_len {
            top.insert("IPv6SubnetLen".into(), len.into());
        }
        let mut backend = Map::new();
        backend.insert("Type".into(), self.backend.type_name().into());
        match &self.backend {
            BackendConf::Vxlan(vxlan) => {
                backend.insert("VNI".into(), vxlan.vni.into());
                backend.insert("Port".into(), vxlan.port.into());
                if let Some(mtu) = vxlan.mtu {
                    backend.insert("MTU".into(), mtu.into());
                }
                backend.insert("GBP".into(), vxlan.gbp.into());
                backend.insert("Learning".into(), vxlan.learning.into());
                backend.insert("DirectRouting".into(), vxlan.direct_routing.into());
                if let Some(prefix) = &vxlan.mac_prefix {
                    backend.insert("MacPrefix".into(), prefix.as_str().into());
                }
            }
            BackendConf::HostGw => {}
            BackendConf::Wireguard(wg) => {
                backend.insert("ListenPort".into(), wg.listen_port.into());
                backend.insert("ListenPortV6".into(), wg.listen_port_v6.into());
                if let Some(psk) = &wg.psk {
                    backend.insert("PSK".into(), psk.as_str().into());
                }
                backend.insert(
                    "PersistentKeepaliveInterval".into(),
                    wg.persistent_keepalive_interval.into(),
                );
                if let Some(mtu) = wg.mtu {
                    backend.insert("MTU".into(), mtu.into());
                }
                let mode = match wg.mode {
                    WireguardMode::Separate => "separate",
                    WireguardMode::Auto => "auto",
                    WireguardMode::Ipv4 => "ipv4",
                    WireguardMode::Ipv6 => "ipv6",
                };
                backend.insert("Mode".into(), mode.into());
            }
        }
        top.insert("Backend".into(), Value::Object(backend));
        Value::Object(top).to_string()
    }

    /// The IPv4 network when IPv4 is enabled.
    pub fn active_ipv4_network(&self) -> Option<Ipv4Network> {
        self.network.filter(|_| self.enable_ipv4)
    }

    /// The IPv6 network when IPv6 is enabled.
    pub fn active_ipv6_network(&self) -> Option<Ipv6Network> {
        self.ipv6_network.filter(|_| self.enable_ipv6)
    }
}

/// k3s's net-conf.json template (`pkg/agent/flannel/setup.go`), byte for
/// byte: tab-indented, trailing newline.
const K3S_NETCONF_TEMPLATE: &str = "{\n\t\"Network\": \"%CIDR%\",\n\t\"EnableIPv6\": %IPV6_ENABLED%,\n\t\"EnableIPv4\": %IPV4_ENABLED%,\n\t\"IPv6Network\": \"%CIDR_IPV6%\",\n\t\"Backend\": %backend%\n}\n";
const K3S_VXLAN_BACKEND: &str = "{\n\t\"Type\": \"vxlan\"\n}";
const K3S_HOST_GW_BACKEND: &str = "{\n\t\"Type\": \"host-gw\"\n}";
const K3S_WIREGUARD_NATIVE_BACKEND: &str =
    "{\n\t\"Type\": \"wireguard\",\n\t\"PersistentKeepaliveInterval\": 25\n}";

/// Renders the net-conf.json k3s writes for these cluster CIDRs and backend,
/// byte for byte. `None` for [`Backend::None`], for which k3s writes nothing.
///
/// ```
/// use flannel_embed::config::{render_k3s_netconf, ClusterCidrs};
/// use flannel_embed::Backend;
///
/// let cidrs: ClusterCidrs = "10.42.0.0/16".parse()?;
/// let text = render_k3s_netconf(&cidrs, Backend::Vxlan).unwrap();
/// assert!(text.starts_with("{\n\t\"Network\": \"10.42.0.0/16\",\n"));
/// # Ok::<(), flannel_embed::config::ConfigError>(())
/// ```
pub fn render_k3s_netconf(cidrs: &ClusterCidrs, backend: Backend) -> Option<String> {
    let backend_block = match backend {
        Backend::Vxlan => K3S_VXLAN_BACKEND,
        Backend::HostGw => K3S_HOST_GW_BACKEND,
        Backend::WireguardNative => K3S_WIREGUARD_NATIVE_BACKEND,
        Backend::None => return None,
    };
    let (ipv4_enabled, network) = match cidrs.ipv4 {
        Some(net) => ("true", net.to_string()),
        None => ("false", "0.0.0.0/0".to_string()),
    };
    let (ipv6_enabled, ipv6_network) = match cidrs.ipv6 {
        Some(net) => ("true", net.to_string()),
        None => ("false", "::/0".to_string()),
    };
    Some(
        K3S_NETCONF_TEMPLATE
            .replace("%IPV4_ENABLED%", ipv4_enabled)
            .replace("%CIDR%", &network)
            .replace("%IPV6_ENABLED%", ipv6_enabled)
            .replace("%CIDR_IPV6%", &ipv6_network)
            .replace("%backend%", backend_block),
    )
}

fn parse_backend(fields: &Fields<'_>) -> Result<BackendConf, NetConfError> {
    let Some(kind) = fields.string("Type")? else {
        return Err(NetConfError::MissingBackend);
    };
    match kind.as_str() {
        "vxlan" => {
            let defaults = VxlanConf::default();
            Ok(BackendConf::Vxlan(VxlanConf {
                vni: fields
                    .uint("VNI", u32::MAX.into())?
                    .map_or(defaults.vni, |v| v as u32),
                port: fields
                    .uint("Port", u16::MAX.into())?
                    .map_or(0, |v| v as u16),
                mtu: fields.mtu("MTU")?,
                gbp: fields.bool("GBP")?.unwrap_or(false),
                learning: fields.bool("Learning")?.unwrap_or(false),
                direct_routing: fields.bool("DirectRouting")?.unwrap_or(false),
                mac_prefix: fields.string("MacPrefix")?.filter(|s| !s.is_empty()),
            }))
        }
        "host-gw" => Ok(BackendConf::HostGw),
        "wireguard" => {
            let defaults = WireguardConf::default();
            let mode = match fields.string("Mode")?.as_deref() {
                None | Some("") | Some("separate") => WireguardMode::Separate,
                Some("auto") => WireguardMode::Auto,
                Some("ipv4") => WireguardMode::Ipv4,
                Some("ipv6") => WireguardMode::Ipv6,
                Some(other) => {
                    return Err(fields.problem(
                        "Mode",
                        format!("'{other}' is not one of separate, auto, ipv4, ipv6"),
                    ))
                }
            };
            Ok(BackendConf::Wireguard(WireguardConf {
                listen_port: fields
                    .port("ListenPort")?
                    .unwrap_or(defaults.listen_port),
                listen_port_v6: fields
                    .port("ListenPortV6")?
                    .unwrap_or(defaults.listen_port_v6),
                psk: match fields.string("PSK")?.filter(|s| !s.is_empty()) {
                    Some(psk) if !is_base64_key(&psk) => {
                        return Err(fields.problem(
                            "PSK",
                            "is not a WireGuard key (44 characters of base64 for 32 bytes, as `wg genpsk` prints)".into(),
                        ))
                    }
                    psk => psk,
                },
                // WireGuard keeps the interval in 16 bits.
                persistent_keepalive_interval: fields
                    .uint("PersistentKeepaliveInterval", u16::MAX.into())?
                    .map_or(0, |v| v as u32),
                mtu: fields.mtu("MTU")?,
                mode,
            }))
        }
        "" => Err(NetConfError::MissingBackend),
        other => Err(NetConfError::UnsupportedBackend(other.to_string())),
    }
}

/// A WireGuard key: 32 bytes in standard base64 (44 characters, one `=`).
pub(crate) fn is_base64_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() == 44
        && bytes[43] == b'='
        && bytes[..43]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
    // Go's decoder (upstream) ignores stray bits in the last digit.
}

/// Field access with Go `encoding/json` semantics: keys match without
/// regard to case, the last matching key wins, `null` counts as absent, and
/// keys nobody asks for are ignored.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    prefix: &'static str,
}

impl<'a> Fields<'a> {
    fn new(object: &'a Map<String, Value>, prefix: &'static str) -> Self {
        Fields { object, prefix }
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.object
            .iter()
            .rfind(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
            .filter(|value| !value.is_null())
    }

    fn problem(&self, name: &str, problem: String) -> NetConfError {
        NetConfError::Field {
            field: format!("{}{}", self.prefix, name),
            problem,
        }
    }

    fn wrong_type(&self, name: &str, wanted: &str, got: &Value) -> NetConfError {
        self.problem(
            name,
            format!("expected {wanted}, got a JSON {} ({got})", json_kind(got)),
        )
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, NetConfError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong_type(name, "true or false", other)),
        }
    }

    fn string(&self, name: &str) -> Result<Option<String>, NetConfError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.wrong_type(name, "a string", other)),
        }
    }

    fn uint(&self, name: &str, max: u64) -> Result<Option<u64>, NetConfError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if v <= max => Ok(Some(v)),
                _ => Err(self.problem(name, format!("{n} is not a whole number from 0 to {max}"))),
            },
            Some(other) => Err(self.wrong_type(name, "a number", other)),
        }
    }

    /// A UDP port to listen on: 1 to 65535 (0 would be a random port,
    /// which peers could not know).
    fn port(&self, name: &str) -> Result<Option<u16>, NetConfError> {
        match self.uint(name, u16::MAX.into())? {
            Some(0) => Err(self.problem(
                name,
                "0 is not a port to listen on (peers dial the port the node publishes)".into(),
            )),
            other => Ok(other.map(|v| v as u16)),
        }
    }

    /// MTU: `0` and absent both mean "derive from the interface".
    fn mtu(&self, name: &str) -> Result<Option<u32>, NetConfError> {
        Ok(self
            .uint(name, u32::MAX.into())?
            .filter(|&v| v != 0)
            .map(|v| v as u32))
    }

    fn prefix_len(&self, name: &str, max: u64) -> Result<Option<u8>, NetConfError> {
        Ok(self.uint(name, max)?.filter(|&v| v != 0).map(|v| v as u8))
    }

    fn network(&self, name: &str) -> Result<Option<IpNetwork>, NetConfError> {
        let Some(text) = self.string(name)? else {
            return Ok(None);
        };
        let net: IpNetwork = text
            .parse()
            .map_err(|e| self.problem(name, format!("'{text}' is not a CIDR ({e})")))?;
        // Go's net.ParseCIDR keeps only the network part ("10.42.0.1/16" is
        // read as 10.42.0.0/16); do the same so upstream files keep working.
        let masked = IpNetwork::new(net.network(), net.prefix())
            .map_err(|e| self.problem(name, format!("'{text}': {e}")))?;
        // The all-zero network is flannel's "empty" value.
        if masked.prefix() == 0 && masked.network().is_unspecified() {
            return Ok(None);
        }
        Ok(Some(masked))
    }

    fn ipv4_network(&self, name: &str) -> Result<Option<Ipv4Network>, NetConfError> {
        match self.network(name)? {
            None => Ok(None),
            Some(IpNetwork::V4(net)) => Ok(Some(net)),
            Some(IpNetwork::V6(net)) => Err(self.problem(
                name,
                format!("{net} is an IPv6 CIDR; put it in IPv6Network and set EnableIPv6 to true"),
            )),
        }
    }

    fn ipv6_network(&self, name: &str) -> Result<Option<Ipv6Network>, NetConfError> {
        match self.network(name)? {
            None => Ok(None),
            Some(IpNetwork::V6(net)) => Ok(Some(net)),
            Some(IpNetwork::V4(net)) => {
                Err(self.problem(name, format!("{net} is an IPv4 CIDR; IPv4 goes in Network")))
            }
        }
    }

    fn addr(&self, name: &str) -> Result<Option<IpAddr>, NetConfError> {
        let Some(text) = self.string(name)? else {
            return Ok(None);
        };
        text.parse::<IpAddr>()
            .map(Some)
            .map_err(|_| self.problem(name, format!("'{text}' is not an IP address")))
    }

    fn ipv4_addr(&self, name: &str) -> Result<Option<Ipv4Addr>, NetConfError> {
        match self.addr(name)? {
            None => Ok(None),
            Some(IpAddr::V4(a)) => Ok(Some(a)),
            Some(IpAddr::V6(a)) => Err(self.problem(name, format!("{a} is not an IPv4 address"))),
        }
    }

    fn ipv6_addr(&self, name: &str) -> Result<Option<Ipv6Addr>, NetConfError> {
        match self.addr(name)? {
            None => Ok(None),
            Some(IpAddr::V6(a)) => Ok(Some(a)),
            Some(IpAddr::V4(a)) => Err(self.problem(name, format!("{a} is not an IPv6 address"))),
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(text: &str) -> ClusterCidrs {
        text.parse().expect("test CIDRs parse")
    }

    // The golden files: what k3s writes, byte for byte.
    const K3S_V4_VXLAN: &str = "{\n\t\"Network\": \"10.42.0.0/16\",\n\t\"EnableIPv6\": false,\n\t\"EnableIPv4\": true,\n\t\"IPv6Network\": \"::/0\",\n\t\"Backend\": {\n\t\"Type\": \"vxlan\"\n}\n}\n";
    const K3S_DUAL_VXLAN: &str = "{\n\t\"Network\": \"10.42.0.0/16\",\n\t\"EnableIPv6\": true,\n\t\"EnableIPv4\": true,\n\t\"IPv6Network\": \"fd00:42::/56\",\n\t\"Backend\": {\n\t\"Type\": \"vxlan\"\n}\n}\n";
    const K3S_V6_VXLAN: &str = "{\n\t\"Network\": \"0.0.0.0/0\",\n\t\"EnableIPv6\": true,\n\t\"EnableIPv4\": false,\n\t\"IPv6Network\": \"fd00:42::/56\",\n\t\"Backend\": {\n\t\"Type\": \"vxlan\"\n}\n}\n";
    const K3S_V4_HOST_GW: &str = "{\n\t\"Network\": \"10.42.0.0/16\",\n\t\"EnableIPv6\": false,\n\t\"EnableIPv4\": true,\n\t\"IPv6Network\": \"::/0\",\n\t\"Backend\": {\n\t\"Type\": \"host-gw\"\n}\n}\n";
    const K3S_V4_WIREGUARD: &str = "{\n\t\"Network\": \"10.42.0.0/16\",\n\t\"EnableIPv6\": false,\n\t\"EnableIPv4\": true,\n\t\"IPv6Network\": \"::/0\",\n\t\"Backend\": {\n\t\"Type\": \"wireguard\",\n\t\"PersistentKeepaliveInterval\": 25\n}\n}\n";

    #[test]
    fn k3s_templates_render_byte_for_byte() {
        let cases = [
            ("10.42.0.0/16", Backend::Vxlan, K3S_V4_VXLAN),
            ("10.42.0.0/16,fd00:42::/56", Backend::Vxlan, K3S_DUAL_VXLAN),
            // IPv6-first dual-stack still puts the v4 CIDR in Network.
            ("fd00:42::/56,10.42.0.0/16", Backend::Vxlan, K3S_DUAL_VXLAN),
            ("fd00:42::/56", Backend::Vxlan, K3S_V6_VXLAN),
            ("10.42.0.0/16", Backend::HostGw, K3S_V4_HOST_GW),
            ("10.42.0.0/16", Backend::WireguardNative, K3S_V4_WIREGUARD),
        ];
        for (cluster_cidr, backend, golden) in cases {
            let rendered = render_k3s_netconf(&cidrs(cluster_cidr), backend).unwrap();
            assert_eq!(rendered, golden, "{cluster_cidr} {backend}");
        }
        assert_eq!(
            render_k3s_netconf(&cidrs("10.42.0.0/16"), Backend::None),
            None
        );
    }

    #[test]
    fn rendered_templates_mean_what_the_spec_says() {
        // The compact form in the spec is the meaning of k3s's file.
        let spec: Value = serde_json::from_str(
            r#"{"Network":"10.42.0.0/16","EnableIPv6":false,"EnableIPv4":true,"IPv6Network":"::/0","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let ours: Value = serde_json::from_str(K3S_V4_VXLAN).unwrap();
        assert_eq!(ours, spec);
    }

    #[test]
    fn rendered_templates_parse_back_to_the_cluster_cidrs() {
        for (text, v4, v6) in [
            (K3S_V4_VXLAN, Some("10.42.0.0/16"), None),
            (K3S_DUAL_VXLAN, Some("10.42.0.0/16"), Some("fd00:42::/56")),
            (K3S_V6_VXLAN, None, Some("fd00:42::/56")),
        ] {
            let conf = NetConf::parse(text).unwrap();
            assert_eq!(
                conf.active_ipv4_network().map(|n| n.to_string()).as_deref(),
                v4
            );
            assert_eq!(
                conf.active_ipv6_network().map(|n| n.to_string()).as_deref(),
                v6
            );
            assert_eq!(conf.backend, BackendConf::Vxlan(VxlanConf::default()));
        }
        let wg = NetConf::parse(K3S_V4_WIREGUARD).unwrap();
        assert_eq!(
            wg.backend,
            BackendConf::Wireguard(WireguardConf {
                persistent_keepalive_interval: 25,
                ..WireguardConf::default()
            })
        );
        assert_eq!(
            NetConf::parse(K3S_V4_HOST_GW).unwrap().backend,
            BackendConf::HostGw
        );
    }

    #[test]
    fn upstream_kube_flannel_yml_parses_like_flanneld() {
        // net-conf.json from flannel's Documentation/kube-flannel.yml.
        let text = "{\n  \"Network\": \"10.244.0.0/16\",\n  \"EnableNFTables\": false,\n  \"Backend\": {\n    \"Type\": \"vxlan\"\n  }\n}\n";
        let conf = NetConf::parse(text).unwrap();
        let flanneld_reads = NetConf {
            enable_ipv4: true,
            enable_ipv6: false,
            enable_nftables: false,
            network: Some("10.244.0.0/16".parse().unwrap()),
            ipv6_network: None,
            subnet_len: None,
            subnet_min: None,
            subnet_max: None,
            ipv6_subnet_len: None,
            ipv6_subnet_min: None,
            ipv6_subnet_max: None,
            backend: BackendConf::Vxlan(VxlanConf {
                vni: 1,
                port: 0,
                mtu: None,
                gbp: false,
                learning: false,
                direct_routing: false,
                mac_prefix: None,
            }),
        };
        assert_eq!(conf, flanneld_reads);
        let BackendConf::Vxlan(vxlan) = &conf.backend else {
            unreachable!()
        };
        assert_eq!(vxlan.effective_port(), 8472);
    }

    #[test]
    fn keys_are_case_insensitive_last_wins_and_unknown_keys_are_ignored() {
        let conf = NetConf::parse(
            r#"{"network": "10.1.0.0/16", "NETWORK": "10.2.0.0/16", "enableipv6": true,
                "ipv6network": "fc00::/48", "Whatever": [1, 2], "subnetlen": 26,
                "SubnetMin": "10.2.1.0", "IPv6SubnetLen": 80,
                "backend": {"type": "vxlan", "vni": 7, "port": 4789, "directrouting": true,
                            "GBP": true, "mtu": 1400, "Extra": "x"}}"#,
        )
        .unwrap();
        assert_eq!(conf.network, Some("10.2.0.0/16".parse().unwrap()));
        assert_eq!(conf.ipv6_network, Some("fc00::/48".parse().unwrap()));
        assert!(conf.enable_ipv4 && conf.enable_ipv6);
        assert_eq!(conf.subnet_len, Some(26));
        assert_eq!(conf.subnet_min, Some(Ipv4Addr::new(10, 2, 1, 0)));
        assert_eq!(conf.ipv6_subnet_len, Some(80));
        assert_eq!(
            conf.backend,
            BackendConf::Vxlan(VxlanConf {
                vni: 7,
                port: 4789,
                mtu: Some(1400),
                gbp: true,
                learning: false,
                direct_routing: true,
                mac_prefix: None,
            })
        );
    }

    #[test]
    fn host_bits_are_masked_like_go_parse_cidr() {
        let conf = NetConf::parse(r#"{"Network": "10.42.3.7/16", "Backend": {"Type": "host-gw"}}"#)
            .unwrap();
        assert_eq!(conf.network, Some("10.42.0.0/16".parse().unwrap()));
    }

    #[test]
    fn wireguard_options() {
        let conf = NetConf::parse(
            r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "wireguard", "ListenPort": 51000,
                "PSK": "EEl0GML7McbBo7lbd0ebJHDWB2lGKrP5EI8a8BrWVUE=", "Mode": "auto", "MTU": 0}}"#,
        )
        .unwrap();
        assert_eq!(
            conf.backend,
            BackendConf::Wireguard(WireguardConf {
                listen_port: 51000,
                listen_port_v6: 51821,
                psk: Some("EEl0GML7McbBo7lbd0ebJHDWB2lGKrP5EI8a8BrWVUE=".into()),
                persistent_keepalive_interval: 0,
                mtu: None,
                mode: WireguardMode::Auto,
            })
        );
        // Keys match without regard to case, as Go's encoding/json does.
        let conf = NetConf::parse(
            r#"{"network": "10.42.0.0/16", "backend": {"type": "wireguard", "listenport": 1,
                "LISTENPORTV6": 2, "mtu": 1400, "persistentkeepaliveinterval": 25, "mode": "ipv6"}}"#,
        )
        .unwrap();
        assert_eq!(
            conf.backend,
            BackendConf::Wireguard(WireguardConf {
                listen_port: 1,
                listen_port_v6: 2,
                psk: None,
                persistent_keepalive_interval: 25,
                mtu: Some(1400),
                mode: WireguardMode::Ipv6,
            })
        );
        for mode in ["separate", "auto", "ipv4", "ipv6"] {
            let text = format!(
                r#"{{"Network": "10.42.0.0/16", "Backend": {{"Type": "wireguard", "Mode": "{mode}"}}}}"#
            );
            assert!(NetConf::parse(&text).is_ok(), "{mode}");
        }
        assert_eq!(conf.backend.backend(), Backend::WireguardNative);
    }

    #[test]
    fn bad_documents_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("not json", "not a JSON object"),
            ("[1]", "is a JSON array"),
            (r#"{"Network": "10.42.0.0/16"}"#, "no Backend.Type"),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {}}"#,
                "no Backend.Type",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": ""}}"#,
                "no Backend.Type",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": "vxlan"}"#,
                "field Backend: expected an object",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "udp"}}"#,
                "'udp' is not supported",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": 3}}"#,
                "field Backend.Type: expected a string",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "vxlan", "VNI": -1}}"#,
                "field Backend.VNI",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "vxlan", "Port": 70000}}"#,
                "field Backend.Port",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "wireguard", "Mode": "both"}}"#,
                "field Backend.Mode",
            ),
            // Upstream compares the mode exactly.
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "wireguard", "Mode": "Auto"}}"#,
                "field Backend.Mode",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "wireguard", "PersistentKeepaliveInterval": "25s"}}"#,
                "field Backend.PersistentKeepaliveInterval",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "wireguard", "PersistentKeepaliveInterval": 2.5}}"#,
                "field Backend.PersistentKeepaliveInterval",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "wireguard", "PersistentKeepaliveInterval": 70000}}"#,
                "field Backend.PersistentKeepaliveInterval",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "wireguard", "PSK": "abc"}}"#,
                "field Backend.PSK: is not a WireGuard key",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "wireguard", "PSK": "EEl0GML7McbBo7lbd0ebJHDWB2lGKrP5EI8a8BrWVUE"}}"#,
                "field Backend.PSK",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "wireguard", "ListenPort": 65536}}"#,
                "field Backend.ListenPort",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "wireguard", "ListenPort": 0}}"#,
                "field Backend.ListenPort: 0 is not a port",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "wireguard", "ListenPortV6": "51821"}}"#,
                "field Backend.ListenPortV6",
            ),
            (
                r#"{"Network": "10.42.0.0/33", "Backend": {"Type": "vxlan"}}"#,
                "field Network: '10.42.0.0/33' is not a CIDR",
            ),
            (
                r#"{"Network": "fd00:42::/56", "Backend": {"Type": "vxlan"}}"#,
                "field Network: fd00:42::/56 is an IPv6 CIDR",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "EnableIPv6": true, "IPv6Network": "10.43.0.0/16", "Backend": {"Type": "vxlan"}}"#,
                "field IPv6Network: 10.43.0.0/16 is an IPv4 CIDR",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "EnableIPv6": "yes", "Backend": {"Type": "vxlan"}}"#,
                "field EnableIPv6: expected true or false",
            ),
            (
                r#"{"Backend": {"Type": "vxlan"}}"#,
                "EnableIPv4 true but no usable Network",
            ),
            (
                r#"{"Network": "0.0.0.0/0", "Backend": {"Type": "vxlan"}}"#,
                "EnableIPv4 true but no usable Network",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "EnableIPv6": true, "Backend": {"Type": "vxlan"}}"#,
                "EnableIPv6 true but no usable IPv6Network",
            ),
            (
                r#"{"EnableIPv4": false, "Backend": {"Type": "vxlan"}}"#,
                "neither IPv4 nor IPv6",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "SubnetLen": 40, "Backend": {"Type": "vxlan"}}"#,
                "field SubnetLen",
            ),
            (
                r#"{"Network": "10.42.0.0/16", "SubnetMin": "fc00::", "Backend": {"Type": "vxlan"}}"#,
                "field SubnetMin",
            ),
        ];
        for (text, wanted) in cases {
            let message = NetConf::parse(text).unwrap_err().to_string();
            assert!(
                message.contains(wanted),
                "{text}\n gave {message:?}\n wanted {wanted:?}"
            );
        }
    }
}
