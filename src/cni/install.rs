//! `install-cni`: puts the CNI plugins and the conflist a node needs into
//! the host's CNI directories. This is the job of the DaemonSet's init
//! container (kube-flannel.yml's `install-cni-plugin` and `install-cni`),
//! done by one program so the image needs no shell and no `cp`.
//!
//! What it installs follows from the conflist: every plugin it names (and
//! the `ipam` types they name), the `flannel` entry's delegate (`bridge`
//! unless set) and IPAM (`host-local` unless set), and `loopback`, which
//! the container runtime runs itself. Our own `flannel` plugin is always
//! made identical to the image's copy. A delegate is installed only where
//! the node lacks a usable one: a kind node's own `host-local`, `loopback`
//! and `portmap` are kept as long as they answer `VERSION` with the
//! conflist's `cniVersion`; one that answers wrongly, fails or hangs is
//! replaced; one that cannot be run from this container at all (a link to
//! a path only the node has) is kept with a warning, never overwritten
//! unjudged. A delegate that an earlier run installed (recorded by size and
//! modification time in `<bin-dir>/.flannel-embed-installed.json`) is
//! updated to the image's copy, so a newer image brings newer delegates;
//! anything the node put there itself is never overwritten while it works.
//!
//! Every file is replaced atomically (a temporary file in the same
//! directory, fsync, rename, fsync of the directory): a runtime that
//! executes a plugin at that moment runs either the old or the new one,
//! never half a file, and a run that is killed half way leaves the
//! previous file in place. Plugins come before the conflist, so the runtime
//! never sees a configuration whose plugins are not there yet.
//!
//! ```
//! use flannel_embed::cni::install::required_plugins;
//!
//! let plugins = required_plugins(flannel_embed::files::K3S_CNI_CONFLIST.as_bytes())?;
//! assert_eq!(
//!     plugins.names().collect::<Vec<_>>(),
//!     ["bandwidth", "bridge", "flannel", "host-local", "loopback", "portmap"]
//! );
//! assert_eq!(plugins.cni_version(), "1.0.0");
//! # Ok::<(), String>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::files;

/// containerd's (and kind's and k3d's) plugin directory.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// containerd's (and kind's and k3d's) configuration directory.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// Where the flannel-embed image keeps the plugins it can install.
pub const DEFAULT_PLUGINS_DIR: &str = "/opt/flannel-embed/cni/bin";
/// The conflist's file name in the configuration directory (k3s's and
/// kube-flannel.yml's).
pub const CONFLIST_NAME: &str = "10-flannel.conflist";
/// Our own plugin: always installed from the image.
pub const OWN_PLUGIN: &str = "flannel";
/// The record of what earlier runs installed, in the plugin directory.
pub const RECORD_NAME: &str = ".flannel-embed-installed.json";
/// Mode of an installed plugin.
pub const PLUGIN_MODE: u32 = 0o755;
/// How long a plugin already on the node gets to answer `VERSION`.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `install-cni` could not do its job; each names the input or path.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The conflist cannot be used.
    #[error("the conflist {source_name}: {problem}")]
    Conflist {
        /// Where it came from (a path, or "built in").
        source_name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The conflist needs a plugin the node lacks (or cannot run) and the
    /// image does not carry.
    #[error(
        "the conflist needs plugin {plugin:?}: {node}, and {plugins_dir} has no copy to install"
    )]
    NotCarried {
        /// The plugin's name.
        plugin: String,
        /// What the node has (`the node has none in /opt/cni/bin`, or why
        /// its copy is unusable).
        node: String,
        /// The image's plugin directory.
        plugins_dir: PathBuf,
    },
    /// A file step failed (names the path and the step).
    #[error(transparent)]
    File(#[from] files::FileError),
}

fn io_error(path: &Path, step: impl Into<String>, source: io::Error) -> InstallError {
    InstallError::File(files::FileError::Io {
        path: path.to_path_buf(),
        step: step.into(),
        source,
    })
}

/// The plugins a conflist needs on the node, and the CNI version it
/// speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredPlugins {
    cni_version: String,
    names: BTreeSet<String>,
}

impl RequiredPlugins {
    /// The plugin names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }
    /// The conflist's `cniVersion`: a plugin already on the node must
    /// support it to be kept.
    pub fn cni_version(&self) -> &str {
        &self.cni_version
    }
}

