//! k3s's `--flannel-*` flags as a clap argument group, so a host binary can
//! flatten them into its own command line and get a [`Config`] back.
//!
//! ```
//! use clap::Parser;
//! use flannel_embed::cli::FlannelFlags;
//!
//! #[derive(Parser)]
//! struct MyDistro {
//!     #[command(flatten)]
//!     flannel: FlannelFlags,
//! }
//!
//! let args = MyDistro::parse_from(["mydistro", "--node-name", "node-a", "--flannel-backend", "host-gw"]);
//! let config = args.flannel.to_config()?;
//! assert_eq!(config.backend(), flannel_embed::Backend::HostGw);
//! # Ok::<(), flannel_embed::config::ConfigError>(())
//! ```

use std::path::PathBuf;

use crate::config::{
    Backend, Config, ConfigBuilder, ConfigError, DEFAULT_CLUSTER_CIDR, DEFAULT_DATA_DIR,
    DEFAULT_SUBNET_FILE,
};

/// The flags k3s offers for its embedded flannel, with k3s's defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct FlannelFlags {
    /// Backend: vxlan, host-gw, wireguard-native or none (none: do not start
    /// the pod network).
    #[arg(long, value_name = "BACKEND", default_value = "vxlan")]
    pub flannel_backend: String,
    /// Interface for flannel traffic, by name or by one of its addresses
    /// (default: the interface of the default route).
    #[arg(long, value_name = "NAME|IP")]
    pub flannel_iface: Option<String>,
    /// Use this net-conf.json instead of writing one.
    #[arg(long, value_name = "FILE")]
    pub flannel_conf: Option<PathBuf>,
    /// Copy this CNI conflist verbatim instead of writing k3s's.
    #[arg(long, value_name = "FILE")]
    pub flannel_cni_conf: Option<PathBuf>,
    /// Write (and keep) the CNI conflist in this directory instead of
    /// DATA_DIR/agent/etc/cni/net.d, e.g. the host's /etc/cni/net.d when
    /// the agent runs as a DaemonSet. Not a k3s flag.
    #[arg(long, value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// Masquerade IPv6 pod traffic too (dual-stack / IPv6-only clusters).
    #[arg(long)]
    pub flannel_ipv6_masq: bool,
    /// Publish the node's external IP as flannel's public IP
    /// (public-ip-overwrite).
    #[arg(long)]
    pub flannel_external_ip: bool,
    /// Cluster pod network(s): one CIDR, or an IPv4 and an IPv6 one separated
    /// by a comma.
    #[arg(long, value_name = "CIDR[,CIDR]", default_value = DEFAULT_CLUSTER_CIDR)]
    pub cluster_cidr: String,
    /// Data directory; net-conf.json and the CNI conflist go under
    /// DIR/agent/etc.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// This node's name (default: the host name, lowercased, as k3s does).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Where to write subnet.env for the flannel CNI plugin.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_SUBNET_FILE)]
    pub subnet_file: PathBuf,
    /// Do all kernel work inside this network namespace (e.g.
    /// /var/run/netns/node1).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// wireguard-native: the node's private key file, generated when
    /// missing (default /run/flannel/wgkey, a new key at every boot: point
    /// it at persistent storage to keep it).
    #[arg(long, value_name = "FILE", env = "WIREGUARD_KEY_FILE")]
    pub wireguard_key_file: Option<PathBuf>,
    /// wireguard-native: kernel, userspace, or auto (the kernel's
    /// WireGuard when it has one, else start the userspace program).
    #[arg(long, value_name = "auto|kernel|userspace", default_value = "auto")]
    pub wireguard_implementation: String,
    /// wireguard-native: the userspace implementation, run as PROGRAM -f
    /// IFNAME (as wg-quick does).
    #[arg(
        long,
        value_name = "PROGRAM",
        env = "WG_QUICK_USERSPACE_IMPLEMENTATION",
        default_value = "wireguard-go"
    )]
    pub wireguard_userspace_program: PathBuf,
    /// Which iptables writes the masquerade rules: path (the `iptables` on
    /// PATH), nft, legacy, or detect (the variant the node's kubelet uses,
    /// as kube-flannel's image picks it). Not a k3s flag: an image that
    /// carries both variants needs it.
    #[arg(long, value_name = "path|nft|legacy|detect", default_value = "path")]
    pub iptables_mode: String,
}

impl FlannelFlags {
    /// The backend named by `--flannel-backend`.
    pub fn backend(&self) -> Result<Backend, ConfigError> {
        Ok(self.flannel_backend.parse()?)
    }

