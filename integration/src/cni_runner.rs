//! A small CNI conflist runner that executes a whole network configuration
//! list the way libcni (containerd, CRI-O) does, so tests and the lab run
//! the conflist the agent wrote instead of a hand-made config:
//!
//! - ADD runs every plugin in order; each gets the list's `name` and
//!   `cniVersion`, a `runtimeConfig` holding the capability arguments it
//!   declared in `capabilities`, and the previous plugin's result as
//!   `prevResult`. The last result is cached (libcni's
//!   `<cacheDir>/results/<network>-<containerID>-<ifname>`).
//! - CHECK (0.4.0+) runs the plugins in order with the cached result as
//!   `prevResult`; DEL runs them in reverse order with the cached result
//!   (when there is one) and drops the cache entry once all succeeded.
//! - STATUS and GC (1.1.0) run every plugin in order; GC passes
//!   `cni.dev/valid-attachments`.
//! - Environment: the runner's own plus `CNI_COMMAND`, `CNI_CONTAINERID`,
//!   `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`.
//!
//! The runner is stricter than libcni in one place, on purpose: a result
//! whose `cniVersion` is not the list's is an error, so a plugin that forgets
//! to convert its delegate's result is caught.
//!
//! [`NodeSandbox`] runs every plugin the way it would run on a node, but
//! inside namespaces the test made: the node's network namespace (so
//! `cni0`, veths and iptables rules land there, never in the machine's own
//! namespace) and a private mount namespace in which a per-node directory
//! is bind-mounted over `/var/lib`. host-local (`/var/lib/cni/networks`)
//! and the flannel plugin's default `dataDir` (`/var/lib/cni/flannel`) then
//! keep their state in that directory, with the conflist untouched; the
//! mount disappears with the plugin process.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use serde_json::{Map, Value};

use crate::netns::TestNetns;

/// Where Debian's containernetworking-plugins install `bridge`,
/// `host-local`, `portmap`, `bandwidth`.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

/// CNI_PATH for tests and the lab: the directory of the workspace's
/// `flannel` binary, then the system plugins.
pub fn workspace_cni_path() -> Vec<PathBuf> {
    let flannel = crate::workspace_bin("flannel");
    let dir = flannel.parent().map(Path::to_path_buf).unwrap_or_default();
    vec![dir, PathBuf::from(SYSTEM_CNI_DIR)]
}

/// The conflist the agent writes, written by the agent's own writer
/// (`flannel_embed::files::write_cni_conflist`) to
/// `<dir>/agent/etc/cni/net.d/10-flannel.conflist` and read back.
pub fn agent_conflist(dir: &Path) -> Result<ConfList, RunnerError> {
    let path = dir.join("agent/etc/cni/net.d/10-flannel.conflist");
    flannel_embed::files::write_cni_conflist(&path, None)
        .map_err(|e| RunnerError::ConfList(e.to_string()))?;
    let text = std::fs::read_to_string(&path).map_err(|source| RunnerError::Cache {
        path: path.clone(),
        source,
    })?;
    ConfList::parse(&text)
}

/// Something went wrong running a conflist.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The conflist is not usable.
    #[error("conflist: {0}")]
    ConfList(String),
    /// A plugin binary is not in CNI_PATH.
    #[error("plugin {plugin:?} not found in CNI_PATH {path:?}")]
    NotFound {
        /// The plugin type.
        plugin: String,
        /// The CNI_PATH directories.
        path: Vec<PathBuf>,
    },
    /// The plugin could not be started.
    #[error("{plugin} {command}: could not run it: {source}")]
    Spawn {
        /// The plugin type.
        plugin: String,
        /// The CNI command.
        command: String,
        /// The operating system's answer.
        #[source]
        source: io::Error,
    },
    /// The plugin reported a CNI error.
    #[error("{0}")]
    Plugin(Box<PluginFailure>),
    /// The plugin printed something that is not what the command must
    /// print.
    #[error("{plugin} {command}: {problem} ({status}); stdout: {stdout:?}; stderr: {stderr}")]
    BadOutput {
        /// The plugin type.
        plugin: String,
        /// The CNI command.
        command: String,
        /// What is wrong.
        problem: String,
        /// How it exited.
        status: ExitStatus,
        /// What it printed.
        stdout: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// The result cache could not be used.
    #[error("result cache {path}: {source}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// The operating system's answer.
        #[source]
        source: io::Error,
    },
}

