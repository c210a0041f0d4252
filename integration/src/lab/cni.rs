//! Attaching a lab pod the way a container runtime on the node would: the
//! conflist the node's agent wrote, read from its default path and run
//! unchanged by the libcni-like runner, with the project's `flannel`
//! plugin first on CNI_PATH. This part runs *inside* the node (its mounts
//! and network namespace, see [`super::sandbox`]); `flannel-lab`'s hidden
//! `cni` subcommand is its entry point.

use std::path::{Path, PathBuf};

use crate::cni_runner::{Attachment, ConfList, Runner};

/// Where the agent (default `--data-dir`) writes the conflist.
pub const CONFLIST: &str = "/var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist";

/// libcni's default cache directory.
pub const CACHE_DIR: &str = "/var/lib/cni";

/// Runs `command` (`ADD` or `DEL`) for `container_id` with namespace
/// `netns`, plugins from `cni_path`, the conflist at `conflist` (default
/// [`CONFLIST`], the agent's). Returns the ADD result as JSON text (DEL:
/// empty).
pub fn run_on_node(
    command: &str,
    container_id: &str,
    netns: &Path,
    cni_path: Vec<PathBuf>,
    conflist: Option<&Path>,
) -> Result<String, String> {
    let conflist = conflist.unwrap_or(Path::new(CONFLIST));
    let text = std::fs::read_to_string(conflist)
        .map_err(|e| format!("reading the conflist {}: {e}", conflist.display()))?;
    let list = ConfList::parse(&text).map_err(|e| format!("{}: {e}", conflist.display()))?;
    let runner = Runner::new(list, cni_path, Path::new(CACHE_DIR));
    let attachment = Attachment::new(container_id, netns);
    match command {
        "ADD" => runner
            .add(&attachment)
            .map(|result| result.to_string())
            .map_err(|e| format!("CNI ADD {container_id}: {e}")),
        "DEL" => runner
            .del(&attachment)
            .map(|()| String::new())
            .map_err(|e| format!("CNI DEL {container_id}: {e}")),
        other => Err(format!("unknown CNI command {other:?} (ADD or DEL)")),
    }
}