    /// Validates the flags and builds a [`Config`]. The backend is checked
    /// first, so a removed or unknown backend is the message a user sees.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        self.to_builder()?.build()
    }

    /// The flags as a [`ConfigBuilder`], for a host that sets more (such as
    /// [`ConfigBuilder::api_credential`]) before building.
    pub fn to_builder(&self) -> Result<ConfigBuilder, ConfigError> {
        let backend = self.backend()?;
        let node_name = match &self.node_name {
            Some(name) => name.clone(),
            None => hostname().ok_or_else(|| ConfigError::Invalid {
                setting: "--node-name",
                problem: "not given, and the host name could not be read; pass --node-name".into(),
            })?,
        };
        let mut builder = Config::builder(node_name)
            .backend(backend)
            .cluster_cidr(&self.cluster_cidr)
            .data_dir(&self.data_dir)
            .subnet_file(&self.subnet_file)
            .ipv6_masq(self.flannel_ipv6_masq)
            .external_ip(self.flannel_external_ip)
            .iptables_mode(self.iptables_mode.parse()?);
        if let Some(iface) = &self.flannel_iface {
            builder = builder.iface(iface);
        }
        if let Some(path) = &self.flannel_conf {
            builder = builder.netconf_override(path);
        }
        if let Some(path) = &self.flannel_cni_conf {
            builder = builder.cni_conf_override(path);
        }
        if let Some(dir) = &self.cni_conf_dir {
            builder = builder.cni_conf_dir(dir);
        }
        if let Some(path) = &self.netns {
            builder = builder.netns(path);
        }
        if let Some(path) = &self.wireguard_key_file {
            builder = builder.wireguard_key_file(path);
        }
        let implementation =
            self.wireguard_implementation
                .parse()
                .map_err(|problem| ConfigError::Invalid {
                    setting: "--wireguard-implementation",
                    problem,
                })?;
        Ok(builder
            .wireguard_implementation(implementation)
            .wireguard_userspace_program(&self.wireguard_userspace_program))
    }
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_lowercase();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Host {
        #[command(flatten)]
        flannel: FlannelFlags,
    }

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["host", "--node-name", "node-a"];
        argv.extend_from_slice(args);
        Host::try_parse_from(argv).unwrap().flannel.to_config()
    }

    fn config_error(args: &[&str]) -> String {
        config(args).unwrap_err().to_string()
    }

    #[test]
    fn defaults_match_k3s() {
        let config = config(&[]).unwrap();
        assert_eq!(config, Config::builder("node-a").build().unwrap());
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let config = config(&[
            "--flannel-backend=wireguard-native",
            "--flannel-iface=eth1",
            "--flannel-conf=/etc/nc.json",
            "--flannel-cni-conf=/etc/cni.conflist",
            "--flannel-ipv6-masq",
            "--flannel-external-ip",
            "--cluster-cidr=10.42.0.0/16,fd00:42::/56",
            "--data-dir=/data",
            "--subnet-file=/run/x/subnet.env",
            "--netns=/var/run/netns/n1",
            "--wireguard-key-file=/var/lib/x/wgkey",
            "--wireguard-implementation=userspace",
            "--wireguard-userspace-program=/opt/boringtun",
        ])
        .unwrap();
        let wg = config.wireguard();
        assert_eq!(
            wg.key_file.as_deref(),
            Some(std::path::Path::new("/var/lib/x/wgkey"))
        );
        assert_eq!(
            wg.implementation,
            crate::config::WireguardImplementation::Userspace
        );
        assert_eq!(wg.userspace_program, PathBuf::from("/opt/boringtun"));
        let error = config_error(&["--wireguard-implementation=module"]);
        assert!(
            error.contains("--wireguard-implementation")
                && error.contains("auto, kernel, userspace"),
            "{error}"
        );
        assert_eq!(config.backend(), Backend::WireguardNative);
        assert_eq!(config.iface().unwrap().to_string(), "eth1");
        assert_eq!(config.netconf_path(), PathBuf::from("/etc/nc.json"));
        assert_eq!(
            config.cni_conf_override(),
            Some(std::path::Path::new("/etc/cni.conflist"))
        );
        assert!(config.ipv6_masq() && config.external_ip());
        assert_eq!(
            config.cluster_cidrs().to_string(),
            "10.42.0.0/16,fd00:42::/56"
        );
        assert_eq!(
            config.cni_conflist_path(),
            PathBuf::from("/data/agent/etc/cni/net.d/10-flannel.conflist")
        );
        assert_eq!(
            config.subnet_file(),
            std::path::Path::new("/run/x/subnet.env")
        );
        assert_eq!(
            config.netns(),
            Some(std::path::Path::new("/var/run/netns/n1"))
        );
        let daemonset =
            super::tests::config(&["--data-dir=/data", "--cni-conf-dir=/etc/cni/net.d"]).unwrap();
        assert_eq!(
            daemonset.cni_conflist_path(),
            PathBuf::from("/etc/cni/net.d/10-flannel.conflist")
        );
        assert_eq!(
            daemonset.netconf_path(),
            PathBuf::from("/data/agent/etc/flannel/net-conf.json")
        );
        assert!(Config::builder("n")
            .cni_conf_dir("")
            .build()
            .unwrap_err()
            .to_string()
            .contains("--cni-conf-dir: must not be empty"));
    }

    #[test]
    fn the_backend_error_comes_first() {
        let error = config(&["--flannel-backend=foo", "--cluster-cidr=bad"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--flannel-backend: Cannot configure unknown flannel backend 'foo'"
        );
    }
}