/// A CNI error a plugin printed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{plugin} {command} failed with CNI error {code}: {msg} (details: {details:?}); stderr: {stderr}")]
pub struct PluginFailure {
    /// The plugin type.
    pub plugin: String,
    /// The CNI command.
    pub command: String,
    /// The CNI error code.
    pub code: u64,
    /// The error's msg.
    pub msg: String,
    /// The error's details.
    pub details: String,
    /// The whole error object as printed.
    pub error: Value,
    /// What the plugin wrote to stderr.
    pub stderr: String,
}

impl RunnerError {
    /// The CNI error a plugin printed, if that is what happened.
    pub fn plugin_failure(&self) -> Option<&PluginFailure> {
        match self {
            RunnerError::Plugin(failure) => Some(failure),
            _ => None,
        }
    }

    /// The CNI error code when a plugin reported one.
    pub fn cni_code(&self) -> Option<u64> {
        self.plugin_failure().map(|f| f.code)
    }

    /// The CNI error's msg when a plugin reported one.
    pub fn cni_msg(&self) -> Option<&str> {
        self.plugin_failure().map(|f| f.msg.as_str())
    }
}

/// A parsed CNI network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfList {
    name: String,
    cni_version: String,
    plugins: Vec<Map<String, Value>>,
}

impl ConfList {
    /// Parses a conflist (`name`, `cniVersion`, `plugins` with a `type`
    /// each).
    pub fn parse(text: &str) -> Result<ConfList, RunnerError> {
        let bad = |what: &str| RunnerError::ConfList(what.to_string());
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad(&format!("not JSON: {e}")))?;
        let name = value
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no string name"))?
            .to_string();
        let cni_version = value
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let plugins = value
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no plugins list"))?
            .iter()
            .map(|p| {
                let plugin = p
                    .as_object()
                    .ok_or_else(|| bad("a plugin is not an object"))?;
                match plugin.get("type").and_then(Value::as_str) {
                    Some(t) if !t.is_empty() => Ok(plugin.clone()),
                    _ => Err(bad("a plugin has no type")),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if plugins.is_empty() {
            return Err(bad("the plugins list is empty"));
        }
        Ok(ConfList {
            name,
            cni_version,
            plugins,
        })
    }

    /// The network name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The list's cniVersion.
    pub fn cni_version(&self) -> &str {
        &self.cni_version
    }

    /// The plugin types, in order.
    pub fn plugin_types(&self) -> Vec<&str> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
            .collect()
    }

    /// Sets `key` in the plugin of type `plugin_type`: for node-local file
    /// locations only (the flannel plugin's `subnetFile` when several lab
    /// nodes share one machine), never to change what the conflist means.
    pub fn set_plugin_key(
        &mut self,
        plugin_type: &str,
        key: &str,
        value: Value,
    ) -> Result<&mut ConfList, RunnerError> {
        let plugin = self
            .plugins
            .iter_mut()
            .find(|p| p.get("type").and_then(Value::as_str) == Some(plugin_type))
            .ok_or_else(|| RunnerError::ConfList(format!("no plugin of type {plugin_type:?}")))?;
        plugin.insert(key.to_string(), value);
        Ok(self)
    }

    /// Replaces the list's cniVersion (what a host's `--flannel-cni-conf`
    /// with another version would give).
    pub fn set_cni_version(&mut self, version: &str) -> &mut ConfList {
        self.cni_version = version.to_string();
        self
    }

    /// Keeps only the plugins of the given types (in their order).
    pub fn retain_plugins(&mut self, types: &[&str]) -> &mut ConfList {
        self.plugins.retain(|p| {
            p.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| types.contains(&t))
        });
        self
    }

