//! Running the flannel-embed image the way kubelet runs the DaemonSet,
//! without a container engine: `umoci unpack` turns the image layout into
//! a bundle, and Debian's `crun` runs each container from it with the
//! pod's shape written into the bundle's `config.json` (the manifest's
//! command, args, environment, capabilities and volume mounts; the node's
//! network namespace for `hostNetwork`; a read-only root and `/proc/sys`,
//! as containerd gives a non-privileged container).
//!
//! crun state lives in a directory of the test's own (`--root`), so
//! containers of different tests never meet. This machine has hybrid
//! cgroups, which crun 1.8 refuses unless it sees an empty unified
//! hierarchy: each crun runs in a private mount namespace with a tmpfs on
//! `/sys/fs/cgroup/unified` and `--cgroup-manager=disabled` (see
//! ../shared/spec/deploy.md).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// containerd's default capability set for a container (what a pod has
/// before `securityContext.capabilities.add`).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// An unpacked image: the root filesystem every container shares
/// (read-only) and the runtime config umoci derived from the image config.
#[derive(Debug, Clone)]
pub struct UnpackedImage {
    /// The bundle's root filesystem.
    pub rootfs: PathBuf,
    /// umoci's `config.json` for the image (entrypoint, env, mounts).
    pub base_config: Value,
}

