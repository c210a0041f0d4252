//! The three files the network task leaves for the rest of the node:
//! net-conf.json, the CNI conflist and subnet.env. Every write is atomic
//! (temporary file in the same directory, fsync, rename, fsync of the
//! directory), so a reader never sees half a file and a failed write leaves
//! the previous file as it was.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnetwork::{Ipv4Network, Ipv6Network};

/// Mode of the directories we create.
pub const DIR_MODE: u32 = 0o755;
/// Mode of the files we write.
pub const FILE_MODE: u32 = 0o644;

/// k3s's CNI conflist (`pkg/agent/flannel/setup_linux.go`), byte for byte.
pub const K3S_CNI_CONFLIST: &str = r#"{
  "name":"cbr0",
  "cniVersion":"1.0.0",
  "plugins":[
    {
      "type":"flannel",
      "delegate":{
        "hairpinMode":true,
        "forceAddress":true,
        "isDefaultGateway":true
      }
    },
    {
      "type":"portmap",
      "capabilities":{
        "portMappings":true
      }
    },
    {
      "type":"bandwidth",
      "capabilities":{
        "bandwidth":true
      }
    }
  ]
}
"#;

/// A file could not be read or written; names the path and the step.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// An I/O step failed.
    #[error("{path}: could not {step}: {source}")]
    Io {
        /// The file the operation was about.
        path: PathBuf,
        /// What we were doing (`create directory /x`, `rename into place`, ...).
        step: String,
        /// The operating system's answer.
        #[source]
        source: io::Error,
    },
    /// subnet.env content that the CNI plugin could not use.
    #[error("{path}: {problem}")]
    SubnetEnv {
        /// The subnet file.
        path: PathBuf,
        /// What is wrong, with the line number where there is one.
        problem: String,
    },
}

fn io_error(path: &Path, step: impl Into<String>, source: io::Error) -> FileError {
    FileError::Io {
        path: path.to_path_buf(),
        step: step.into(),
        source,
    }
}

/// Writes `contents` to `path` atomically, creating missing parent
/// directories with mode 0755; the file gets mode 0644. When the file
/// already holds exactly these bytes nothing is written and `Ok(false)` is
/// returned, so periodic rewrites cost no disk writes and wake no watchers.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("run/flannel/subnet.env");
/// assert!(flannel_embed::files::write_atomic(&path, b"FLANNEL_MTU=1450\n")?);
/// assert!(!flannel_embed::files::write_atomic(&path, b"FLANNEL_MTU=1450\n")?);
/// assert_eq!(std::fs::read(&path)?, b"FLANNEL_MTU=1450\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<bool, FileError> {
    if fs::read(path).is_ok_and(|existing| existing == contents) {
        return Ok(false);
    }
    write_atomic_with(path, FILE_MODE, |file| file.write_all(contents))?;
    Ok(true)
}

/// The mechanism behind [`write_atomic`] (and install-cni's plugin
/// copies): `fill` writes the content into the temporary file, which gets
/// `mode`. Kept separate so tests can make the write fail half way
/// through. The temporary file is `.<name>.<pid>.<n>.tmp` in the same
/// directory.
pub(crate) fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), FileError> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);

    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io_error(
            path,
            "write it",
            io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file"),
        ));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| io_error(path, format!("create directory {}", dir.display()), e))?;

    let temp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
    };
    // This process never reuses a name, so one that exists was left by an
    // earlier process with the same pid (a container's pid 1 killed
    // between create and rename): stale, and in the way of every run.
    let mut file = match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&temp);
            create()
        }
        other => other,
    }
    // The temporary file's name changes with every attempt; the step
    // does not, so a lasting failure reads the same each time.
    .map_err(|e| {
        io_error(
            path,
            format!("create a temporary file in {}", dir.display()),
            e,
        )
    })?;

    let written = (|| {
        // The umask may have narrowed the mode given to open().
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(|e| io_error(path, format!("set mode {mode:o} on the temporary file"), e))?;
        fill(&mut file).map_err(|e| io_error(path, "write the temporary file", e))?;
        file.sync_all()
            .map_err(|e| io_error(path, "fsync the temporary file", e))?;
        // Closed before it takes the name: executing a file that is open
        // for writing fails with ETXTBSY (an installed CNI plugin).
        drop(file);
        fs::rename(&temp, path)
            .map_err(|e| io_error(path, "rename the temporary file into place", e))
    })();
    if written.is_err() {
        // Best effort: the error that matters is the one above.
        let _ = fs::remove_file(&temp);
        return written;
    }
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(path, format!("fsync directory {}", dir.display()), e))
}

