//! The CNI commands: environment and stdin in, stdout and exit code out.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Map, Value};
use tracing::{debug, warn};

use super::delegate::{build_delegate, delegate_type, render_delegate};
use super::exec::{exec, find_in_path, supported_versions};
use super::state;
use super::version::{convert_result, fill_route_gateways, negotiate_delegate_version, CniVersion};
use super::{Error, NetConf};
use crate::files::{FileError, SubnetEnv};

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The result, version info or error JSON for stdout (`None`: print
    /// nothing).
    pub stdout: Option<String>,
    /// The process exit code: 0 on success, 1 on error.
    pub exit_code: u8,
}

/// The ifname GC assumes for attachments it must tear down: the saved
/// config does not record one, and Kubernetes always uses `eth0`.
pub const GC_IFNAME: &str = "eth0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    fn parse(text: &str) -> Option<Command> {
        Some(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// CNI_* variables the command needs (libcni's skel table).
    fn required_env(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Status | Command::Gc => &["CNI_PATH"],
            Command::Version => &[],
        }
    }
}

/// The CNI_* environment of one invocation.
struct Args {
    container_id: String,
    cni_path: String,
}

/// Runs one plugin invocation: `env` looks up environment variables, stdin
/// is read unless the command is VERSION. Never panics; every failure is a
/// CNI error on stdout with exit code 1.
pub fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &mut dyn Read) -> Outcome {
    let command = env("CNI_COMMAND").filter(|c| !c.is_empty());
    let Some(command) = command else {
        eprintln!(
            "CNI plugin flannel (flannel-embed {})\nCNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            CniVersion::supported_strings().join(", ")
        );
        return Outcome {
            stdout: None,
            exit_code: 0,
        };
    };
    let mut version = CniVersion::LATEST;
    match dispatch(&command, env, stdin, &mut version) {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(error) => {
            debug!(%error, code = error.code(), "{command} failed");
            Outcome {
                stdout: Some(error.to_json(version).to_string()),
                exit_code: 1,
            }
        }
    }
}

fn dispatch(
    command_text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    version_out: &mut CniVersion,
) -> Result<Option<String>, Error> {
    let read_stdin = || {
        // A conflist entry is a few hundred bytes: one read, not a doubling
        // series of small ones.
        let mut bytes = Vec::with_capacity(4096);
        stdin
            .read_to_end(&mut bytes)
            .map_err(|e| Error::Decode(format!("reading the network config from stdin: {e}")))?;
        Ok(bytes)
    };
    let Some(invocation) = read_invocation(command_text, env, read_stdin, version_out)? else {
        return Ok(Some(version_info()));
    };
    let Invocation {
        command,
        args,
        conf,
        version,
    } = invocation;
    match command {
        Command::Add => add(&args, &conf, version).map(Some),
        Command::Del => del(&args, &conf).map(|()| None),
        Command::Check => check(&args, &conf, version).map(|()| None),
        Command::Status => status(&args, &conf).map(|()| None),
        Command::Gc => gc(&args, &conf).map(|()| None),
        Command::Version => Ok(Some(version_info())),
    }
}

/// One invocation as the environment and stdin give it: everything the
/// plugin decides before it reads a file or runs a delegate.
struct Invocation {
    command: Command,
    args: Args,
    conf: NetConf,
    version: CniVersion,
}

