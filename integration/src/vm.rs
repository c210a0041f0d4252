//! The VM kit: run a script inside a qemu guest booted with Debian's own
//! kernel (which has the `wireguard`, `vxlan`, `veth`, `tun` and `bridge`
//! modules this machine's kernel lacks), under software emulation (TCG), and
//! read the results back.
//!
//! [`VmKit::prepare`] runs `integration/vm/prepare.sh`, which downloads the
//! kernel, busybox and qemu `.deb`s with `apt-get download`, unpacks them
//! into a cache dir (`$FLANNEL_VM_CACHE`, default `/var/cache/flannel-vm`;
//! nothing is installed on the host) and builds a small initramfs with the
//! host's `ip`, `bridge`, `wg`, `ping` and `bash`. [`VmKit::run`] writes the
//! caller's script to `SHARE/run.sh` and boots the guest with
//! `integration/vm/run.sh`: the guest mounts `SHARE` at `/mnt` (9p), runs the
//! script with bash, writes its exit code to `/mnt/exit-code` and powers
//! off. Files the script writes under `/mnt` appear in `SHARE`; programs
//! built on this host run unchanged inside (glibc and libgcc_s are in the
//! initramfs).
//!
//! The guest has no network card: all of a script's traffic stays inside the
//! guest. Booting takes about 5 s on two cores.
//!
//! ```no_run
//! use std::time::Duration;
//! use integration::vm::VmKit;
//!
//! let kit = match VmKit::prepare() {
//!     Ok(kit) => kit,
//!     Err(e) if integration::vm::is_unavailable(&e) => {
//!         eprintln!("skipped: {e}");
//!         return;
//!     }
//!     Err(e) => panic!("{e}"),
//! };
//! let share = tempfile::tempdir().unwrap();
//! let outcome = kit
//!     .run(share.path(), "ip link add wg0 type wireguard\n", Duration::from_secs(60))
//!     .unwrap();
//! assert_eq!(outcome.exit_code, 0, "{}", outcome.console);
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// How an error from [`VmKit::prepare`] begins when this host cannot run
/// the kit at all (no Debian package tools, or the unpacked qemu does not
/// start): tests print a "skipped" line and return on it. See
/// [`is_unavailable`].
pub const UNAVAILABLE: &str = "qemu cannot start on this host";

/// How long [`VmKit::prepare`] lets `prepare.sh` take (the first run
/// downloads about 85 MB).
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Whether an error from [`VmKit::prepare`] means the host cannot run the
/// kit at all (rather than that the preparation failed).
pub fn is_unavailable(error: &str) -> bool {
    error.starts_with(UNAVAILABLE)
}

/// A prepared VM kit: kernel, initramfs and qemu in the cache dir.
#[derive(Debug, Clone)]
pub struct VmKit {
    cache: PathBuf,
    kernel_version: String,
    kernel: PathBuf,
    initrd: PathBuf,
    qemu: PathBuf,
}

/// How a guest run ended.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    /// The exit code of the guest script (from `SHARE/exit-code`).
    pub exit_code: i32,
    /// Everything the guest printed on its serial console (kernel messages,
    /// the script's stdout and stderr, the `FLANNEL-VM-RESULT rc=N` line).
    pub console: String,
}

impl VmKit {
    /// Prepares the kit (idempotent, and quick once cached: it only checks
    /// a stamp) by running `integration/vm/prepare.sh` with
    /// [`PREPARE_TIMEOUT`].
    ///
    /// `prepare.sh` reads `FLANNEL_VM_CACHE` (the cache dir),
    /// `FLANNEL_VM_EXTRA_TOOLS` (more host programs for the initramfs) and
    /// `FLANNEL_VM_EXTRA_MODULES` (more kernel modules to load at boot) from
    /// the environment; changing them rebuilds the initramfs (a few
    /// seconds).
    ///
    /// The error says why, with `prepare.sh`'s exit status and the end of
    /// its output; it starts with [`UNAVAILABLE`] when the host cannot run
    /// qemu at all (see [`is_unavailable`]).
    pub fn prepare() -> Result<VmKit, String> {
        let cache = cache_dir();
        let script = scripts_dir().join("prepare.sh");
        let output = run_bounded(
            Command::new("bash")
                .arg(&script)
                .env("FLANNEL_VM_CACHE", &cache),
            PREPARE_TIMEOUT,
        )
        .map_err(|e| format!("{UNAVAILABLE}: {e}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        match output.status.code() {
            Some(0) => {}
            Some(3) => return Err(format!("{UNAVAILABLE}: {}", tail(&stderr, 20))),
            Some(124) | Some(137) => {
                return Err(format!(
                    "{} did not finish within {} s:\n{}",
                    script.display(),
                    PREPARE_TIMEOUT.as_secs(),
                    tail(&stderr, 20)
                ))
            }
            _ => {
                return Err(format!(
                    "{} failed ({}):\n{}",
                    script.display(),
                    output.status,
                    tail(&stderr, 20)
                ))
            }
        }
        let env_file = cache.join("kit.env");
        let text = std::fs::read_to_string(&env_file)
            .map_err(|e| format!("cannot read {}: {e}", env_file.display()))?;
        let values: HashMap<&str, &str> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let get = |key: &str| {
            values
                .get(key)
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string())
                .ok_or_else(|| format!("{} has no {key}", env_file.display()))
        };
        Ok(VmKit {
            kernel_version: get("KVER")?,
            kernel: get("KERNEL")?.into(),
            initrd: get("INITRD")?.into(),
            qemu: get("QEMU")?.into(),
            cache,
        })
    }