fn read_to_string(path: &Path) -> Result<String, FileError> {
    fs::read_to_string(path).map_err(|e| io_error(path, "read it", e))
}

/// Writes the CNI conflist: k3s's content, or the bytes of
/// `override_source` (`--flannel-cni-conf`) copied verbatim. Returns
/// whether the file changed.
pub fn write_cni_conflist(
    target: &Path,
    override_source: Option<&Path>,
) -> Result<bool, FileError> {
    match override_source {
        None => write_atomic(target, K3S_CNI_CONFLIST.as_bytes()),
        Some(source) => {
            let bytes = fs::read(source)
                .map_err(|e| io_error(source, "read it (--flannel-cni-conf)", e))?;
            write_atomic(target, &bytes)
        }
    }
}

/// Reads a net-conf.json file (for `--flannel-conf`).
pub fn read_netconf(path: &Path) -> Result<String, FileError> {
    read_to_string(path)
}

/// subnet.env: what the `flannel` CNI plugin needs to know about this node.
///
/// `subnet` / `ipv6_subnet` hold the first host address of the lease with the
/// lease's prefix (`10.42.0.1/24`), as flanneld writes them.
///
/// ```
/// use flannel_embed::files::SubnetEnv;
///
/// let env = SubnetEnv::for_lease(
///     Some(("10.42.0.0/16".parse()?, "10.42.0.0/24".parse()?)),
///     None,
///     1450,
///     true,
/// );
/// assert_eq!(
///     env.render(),
///     "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK` (comma-separated when there are several).
    pub networks: Vec<Ipv4Network>,
    /// `FLANNEL_SUBNET`.
    pub subnet: Option<Ipv4Network>,
    /// `FLANNEL_IPV6_NETWORK`.
    pub ipv6_networks: Vec<Ipv6Network>,
    /// `FLANNEL_IPV6_SUBNET`.
    pub ipv6_subnet: Option<Ipv6Network>,
    /// `FLANNEL_MTU`: the MTU pods get (the backend device's MTU).
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: whether the agent masquerades (so the bridge
    /// plugin must not).
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// subnet.env for a node whose lease is `ipv4` / `ipv6` (each as
    /// `(cluster network, lease)`).
    pub fn for_lease(
        ipv4: Option<(Ipv4Network, Ipv4Network)>,
        ipv6: Option<(Ipv6Network, Ipv6Network)>,
        mtu: u32,
        ipmasq: bool,
    ) -> SubnetEnv {
        SubnetEnv {
            networks: ipv4.iter().map(|(network, _)| *network).collect(),
            subnet: ipv4.map(|(_, lease)| first_host_v4(lease)),
            ipv6_networks: ipv6.iter().map(|(network, _)| *network).collect(),
            ipv6_subnet: ipv6.map(|(_, lease)| first_host_v6(lease)),
            mtu,
            ipmasq,
        }
    }

    /// The file's bytes, in flanneld's key order.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.networks.is_empty() {
            out += &format!("FLANNEL_NETWORK={}\n", join(&self.networks));
        }
        if let Some(subnet) = self.subnet {
            out += &format!("FLANNEL_SUBNET={subnet}\n");
        }
        if !self.ipv6_networks.is_empty() {
            out += &format!("FLANNEL_IPV6_NETWORK={}\n", join(&self.ipv6_networks));
        }
        if let Some(subnet) = self.ipv6_subnet {
            out += &format!("FLANNEL_IPV6_SUBNET={subnet}\n");
        }
        out += &format!("FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n", self.mtu, self.ipmasq);
        out
    }

    /// Writes the file atomically; returns whether it changed.
    pub fn write(&self, path: &Path) -> Result<bool, FileError> {
        write_atomic(path, self.render().as_bytes())
    }

    /// Reads and parses a subnet file.
    pub fn read(path: &Path) -> Result<SubnetEnv, FileError> {
        let text = read_to_string(path)?;
        SubnetEnv::parse(&text).map_err(|problem| FileError::SubnetEnv {
            path: path.to_path_buf(),
            problem,
        })
    }

    /// Parses subnet.env text as the flannel CNI plugin does: `KEY=value`
    /// lines, unknown keys ignored; FLANNEL_MTU, FLANNEL_IPMASQ and a subnet
    /// of at least one family are required.
    pub fn parse(text: &str) -> Result<SubnetEnv, String> {
        let mut env = SubnetEnv {
            networks: Vec::new(),
            subnet: None,
            ipv6_networks: Vec::new(),
            ipv6_subnet: None,
            mtu: 0,
            ipmasq: false,
        };
        let (mut mtu, mut ipmasq) = (None, None);
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let lineno = index + 1;
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line {lineno}: '{line}' is not KEY=value"));
            };
            let bad = |what: &str| format!("line {lineno}: {key}='{value}' is not {what}");
            match key {
                "FLANNEL_NETWORK" => {
                    env.networks = parse_list(value).map_err(|_| bad("a list of IPv4 CIDRs"))?
                }
                "FLANNEL_SUBNET" => {
                    env.subnet = Some(parse_cidr(value).map_err(|_| bad("an IPv4 CIDR"))?)
                }
                "FLANNEL_IPV6_NETWORK" => {
                    env.ipv6_networks =
                        parse_list(value).map_err(|_| bad("a list of IPv6 CIDRs"))?
                }
                "FLANNEL_IPV6_SUBNET" => {
                    env.ipv6_subnet = Some(parse_cidr(value).map_err(|_| bad("an IPv6 CIDR"))?)
                }
                "FLANNEL_MTU" => mtu = Some(value.parse::<u32>().map_err(|_| bad("an MTU"))?),
                "FLANNEL_IPMASQ" => {
                    ipmasq = Some(value.parse::<bool>().map_err(|_| bad("true or false"))?)
                }
                _ => {}
            }
        }
        env.mtu = mtu.ok_or("FLANNEL_MTU is missing")?;
        env.ipmasq = ipmasq.ok_or("FLANNEL_IPMASQ is missing")?;
        if env.subnet.is_none() && env.ipv6_subnet.is_none() {
            return Err("neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET is set".into());
        }
        if env.subnet.is_some() && env.networks.is_empty() {
            return Err("FLANNEL_SUBNET is set but FLANNEL_NETWORK is missing".into());
        }
        if env.ipv6_subnet.is_some() && env.ipv6_networks.is_empty() {
            return Err("FLANNEL_IPV6_SUBNET is set but FLANNEL_IPV6_NETWORK is missing".into());
        }
        Ok(env)
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_list<T: std::str::FromStr>(value: &str) -> Result<Vec<T>, ()> {
    value
        .split(',')
        .map(|part| parse_cidr(part.trim()))
        .collect()
}