    /// The config the first plugin of type `plugin_type` gets, as libcni
    /// builds it, without prevResult and capability arguments (for
    /// [`Runner::invoke`]).
    pub fn plugin_conf(&self, plugin_type: &str) -> Option<Value> {
        let plugin = self
            .plugins
            .iter()
            .find(|p| p.get("type").and_then(Value::as_str) == Some(plugin_type))?;
        Some(self.plugin_config(plugin, None, &Map::new(), &[]))
    }

    /// The config one plugin gets, as libcni builds it.
    fn plugin_config(
        &self,
        plugin: &Map<String, Value>,
        prev_result: Option<&Value>,
        capability_args: &Map<String, Value>,
        extra: &[(&str, Value)],
    ) -> Value {
        let mut conf = plugin.clone();
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        let mut runtime_config = Map::new();
        if let Some(Value::Object(capabilities)) = plugin.get("capabilities") {
            for (capability, enabled) in capabilities {
                if enabled == &Value::Bool(true) {
                    if let Some(arg) = capability_args.get(capability) {
                        runtime_config.insert(capability.clone(), arg.clone());
                    }
                }
            }
        }
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
        for (key, value) in extra {
            conf.insert((*key).to_string(), value.clone());
        }
        Value::Object(conf)
    }
}

/// One container attachment: what a runtime passes for a pod sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS (`/run/netns/<pod namespace>`).
    pub netns: PathBuf,
    /// CNI_IFNAME (`eth0`).
    pub ifname: String,
    /// CNI_ARGS as `KEY=value` pairs (e.g. `K8S_POD_NAME`).
    pub cni_args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `bandwidth`, ...), given to the
    /// plugins that declare them.
    pub capability_args: Map<String, Value>,
}

impl Attachment {
    /// `eth0` of `container_id` in `netns`, with kubelet's usual CNI_ARGS.
    pub fn new(container_id: &str, netns: &Path) -> Attachment {
        Attachment {
            container_id: container_id.to_string(),
            netns: netns.to_path_buf(),
            ifname: "eth0".to_string(),
            cni_args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), "default".into()),
                ("K8S_POD_NAME".into(), container_id.to_string()),
            ],
            capability_args: Map::new(),
        }
    }

    /// Adds a capability argument.
    pub fn with_capability(mut self, capability: &str, value: Value) -> Attachment {
        self.capability_args.insert(capability.to_string(), value);
        self
    }

    fn cni_args_env(&self) -> String {
        self.cni_args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// Runs plugins "on a node" that is a network namespace: inside that
/// namespace and inside a private mount namespace where `var_lib` is
/// mounted over `/var/lib` (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSandbox {
    netns: String,
    var_lib: PathBuf,
}

impl NodeSandbox {
    /// The node namespace's name (`ip netns` name) and the directory that
    /// stands in for the node's `/var/lib` (created if missing).
    pub fn new(netns: &str, var_lib: &Path) -> io::Result<NodeSandbox> {
        std::fs::create_dir_all(var_lib)?;
        Ok(NodeSandbox {
            netns: netns.to_string(),
            var_lib: var_lib.to_path_buf(),
        })
    }

    /// The node's `/var/lib` as seen from outside.
    pub fn var_lib(&self) -> &Path {
        &self.var_lib
    }

    /// Where host-local keeps network `name`'s reservations.
    pub fn host_local_dir(&self, network: &str) -> PathBuf {
        self.var_lib.join("cni/networks").join(network)
    }

    /// The flannel plugin's default dataDir (saved delegate configs).
    pub fn flannel_data_dir(&self) -> PathBuf {
        self.var_lib.join("cni/flannel")
    }

