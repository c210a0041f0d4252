//! Running the delegate plugin from CNI_PATH, the way libcni's invoke
//! package does: same environment with CNI_COMMAND set, config on stdin,
//! result or error JSON on stdout, stderr passed through.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::Error;

/// Finds `plugin` in the `:`-separated CNI_PATH.
pub fn find_in_path(plugin: &str, cni_path: &str) -> Result<PathBuf, Error> {
    if plugin.is_empty() {
        return Err(Error::DelegateExec("no plugin name provided".into()));
    }
    if plugin.contains('/') {
        return Err(Error::DelegateExec(format!(
            "invalid plugin name {plugin:?}: it must not contain a path separator"
        )));
    }
    let dirs: Vec<&str> = cni_path.split(':').filter(|d| !d.is_empty()).collect();
    dirs.iter()
        .map(|dir| Path::new(dir).join(plugin))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            Error::DelegateExec(format!("failed to find plugin {plugin:?} in path {dirs:?}"))
        })
}

/// Runs `exe` with `CNI_COMMAND=command`, `stdin` as its config and the
/// environment overrides (`None` removes a variable). Returns its stdout on
/// success; a CNI error it prints becomes [`Error::DelegateFailed`] with
/// its code.
pub fn exec(
    exe: &Path,
    plugin: &str,
    command: &'static str,
    stdin: &[u8],
    env: &[(&str, Option<&str>)],
) -> Result<Vec<u8>, Error> {
    let mut cmd = Command::new(exe);
    cmd.env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    // A binary that is being replaced gives ETXTBSY for a moment; libcni
    // retries too.
    let mut attempts = 0;
    let mut child = loop {
        match cmd.spawn() {
            Ok(child) => break child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 5 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(Error::DelegateExec(format!(
                    "failed to run delegate plugin {}: {e}",
                    exe.display()
                )))
            }
        }
    };
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits without reading its config gives EPIPE; its
        // exit status tells the real story.
        match input.write_all(stdin) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::DelegateExec(format!(
                    "failed to write the config to delegate plugin {plugin:?}: {e}"
                )));
            }
        }
    }
    let output = child.wait_with_output().map_err(|e| {
        Error::DelegateExec(format!(
            "failed to wait for delegate plugin {plugin:?}: {e}"
        ))
    })?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    Err(delegate_failure(
        plugin,
        command,
        &output.status,
        &output.stdout,
    ))
}

/// The delegate's VERSION answer: the versions it supports.
pub fn supported_versions(exe: &Path, plugin: &str, ask_as: &str) -> Result<Vec<String>, Error> {
    let stdin = serde_json::json!({ "cniVersion": ask_as }).to_string();
    let stdout = exec(exe, plugin, "VERSION", stdin.as_bytes(), &[])?;
    let bad = |problem: String| Error::DelegateOutput {
        plugin: plugin.to_string(),
        problem,
    };
    let value: Value = serde_json::from_slice(&stdout)
        .map_err(|e| bad(format!("VERSION did not print JSON: {e}")))?;
    value
        .get("supportedVersions")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .ok_or_else(|| bad(format!("VERSION printed no supportedVersions: {value}")))
}

fn delegate_failure(
    plugin: &str,
    command: &'static str,
    status: &std::process::ExitStatus,
    stdout: &[u8],
) -> Error {
    let parsed: Option<Value> = serde_json::from_slice(stdout).ok();
    let code = parsed
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok());
    match (code, parsed.as_ref()) {
        (Some(code), Some(value)) => Error::DelegateFailed {
            command,
            code,
            msg: value
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            details: value
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        },
        _ => Error::DelegateOutput {
            plugin: plugin.to_string(),
            problem: format!(
                "{command} failed ({status}) without a CNI error; stdout: {:?}",
                String::from_utf8_lossy(stdout)
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn finds_plugins_in_order_and_rejects_paths() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let in_b = script(b.path(), "bridge", "exit 0");
        let path = format!("{}::{}", a.path().display(), b.path().display());
        assert_eq!(find_in_path("bridge", &path).unwrap(), in_b);
        let in_a = script(a.path(), "bridge", "exit 0");
        assert_eq!(find_in_path("bridge", &path).unwrap(), in_a);
        for (plugin, wanted) in [
            ("macvlan", "failed to find plugin \"macvlan\" in path"),
            ("../bridge", "must not contain a path separator"),
            ("", "no plugin name"),
        ] {
            let message = find_in_path(plugin, &path).unwrap_err().to_string();
            assert!(message.contains(wanted), "{message}");
        }
    }

    #[test]
    fn passes_config_env_and_reads_results_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let echo = script(
            dir.path(),
            "echo",
            r#"read -r line; printf '{"cmd":"%s","x":"%s","in":%s}' "$CNI_COMMAND" "${X-unset}" "$line""#,
        );
        let out = exec(&echo, "echo", "ADD", b"{\"a\":1}\n", &[("X", Some("y"))]).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            serde_json::json!({"cmd": "ADD", "x": "y", "in": {"a": 1}})
        );
        std::env::set_var("FLANNEL_EXEC_TEST_X", "1");
        let removed = script(
            dir.path(),
            "env",
            r#"printf '"%s"' "${FLANNEL_EXEC_TEST_X-unset}""#,
        );
        let out = exec(
            &removed,
            "env",
            "DEL",
            b"",
            &[("FLANNEL_EXEC_TEST_X", None)],
        )
        .unwrap();
        assert_eq!(out, b"\"unset\"");

        let failing = script(
            dir.path(),
            "failing",
            r#"printf '{"code":11,"msg":"busy","details":"later"}'; exit 1"#,
        );
        match exec(&failing, "failing", "ADD", b"{}", &[]).unwrap_err() {
            Error::DelegateFailed {
                code, msg, details, ..
            } => assert_eq!(
                (code, msg.as_str(), details.as_str()),
                (11, "busy", "later")
            ),
            other => panic!("{other:?}"),
        }
        let garbage = script(dir.path(), "garbage", "echo oops; exit 3");
        let error = exec(&garbage, "garbage", "DEL", b"{}", &[]).unwrap_err();
        assert_eq!(error.code(), 102);
        assert!(error.to_string().contains("oops"), "{error}");
    }

    #[test]
    fn reads_supported_versions() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "p",
            r#"[ "$CNI_COMMAND" = VERSION ] && printf '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}'"#,
        );
        assert_eq!(
            supported_versions(&plugin, "p", "1.1.0").unwrap(),
            ["0.4.0", "1.0.0"]
        );
    }
}
