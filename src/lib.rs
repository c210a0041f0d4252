//! flannel's pod network as a library: a Kubernetes distribution links this
//! crate, builds a [`Config`] from its `--flannel-*` flags and calls
//! [`spawn`] once its API server answers, the way k3s runs flannel as a
//! goroutine inside its own binary.
//!
//! The task reads the Node's Pod CIDR from the Kubernetes API, writes
//! net-conf.json, the CNI conflist and subnet.env, and programs the backend's
//! data path (vxlan, host-gw, wireguard-native). Files, annotations and
//! packets are those of upstream flannel and k3s; the differences are listed
//! in `vendor-notes/`.
//!
//! ```no_run
//! # #[cfg(feature = "network")]
//! # async fn host(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use flannel_embed::{Backend, Config};
//!
//! let config = Config::builder("node-a")
//!     .backend("vxlan".parse::<Backend>()?)
//!     .cluster_cidr("10.42.0.0/16")
//!     .build()?;
//! let handle = flannel_embed::spawn(client, config);
//! handle.ready().await?;
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! | feature | default | adds |
//! | --- | --- | --- |
//! | `network` | yes | the network task: [`spawn`], `Handle`, the Node watch, the backends, netlink, masquerade rules (kube, k8s-openapi, tokio without a runtime flavour, rtnetlink) |
//! | `cli` | no | `cli::FlannelFlags`, k3s's `--flannel-*` flags for a clap command line (clap) |
//! | `cni-plugin` | no | `cni::main()`, the `flannel` CNI plugin's entry point for a binary (tracing-subscriber for its stderr log) |
//! | `agent` | no | this repository's `flannel-agent` binary; it picks k8s-openapi `v1_33`, so a host crate never enables it |
//!
//! None of them enables a k8s-openapi version feature except `agent`: the
//! host's binary picks the Kubernetes API version, as kube-rs asks of
//! binaries. `vendor-notes/embedding.md` shows a host crate.

#![warn(missing_docs)]

#[cfg(feature = "network")]
pub mod backend;
#[cfg(feature = "network")]
mod backoff;
#[cfg(feature = "cli")]
pub mod cli;
pub mod cni;
pub mod config;
pub mod files;
#[cfg(feature = "network")]
pub mod kube_subnet;
mod mac;
#[cfg(feature = "network")]
pub mod masq;
#[cfg(feature = "network")]
pub mod netlink;
#[cfg(feature = "network")]
mod task;
#[cfg(feature = "network")]
pub mod wireguard;

pub use config::{Backend, Config, ConfigBuilder};
#[cfg(feature = "network")]
pub use kube_subnet::Lease;
pub use mac::{MacAddr, MacParseError};
#[cfg(feature = "network")]
#[doc(hidden)]
pub use task::Fault;
#[cfg(feature = "network")]
pub use task::{spawn, Error, Failure, Handle, Health, Part, Phase, Problem, Status, Step};

/// The decoders of outside data that are not public API otherwise, for
/// the fuzz targets in `integration/fuzz` (not stable).
#[doc(hidden)]
pub mod fuzz {
    pub use crate::cni::invocation_until_exec as cni_invocation;
    #[cfg(feature = "network")]
    pub use crate::netlink::decode_datagram as netlink_datagram;
}

// The README's embedding example is compiled as a doc test.
#[cfg(all(doctest, feature = "network"))]
#[doc = include_str!("../README.md")]
mod readme {}