    /// `exe args...` run on the node: inside its network namespace, with
    /// its private `/var/lib`.
    pub fn command(&self, exe: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("unshare");
        command.args(["--mount", "--propagation", "private", "--", "sh", "-c"]);
        command.arg(
            r#"var_lib=$1 netns=$2 && shift 2 && mount --bind "$var_lib" /var/lib && exec ip netns exec "$netns" "$@""#,
        );
        command
            .arg("sh")
            .arg(&self.var_lib)
            .arg(&self.netns)
            .arg(exe)
            .args(args);
        command
    }
}

/// How one plugin process ended, uninterpreted.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Exit status.
    pub status: ExitStatus,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

/// Runs a conflist's plugins from CNI_PATH, like libcni.
#[derive(Debug, Clone)]
pub struct Runner {
    list: ConfList,
    cni_path: Vec<PathBuf>,
    sandbox: Option<NodeSandbox>,
    cache_dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Runner {
    /// A runner for `list` with plugins from `cni_path`, running them in
    /// the caller's namespaces, caching results under `cache_dir`.
    pub fn new(list: ConfList, cni_path: Vec<PathBuf>, cache_dir: &Path) -> Runner {
        Runner {
            list,
            cni_path,
            sandbox: None,
            cache_dir: cache_dir.to_path_buf(),
            env: Vec::new(),
        }
    }

    /// A runner whose plugins run on the sandboxed node; results are cached
    /// in the node's `/var/lib/cni`, as libcni does.
    pub fn on_node(list: ConfList, cni_path: Vec<PathBuf>, sandbox: NodeSandbox) -> Runner {
        let cache_dir = sandbox.var_lib.join("cni");
        Runner {
            list,
            cni_path,
            sandbox: Some(sandbox),
            cache_dir,
            env: Vec::new(),
        }
    }

    /// Adds an environment variable for every plugin process (e.g.
    /// `RUST_LOG`).
    pub fn with_env(mut self, key: &str, value: &str) -> Runner {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Replaces CNI_PATH.
    pub fn with_cni_path(mut self, cni_path: Vec<PathBuf>) -> Runner {
        self.cni_path = cni_path;
        self
    }

    /// The conflist.
    pub fn list(&self) -> &ConfList {
        &self.list
    }

    /// The same runner for another conflist.
    pub fn with_list(mut self, list: ConfList) -> Runner {
        self.list = list;
        self
    }

    /// The libcni cache file of an attachment.
    pub fn cache_path(&self, attachment: &Attachment) -> PathBuf {
        self.cache_dir.join("results").join(format!(
            "{}-{}-{}",
            self.list.name, attachment.container_id, attachment.ifname
        ))
    }

    /// The cached result of an attachment's ADD.
    pub fn cached_result(&self, attachment: &Attachment) -> Result<Option<Value>, RunnerError> {
        let path = self.cache_path(attachment);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let entry: Value =
                    serde_json::from_slice(&bytes).map_err(|e| RunnerError::Cache {
                        path: path.clone(),
                        source: io::Error::new(io::ErrorKind::InvalidData, e),
                    })?;
                Ok(entry.get("result").cloned())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RunnerError::Cache { path, source }),
        }
    }

    /// ADD: every plugin in order, prevResult chained; returns (and caches)
    /// the last plugin's result.
    pub fn add(&self, attachment: &Attachment) -> Result<Value, RunnerError> {
        let mut prev: Option<Value> = None;
        for plugin in &self.list.plugins {
            let conf =
                self.list
                    .plugin_config(plugin, prev.as_ref(), &attachment.capability_args, &[]);
            let result = self.expect_result("ADD", plugin, &conf, Some(attachment))?;
            prev = Some(result);
        }
        let result = prev.unwrap_or(Value::Null);
        self.write_cache(attachment, &result)?;
        Ok(result)
    }