impl UnpackedImage {
    /// `umoci unpack --image LAYOUT:TAG DIR/bundle`.
    pub fn unpack(layout: &Path, tag: &str, dir: &Path) -> Result<UnpackedImage, String> {
        let bundle = dir.join("bundle");
        let _ = fs::remove_dir_all(&bundle);
        let output = run_with_timeout(
            Command::new("umoci")
                .arg("unpack")
                .arg("--image")
                .arg(format!("{}:{tag}", layout.display()))
                .arg(&bundle),
            Duration::from_secs(120),
        )?;
        if !output.status.success() {
            return Err(format!(
                "umoci unpack {}:{tag}: {}",
                layout.display(),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let text = fs::read_to_string(bundle.join("config.json"))
            .map_err(|e| format!("reading the bundle's config.json: {e}"))?;
        let base_config =
            serde_json::from_str(&text).map_err(|e| format!("the bundle's config.json: {e}"))?;
        Ok(UnpackedImage {
            rootfs: bundle.join("rootfs"),
            base_config,
        })
    }

    /// The image's own environment (`KEY=VALUE`), e.g. its `PATH`.
    pub fn env(&self) -> Vec<String> {
        self.base_config["process"]["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }
}

/// A bind mount into the container (a hostPath, an emptyDir, a projected
/// service-account directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Outside path.
    pub source: PathBuf,
    /// Path in the container.
    pub destination: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// One container of the pod, as kubelet would create it.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// crun's container id (unique per test).
    pub id: String,
    /// `command` + `args`, after `$(VAR)` expansion.
    pub args: Vec<String>,
    /// Environment on top of the image's.
    pub env: Vec<(String, String)>,
    /// Capabilities added to [`DEFAULT_CAPABILITIES`] (`NET_ADMIN`, ...).
    pub add_capabilities: Vec<String>,
    /// Volume mounts.
    pub binds: Vec<Bind>,
    /// The network namespace to join (`hostNetwork`: the node's).
    pub netns: PathBuf,
}

impl ContainerSpec {
    /// The bundle's `config.json` for this container.
    pub fn runtime_config(&self, image: &UnpackedImage) -> Value {
        let mut config = image.base_config.clone();
        let mut env = image.env();
        for (key, value) in &self.env {
            env.retain(|e| !e.starts_with(&format!("{key}=")));
            env.push(format!("{key}={value}"));
        }
        let mut capabilities: Vec<String> =
            DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        for cap in &self.add_capabilities {
            let cap = format!("CAP_{}", cap.trim_start_matches("CAP_"));
            if !capabilities.contains(&cap) {
                capabilities.push(cap);
            }
        }
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(self.args);
        config["process"]["env"] = json!(env);
        config["process"]["cwd"] = json!("/");
        config["process"]["user"] = json!({"uid": 0, "gid": 0});
        config["process"]["capabilities"] = json!({
            "bounding": capabilities,
            "effective": capabilities,
            "permitted": capabilities,
        });
        config["root"] = json!({"path": image.rootfs, "readonly": true});
        let linux = &mut config["linux"];
        let mut namespaces: Vec<Value> = linux["namespaces"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|ns| ns["type"] != "network")
            .collect();
        namespaces.push(json!({"type": "network", "path": self.netns}));
        linux["namespaces"] = json!(namespaces);
        if let Some(object) = linux.as_object_mut() {
            object.remove("cgroupsPath");
            object.remove("resources");
            object.remove("uidMappings");
            object.remove("gidMappings");
        }
        // containerd's read-only /proc paths for a non-privileged
        // container: /proc/sys among them (sysctl writes fail with EROFS).
        let mut read_only: Vec<Value> = linux["readonlyPaths"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for path in [
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger",
        ] {
            if !read_only.iter().any(|p| p == path) {
                read_only.push(json!(path));
            }
        }
        linux["readonlyPaths"] = json!(read_only);
        let mut mounts = config["mounts"].as_array().cloned().unwrap_or_default();
        mounts.push(json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"],
        }));
        for bind in &self.binds {
            mounts.push(json!({
                "destination": bind.destination,
                "type": "bind",
                "source": bind.source,
                "options": ["rbind", if bind.read_only { "ro" } else { "rw" }],
            }));
        }
        config["mounts"] = json!(mounts);
        config
    }
}

/// crun with a state directory of its own.
#[derive(Debug, Clone)]
pub struct Crun {
    state_root: PathBuf,
    bundles: PathBuf,
}

impl Crun {
    /// crun keeping its state under `dir/state` and bundles under
    /// `dir/bundles`.
    pub fn new(dir: &Path) -> Result<Crun, String> {
        let crun = Crun {
            state_root: dir.join("state"),
            bundles: dir.join("bundles"),
        };
        for d in [&crun.state_root, &crun.bundles] {
            fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        Ok(crun)
    }

    fn command(&self, image: &UnpackedImage, spec: &ContainerSpec) -> Result<Command, String> {
        let bundle = self.bundles.join(&spec.id);
        fs::create_dir_all(&bundle).map_err(|e| format!("{}: {e}", bundle.display()))?;
        let config = spec.runtime_config(image);
        fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("writing {}/config.json: {e}", bundle.display()))?;
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                r#"mount -t tmpfs none /sys/fs/cgroup/unified 2>/dev/null; exec crun --cgroup-manager=disabled --root "$1" run --bundle "$2" "$3""#,
            )
            .arg("sh")
            .arg(&self.state_root)
            .arg(&bundle)
            .arg(&spec.id)
            .stdin(Stdio::null());
        Ok(command)
    }

    /// Runs the container to its end (an init container), within `limit`.
    pub fn run_to_end(
        &self,
        image: &UnpackedImage,
        spec: &ContainerSpec,
        limit: Duration,
    ) -> Result<Output, String> {
        let mut command = self.command(image, spec)?;
        let output = run_with_timeout(&mut command, limit)?;
        self.delete(&spec.id);
        Ok(output)
    }

    /// Starts the container (the agent), its output into `log`.
    pub fn start(
        &self,
        image: &UnpackedImage,
        spec: &ContainerSpec,
        log: &Path,
    ) -> Result<RunningContainer, String> {
        let mut command = self.command(image, spec)?;
        let out = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = command
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting crun for {}: {e}", spec.id))?;
        Ok(RunningContainer {
            crun: self.clone(),
            id: spec.id.clone(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    fn kill(&self, id: &str, signal: &str) {
        let _ = run_with_timeout(
            Command::new("crun")
                .arg("--root")
                .arg(&self.state_root)
                .args(["kill", id, signal]),
            Duration::from_secs(10),
        );
    }

    fn delete(&self, id: &str) {
        let _ = run_with_timeout(
            Command::new("crun")
                .arg("--root")
                .arg(&self.state_root)
                .args(["delete", "--force", id]),
            Duration::from_secs(10),
        );
    }
}

/// A container started with [`Crun::start`]; stopped (SIGTERM, then
/// SIGKILL after 10 s, as kubelet's grace period) when dropped.
#[derive(Debug)]
pub struct RunningContainer {
    crun: Crun,
    id: String,
    child: Option<Child>,
    log: PathBuf,
}

impl RunningContainer {
    /// Whether crun (and so the container's process) still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The container's output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL; returns how it ended.
    pub fn stop(mut self) -> Option<ExitStatus> {
        self.halt()
    }

    fn halt(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        self.crun.kill(&self.id, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    self.crun.kill(&self.id, "KILL");
                    let _ = child.kill();
                    break child.wait().ok();
                }
            }
        };
        self.crun.delete(&self.id);
        status
    }
}

impl Drop for RunningContainer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Runs `command` to its end, killing it after `limit`.
pub fn run_with_timeout(command: &mut Command, limit: Duration) -> Result<Output, String> {
    let what = format!("{command:?}");
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {what}: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not end within {limit:?}"));
            }
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    }
    child
        .wait_with_output()
        .map_err(|e| format!("collecting the output of {what}: {e}"))
}