/// Reads a conflist and lists every plugin the runtime and our `flannel`
/// plugin will execute for it. The error says what is wrong with the
/// document.
pub fn required_plugins(conflist: &[u8]) -> Result<RequiredPlugins, String> {
    let value: Value = serde_json::from_slice(conflist).map_err(|e| format!("is not JSON: {e}"))?;
    let cni_version = match value.get("cniVersion") {
        Some(Value::String(v)) if !v.is_empty() => v.clone(),
        _ => return Err("has no cniVersion (a string such as \"1.0.0\")".into()),
    };
    let Some(plugins) = value.get("plugins").and_then(Value::as_array) else {
        return Err(
            "has no \"plugins\" list (a single-plugin .conf is not a conflist; wrap it in {\"plugins\":[...]})"
                .into(),
        );
    };
    if plugins.is_empty() {
        return Err("has an empty \"plugins\" list".into());
    }
    let mut names = BTreeSet::new();
    // The runtime brings up the pod's loopback interface with it.
    names.insert("loopback".to_string());
    for (index, plugin) in plugins.iter().enumerate() {
        let what = format!("plugins[{index}]");
        let kind = plugin_type(plugin, &what)?;
        if kind == OWN_PLUGIN {
            // Our plugin runs its delegate (bridge unless set) with the
            // IPAM its own `ipam` names, host-local unless it names one.
            let delegate = match plugin.get("delegate") {
                Some(delegate) if delegate.get("type").is_some() => {
                    plugin_type(delegate, &format!("{what}.delegate"))?
                }
                _ => "bridge".to_string(),
            };
            names.insert(delegate);
            let ipam = match plugin.get("ipam") {
                Some(ipam) if ipam.get("type").is_some() => {
                    plugin_type(ipam, &format!("{what}.ipam"))?
                }
                _ => "host-local".to_string(),
            };
            names.insert(ipam);
        } else if let Some(ipam) = plugin.get("ipam") {
            names.insert(plugin_type(ipam, &format!("{what}.ipam"))?);
        }
        names.insert(kind);
    }
    Ok(RequiredPlugins { cni_version, names })
}

fn plugin_type(entry: &Value, what: &str) -> Result<String, String> {
    match entry.get("type") {
        Some(Value::String(name)) if valid_plugin_name(name) => Ok(name.clone()),
        Some(Value::String(name)) => Err(format!(
            "{what}.type {name:?} is not a plugin file name (empty, a path, or hidden)"
        )),
        Some(other) => Err(format!("{what}.type is {other}, not a string")),
        None => Err(format!("{what} has no \"type\"")),
    }
}

fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.starts_with('.')
}

/// What is at a plugin's place in the node's plugin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing (or not a regular file).
    Missing,
    /// A file with exactly the image's bytes.
    SameAsImage,
    /// A file an earlier run installed (recorded), now different from the
    /// image's copy: an older image's.
    InstalledEarlier,
    /// The node's own file, and what asking it `VERSION` showed.
    NodeOwn(Probe),
}

/// What a plugin already on the node answered to `VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// It lists the conflist's `cniVersion`.
    Works,
    /// It ran, and cannot serve the conflist (the reason).
    Unsuitable(String),
    /// It could not be run from this container (a symbolic link to a
    /// path only the node has, a dynamically linked program whose loader
    /// is elsewhere): whether it works on the node is not known here.
    Unknown(String),
}

/// What to do with one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Copy the image's plugin in: the node has none.
    Install,
    /// Nothing to do: the node has the image's copy.
    UpToDate,
    /// Replace the file with the image's copy, for this reason.
    Replace(String),
    /// Keep the node's own file, for this reason.
    Keep(String),
}