/// A CIDR with an explicit prefix, as Go's net.ParseCIDR demands (ipnetwork
/// would read a bare address as a /32).
fn parse_cidr<T: std::str::FromStr>(value: &str) -> Result<T, ()> {
    if !value.contains('/') {
        return Err(());
    }
    value.parse().map_err(|_| ())
}

/// `10.42.0.0/24` → `10.42.0.1/24` (the address the bridge gets).
fn first_host_v4(lease: Ipv4Network) -> Ipv4Network {
    let host = u32::from(lease.network()).wrapping_add(1);
    Ipv4Network::new(host.into(), lease.prefix()).unwrap_or(lease)
}

fn first_host_v6(lease: Ipv6Network) -> Ipv6Network {
    let host = u128::from(lease.network()).wrapping_add(1);
    Ipv6Network::new(host.into(), lease.prefix()).unwrap_or(lease)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The seed article's `cat /run/flannel/subnet.env`, byte for byte.
    const SEED_SUBNET_ENV: &str =
        "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    fn v4(text: &str) -> Ipv4Network {
        text.parse().unwrap()
    }
    fn v6(text: &str) -> Ipv6Network {
        text.parse().unwrap()
    }

    #[test]
    fn subnet_env_is_the_seed_articles_four_lines() {
        let env = SubnetEnv::for_lease(
            Some((v4("10.42.0.0/16"), v4("10.42.0.0/24"))),
            None,
            1450,
            true,
        );
        assert_eq!(env.render(), SEED_SUBNET_ENV);
        // The second node of the article differs only in FLANNEL_SUBNET.
        let node2 = SubnetEnv::for_lease(
            Some((v4("10.42.0.0/16"), v4("10.42.1.0/24"))),
            None,
            1450,
            true,
        );
        assert_eq!(
            node2.render(),
            SEED_SUBNET_ENV.replace("10.42.0.1/24", "10.42.1.1/24")
        );
    }

    #[test]
    fn subnet_env_dual_stack_and_ipv6_only() {
        let dual = SubnetEnv::for_lease(
            Some((v4("10.42.0.0/16"), v4("10.42.2.0/24"))),
            Some((v6("fd00:42::/56"), v6("fd00:42:0:2::/64"))),
            1450,
            true,
        );
        assert_eq!(
            dual.render(),
            "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.2.1/24\nFLANNEL_IPV6_NETWORK=fd00:42::/56\nFLANNEL_IPV6_SUBNET=fd00:42:0:2::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        let v6_only = SubnetEnv::for_lease(
            None,
            Some((v6("fc00::/48"), v6("fc00:0:0:1::/64"))),
            1430,
            false,
        );
        assert_eq!(
            v6_only.render(),
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"
        );
        for env in [dual, v6_only] {
            assert_eq!(SubnetEnv::parse(&env.render()).unwrap(), env);
        }
    }

    #[test]
    fn subnet_env_reader_takes_upstream_files() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\nSOMETHING_ELSE=1\n",
        )
        .unwrap();
        assert_eq!(env.networks, vec![v4("10.1.0.0/16"), v4("192.168.0.0/16")]);
        assert_eq!(env.subnet, Some(v4("10.1.17.1/24")));
        assert_eq!((env.mtu, env.ipmasq), (1472, true));
    }

    #[test]
    fn subnet_env_reader_names_the_problem() {
        let cases = [
            (
                "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_IPMASQ=true\n",
                "FLANNEL_MTU is missing",
            ),
            (
                "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\n",
                "FLANNEL_IPMASQ is missing",
            ),
            (
                "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
                "neither FLANNEL_SUBNET",
            ),
            (
                "FLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
                "FLANNEL_NETWORK is missing",
            ),
            (
                "FLANNEL_MTU=big\n",
                "line 1: FLANNEL_MTU='big' is not an MTU",
            ),
            (
                "\nFLANNEL_SUBNET=10.42.0.1\n",
                "line 2: FLANNEL_SUBNET='10.42.0.1' is not an IPv4 CIDR",
            ),
            ("FLANNEL_IPMASQ=yes\n", "is not true or false"),
            ("garbage\n", "line 1: 'garbage' is not KEY=value"),
        ];
        for (text, wanted) in cases {
            let problem = SubnetEnv::parse(text).unwrap_err();
            assert!(problem.contains(wanted), "{text:?} gave {problem:?}");
        }
    }

    #[test]
    fn conflist_is_k3s_content() {
        let value: serde_json::Value = serde_json::from_str(K3S_CNI_CONFLIST).unwrap();
        let spec: serde_json::Value = serde_json::from_str(
            r#"{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"forceAddress":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}},{"type":"bandwidth","capabilities":{"bandwidth":true}}]}"#,
        )
        .unwrap();
        assert_eq!(value, spec);
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("agent/etc/cni/net.d/10-flannel.conflist");
        assert!(write_cni_conflist(&target, None).unwrap());
        assert_eq!(fs::read_to_string(&target).unwrap(), K3S_CNI_CONFLIST);
    }

    #[test]
    fn conflist_override_is_copied_verbatim() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("mine.conflist");
        // Odd spacing and no trailing newline must survive untouched.
        let bytes = b"{ \"name\":\"mynet\",  \"cniVersion\":\"0.3.1\",\"plugins\":[{\"type\":\"flannel\"}]}";
        fs::write(&source, bytes).unwrap();
        let target = dir.path().join("net.d/10-flannel.conflist");
        write_cni_conflist(&target, Some(&source)).unwrap();
        assert_eq!(fs::read(&target).unwrap(), bytes);

        let missing = dir.path().join("absent.conflist");
        let message = write_cni_conflist(&target, Some(&missing))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("absent.conflist") && message.contains("--flannel-cni-conf"),
            "{message}"
        );
    }

    #[test]
    fn written_files_and_dirs_have_upstream_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        // A restrictive umask must not leak into the result.
        let old = unsafe { libc::umask(0o077) };
        let result = write_atomic(&path, SEED_SUBNET_ENV.as_bytes());
        unsafe { libc::umask(old) };
        result.unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, FILE_MODE);
        // Directories: 0755 under the usual umask.
        let path2 = dir.path().join("etc/flannel/net-conf.json");
        write_atomic(&path2, b"{}").unwrap();
        assert_eq!(
            fs::metadata(path2.parent().unwrap()).unwrap().mode() & 0o777,
            DIR_MODE
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), SEED_SUBNET_ENV);
    }

    fn leftover_temp_files(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn a_write_failing_half_way_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        write_atomic(&path, SEED_SUBNET_ENV.as_bytes()).unwrap();

        let err = write_atomic_with(&path, FILE_MODE, |file| {
            file.write_all(b"FLANNEL_NETWORK=10.99.")?;
            Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("subnet.env") && err.contains("disk full"),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), SEED_SUBNET_ENV);
        assert!(leftover_temp_files(dir.path()).is_empty());
    }

    #[test]
    fn a_rename_forced_to_fail_leaves_the_old_target() {
        // A directory with content cannot be replaced by a file: rename(2)
        // fails with EISDIR after the temporary file was written.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("10-flannel.conflist");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("keep"), b"old").unwrap();
        let err = write_atomic(&path, K3S_CNI_CONFLIST.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10-flannel.conflist") && err.contains("rename"),
            "{err}"
        );
        assert_eq!(fs::read(path.join("keep")).unwrap(), b"old");
        assert!(leftover_temp_files(dir.path()).is_empty());
    }

    #[test]
    fn a_read_only_directory_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        // Let `nobody` reach the directory under test; only its own mode
        // should stop the write.
        fs::set_permissions(dir.path(), Permissions::from_mode(0o755)).unwrap();
        let target_dir = dir.path().join("flannel");
        let path = target_dir.join("subnet.env");
        write_atomic(&path, SEED_SUBNET_ENV.as_bytes()).unwrap();
        fs::set_permissions(&target_dir, Permissions::from_mode(0o555)).unwrap();

        // Root ignores directory modes. Drop the file-system identity to
        // `nobody` on one thread only (setfsuid is per thread on Linux) so
        // the kernel enforces the mode as it would for an unprivileged agent.
        let new_env = SEED_SUBNET_ENV.replace("1450", "1400");
        let path_for_thread = path.clone();
        let result = std::thread::spawn(move || {
            let previous = unsafe { libc::setfsuid(65534) };
            let result = write_atomic(&path_for_thread, new_env.as_bytes());
            unsafe { libc::setfsuid(previous as libc::uid_t) };
            result.map_err(|e| e.to_string())
        })
        .join()
        .unwrap();
        fs::set_permissions(&target_dir, Permissions::from_mode(0o755)).unwrap();

        let err = result.unwrap_err();
        assert!(
            err.contains("subnet.env")
                && err.contains("create a temporary file")
                && err.contains("Permission denied"),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), SEED_SUBNET_ENV);
    }

    /// A container's pid 1 killed between create and rename leaves
    /// `.<name>.1.0.tmp`; the next pid 1 makes the same name first.
    #[test]
    fn a_temporary_file_left_by_an_earlier_process_is_not_in_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("10-flannel.conflist");
        let stale = dir.path().join(format!(
            ".10-flannel.conflist.{}.{}.tmp",
            std::process::id(),
            0
        ));
        let mut last_error = None;
        // The sequence number is per process and shared by the tests, so
        // plant every name the next writes could take.
        for seq in 0..10_000u64 {
            let name = dir.path().join(format!(
                ".10-flannel.conflist.{}.{seq}.tmp",
                std::process::id()
            ));
            fs::write(&name, b"half").unwrap();
        }
        assert!(stale.exists());
        for _ in 0..3 {
            if let Err(e) = write_atomic(&path, b"whole") {
                last_error = Some(e.to_string());
            }
        }
        assert_eq!(last_error, None);
        assert_eq!(fs::read(&path).unwrap(), b"whole");
    }
}