/// Reads the command, the CNI_* variables and (through `read_stdin`, not
/// for VERSION) the network config; `Ok(None)` for VERSION. Pure: no file
/// is read and nothing is run. `version_out` gets the config's version as
/// soon as it is known, for the error's JSON.
fn read_invocation(
    command_text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    read_stdin: impl FnOnce() -> Result<Vec<u8>, Error>,
    version_out: &mut CniVersion,
) -> Result<Option<Invocation>, Error> {
    let command = Command::parse(command_text)
        .ok_or_else(|| Error::Env(format!("unknown CNI_COMMAND: {command_text}")))?;
    if command == Command::Version {
        return Ok(None);
    }
    let get = |name: &str| env(name).filter(|v| !v.is_empty());
    let missing: Vec<&str> = command
        .required_env()
        .iter()
        .copied()
        .filter(|name| get(name).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Env(format!(
            "required env variables [{}] missing",
            missing.join(",")
        )));
    }
    let bytes = read_stdin()?;
    // libcni reads a config without cniVersion as 0.1.0.
    let requested = super::netconf::config_version(&bytes)?.unwrap_or_else(|| "0.1.0".into());
    let version: CniVersion = requested
        .parse()
        .map_err(|_| Error::IncompatibleVersion { requested })?;
    *version_out = version;
    let not_in_version = match command {
        Command::Check if version < CniVersion::V0_4_0 => Some("CHECK"),
        Command::Status if version < CniVersion::V1_1_0 => Some("STATUS"),
        Command::Gc if version < CniVersion::V1_1_0 => Some("GC"),
        _ => None,
    };
    if let Some(command) = not_in_version {
        return Err(Error::CommandNotInVersion { command, version });
    }
    let args = Args {
        container_id: get("CNI_CONTAINERID").unwrap_or_default(),
        cni_path: get("CNI_PATH").unwrap_or_default(),
    };
    if matches!(command, Command::Add | Command::Del | Command::Check) {
        validate_container_id(&args.container_id)?;
        validate_ifname(&get("CNI_IFNAME").unwrap_or_default())?;
    }
    let conf = NetConf::parse(&bytes)?;
    Ok(Some(Invocation {
        command,
        args,
        conf,
        version,
    }))
}

/// What the plugin does with outside input up to the delegate's exec,
/// without a file or a process: the invocation from `env` and `stdin`,
/// then for ADD the delegate config built from `subnet_env` (the
/// subnet.env text) and saved, and that saved config read back as DEL
/// reads it. Returns the CNI error JSON (`Err`) or the delegate config
/// ADD would save (`Ok(None)` for other commands). For the fuzz targets;
/// it must never panic.
#[doc(hidden)]
pub fn invocation_until_exec(
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
    subnet_env: &str,
) -> Result<Option<Vec<u8>>, String> {
    let command = env("CNI_COMMAND").unwrap_or_default();
    let mut version = CniVersion::LATEST;
    let run = |version: &mut CniVersion| -> Result<Option<Vec<u8>>, Error> {
        let invocation = read_invocation(&command, env, || Ok(stdin.to_vec()), version)?;
        let Some(invocation) = invocation.filter(|i| i.command == Command::Add) else {
            return Ok(None);
        };
        let subnet = SubnetEnv::parse(subnet_env).map_err(|problem| Error::SubnetEnvInvalid {
            path: invocation.conf.subnet_file.clone(),
            problem,
        })?;
        let delegate = build_delegate(&invocation.conf, &subnet)?;
        let bytes = render_delegate(&delegate);
        // DEL must be able to use what ADD saves.
        let path = state::state_path(&invocation.conf.data_dir, &invocation.args.container_id);
        let (read_back, kind) = parse_saved(&path, &bytes).ok_or_else(|| {
            Error::Decode(format!(
                "the saved delegate config is not readable: {}",
                String::from_utf8_lossy(&bytes)
            ))
        })?;
        if read_back != delegate || kind != delegate_type(&delegate) {
            return Err(Error::Decode(
                "the saved delegate config reads back differently".into(),
            ));
        }
        Ok(Some(bytes))
    };
    run(&mut version).map_err(|error| error.to_json(version).to_string())
}

/// `VERSION`'s answer.
pub fn version_info() -> String {
    json!({
        "cniVersion": CniVersion::LATEST.as_str(),
        "supportedVersions": CniVersion::supported_strings(),
    })
    .to_string()
}

