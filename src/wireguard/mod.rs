//! WireGuard devices: the vocabulary (a device's peers as the
//! implementation reports them, and the changes we ask for), the node's
//! keys, and two drivers that speak to a device: the kernel's generic
//! netlink `wireguard` family ([`genl`]) and the cross-platform userspace
//! API socket of wireguard-go and boringtun ([`uapi`]). [`userspace`]
//! starts and watches a userspace implementation when the kernel has no
//! WireGuard.
//!
//! What the peers should be is decided in `backend::wireguard` (pure);
//! this module only reads and writes.

pub mod genl;
pub mod keys;
pub mod uapi;
pub mod userspace;

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;

pub use keys::{Key, KeyError, PrivateKey};

pub use crate::config::{
    WireguardImplementation as Implementation, WireguardSettings, DEFAULT_SOCKET_DIR,
    DEFAULT_USERSPACE_PROGRAM,
};

/// `<dir>/<name>.sock`.
pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// One peer as a device holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    /// Its public key.
    pub public_key: Key,
    /// The pre-shared key (`None`: none).
    pub preshared_key: Option<Key>,
    /// Where packets go (`None`: not known yet).
    pub endpoint: Option<SocketAddr>,
    /// Persistent keepalive in seconds (0: off).
    pub keepalive: u16,
    /// What the peer may send and what is routed to it.
    pub allowed_ips: BTreeSet<IpNetwork>,
    /// Seconds since the epoch of the last handshake (0: never).
    pub last_handshake: u64,
}

/// A device as the implementation reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// Its public key (`None`: no private key set).
    pub public_key: Option<Key>,
    /// The UDP port it listens on (0: none yet).
    pub listen_port: u16,
    /// Its peers, by public key order.
    pub peers: Vec<PeerState>,
}

/// A peer as we want it (every field is written, so nothing of an older
/// configuration survives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its public key.
    pub public_key: Key,
    /// The pre-shared key (`None`: cleared).
    pub preshared_key: Option<Key>,
    /// Where to send.
    pub endpoint: SocketAddr,
    /// Persistent keepalive in seconds (0: off).
    pub keepalive: u16,
    /// Exactly these (replacing whatever the peer had).
    pub allowed_ips: BTreeSet<IpNetwork>,
}

/// One change to a device's peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// Add the peer, or set every field of it.
    Set(PeerConfig),
    /// Remove the peer.
    Remove(Key),
}

impl fmt::Display for PeerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerChange::Set(peer) => {
                let allowed: Vec<String> =
                    peer.allowed_ips.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "set peer {} endpoint {} allowed-ips {}",
                    peer.public_key,
                    peer.endpoint,
                    allowed.join(",")
                )
            }
            PeerChange::Remove(key) => write!(f, "remove peer {key}"),
        }
    }
}

/// What to write to a device in one go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceUpdate {
    /// Set the private key (it differs from the device's). Never printed.
    pub private_key: Option<PrivateKey>,
    /// Set the listen port (it differs).
    pub listen_port: Option<u16>,
    /// Peer changes, removals first.
    pub peers: Vec<PeerChange>,
}

impl DeviceUpdate {
    /// Whether nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.private_key.is_none() && self.listen_port.is_none() && self.peers.is_empty()
    }
}

/// Why a device could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    /// The kernel has no WireGuard (no generic netlink family, or the link
    /// kind is unknown).
    #[error("the kernel has no WireGuard support ({0}); load the wireguard module, or let flannel-embed start a userspace implementation (wireguard implementation auto or userspace)")]
    NoKernelSupport(String),
    /// A request failed with an errno.
    #[error("{what} on {device} failed: {}{}", std::io::Error::from_raw_os_error(*.errno), .message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Errno {
        /// The request.
        what: &'static str,
        /// The device.
        device: String,
        /// errno (positive).
        errno: i32,
        /// The kernel's or implementation's message, if any.
        message: Option<String>,
    },
    /// The answer could not be understood, or did not come in time.
    #[error("{what} on {device}: {problem}")]
    Protocol {
        /// The request.
        what: &'static str,
        /// The device.
        device: String,
        /// What went wrong.
        problem: String,
    },
    /// The userspace implementation could not be started or stopped
    /// answering.
    #[error("userspace WireGuard for {device}: {problem}")]
    Userspace {
        /// The device.
        device: String,
        /// What went wrong.
        problem: String,
    },
}

impl WgError {
    /// errno, when the cause has one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            WgError::Errno { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// A way to read and write one device's WireGuard configuration.
#[derive(Debug)]
pub enum Driver {
    /// The kernel, over generic netlink.
    Kernel(genl::GenlSocket),
    /// A userspace implementation, over its control socket.
    Userspace(uapi::UapiClient),
}

impl Driver {
    /// The device's configuration and peers.
    pub async fn get(&self, device: &str) -> Result<DeviceState, WgError> {
        match self {
            Driver::Kernel(socket) => socket.get_device(device).await,
            Driver::Userspace(client) => client.get().await,
        }
    }

    /// Applies `update` to the device.
    pub async fn set(&self, device: &str, update: &DeviceUpdate) -> Result<(), WgError> {
        match self {
            Driver::Kernel(socket) => socket.set_device(device, update).await,
            Driver::Userspace(client) => client.set(update).await,
        }
    }

    /// `kernel` or `userspace`, for logs and Status.
    pub fn kind(&self) -> &'static str {
        match self {
            Driver::Kernel(_) => "kernel",
            Driver::Userspace(_) => "userspace",
        }
    }
}
