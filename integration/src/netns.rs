//! Network namespaces that tests make and always delete, so nothing runs in
//! (or routes through) the machine's own namespace.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace `ip netns add` made, deleted on drop (also when the
/// test fails). Names are unique per process and call.
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Creates `fe<tag><pid>-<n>` (at most 15 characters of tag).
    pub fn new(tag: &str) -> TestNetns {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let tag: String = tag
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(15)
            .collect();
        let name = format!(
            "fe-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let netns = TestNetns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the handle `--netns` takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <name> <args>`; panics with ip's message on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let output = run(Command::new("ip").arg("-n").arg(&self.name).args(args));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs a command inside the namespace and returns its output, whatever
    /// its exit status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.name))
    }

    /// Gives the namespace an "uplink": a veth pair whose both ends live
    /// inside it, `addr` (CIDR) on `eth0`, and a default route via `gateway`
    /// on it, so interface detection has something real to find.
    pub fn with_uplink(self, addr: &str, gateway: &str) -> TestNetns {
        self.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0-peer",
        ]);
        self.ip(&["addr", "add", addr, "dev", "eth0"]);
        self.ip(&["link", "set", "eth0", "up"]);
        self.ip(&["link", "set", "eth0-peer", "up"]);
        self.ip(&[
            "route", "add", "default", "via", gateway, "dev", "eth0", "onlink",
        ]);
        self
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
