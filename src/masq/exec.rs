//! Running the standard binaries (`iptables-save`, `iptables-restore`,
//! `nft`, ...) inside a network namespace: with a namespace path the
//! command runs as `nsenter --net=<path> -- <program> <args>` (util-linux),
//! so only the child process enters the namespace and no thread of ours
//! ever changes namespace.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::MasqError;

/// How long one command may run before it is killed.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// nsenter's (and the shell's) exit status when the program to execute
/// does not exist.
const EXIT_NOT_FOUND: i32 = 127;

/// Runs commands in one network namespace (`None`: our own).
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    netns: Option<PathBuf>,
    timeout: Duration,
}

impl Runner {
    pub(crate) fn new(netns: Option<&Path>) -> Runner {
        Runner {
            netns: netns.map(Path::to_path_buf),
            timeout: COMMAND_TIMEOUT,
        }
    }

    /// How errors name the namespace.
    pub(crate) fn label(&self) -> String {
        match &self.netns {
            Some(path) => format!("network namespace {}", path.display()),
            None => "the agent's own network namespace".to_string(),
        }
    }

    /// Runs `program args` with `stdin` (if any) and returns its stdout;
    /// a non-zero exit is an error carrying the command and its stderr.
    pub(crate) fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, MasqError> {
        let command_text = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let mut command = match &self.netns {
            Some(path) => {
                let mut net = OsString::from("--net=");
                net.push(path);
                let mut command = Command::new("nsenter");
                command.arg(net).arg("--").arg(program);
                command
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_error = |source: io::Error| {
            if source.kind() == io::ErrorKind::NotFound {
                MasqError::Missing {
                    program: if self.netns.is_some() {
                        "nsenter".to_string()
                    } else {
                        program.to_string()
                    },
                    netns: self.label(),
                }
            } else {
                MasqError::Spawn {
                    command: command_text.clone(),
                    netns: self.label(),
                    source,
                }
            }
        };
        let mut child = command.spawn().map_err(spawn_error)?;
        let write_result = match (stdin, child.stdin.take()) {
            (Some(text), Some(mut pipe)) => {
                // The programs we feed read all of stdin before printing
                // anything, so writing first cannot deadlock on a full
                // stdout pipe.
                pipe.write_all(text.as_bytes())
            }
            _ => Ok(()),
        };
        // Waited for on a thread of its own, so that a command that hangs
        // (`-w` waits for the xtables lock without end) is killed after
        // COMMAND_TIMEOUT instead of stalling the rule loop, and shutdown,
        // which waits for it, for good.
        let pid = child.id();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("flannel-cmd".into())
            .spawn(move || {
                let _ = done_tx.send(child.wait_with_output());
            })
            .map_err(|source| MasqError::Spawn {
                command: command_text.clone(),
                netns: self.label(),
                source,
            })?;
        let waited = match done.recv_timeout(self.timeout) {
            Ok(waited) => waited,
            Err(_) => {
                // SAFETY: kill only sends a signal; the child has not been
                // reaped (its waiter has not returned), so the pid is still
                // ours.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                let _ = done.recv();
                return Err(MasqError::TimedOut {
                    command: command_text,
                    netns: self.label(),
                    after: self.timeout,
                });
            }
        };
        let output = waited.map_err(|source| MasqError::Spawn {
            command: command_text.clone(),
            netns: self.label(),
            source,
        })?;
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if output.status.code() == Some(EXIT_NOT_FOUND) {
            return Err(MasqError::Missing {
                program: program.to_string(),
                netns: self.label(),
            });
        }
        if !output.status.success() {
            return Err(MasqError::Failed {
                command: command_text,
                netns: self.label(),
                status: output.status.to_string(),
                stderr,
            });
        }
        if let Err(source) = write_result {
            return Err(MasqError::Spawn {
                command: command_text,
                netns: self.label(),
                source,
            });
        }
        String::from_utf8(output.stdout).map_err(|_| MasqError::Parse {
            command: command_text,
            netns: self.label(),
            problem: "output is not UTF-8".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_command_that_hangs_is_killed_after_the_timeout() {
        let runner = Runner {
            netns: None,
            timeout: Duration::from_millis(200),
        };
        let started = Instant::now();
        let error = runner.run("sleep", &["30"], None).unwrap_err();
        assert!(
            matches!(&error, MasqError::TimedOut { command, .. } if command == "sleep 30"),
            "{error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "killed, not waited for"
        );
        // A quick command is unaffected.
        assert_eq!(runner.run("echo", &["hi"], None).unwrap(), "hi\n");
    }
}
