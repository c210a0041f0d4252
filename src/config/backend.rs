//! The `--flannel-backend` values k3s accepts, and its messages for the
//! values it removed.

use std::fmt;
use std::str::FromStr;

/// Which data path the network task programs, as chosen with
/// `--flannel-backend`.
///
/// ```
/// use flannel_embed::Backend;
///
/// let backend: Backend = "host-gw".parse()?;
/// assert_eq!(backend, Backend::HostGw);
/// assert_eq!(backend.to_string(), "host-gw");
///
/// let err = "ipsec".parse::<Backend>().unwrap_err();
/// assert!(err.to_string().contains("wireguard-native"));
/// # Ok::<(), flannel_embed::config::BackendError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// VXLAN overlay through `flannel.<VNI>` (k3s default).
    #[default]
    Vxlan,
    /// Plain routes to each peer's node IP; peers must share an L2 segment.
    HostGw,
    /// WireGuard tunnels (k3s `wireguard-native`, flannel backend type
    /// `wireguard`).
    WireguardNative,
    /// No pod network from us: the host runs another CNI. The network task is
    /// not started.
    None,
}

impl Backend {
    /// Every value `--flannel-backend` accepts, in the order k3s documents
    /// them.
    pub const ALL: [Backend; 4] = [
        Backend::Vxlan,
        Backend::HostGw,
        Backend::WireguardNative,
        Backend::None,
    ];

    /// The flag value (`vxlan`, `host-gw`, `wireguard-native`, `none`).
    pub fn as_flag(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::WireguardNative => "wireguard-native",
            Backend::None => "none",
        }
    }

    /// The backend `Type` flannel itself uses in net-conf.json and in the
    /// `backend-type` annotation; `None` for [`Backend::None`].
    pub fn flannel_type(self) -> Option<&'static str> {
        match self {
            Backend::Vxlan => Some("vxlan"),
            Backend::HostGw => Some("host-gw"),
            Backend::WireguardNative => Some("wireguard"),
            Backend::None => None,
        }
    }

    /// Whether the network task runs at all for this backend.
    pub fn starts_network(self) -> bool {
        self != Backend::None
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_flag())
    }
}

/// A `--flannel-backend` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// `wireguard` (the script-driven backend k3s dropped in v1.26).
    #[error("The wireguard backend was deprecated and removed in k3s v1.26; please switch to wireguard-native (--flannel-backend=wireguard-native). Check the k3s docs for information about how to migrate")]
    WireguardRemoved,
    /// `ipsec` (the strongSwan backend k3s dropped in v1.27).
    #[error("The ipsec backend was deprecated and removed in k3s v1.27; please switch to wireguard-native (--flannel-backend=wireguard-native). Check the k3s docs for information about how to migrate")]
    IpsecRemoved,
    /// `vxlan=...`-style options, which k3s removed in v1.27.
    #[error("The additional options through flannel-backend ('{0}') were deprecated and removed in k3s v1.27; put backend options in a net-conf.json file and pass it with --flannel-conf")]
    OptionsRemoved(String),
    /// Anything else. The text is k3s's, so scripts that grep for it keep
    /// working.
    #[error("Cannot configure unknown flannel backend '{0}'")]
    Unknown(String),
}

impl FromStr for Backend {
    type Err = BackendError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "vxlan" => Ok(Backend::Vxlan),
            "host-gw" => Ok(Backend::HostGw),
            "wireguard-native" => Ok(Backend::WireguardNative),
            "none" => Ok(Backend::None),
            "wireguard" => Err(BackendError::WireguardRemoved),
            "ipsec" => Err(BackendError::IpsecRemoved),
            other if other.contains('=') => Err(BackendError::OptionsRemoved(other.to_string())),
            other => Err(BackendError::Unknown(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_values_round_trip() {
        for backend in Backend::ALL {
            assert_eq!(backend.as_flag().parse::<Backend>(), Ok(backend));
        }
        assert_eq!(Backend::default(), Backend::Vxlan);
    }

    #[test]
    fn rejected_values_say_what_to_do() {
        let cases: &[(&str, &str)] = &[
            ("wireguard", "switch to wireguard-native"),
            ("ipsec", "switch to wireguard-native"),
            ("vxlan=VNI=4", "--flannel-conf"),
            ("foo", "Cannot configure unknown flannel backend 'foo'"),
            ("", "Cannot configure unknown flannel backend ''"),
            // Flag values are case-sensitive in k3s too.
            ("VXLAN", "Cannot configure unknown flannel backend 'VXLAN'"),
        ];
        for (input, wanted) in cases {
            let message = input.parse::<Backend>().unwrap_err().to_string();
            assert!(message.contains(wanted), "{input:?} gave {message:?}");
        }
    }

    #[test]
    fn flannel_types_match_upstream_names() {
        assert_eq!(Backend::Vxlan.flannel_type(), Some("vxlan"));
        assert_eq!(Backend::HostGw.flannel_type(), Some("host-gw"));
        assert_eq!(Backend::WireguardNative.flannel_type(), Some("wireguard"));
        assert_eq!(Backend::None.flannel_type(), None);
        assert!(!Backend::None.starts_network());
    }
}
