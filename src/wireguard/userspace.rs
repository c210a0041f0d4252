//! Starting a userspace WireGuard implementation the way wg-quick does
//! (`$WG_QUICK_USERSPACE_IMPLEMENTATION IFNAME`, default `wireguard-go`),
//! inside the node's network namespace, and noticing when it ends.
//!
//! The program runs in the foreground (`-f`, so the process we hold is the
//! implementation itself) in a session of its own, with its output in a log
//! file next to subnet.env. It is not stopped when the task stops: like a
//! kernel device, the tunnel outlives the agent so pods keep talking across
//! an agent restart, and the next start finds the device and its socket and
//! keeps them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::WgError;

/// How long the program may take to create its device and socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Who answers on a control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketOwner {
    /// Nothing answers (no file, or a stale one).
    Nobody,
    /// An implementation in the network namespace we work in.
    Ours(u32),
    /// An implementation in another network namespace: `/var/run/wireguard`
    /// is one directory for every namespace that shares the mount
    /// namespace, so its socket shadows ours.
    Elsewhere(u32),
}

/// Connects to `socket` (at most 1 s) and tells, from the peer's
/// credentials, whether the implementation behind it runs in `netns` (the
/// caller's own namespace when `None`).
pub async fn socket_owner(socket: &Path, netns: Option<&Path>) -> SocketOwner {
    use std::os::unix::fs::MetadataExt;
    let connect = tokio::net::UnixStream::connect(socket);
    let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(1), connect).await else {
        return SocketOwner::Nobody;
    };
    let Some(pid) = stream
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .and_then(|p| u32::try_from(p).ok())
    else {
        return SocketOwner::Nobody;
    };
    let ours = netns.map_or_else(
        || Path::new("/proc/self/ns/net").to_path_buf(),
        Path::to_path_buf,
    );
    let inode = |path: &Path| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino());
    match (inode(&ours), theirs) {
        (Some((_, a)), Some(b)) if a == b => SocketOwner::Ours(pid),
        _ => SocketOwner::Elsewhere(pid),
    }
}

/// A running userspace implementation we started.
#[derive(Debug)]
pub struct UserspaceProcess {
    device: String,
    child: tokio::process::Child,
    log: PathBuf,
}

impl UserspaceProcess {
    /// Starts `program -f device` in `netns` (the caller's namespace when
    /// `None`) and waits until `socket` answers to connections. Output goes
    /// to `log`.
    pub async fn start(
        program: &Path,
        device: &str,
        netns: Option<&Path>,
        socket: &Path,
        log: &Path,
    ) -> Result<UserspaceProcess, WgError> {
        let fail = |problem: String| WgError::Userspace {
            device: device.to_string(),
            problem,
        };
        match socket_owner(socket, netns).await {
            SocketOwner::Elsewhere(pid) => {
                return Err(fail(format!(
                    "its control socket {} is taken by a WireGuard implementation (pid {pid}) in another network namespace: every namespace that shares this mount namespace shares {}; run each node with its own /run (a private mount namespace)",
                    socket.display(),
                    socket.parent().map_or_else(String::new, |d| d.display().to_string())
                )))
            }
            // A stale file left by an implementation that died.
            SocketOwner::Nobody if socket.exists() => {
                let _ = std::fs::remove_file(socket);
            }
            _ => {}
        }
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        }
        if let Some(dir) = log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let output = File::create(log)
            .map_err(|e| fail(format!("cannot create its log file {}: {e}", log.display())))?;
        let errors = output
            .try_clone()
            .map_err(|e| fail(format!("cannot share its log file: {e}")))?;
        let namespace = match netns {
            Some(path) => Some(File::open(path).map_err(|e| {
                fail(format!(
                    "cannot open the network namespace {}: {e}",
                    path.display()
                ))
            })?),
            None => None,
        };
        let mut command = tokio::process::Command::new(program);
        command
            .arg("-f")
            .arg(device)
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(errors))
            .kill_on_drop(false);
        let namespace_fd = namespace.as_ref().map(AsRawFd::as_raw_fd);
        // SAFETY: between fork and exec the child only makes two system
        // calls (setsid, setns), both async-signal-safe; the namespace fd
        // stays open in the parent until spawn returns.
        unsafe {
            command.pre_exec(move || {
                libc::setsid();
                if let Some(fd) = namespace_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| {
            fail(format!(
                "cannot start {} (set the userspace WireGuard program, or install wireguard-go): {e}",
                program.display()
            ))
        })?;
        drop(namespace);
        let started = tokio::time::Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(format!(
                    "{} {device} exited with {status} before its control socket appeared: {}",
                    program.display(),
                    log_tail(log)
                )));
            }
            if let SocketOwner::Ours(_) = socket_owner(socket, netns).await {
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                return Err(fail(format!(
                    "{} made no control socket at {} within {} s: {}",
                    program.display(),
                    socket.display(),
                    START_TIMEOUT.as_secs(),
                    log_tail(log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(UserspaceProcess {
            device: device.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `Some(why)` once the process has ended (it is reaped then).
    pub fn ended(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "the userspace WireGuard implementation for {} ended ({status}): {}",
                self.device,
                log_tail(&self.log)
            )),
            Ok(None) => None,
            Err(e) => Some(format!(
                "cannot check the userspace WireGuard implementation for {}: {e}",
                self.device
            )),
        }
    }

    /// Its device is gone: wait a moment for the process to end (a dying
    /// implementation loses its device before it can be reaped), stop it
    /// if it still runs, and say what happened.
    pub async fn device_gone(mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
            Ok(Ok(status)) => format!(
                "the userspace WireGuard implementation for {} ended ({status}): {}",
                self.device,
                log_tail(&self.log)
            ),
            _ => {
                let _ = self.child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
                format!(
                    "the userspace WireGuard implementation for {} still ran without its device; stopped it",
                    self.device
                )
            }
        }
    }
}

/// The last line of the program's log, for error messages.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let last: Vec<&str> = text.lines().rev().take(3).collect();
    if last.is_empty() {
        format!("nothing in {}", log.display())
    } else {
        let mut lines: Vec<&str> = last.into_iter().rev().collect();
        lines.retain(|l| !l.trim().is_empty());
        format!("{} (from {})", lines.join(" / "), log.display())
    }
}