    /// CHECK: every plugin in order with the cached result as prevResult.
    pub fn check(&self, attachment: &Attachment) -> Result<(), RunnerError> {
        let cached = self.cached_result(attachment)?.ok_or_else(|| {
            RunnerError::ConfList(format!(
                "no cached result for {} (CHECK needs a prior ADD)",
                attachment.container_id
            ))
        })?;
        for plugin in &self.list.plugins {
            let conf =
                self.list
                    .plugin_config(plugin, Some(&cached), &attachment.capability_args, &[]);
            self.expect_nothing("CHECK", plugin, &conf, Some(attachment))?;
        }
        Ok(())
    }

    /// DEL: every plugin in reverse order with the cached result (if any)
    /// as prevResult; the cache entry goes once all succeeded.
    pub fn del(&self, attachment: &Attachment) -> Result<(), RunnerError> {
        let cached = self.cached_result(attachment)?;
        for plugin in self.list.plugins.iter().rev() {
            let conf =
                self.list
                    .plugin_config(plugin, cached.as_ref(), &attachment.capability_args, &[]);
            self.expect_nothing("DEL", plugin, &conf, Some(attachment))?;
        }
        let path = self.cache_path(attachment);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RunnerError::Cache { path, source }),
        }
    }

    /// STATUS (1.1.0): every plugin in order.
    pub fn status(&self) -> Result<(), RunnerError> {
        for plugin in &self.list.plugins {
            let conf = self.list.plugin_config(plugin, None, &Map::new(), &[]);
            self.expect_nothing("STATUS", plugin, &conf, None)?;
        }
        Ok(())
    }

    /// GC (1.1.0): every plugin in order with `cni.dev/valid-attachments`.
    pub fn gc(&self, valid: &[Attachment]) -> Result<(), RunnerError> {
        let valid = Value::Array(
            valid
                .iter()
                .map(|a| serde_json::json!({"containerID": a.container_id, "ifname": a.ifname}))
                .collect(),
        );
        for plugin in &self.list.plugins {
            let conf = self.list.plugin_config(
                plugin,
                None,
                &Map::new(),
                &[("cni.dev/valid-attachments", valid.clone())],
            );
            self.expect_nothing("GC", plugin, &conf, None)?;
        }
        Ok(())
    }

    /// Runs one plugin once and returns what it did, uninterpreted: for
    /// tests of a single plugin's protocol (VERSION, error JSON, stdout).
    pub fn invoke(
        &self,
        plugin_type: &str,
        command: &str,
        stdin: &[u8],
        attachment: Option<&Attachment>,
    ) -> Result<Invocation, RunnerError> {
        let exe = self.find(plugin_type)?;
        let mut cmd = match &self.sandbox {
            Some(sandbox) => sandbox.command(&exe, &[]),
            None => Command::new(&exe),
        };
        let cni_path = std::env::join_paths(&self.cni_path)
            .map_err(|e| RunnerError::ConfList(format!("CNI_PATH: {e}")))?;
        cmd.env("CNI_COMMAND", command).env("CNI_PATH", cni_path);
        for key in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"] {
            cmd.env_remove(key);
        }
        if let Some(a) = attachment {
            cmd.env("CNI_CONTAINERID", &a.container_id)
                .env("CNI_NETNS", &a.netns)
                .env("CNI_IFNAME", &a.ifname)
                .env("CNI_ARGS", a.cni_args_env());
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_error = |source| RunnerError::Spawn {
            plugin: plugin_type.to_string(),
            command: command.to_string(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_error)?;
        if let Some(mut input) = child.stdin.take() {
            match input.write_all(stdin) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(spawn_error(e)),
            }
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        Ok(Invocation {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    fn find(&self, plugin_type: &str) -> Result<PathBuf, RunnerError> {
        self.cni_path
            .iter()
            .map(|dir| dir.join(plugin_type))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| RunnerError::NotFound {
                plugin: plugin_type.to_string(),
                path: self.cni_path.clone(),
            })
    }

    /// Runs a plugin and interprets its output: `Ok(stdout)` on success,
    /// its CNI error otherwise.
    fn run_plugin(
        &self,
        command: &str,
        plugin: &Map<String, Value>,
        conf: &Value,
        attachment: Option<&Attachment>,
    ) -> Result<Invocation, RunnerError> {
        let plugin_type = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let stdin = serde_json::to_vec(conf).unwrap_or_default();
        let done = self.invoke(plugin_type, command, &stdin, attachment)?;
        if done.status.success() {
            return Ok(done);
        }
        let bad = |problem: &str| RunnerError::BadOutput {
            plugin: plugin_type.to_string(),
            command: command.to_string(),
            problem: problem.to_string(),
            status: done.status,
            stdout: done.stdout.clone(),
            stderr: done.stderr.clone(),
        };
        let error: Value = serde_json::from_str(&done.stdout)
            .map_err(|_| bad("failed without a CNI error JSON on stdout"))?;
        let code = error
            .get("code")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("failed with an error object without a code"))?;
        Err(RunnerError::Plugin(Box::new(PluginFailure {
            plugin: plugin_type.to_string(),
            command: command.to_string(),
            code,
            msg: error
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            details: error
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            error,
            stderr: done.stderr,
        })))
    }

    fn expect_result(
        &self,
        command: &str,
        plugin: &Map<String, Value>,
        conf: &Value,
        attachment: Option<&Attachment>,
    ) -> Result<Value, RunnerError> {
        let done = self.run_plugin(command, plugin, conf, attachment)?;
        let plugin_type = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let bad = |problem: String| RunnerError::BadOutput {
            plugin: plugin_type.to_string(),
            command: command.to_string(),
            problem,
            status: done.status,
            stdout: done.stdout.clone(),
            stderr: done.stderr.clone(),
        };
        let result: Value = serde_json::from_str(&done.stdout)
            .map_err(|e| bad(format!("stdout is not exactly one JSON result: {e}")))?;
        let version = result.get("cniVersion").and_then(Value::as_str);
        if version != Some(self.list.cni_version.as_str()) {
            return Err(bad(format!(
                "result cniVersion {version:?} is not the list's {:?}",
                self.list.cni_version
            )));
        }
        Ok(result)
    }

    fn expect_nothing(
        &self,
        command: &str,
        plugin: &Map<String, Value>,
        conf: &Value,
        attachment: Option<&Attachment>,
    ) -> Result<(), RunnerError> {
        let done = self.run_plugin(command, plugin, conf, attachment)?;
        if done.stdout.trim().is_empty() {
            return Ok(());
        }
        Err(RunnerError::BadOutput {
            plugin: plugin
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            command: command.to_string(),
            problem: "printed something on success where nothing is expected".into(),
            status: done.status,
            stdout: done.stdout,
            stderr: done.stderr,
        })
    }

    fn write_cache(&self, attachment: &Attachment, result: &Value) -> Result<(), RunnerError> {
        let path = self.cache_path(attachment);
        let entry = serde_json::json!({
            "kind": "cniCacheV1",
            "containerId": attachment.container_id,
            "ifName": attachment.ifname,
            "networkName": self.list.name,
            "cniArgs": attachment.cni_args,
            "capabilityArgs": attachment.capability_args,
            "result": result,
        });
        let write = || -> io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&path, serde_json::to_vec(&entry).unwrap_or_default())
        };
        write().map_err(|source| RunnerError::Cache {
            path: path.clone(),
            source,
        })
    }
}