/// The decision for one plugin, from what the node has and whether the
/// image carries it (pure; `Err` names what is missing).
pub fn decide(plugin: &str, found: &Found, carried: bool) -> Result<Action, String> {
    let action = match found {
        Found::Missing => Action::Install,
        Found::SameAsImage => return Ok(Action::UpToDate),
        Found::InstalledEarlier => Action::Replace(
            "an earlier flannel-embed installed it; the image has another build".into(),
        ),
        Found::NodeOwn(_) if plugin == OWN_PLUGIN => {
            Action::Replace("our flannel plugin must match this agent".into())
        }
        Found::NodeOwn(Probe::Works) => {
            return Ok(Action::Keep("the node's own copy works".into()))
        }
        // Never overwrite what we cannot judge: say so instead.
        Found::NodeOwn(Probe::Unknown(why)) => {
            return Ok(Action::Keep(format!(
                "the node's own copy {why}; kept (check it on the node)"
            )))
        }
        Found::NodeOwn(Probe::Unsuitable(why)) => {
            Action::Replace(format!("the node's own copy {why}"))
        }
    };
    if carried {
        return Ok(action);
    }
    Err(match found {
        Found::NodeOwn(Probe::Unsuitable(why)) => format!("the node's own copy {why}"),
        Found::Missing => "the node has none".into(),
        // Ours or installed earlier but no longer in the image: keep it.
        _ => return Ok(Action::Keep("the image no longer carries it".into())),
    })
}

/// One run of `install-cni`: where plugins come from and go to, and the
/// conflist to write.
#[derive(Debug, Clone)]
pub struct Installer {
    /// The image's plugin directory ([`DEFAULT_PLUGINS_DIR`]).
    pub plugins_dir: PathBuf,
    /// The node's plugin directory ([`DEFAULT_BIN_DIR`]).
    pub bin_dir: PathBuf,
    /// The node's configuration directory ([`DEFAULT_CONF_DIR`]).
    pub conf_dir: PathBuf,
    /// The conflist's file name there ([`CONFLIST_NAME`]).
    pub conflist_name: String,
    /// The conflist's bytes, written verbatim.
    pub conflist: Vec<u8>,
    /// Where the conflist came from, for messages.
    pub conflist_source: String,
}

impl Installer {
    /// An installer with the default directories and k3s's conflist.
    pub fn new() -> Installer {
        Installer {
            plugins_dir: PathBuf::from(DEFAULT_PLUGINS_DIR),
            bin_dir: PathBuf::from(DEFAULT_BIN_DIR),
            conf_dir: PathBuf::from(DEFAULT_CONF_DIR),
            conflist_name: CONFLIST_NAME.to_string(),
            conflist: files::K3S_CNI_CONFLIST.as_bytes().to_vec(),
            conflist_source: "built in (k3s's)".to_string(),
        }
    }

    /// Uses the conflist in `path` (e.g. a ConfigMap's `cni-conf.json`),
    /// verbatim.
    pub fn conflist_from(mut self, path: &Path) -> Result<Installer, InstallError> {
        self.conflist = fs::read(path).map_err(|e| io_error(path, "read the conflist", e))?;
        self.conflist_source = path.display().to_string();
        Ok(self)
    }

    /// The path the conflist is written to.
    pub fn conflist_path(&self) -> PathBuf {
        self.conf_dir.join(&self.conflist_name)
    }

    /// Installs what the conflist needs, then the conflist. Nothing is
    /// written before every decision is made, so a conflist that needs a
    /// plugin nobody has changes nothing.
    pub fn run(&self) -> Result<Report, InstallError> {
        let conflist_problem = |problem: String| InstallError::Conflist {
            source_name: self.conflist_source.clone(),
            problem,
        };
        if self.conflist_name.contains('/') || self.conflist_name.starts_with('.') {
            return Err(conflist_problem(format!(
                "cannot be written as {:?}: not a plain file name",
                self.conflist_name
            )));
        }
        let required = required_plugins(&self.conflist).map_err(conflist_problem)?;
        remove_leftovers(&self.bin_dir, &required)?;
        let mut record = Record::load(&self.bin_dir);

        let mut plan = Vec::new();
        for plugin in required.names() {
            let source = self.plugins_dir.join(plugin);
            let carried = source.is_file();
            let found = self.find(plugin, &source, carried, &record, required.cni_version())?;
            let action =
                decide(plugin, &found, carried).map_err(|node| InstallError::NotCarried {
                    plugin: plugin.to_string(),
                    node: if found == Found::Missing {
                        format!("the node has none in {}", self.bin_dir.display())
                    } else {
                        node
                    },
                    plugins_dir: self.plugins_dir.clone(),
                })?;
            plan.push((plugin.to_string(), source, action));
        }

        for (plugin, source, action) in &plan {
            let target = self.bin_dir.join(plugin);
            match action {
                Action::Install | Action::Replace(_) => {
                    install_file(source, &target, PLUGIN_MODE)?;
                    // Recorded at once: a run that fails later still
                    // knows this file is ours.
                    record.note(plugin, &target);
                    record.save(&self.bin_dir)?;
                }
                Action::UpToDate => record.note(plugin, &target),
                Action::Keep(_) => record.forget(plugin),
            }
        }
        record.save(&self.bin_dir)?;
        let conflist_path = self.conflist_path();
        let conflist_changed = files::write_atomic(&conflist_path, &self.conflist)?;
        Ok(Report {
            plugins: plan
                .into_iter()
                .map(|(plugin, _, action)| (plugin, action))
                .collect(),
            conflist_path,
            conflist_changed,
        })
    }