    /// The guest kernel's version (`uname -r` inside, e.g. `6.1.0-57-amd64`).
    pub fn kernel_version(&self) -> &str {
        &self.kernel_version
    }

    /// The kernel image qemu boots (an uncompressed `vmlinux` when it could
    /// be extracted, else the package's `vmlinuz`).
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }

    /// The initramfs (gzipped newc cpio).
    pub fn initrd(&self) -> &Path {
        &self.initrd
    }

    /// The unpacked `qemu-system-x86_64`.
    pub fn qemu(&self) -> &Path {
        &self.qemu
    }

    /// The cache dir holding the kit (`kit.env`, the `.deb`s, the unpacked
    /// tree).
    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// Boots a guest that runs `script` (bash, as root, working directory
    /// `/mnt`) and waits at most `timeout` for it to power off.
    ///
    /// `share` (created if missing; one per concurrent run) becomes the
    /// guest's `/mnt`: the script is written to `share/run.sh`, and the run
    /// leaves `share/exit-code`, `share/console.log` and whatever the script
    /// wrote under `/mnt`. A non-zero exit code of the script is an `Ok`
    /// outcome; the error is for runs that produced no exit code (qemu
    /// failed, the guest broke, the timeout passed), with `run.sh`'s exit
    /// status and the console's tail.
    pub fn run(&self, share: &Path, script: &str, timeout: Duration) -> Result<VmOutcome, String> {
        std::fs::create_dir_all(share)
            .map_err(|e| format!("cannot create {}: {e}", share.display()))?;
        let guest_script = share.join("run.sh");
        std::fs::write(&guest_script, script)
            .map_err(|e| format!("cannot write {}: {e}", guest_script.display()))?;
        for stale in ["exit-code", "console.log"] {
            let _ = std::fs::remove_file(share.join(stale));
        }
        let seconds = timeout.as_secs().max(1);
        let runner = scripts_dir().join("run.sh");
        // run.sh stops qemu after `seconds`; the outer bound only guards
        // against run.sh itself hanging.
        let output = run_bounded(
            Command::new("bash")
                .arg(&runner)
                .arg(share)
                .arg(seconds.to_string())
                .env("FLANNEL_VM_CACHE", &self.cache),
            Duration::from_secs(seconds + 60),
        )?;
        let console = std::fs::read(share.join("console.log"))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        let exit_code = std::fs::read_to_string(share.join("exit-code"))
            .ok()
            .and_then(|code| code.trim().parse::<i32>().ok());
        match exit_code {
            Some(exit_code) => Ok(VmOutcome { exit_code, console }),
            None => Err(format!(
                "the VM produced no exit code ({} exited with {}):\n{}\nconsole tail:\n{}",
                runner.display(),
                output.status,
                tail(&String::from_utf8_lossy(&output.stderr), 20),
                tail(&console, 40)
            )),
        }
    }
}

/// `$FLANNEL_VM_CACHE`, or `/var/cache/flannel-vm`.
fn cache_dir() -> PathBuf {
    std::env::var_os("FLANNEL_VM_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/flannel-vm"))
}

/// `integration/vm`, where prepare.sh and run.sh live.
fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vm")
}

/// Runs `command` under `timeout(1)` (TERM at `limit`, KILL 10 s later),
/// stdin closed, output captured.
fn run_bounded(command: &mut Command, limit: Duration) -> Result<Output, String> {
    let program = command.get_program().to_owned();
    let mut bounded = Command::new("timeout");
    bounded
        .arg("--kill-after=10")
        .arg(limit.as_secs().max(1).to_string())
        .arg(&program)
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => bounded.env(key, value),
            None => bounded.env_remove(key),
        };
    }
    bounded
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run timeout {}: {e}", program.to_string_lossy()))
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