/// libcni's rule: an alphanumeric first character, then alphanumerics,
/// `_`, `.` and `-`. It also keeps the ID safe as a file name in dataDir.
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn validate_container_id(id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::MissingContainerId);
    }
    if !valid_container_id(id) {
        return Err(Error::Env(format!(
            "invalid characters in containerID {id:?}"
        )));
    }
    Ok(())
}

fn validate_ifname(name: &str) -> Result<(), Error> {
    let problem = if name.is_empty() {
        "interface name is empty"
    } else if name.len() > 15 {
        "interface name is too long"
    } else if name == "." || name == ".." {
        "interface name is . or .."
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        "interface name contains / or : or whitespace characters"
    } else {
        return Ok(());
    };
    Err(Error::Env(format!("{problem}: {name:?}")))
}

fn read_subnet_env(path: &Path) -> Result<SubnetEnv, Error> {
    SubnetEnv::read(path).map_err(|error| match error {
        FileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::SubnetEnvMissing {
                path: path.to_path_buf(),
            }
        }
        FileError::Io { source, .. } => Error::SubnetEnvUnreadable {
            path: path.to_path_buf(),
            source,
        },
        FileError::SubnetEnv { problem, .. } => Error::SubnetEnvInvalid {
            path: path.to_path_buf(),
            problem,
        },
    })
}

fn add(args: &Args, conf: &NetConf, version: CniVersion) -> Result<String, Error> {
    let started = Instant::now();
    let env = read_subnet_env(&conf.subnet_file)?;
    let mut delegate = build_delegate(conf, &env)?;
    let plugin = delegate_type(&delegate).to_string();
    let exe = find_in_path(&plugin, &args.cni_path)?;
    // Every delegate speaks 1.0.0 and older; 1.1.0 is asked for only when
    // the delegate says it knows it (bridge v1.1.1 does not).
    if version > CniVersion::V1_0_0 {
        let theirs = supported_versions(&exe, &plugin, version.as_str())?;
        let chosen =
            negotiate_delegate_version(version, &theirs).ok_or_else(|| Error::DelegateVersion {
                plugin: plugin.clone(),
                supported: theirs.clone(),
            })?;
        delegate.insert("cniVersion".into(), Value::String(chosen.as_str().into()));
    }
    let bytes = render_delegate(&delegate);
    debug!(delegate = %String::from_utf8_lossy(&bytes), "ADD: delegate config");
    // In place before the delegate runs: a DEL after a killed ADD finds it.
    let saved = state::save(&conf.data_dir, &args.container_id, &bytes)?;
    let stdout = exec(&exe, &plugin, "ADD", &bytes, &[])?;
    let bad = |problem: String| Error::DelegateOutput {
        plugin: plugin.clone(),
        problem,
    };
    let result: Value = serde_json::from_slice(&stdout)
        .map_err(|e| bad(format!("ADD did not print a JSON result: {e}")))?;
    let result = convert_result(&result, version).map_err(|e| bad(e.to_string()))?;
    debug!(
        container = %args.container_id,
        saved = %saved.display(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ADD done"
    );
    Ok(result.to_string())
}

/// The saved delegate config as an object and its type; `None` (with a
/// warning) when the file is not a usable config.
fn parse_saved(path: &Path, bytes: &[u8]) -> Option<(Map<String, Value>, String)> {
    let parsed = serde_json::from_slice::<Value>(bytes);
    let Ok(Value::Object(saved)) = parsed else {
        warn!(path = %path.display(), "saved delegate config is not a JSON object; leaving it in place");
        return None;
    };
    let plugin = saved
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_string);
    match plugin {
        Some(plugin) if !plugin.is_empty() => Some((saved, plugin)),
        _ => {
            warn!(path = %path.display(), "saved delegate config has no type; leaving it in place");
            None
        }
    }
}