    fn find(
        &self,
        plugin: &str,
        source: &Path,
        carried: bool,
        record: &Record,
        cni_version: &str,
    ) -> Result<Found, InstallError> {
        let target = self.bin_dir.join(plugin);
        let Ok(meta) = fs::symlink_metadata(&target) else {
            return Ok(Found::Missing);
        };
        if meta.file_type().is_symlink() {
            // The node's own (we only install files); judged through the
            // link when it leads somewhere this container sees.
            if plugin == OWN_PLUGIN {
                return Ok(Found::NodeOwn(Probe::Unsuitable(
                    "is a symbolic link, not this image's plugin".into(),
                )));
            }
            let link = fs::read_link(&target).unwrap_or_default();
            return Ok(Found::NodeOwn(match fs::metadata(&target) {
                Ok(_) => probe(&target, cni_version),
                Err(_) => Probe::Unknown(format!(
                    "is a symbolic link to {}, which this container cannot see",
                    link.display()
                )),
            }));
        }
        if !meta.is_file() {
            return Ok(Found::Missing);
        }
        if carried && same_bytes(source, &target)? {
            return Ok(Found::SameAsImage);
        }
        if record.installed(plugin, &meta) {
            return Ok(Found::InstalledEarlier);
        }
        if plugin == OWN_PLUGIN {
            return Ok(Found::NodeOwn(Probe::Unsuitable(
                "is not this image's".into(),
            )));
        }
        Ok(Found::NodeOwn(probe(&target, cni_version)))
    }
}

impl Default for Installer {
    fn default() -> Self {
        Installer::new()
    }
}

/// What [`Installer::run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Each plugin with what was done to it, sorted by name.
    pub plugins: Vec<(String, Action)>,
    /// Where the conflist is.
    pub conflist_path: PathBuf,
    /// Whether the conflist was written (false: it already had these
    /// bytes).
    pub conflist_changed: bool,
}

/// Asks the plugin at `path` for its supported versions (`CNI_COMMAND=
/// VERSION`, as libcni does before using a plugin) and checks that
/// `cni_version` is one of them, within [`PROBE_TIMEOUT`]. The plugin runs
/// in a process group of its own, which is killed afterwards: a wrapper
/// script's children cannot outlive the answer or hold it up.
pub fn probe(path: &Path, cni_version: &str) -> Probe {
    let mut child = match Command::new(path)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return Probe::Unknown(format!("cannot be run from this container ({e})")),
    };
    let group = child.id() as libc::pid_t;
    let kill_group = || {
        // SAFETY: kill(2) with a negative pid signals that process group
        // (ours, made above); it touches no memory.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading gives EPIPE; its answer is
        // what counts.
        let request = serde_json::json!({ "cniVersion": cni_version }).to_string();
        let _ = stdin.write_all(request.as_bytes());
    }
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(stdout) = stdout.as_mut() {
            // Bounded: a VERSION answer is a few hundred bytes.
            let _ = stdout.take(64 * 1024).read_to_end(&mut out);
        }
        out
    });
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => break None,
        }
    };
    // Whatever it left running goes, so the pipe closes and the reader
    // returns.
    kill_group();
    let _ = child.wait();
    let out = reader.join().unwrap_or_default();
    let Some(status) = status else {
        return Probe::Unsuitable(format!(
            "did not answer VERSION within {}s",
            PROBE_TIMEOUT.as_secs()
        ));
    };
    if !status.success() {
        return Probe::Unsuitable(format!("fails VERSION ({status})"));
    }
    let versions: Option<Vec<String>> = serde_json::from_slice::<Value>(&out).ok().and_then(|v| {
        v.get("supportedVersions")?.as_array().map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
    });
    match versions {
        None => Probe::Unsuitable("answers VERSION without supportedVersions".into()),
        Some(versions) if versions.iter().any(|v| v == cni_version) => Probe::Works,
        Some(versions) => Probe::Unsuitable(format!(
            "does not support cniVersion {cni_version} (it supports {})",
            versions.join(", ")
        )),
    }
}