/// A node for CNI tests and the lab: its own network namespace and a
/// directory for its files: `<dir>/var-lib` is its `/var/lib` (see
/// [`NodeSandbox`]), `<dir>/run/flannel/subnet.env` its subnet file, and
/// `<dir>/agent/etc/cni/net.d/10-flannel.conflist` the conflist the agent's
/// writer produced. The runner runs that conflist on the node; the only
/// change to it is `subnetFile`, pointing at this node's subnet file (many
/// nodes share one machine's `/run`).
pub struct CniNode {
    /// The node's network namespace (deleted on drop).
    pub netns: TestNetns,
    dir: PathBuf,
    sandbox: NodeSandbox,
    runner: Runner,
}

impl CniNode {
    /// Makes the namespace `tag` and writes the conflist under `dir`.
    pub fn new(tag: &str, dir: &Path) -> Result<CniNode, RunnerError> {
        let netns = TestNetns::new(tag);
        let sandbox = NodeSandbox::new(netns.name(), &dir.join("var-lib")).map_err(|source| {
            RunnerError::Cache {
                path: dir.join("var-lib"),
                source,
            }
        })?;
        let mut list = agent_conflist(dir)?;
        let subnet_file = dir.join("run/flannel/subnet.env");
        list.set_plugin_key(
            "flannel",
            "subnetFile",
            Value::String(subnet_file.to_string_lossy().into_owned()),
        )?;
        let runner = Runner::on_node(list, workspace_cni_path(), sandbox.clone());
        Ok(CniNode {
            netns,
            dir: dir.to_path_buf(),
            sandbox,
            runner,
        })
    }

