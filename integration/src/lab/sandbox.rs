//! How a lab node looks like a real node to our code without touching the
//! machine's files: every process that acts "on" node `i` runs in a private
//! mount namespace (`unshare --mount --propagation private`, so nothing
//! propagates back) in which
//!
//! - `<lab>/nodes/<node>/run` is bind-mounted over `/run`
//!   (`/run/flannel/subnet.env`, `/run/xtables.lock`, ...), with the network
//!   namespace handle(s) it needs bind-mounted into its `netns/` first, so
//!   `/run/netns/<node>` still resolves;
//! - `<lab>/nodes/<node>/var-lib` is bind-mounted over `/var/lib`
//!   (`/var/lib/cni`, `/var/lib/rancher/k3s`).
//!
//! The default paths of the agent and of the CNI plugins then work
//! unchanged, and all they write lands in the lab directory. The mounts
//! vanish with the process.
//!
//! The agent stays in the machine's network namespace (so it reaches the
//! API server on 127.0.0.1) and gets `--netns /run/netns/<node>`: the
//! library does its netlink work in that namespace from a thread that
//! entered it. It binds only its own namespace handle, so a long-running
//! agent never pins other namespaces. Commands run *in* the node (CNI
//! plugins, `flannel-lab exec`) also enter its network namespace with
//! `ip netns exec`, after the mounts; they bind all of `/run/netns` (pods'
//! namespaces included) for the short time they run.
//!
//! An agent may also get a read-only `/proc/sys` ([`ProcSys::ReadOnly`]),
//! as a container runtime gives a non-privileged pod: `/proc/sys` is
//! bind-mounted over itself and remounted read-only in the agent's mount
//! namespace only, so its sysctl writes fail with EROFS while everything
//! else on the node (CNI plugins, `exec`) still sees it writable.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The shell prelude: `$1` node run dir, `$2` node var-lib dir, `$3` `one`
/// (bind only `/run/netns/$4`) or `all` (bind all of `/run/netns`), `$4`
/// the node's netns name, `$5` `enter` (run the command with
/// `ip netns exec $4`) or `stay`, `$6` `rw` or `ro` (`/proc/sys`
/// read-only); the command follows.
const PRELUDE: &str = r#"set -e
run=$1 varlib=$2 mode=$3 node=$4 enter=$5 procsys=$6
shift 6
if [ "$procsys" = ro ]; then
    mount --bind /proc/sys /proc/sys
    mount -o remount,bind,ro /proc/sys
fi
if [ "$mode" = all ]; then
    mount --rbind /run/netns "$run/netns"
else
    mount --bind "/run/netns/$node" "$run/netns/$node"
fi
mount --rbind "$run" /run
mount --rbind "$varlib" /var/lib
if [ "$enter" = enter ]; then
    exec ip netns exec "$node" "$@"
fi
exec "$@"
"#;

/// How a sandboxed process sees `/proc/sys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcSys {
    /// As the machine has it (writable for root).
    #[default]
    Writable,
    /// Read-only (a bind mount over itself, remounted `ro`): sysctl writes
    /// fail with EROFS.
    ReadOnly,
}

/// A lab node's filesystem view and network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSandbox {
    /// The node's network namespace (`ip netns` name).
    pub netns: String,
    /// Stands in for `/run`.
    pub run_dir: PathBuf,
    /// Stands in for `/var/lib`.
    pub var_lib_dir: PathBuf,
}

impl NodeSandbox {
    /// The sandbox of a node whose directory is `node_dir`.
    pub fn new(netns: &str, node_dir: &Path) -> NodeSandbox {
        NodeSandbox {
            netns: netns.to_string(),
            run_dir: node_dir.join("run"),
            var_lib_dir: node_dir.join("var-lib"),
        }
    }

    /// Creates the directories and the mount point for the namespace
    /// handle.
    pub fn prepare(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.run_dir.join("netns"))?;
        std::fs::create_dir_all(self.run_dir.join("flannel"))?;
        std::fs::create_dir_all(&self.var_lib_dir)?;
        let handle = self.run_dir.join("netns").join(&self.netns);
        if !handle.exists() {
            std::fs::write(handle, b"")?;
        }
        Ok(())
    }

    /// `/run/flannel/subnet.env` of the node, seen from outside.
    pub fn subnet_env(&self) -> PathBuf {
        self.run_dir.join("flannel/subnet.env")
    }

    /// The node's `/var/lib/rancher/k3s` (the agent's default data dir),
    /// seen from outside.
    pub fn data_dir(&self) -> PathBuf {
        self.var_lib_dir.join("rancher/k3s")
    }

    fn command(
        &self,
        mode: &str,
        enter: bool,
        proc_sys: ProcSys,
        program: &Path,
        args: &[String],
    ) -> Command {
        let mut command = Command::new("unshare");
        command
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                PRELUDE,
                "sh",
            ])
            .arg(&self.run_dir)
            .arg(&self.var_lib_dir)
            .arg(mode)
            .arg(&self.netns)
            .arg(if enter { "enter" } else { "stay" })
            .arg(match proc_sys {
                ProcSys::Writable => "rw",
                ProcSys::ReadOnly => "ro",
            })
            .arg(program)
            .args(args);
        command
    }

    /// A command that runs inside the node: its mounts and its network
    /// namespace (what `flannel-lab exec` and the CNI plugins get).
    pub fn inside(&self, program: impl AsRef<Path>, args: &[String]) -> Command {
        self.command("all", true, ProcSys::Writable, program.as_ref(), args)
    }

    /// A command that sees the node's files but stays in the caller's
    /// network namespace, with `/run/netns/<node>` available: the agent,
    /// run with `--netns /run/netns/<node>`.
    pub fn files_only(&self, program: impl AsRef<Path>, args: &[String]) -> Command {
        self.agent(program, args, ProcSys::Writable)
    }

    /// [`NodeSandbox::files_only`] with the given view of `/proc/sys`.
    pub fn agent(&self, program: impl AsRef<Path>, args: &[String], proc_sys: ProcSys) -> Command {
        self.command("one", false, proc_sys, program.as_ref(), args)
    }
}