fn del(args: &Args, conf: &NetConf) -> Result<(), Error> {
    let path = state::state_path(&conf.data_dir, &args.container_id);
    let Some(bytes) = state::load(&path)? else {
        debug!(path = %path.display(), "DEL: no saved delegate config, nothing to do");
        return Ok(());
    };
    // What a power loss right after ADD can leave (the save is not
    // fsynced): a name without content. Nothing can be torn down with it,
    // and kept it would only come back in every GC.
    if bytes.iter().all(u8::is_ascii_whitespace) {
        warn!(path = %path.display(), "DEL: the saved delegate config is empty; removing it");
        return state::remove(&path);
    }
    // Like upstream: a config we cannot read cannot be torn down, and DEL
    // must not fail forever because of it.
    let Some((_, plugin)) = parse_saved(&path, &bytes) else {
        return Ok(());
    };
    let exe = find_in_path(&plugin, &args.cni_path)?;
    // The saved bytes go to the delegate unchanged; the file goes only
    // once the delegate's DEL succeeded, so a failed DEL can be retried.
    exec(&exe, &plugin, "DEL", &bytes, &[])?;
    if let Err(error) = state::remove(&path) {
        warn!(%error, "DEL succeeded but the saved delegate config stays");
    }
    Ok(())
}

fn check(args: &Args, conf: &NetConf, version: CniVersion) -> Result<(), Error> {
    let path = state::state_path(&conf.data_dir, &args.container_id);
    let Some(bytes) = state::load(&path)? else {
        return Err(Error::UnknownContainer {
            container_id: args.container_id.clone(),
            path,
        });
    };
    let Some((mut saved, plugin)) = parse_saved(&path, &bytes) else {
        return Err(Error::State {
            path,
            step: "use the saved delegate config",
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a delegate config"),
        });
    };
    let delegate_version = saved
        .get("cniVersion")
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
        .unwrap_or(version);
    if let Some(prev) = &conf.prev_result {
        let mut prev = convert_result(prev, delegate_version)
            .map_err(|e| Error::Decode(format!("prevResult: {e}")))?;
        fill_route_gateways(&mut prev);
        saved.insert("prevResult".into(), prev);
    }
    let exe = find_in_path(&plugin, &args.cni_path)?;
    exec(&exe, &plugin, "CHECK", &render_delegate(&saved), &[])?;
    Ok(())
}

fn status(args: &Args, conf: &NetConf) -> Result<(), Error> {
    let env = read_subnet_env(&conf.subnet_file).map_err(|e| Error::NotAvailable(Box::new(e)))?;
    let delegate = build_delegate(conf, &env)?;
    find_in_path(delegate_type(&delegate), &args.cni_path)
        .map_err(|e| Error::NotAvailable(Box::new(e)))?;
    Ok(())
}