fn same_bytes(a: &Path, b: &Path) -> Result<bool, InstallError> {
    let meta_a = fs::metadata(a).map_err(|e| io_error(a, "read it", e))?;
    let meta_b = fs::metadata(b).map_err(|e| io_error(b, "read it", e))?;
    if meta_a.len() != meta_b.len() {
        return Ok(false);
    }
    let bytes_a = fs::read(a).map_err(|e| io_error(a, "read it", e))?;
    let bytes_b = fs::read(b).map_err(|e| io_error(b, "read it", e))?;
    Ok(bytes_a == bytes_b)
}

/// Copies `source` to `target` atomically with `mode` (see
/// [`files::write_atomic_with`]).
fn install_file(source: &Path, target: &Path, mode: u32) -> Result<(), InstallError> {
    let mut from = File::open(source).map_err(|e| io_error(source, "open it", e))?;
    files::write_atomic_with(target, mode, |to| io::copy(&mut from, to).map(|_| ()))?;
    Ok(())
}

/// Removes the temporary files an interrupted run left in `dir` for
/// `plugins` (`.<plugin>.<pid>.<n>.tmp`, see [`files::write_atomic_with`]).
fn remove_leftovers(dir: &Path, plugins: &RequiredPlugins) -> Result<(), InstallError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(dir, "list it", e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.strip_suffix(".tmp").is_some_and(|stem| {
            plugins
                .names()
                .any(|plugin| stem.starts_with(&format!(".{plugin}.")))
        });
        if ours {
            let path = entry.path();
            fs::remove_file(&path)
                .map_err(|e| io_error(&path, "remove an interrupted run's temporary file", e))?;
        }
    }
    Ok(())
}

/// A file as this module left it: enough to tell whether it is still the
/// file an earlier run installed. Size and modification time survive a
/// remount (a kind node's restart changes device and inode numbers on
/// overlayfs); a copy or write by anyone else changes the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    size: u64,
    mtime_ns: i128,
}