    /// The runner for the node's conflist.
    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// The node's sandbox (where host-local and the flannel plugin keep
    /// their state).
    pub fn sandbox(&self) -> &NodeSandbox {
        &self.sandbox
    }

    /// `<dir>/run/flannel/subnet.env`.
    pub fn subnet_file(&self) -> PathBuf {
        self.dir.join("run/flannel/subnet.env")
    }

    /// Writes the subnet file as the agent would (atomically).
    pub fn write_subnet_env(&self, text: &str) -> Result<(), RunnerError> {
        flannel_embed::files::write_atomic(&self.subnet_file(), text.as_bytes())
            .map(|_| ())
            .map_err(|e| RunnerError::ConfList(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plugin_configs_are_built_like_libcni() {
        let list = ConfList::parse(flannel_embed::files::K3S_CNI_CONFLIST).unwrap();
        assert_eq!(list.plugin_types(), ["flannel", "portmap", "bandwidth"]);
        let caps = json!({"portMappings": [{"hostPort": 80}], "ignored": 1});
        let caps = caps.as_object().unwrap();
        let prev = json!({"cniVersion": "1.0.0"});
        let flannel = list.plugin_config(&list.plugins[0], None, caps, &[]);
        assert_eq!(
            flannel,
            json!({"type": "flannel", "name": "cbr0", "cniVersion": "1.0.0",
                   "delegate": {"hairpinMode": true, "forceAddress": true, "isDefaultGateway": true}})
        );
        let portmap = list.plugin_config(&list.plugins[1], Some(&prev), caps, &[]);
        assert_eq!(
            portmap["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 80}]})
        );
        assert_eq!(portmap["prevResult"], prev);
        let bandwidth = list.plugin_config(&list.plugins[2], Some(&prev), caps, &[]);
        assert_eq!(bandwidth.get("runtimeConfig"), None);
    }

    #[test]
    fn bad_conflists() {
        for text in [
            "nope",
            r#"{"plugins":[]}"#,
            r#"{"name":"x"}"#,
            r#"{"name":"x","plugins":[]}"#,
            r#"{"name":"x","plugins":[{}]}"#,
        ] {
            assert!(ConfList::parse(text).is_err(), "{text}");
        }
        let mut list = ConfList::parse(flannel_embed::files::K3S_CNI_CONFLIST).unwrap();
        assert!(list.set_plugin_key("macvlan", "x", json!(1)).is_err());
        list.retain_plugins(&["flannel"]).set_cni_version("1.1.0");
        assert_eq!(list.plugin_types(), ["flannel"]);
        assert_eq!(list.cni_version(), "1.1.0");
    }
}
