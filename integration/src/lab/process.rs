//! Background processes the lab starts (the API server, one agent per
//! node): started in their own session with output to a log file, recorded
//! by pid *and* start time so a later `flannel-lab` invocation never signals
//! a process that merely reuses the pid.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::LabError;

/// A process the lab started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    /// Its pid.
    pub pid: u32,
    /// Its start time (field 22 of `/proc/<pid>/stat`, clock ticks since
    /// boot): together with the pid it names this process only.
    pub start_time: u64,
    /// What it is, for messages (`test-apiserver`, `flannel-agent node-0`).
    pub what: String,
}

/// A process's start time (see [`ProcRef::start_time`]).
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// State letter and start time from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, start_time))
}

impl ProcRef {
    /// Whether this very process still runs (not a zombie, pid not reused).
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }

    /// Sends `signal` (`TERM`, `KILL`, ...) if it still runs.
    pub fn signal(&self, signal: &str) {
        if self.alive() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(self.pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. `child` (when this
    /// process is ours) is reaped so no zombie stays.
    pub fn stop(&self, grace: Duration, child: Option<&mut Child>) {
        self.signal("TERM");
        let deadline = Instant::now() + grace;
        // A child of ours that exited is a zombie until reaped: not alive.
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.alive() {
            self.signal("KILL");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        match child {
            Some(child) => {
                while !matches!(child.try_wait(), Ok(Some(_)) | Err(_)) && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            None => {
                while self.alive() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// Starts `program args` in a new session (`setsid`, so the terminal's
/// Ctrl-C and hang-up do not reach it and it outlives `flannel-lab up`),
/// stdin from /dev/null, stdout to `stdout` (or the log) and stderr
/// appended to `log`.
pub(crate) fn spawn_background(
    what: &str,
    command: Command,
    stdout: Option<&Path>,
    log: &Path,
) -> Result<(ProcRef, Child), LabError> {
    let step = format!("starting {what}");
    let open_log = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| LabError::new(&step, format!("log file {}: {e}", log.display())))
    };
    let err = open_log()?;
    let out = match stdout {
        Some(path) => std::fs::File::create(path)
            .map_err(|e| LabError::new(&step, format!("{}: {e}", path.display())))?,
        None => open_log()?,
    };
    // setsid(1) execs in place (no fork) because a child of ours is not a
    // process group leader: the pid we get is the final program's.
    let mut wrapped = Command::new("setsid");
    wrapped.arg(command.get_program()).args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    let child = wrapped
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| LabError::new(&step, format!("cannot run setsid: {e}")))?;
    let pid = child.id();
    let start_time = stat(pid)
        .map(|(_, start)| start)
        .ok_or_else(|| LabError::new(&step, format!("process {pid} vanished at once")))?;
    Ok((
        ProcRef {
            pid,
            start_time,
            what: what.to_string(),
        },
        child,
    ))
}

/// The last `lines` lines of a log file (for error messages).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A helper process for a test or demo (an HTTP server in a pod, a
/// tcpdump on a node), with stdout and stderr in files; killed and reaped
/// when dropped.
pub struct Background {
    child: Child,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
}

impl Background {
    /// Starts `command` with stdout and stderr going to
    /// `<dir>/<name>.out` and `<dir>/<name>.err`.
    pub fn start(mut command: Command, dir: &Path, name: &str) -> Result<Background, LabError> {
        let step = format!("starting {name}");
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let open = |path: &Path| {
            std::fs::File::create(path)
                .map_err(|e| LabError::new(&step, format!("{}: {e}", path.display())))
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(open(&stdout)?)
            .stderr(open(&stderr)?)
            .spawn()
            .map_err(|e| LabError::new(&step, format!("cannot run it: {e}")))?;
        Ok(Background {
            child,
            stdout,
            stderr,
        })
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits up to `limit` for it to exit by itself; true if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