/// Tears down every attachment of this network (saved configs whose `name`
/// is the network's) that is not in `cni.dev/valid-attachments`: the
/// delegate's DEL without a netns (which releases the IPAM reservation),
/// then the saved file. Saved configs of other networks sharing dataDir are
/// left alone.
fn gc(args: &Args, conf: &NetConf) -> Result<(), Error> {
    let valid: HashSet<&str> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| a.container_id.as_str())
        .collect();
    let mut first_error = None;
    for (container_id, path) in state::list(&conf.data_dir)? {
        if valid.contains(container_id.as_str()) {
            continue;
        }
        let Some(bytes) = state::load(&path)? else {
            continue;
        };
        let Some((saved, plugin)) = parse_saved(&path, &bytes) else {
            continue;
        };
        if saved.get("name").and_then(Value::as_str) != Some(conf.name.as_str()) {
            continue;
        }
        let outcome = find_in_path(&plugin, &args.cni_path).and_then(|exe| {
            exec(
                &exe,
                &plugin,
                "DEL",
                &bytes,
                &[
                    ("CNI_CONTAINERID", Some(&container_id)),
                    ("CNI_IFNAME", Some(GC_IFNAME)),
                    ("CNI_NETNS", None),
                    ("CNI_ARGS", None),
                ],
            )
        });
        match outcome.and_then(|_| state::remove(&path)) {
            Ok(()) => debug!(container = %container_id, "GC: removed stale attachment"),
            Err(error) => {
                warn!(container = %container_id, %error, "GC: could not remove a stale attachment");
                first_error.get_or_insert(error);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run_with(vars: &[(&str, &str)], stdin: &str) -> (Value, u8) {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let outcome = run(&|k| vars.get(k).cloned(), &mut stdin.as_bytes());
        let value = outcome
            .stdout
            .map(|s| serde_json::from_str(&s).unwrap())
            .unwrap_or(Value::Null);
        (value, outcome.exit_code)
    }

    const ADD_ENV: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/none"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/nonexistent"),
    ];

    #[test]
    fn version_lists_the_supported_versions() {
        let (value, code) = run_with(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(code, 0);
        assert_eq!(
            value,
            json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
    }

    #[test]
    fn no_command_prints_nothing_on_stdout() {
        assert_eq!(
            run(&|_| None, &mut &b""[..]),
            Outcome {
                stdout: None,
                exit_code: 0
            }
        );
    }

    #[test]
    fn error_table() {
        let tmp = tempfile::tempdir().unwrap();
        let missing_env = tmp.path().join("run/flannel/subnet.env");
        let bad_env = tmp.path().join("bad.env");
        std::fs::write(&bad_env, "FLANNEL_MTU=1450\n").unwrap();
        let data_dir = tmp.path().join("data");
        let conf = |version: &str, subnet_file: &Path, extra: &str| {
            format!(
                r#"{{"cniVersion":"{version}","name":"cbr0","type":"flannel","subnetFile":"{}","dataDir":"{}"{extra}}}"#,
                subnet_file.display(),
                data_dir.display()
            )
        };
        let with = |replace: &[(&'static str, &'static str)]| {
            let mut vars = ADD_ENV.to_vec();
            for (k, v) in replace {
                vars.retain(|(key, _)| key != k);
                vars.push((k, v));
            }
            vars
        };
        let ok = conf("1.0.0", &missing_env, "");
        // (env, stdin, code, msg substring, error cniVersion)
        type Case<'a> = (Vec<(&'a str, &'a str)>, String, u64, &'a str, &'a str);
        let cases: Vec<Case> = vec![
            (
                with(&[("CNI_COMMAND", "FROB")]),
                ok.clone(),
                4,
                "unknown CNI_COMMAND: FROB",
                "1.1.0",
            ),
            (
                ADD_ENV[..2].to_vec(),
                ok.clone(),
                4,
                "required env variables [CNI_NETNS,CNI_IFNAME,CNI_PATH] missing",
                "1.1.0",
            ),
            (
                with(&[("CNI_CONTAINERID", "../../etc")]),
                ok.clone(),
                4,
                "invalid characters in containerID",
                "1.0.0",
            ),
            (
                with(&[("CNI_IFNAME", "a/b")]),
                ok.clone(),
                4,
                "interface name contains",
                "1.0.0",
            ),
            (
                with(&[("CNI_IFNAME", "averyveryverylongname")]),
                ok.clone(),
                4,
                "too long",
                "1.0.0",
            ),
            (
                with(&[]),
                "{not json".into(),
                6,
                "decoding version from network config",
                "1.1.0",
            ),
            (
                with(&[]),
                conf("0.2.0", &missing_env, ""),
                1,
                "incompatible CNI versions",
                "1.1.0",
            ),
            (
                with(&[]),
                r#"{"name":"cbr0"}"#.into(),
                1,
                "incompatible CNI versions",
                "1.1.0",
            ),
            (
                with(&[]),
                conf("2.0.0", &missing_env, ""),
                1,
                "incompatible CNI versions",
                "1.1.0",
            ),
            (
                with(&[("CNI_COMMAND", "CHECK")]),
                conf("0.3.1", &missing_env, ""),
                1,
                "does not allow CHECK",
                "0.3.1",
            ),
            (
                with(&[("CNI_COMMAND", "GC")]),
                conf("1.0.0", &missing_env, ""),
                1,
                "does not allow GC",
                "1.0.0",
            ),
            (
                with(&[("CNI_COMMAND", "STATUS")]),
                conf("1.0.0", &missing_env, ""),
                1,
                "does not allow STATUS",
                "1.0.0",
            ),
            (
                with(&[]),
                conf("1.0.0", &missing_env, r#","delegate":"x""#),
                6,
                "delegate must be an object",
                "1.0.0",
            ),
            (
                with(&[]),
                ok.clone(),
                11,
                "check the flannel agent on this node",
                "1.0.0",
            ),
            (
                with(&[]),
                conf("0.3.1", &bad_env, ""),
                100,
                "bad.env is not a valid flannel subnet file",
                "0.3.1",
            ),
            (
                with(&[("CNI_COMMAND", "STATUS")]),
                conf("1.1.0", &missing_env, ""),
                50,
                "plugin not available",
                "1.1.0",
            ),
            (
                with(&[("CNI_COMMAND", "CHECK")]),
                conf("1.0.0", &missing_env, ""),
                3,
                "was not added by this plugin",
                "1.0.0",
            ),
        ];
        for (vars, stdin, code, msg, version) in cases {
            let (value, exit) = run_with(&vars, &stdin);
            assert_eq!(exit, 1, "{vars:?} {stdin}");
            assert_eq!(value["code"], code, "{vars:?} {stdin}: {value}");
            assert!(
                value["msg"].as_str().unwrap().contains(msg),
                "{stdin}: {value}"
            );
            assert_eq!(value["cniVersion"], version, "{stdin}: {value}");
        }
        // A missing subnet.env names the file and leaves nothing behind.
        let (value, _) = run_with(&ADD_ENV, &ok);
        assert!(value["msg"]
            .as_str()
            .unwrap()
            .contains(missing_env.to_str().unwrap()));
        assert!(!data_dir.exists());
    }

    #[test]
    fn unsupported_version_details_list_ours() {
        let (value, _) = run_with(&ADD_ENV, r#"{"cniVersion":"0.2.0","name":"x"}"#);
        assert_eq!(
            value["details"],
            "config is \"0.2.0\", plugin supports [\"0.3.0\", \"0.3.1\", \"0.4.0\", \"1.0.0\", \"1.1.0\"]"
        );
    }

    #[test]
    fn del_without_saved_config_succeeds_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let stdin = format!(
            r#"{{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","dataDir":"{}"}}"#,
            tmp.path().display()
        );
        let mut vars = ADD_ENV.to_vec();
        vars[0] = ("CNI_COMMAND", "DEL");
        vars.retain(|(k, _)| *k != "CNI_NETNS");
        for _ in 0..2 {
            assert_eq!(run_with(&vars, &stdin), (Value::Null, 0));
        }
        // A corrupt saved config: DEL succeeds (like upstream) and keeps it.
        std::fs::write(tmp.path().join("c1"), "{oops").unwrap();
        assert_eq!(run_with(&vars, &stdin), (Value::Null, 0));
        assert!(tmp.path().join("c1").exists());
        // An empty one (a power loss right after ADD): DEL succeeds and
        // removes it.
        std::fs::write(tmp.path().join("c1"), "").unwrap();
        assert_eq!(run_with(&vars, &stdin), (Value::Null, 0));
        assert!(!tmp.path().join("c1").exists());
    }

    #[test]
    fn container_ids_and_ifnames() {
        for good in ["a", "0", "abc-DEF_1.2", "e4239ab2706ed919"] {
            assert!(valid_container_id(good), "{good}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "..", "a\u{e9}"] {
            assert!(!valid_container_id(bad), "{bad}");
        }
        assert!(validate_ifname("eth0").is_ok());
        for bad in ["", ".", "..", "a:b", "a b", "0123456789abcdef"] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
    }
}