impl Identity {
    fn of(meta: &fs::Metadata) -> Identity {
        Identity {
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// `<bin-dir>/.flannel-embed-installed.json`: the plugins earlier runs
/// installed. An unreadable or malformed record counts as empty: every
/// plugin is then the node's own, which is the safe reading.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    installed: BTreeMap<String, Identity>,
}

impl Record {
    fn load(bin_dir: &Path) -> Record {
        fs::read(bin_dir.join(RECORD_NAME))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn installed(&self, plugin: &str, meta: &fs::Metadata) -> bool {
        self.installed.get(plugin) == Some(&Identity::of(meta))
    }

    fn note(&mut self, plugin: &str, target: &Path) {
        match fs::metadata(target) {
            Ok(meta) => {
                self.installed
                    .insert(plugin.to_string(), Identity::of(&meta));
            }
            Err(_) => self.forget(plugin),
        }
    }

    fn forget(&mut self, plugin: &str) {
        self.installed.remove(plugin);
    }

    fn save(&self, bin_dir: &Path) -> Result<(), InstallError> {
        // Serializing plain maps of numbers cannot fail.
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        files::write_atomic(&bin_dir.join(RECORD_NAME), &bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;

    fn names(conflist: &str) -> Result<Vec<String>, String> {
        required_plugins(conflist.as_bytes()).map(|r| r.names().map(str::to_string).collect())
    }

    #[test]
    fn required_plugins_table() {
        let cases: &[(&str, Result<&[&str], &str>)] = &[
            (
                files::K3S_CNI_CONFLIST,
                Ok(&[
                    "bandwidth",
                    "bridge",
                    "flannel",
                    "host-local",
                    "loopback",
                    "portmap",
                ]),
            ),
            // kube-flannel.yml's: flannel + portmap.
            (
                r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
                Ok(&["bridge", "flannel", "host-local", "loopback", "portmap"]),
            ),
            // Another delegate and another IPAM for flannel.
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"flannel","delegate":{"type":"ptp"},"ipam":{"type":"static"}}]}"#,
                Ok(&["flannel", "loopback", "ptp", "static"]),
            ),
            // flannel's ipam without a type is host-local, as the plugin
            // reads it.
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"flannel","ipam":{"routes":[{"dst":"10.0.0.0/8"}]}}]}"#,
                Ok(&["bridge", "flannel", "host-local", "loopback"]),
            ),
            // A plugin's own ipam type counts.
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge","ipam":{"type":"host-local"}}]}"#,
                Ok(&["bridge", "host-local", "loopback"]),
            ),
            ("not json", Err("is not JSON")),
            (
                r#"{"plugins":[{"type":"flannel"}]}"#,
                Err("has no cniVersion"),
            ),
            (
                r#"{"cniVersion":"1.0.0","type":"flannel"}"#,
                Err("has no \"plugins\" list"),
            ),
            (
                r#"{"cniVersion":"1.0.0","plugins":[]}"#,
                Err("empty \"plugins\" list"),
            ),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"name":"x"}]}"#,
                Err("plugins[0] has no \"type\""),
            ),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"flannel"},{"type":"../../bin/sh"}]}"#,
                Err("plugins[1].type \"../../bin/sh\" is not a plugin file name"),
            ),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"flannel","delegate":{"type":7}}]}"#,
                Err("plugins[0].delegate.type is 7, not a string"),
            ),
        ];
        for (conflist, want) in cases {
            match (names(conflist), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{conflist}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{conflist}: {got}"),
                (got, want) => panic!("{conflist}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn decide_table() {
        let unusable = Found::NodeOwn(Probe::Unsuitable(
            "does not support cniVersion 1.0.0".into(),
        ));
        let unknown = Found::NodeOwn(Probe::Unknown("cannot be run from this container".into()));
        let cases: &[(&str, Found, bool, Result<&str, &str>)] = &[
            ("bridge", Found::Missing, true, Ok("install")),
            ("bridge", Found::Missing, false, Err("the node has none")),
            ("bridge", Found::SameAsImage, true, Ok("up to date")),
            ("bridge", Found::InstalledEarlier, true, Ok("replace")),
            ("bridge", Found::InstalledEarlier, false, Ok("keep")),
            ("portmap", Found::NodeOwn(Probe::Works), true, Ok("keep")),
            ("portmap", Found::NodeOwn(Probe::Works), false, Ok("keep")),
            // What cannot be judged here is never overwritten.
            ("portmap", unknown.clone(), true, Ok("keep")),
            ("portmap", unknown, false, Ok("keep")),
            ("portmap", unusable.clone(), true, Ok("replace")),
            (
                "portmap",
                unusable,
                false,
                Err("does not support cniVersion 1.0.0"),
            ),
            // Our plugin is always the image's, even when the node's runs.
            ("flannel", Found::NodeOwn(Probe::Works), true, Ok("replace")),
            ("flannel", Found::Missing, false, Err("the node has none")),
        ];
        for (plugin, found, carried, want) in cases {
            let got = decide(plugin, found, *carried);
            let word = got.as_ref().map(|a| match a {
                Action::Install => "install",
                Action::UpToDate => "up to date",
                Action::Replace(_) => "replace",
                Action::Keep(_) => "keep",
            });
            match (word, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{plugin} {found:?} {carried}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
                (got, want) => panic!("{plugin} {found:?} {carried}: {got:?} vs {want:?}"),
            }
        }
    }

    /// A fake plugin: a shell script answering VERSION.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o755)).unwrap();
        path
    }

    const ANSWERS_1_0: &str = r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]}'"#;

    #[test]
    fn probe_checks_the_version_answer() {
        let dir = tempfile::tempdir().unwrap();
        let good = script(dir.path(), "good", ANSWERS_1_0);
        assert_eq!(probe(&good, "1.0.0"), Probe::Works);
        let old = script(
            dir.path(),
            "old",
            r#"echo '{"cniVersion":"0.4.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0"]}'"#,
        );
        assert_eq!(
            probe(&old, "1.0.0"),
            Probe::Unsuitable(
                "does not support cniVersion 1.0.0 (it supports 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0)"
                    .into()
            )
        );
        let failing = script(dir.path(), "failing", "exit 3");
        assert!(
            matches!(probe(&failing, "1.0.0"), Probe::Unsuitable(why) if why.starts_with("fails VERSION"))
        );
        let garbage = script(dir.path(), "garbage", "echo hello");
        assert_eq!(
            probe(&garbage, "1.0.0"),
            Probe::Unsuitable("answers VERSION without supportedVersions".into())
        );
        // A dynamically linked plugin whose loader only the node has: exec
        // fails with ENOENT here, which says nothing about the node.
        let no_loader = dir.path().join("no-loader");
        fs::write(&no_loader, "#!/nonexistent/ld.so\n").unwrap();
        fs::set_permissions(&no_loader, Permissions::from_mode(0o755)).unwrap();
        assert!(
            matches!(probe(&no_loader, "1.0.0"), Probe::Unknown(why) if why.starts_with("cannot be run from this container"))
        );
    }

    /// A wrapper that runs the real program without `exec`, and never
    /// answers: given up on in time, its child killed with it.
    #[test]
    fn a_hanging_plugin_and_its_children_are_given_up_on() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let hang = script(
            dir.path(),
            "hang",
            &format!("sleep 3600 & echo $! > {}\nwait", pidfile.display()),
        );
        let started = Instant::now();
        assert_eq!(
            probe(&hang, "1.0.0"),
            Probe::Unsuitable("did not answer VERSION within 5s".into())
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        let child = fs::read_to_string(&pidfile).unwrap();
        let stat = fs::read_to_string(format!("/proc/{}/stat", child.trim())).unwrap_or_default();
        // Gone, or a zombie waiting for a parent that is gone too.
        assert!(stat.is_empty() || stat.contains(") Z "), "{stat}");
        // A wrapper that answers, leaving a child behind, does not hold
        // the answer up.
        let leaves = script(
            dir.path(),
            "leaves",
            &format!("sleep 3600 &\n{ANSWERS_1_0}"),
        );
        let started = Instant::now();
        assert_eq!(probe(&leaves, "1.0.0"), Probe::Works);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    struct Dirs {
        _root: tempfile::TempDir,
        image: PathBuf,
        bin: PathBuf,
        conf: PathBuf,
    }

    fn dirs() -> Dirs {
        let root = tempfile::tempdir().unwrap();
        let image = root.path().join("image");
        fs::create_dir_all(&image).unwrap();
        // The image carries what k3s's conflist needs.
        let needed = required_plugins(files::K3S_CNI_CONFLIST.as_bytes()).unwrap();
        for plugin in needed.names() {
            script(&image, plugin, &format!("# image {plugin}\n{ANSWERS_1_0}"));
        }
        Dirs {
            image,
            bin: root.path().join("host/opt/cni/bin"),
            conf: root.path().join("host/etc/cni/net.d"),
            _root: root,
        }
    }

    fn installer(d: &Dirs) -> Installer {
        Installer {
            plugins_dir: d.image.clone(),
            bin_dir: d.bin.clone(),
            conf_dir: d.conf.clone(),
            ..Installer::new()
        }
    }

    /// What an empty node's plugin directory holds after a run.
    const INSTALLED: [&str; 7] = [
        RECORD_NAME,
        "bandwidth",
        "bridge",
        "flannel",
        "host-local",
        "loopback",
        "portmap",
    ];

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_empty_node_gets_everything_then_nothing_changes() {
        let d = dirs();
        let report = installer(&d).run().unwrap();
        assert!(
            report.plugins.iter().all(|(_, a)| *a == Action::Install),
            "{report:?}"
        );
        assert!(report.conflist_changed);
        assert_eq!(listing(&d.bin), INSTALLED);
        for plugin in ["flannel", "bridge"] {
            let meta = fs::metadata(d.bin.join(plugin)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o755);
            assert_eq!(
                fs::read(d.bin.join(plugin)).unwrap(),
                fs::read(d.image.join(plugin)).unwrap()
            );
        }
        assert_eq!(
            fs::read_to_string(d.conf.join(CONFLIST_NAME)).unwrap(),
            files::K3S_CNI_CONFLIST
        );
        let again = installer(&d).run().unwrap();
        assert!(
            again.plugins.iter().all(|(_, a)| *a == Action::UpToDate),
            "{again:?}"
        );
        assert!(!again.conflist_changed);
    }

    #[test]
    fn the_nodes_working_plugins_are_kept_and_broken_ones_replaced() {
        let d = dirs();
        fs::create_dir_all(&d.bin).unwrap();
        // kind's own: a newer portmap that works.
        let portmap = script(
            &d.bin,
            "portmap",
            &format!("# kind's v1.9.1\n{ANSWERS_1_0}"),
        );
        let kind_bytes = fs::read(&portmap).unwrap();
        // An old host-local that cannot speak 1.0.0.
        script(
            &d.bin,
            "host-local",
            r#"echo '{"cniVersion":"0.4.0","supportedVersions":["0.3.1","0.4.0"]}'"#,
        );
        // Someone else's flannel.
        script(&d.bin, "flannel", ANSWERS_1_0);
        // An interrupted run's temporary file.
        fs::write(d.bin.join(".bridge.99.0.tmp"), b"#!/bin/sh\nhalf").unwrap();

        let report = installer(&d).run().unwrap();
        let action = |name: &str| {
            report
                .plugins
                .iter()
                .find(|(p, _)| p == name)
                .map(|(_, a)| a.clone())
                .unwrap()
        };
        assert!(matches!(action("portmap"), Action::Keep(_)));
        assert!(
            matches!(&action("host-local"), Action::Replace(why) if why.contains("does not support cniVersion 1.0.0"))
        );
        assert!(matches!(action("flannel"), Action::Replace(_)));
        assert_eq!(action("bridge"), Action::Install);
        assert_eq!(fs::read(&portmap).unwrap(), kind_bytes);
        assert_eq!(
            fs::read(d.bin.join("host-local")).unwrap(),
            fs::read(d.image.join("host-local")).unwrap()
        );
        assert_eq!(listing(&d.bin), INSTALLED);
        // The node's portmap is not ours: a newer image never touches it.
        script(&d.image, "portmap", &format!("# image v2\n{ANSWERS_1_0}"));
        let report = installer(&d).run().unwrap();
        assert!(report.plugins.contains(&(
            "portmap".into(),
            Action::Keep("the node's own copy works".into())
        )));
        assert_eq!(fs::read(&portmap).unwrap(), kind_bytes);
    }

    #[test]
    fn a_newer_image_updates_what_an_earlier_run_installed() {
        let d = dirs();
        installer(&d).run().unwrap();
        script(&d.image, "bridge", &format!("# image v2\n{ANSWERS_1_0}"));
        let report = installer(&d).run().unwrap();
        assert!(report
            .plugins
            .iter()
            .any(|(p, a)| p == "bridge" && matches!(a, Action::Replace(_))));
        assert_eq!(
            fs::read(d.bin.join("bridge")).unwrap(),
            fs::read(d.image.join("bridge")).unwrap()
        );
        // An admin replaced our bandwidth with their own: it is theirs now.
        let theirs = script(&d.bin, "bandwidth", &format!("# admin's\n{ANSWERS_1_0}"));
        script(&d.image, "bandwidth", &format!("# image v2\n{ANSWERS_1_0}"));
        let report = installer(&d).run().unwrap();
        assert!(report
            .plugins
            .iter()
            .any(|(p, a)| p == "bandwidth" && matches!(a, Action::Keep(_))));
        assert!(fs::read_to_string(&theirs).unwrap().contains("admin's"));
    }

    #[test]
    fn a_plugin_nobody_has_stops_the_run_before_anything_is_written() {
        let d = dirs();
        fs::remove_file(d.image.join("bandwidth")).unwrap();
        let err = installer(&d).run().unwrap_err().to_string();
        assert!(
            err.contains("the conflist needs plugin \"bandwidth\": the node has none in")
                && err.contains("has no copy to install"),
            "{err}"
        );
        assert!(!d.bin.join("flannel").exists());
        assert!(!d.conf.join(CONFLIST_NAME).exists());
    }

    #[test]
    fn a_bad_conflist_file_is_named() {
        let d = dirs();
        let source = d.image.parent().unwrap().join("cni-conf.json");
        fs::write(&source, br#"{"cniVersion":"1.0.0"}"#).unwrap();
        let err = installer(&d)
            .conflist_from(&source)
            .unwrap()
            .run()
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "the conflist {}: has no \"plugins\" list (a single-plugin .conf is not a conflist; wrap it in {{\"plugins\":[...]}})",
                source.display()
            )
        );
        let missing = installer(&d)
            .conflist_from(Path::new("/nonexistent/cni-conf.json"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("/nonexistent/cni-conf.json: could not read the conflist"),
            "{missing}"
        );
    }
}
