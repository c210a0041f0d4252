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

#![warn(missing_docs)]

pub mod backend;
pub mod cli;
pub mod cni;
pub mod config;
pub mod files;
pub mod kube_subnet;
mod mac;
pub mod masq;
pub mod netlink;
mod task;

pub use config::{Backend, Config, ConfigBuilder};
pub use kube_subnet::Lease;
pub use mac::{MacAddr, MacParseError};
pub use task::{spawn, Error, Failure, Handle, Phase, Status, Step};

// The README's embedding example is compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
