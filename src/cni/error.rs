//! The plugin's errors and the CNI error codes they map to.

use std::io;
use std::path::PathBuf;

use serde_json::{json, Value};

use super::version::CniVersion;

/// CNI spec error code 1: incompatible CNI version.
pub const CODE_INCOMPATIBLE_VERSION: u32 = 1;
/// CNI spec error code 3: container unknown or does not exist.
pub const CODE_UNKNOWN_CONTAINER: u32 = 3;
/// CNI spec error code 4: invalid necessary environment variables.
pub const CODE_INVALID_ENV: u32 = 4;
/// CNI spec error code 5: I/O failure.
pub const CODE_IO: u32 = 5;
/// CNI spec error code 6: failed to decode content.
pub const CODE_DECODE: u32 = 6;
/// CNI spec error code 7: invalid network config.
pub const CODE_INVALID_CONFIG: u32 = 7;
/// CNI spec error code 11: try again later.
pub const CODE_TRY_AGAIN_LATER: u32 = 11;
/// CNI spec (1.1.0) error code 50: the plugin cannot serve ADD (STATUS).
pub const CODE_NOT_AVAILABLE: u32 = 50;
/// Plugin-specific: subnet.env exists but its content is unusable.
pub const CODE_BAD_SUBNET_ENV: u32 = 100;
/// Plugin-specific: the delegate plugin could not be found or run.
pub const CODE_DELEGATE_EXEC: u32 = 101;
/// Plugin-specific: the delegate printed something that is not a usable
/// CNI result or error.
pub const CODE_DELEGATE_OUTPUT: u32 = 102;

/// Everything that can make a plugin command fail. Each error maps to a
/// CNI error code ([`Error::code`]); its `Display` is the error's `msg`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config's cniVersion is not one the plugin speaks.
    #[error("incompatible CNI versions")]
    IncompatibleVersion {
        /// What the config asked for.
        requested: String,
    },
    /// The command does not exist in the config's version (CHECK before
    /// 0.4.0, STATUS and GC before 1.1.0).
    #[error("config version does not allow {command}")]
    CommandNotInVersion {
        /// CHECK, STATUS or GC.
        command: &'static str,
        /// The config's version.
        version: CniVersion,
    },
    /// The delegate plugin and this plugin share no CNI version.
    #[error("delegate plugin {plugin:?} supports none of the CNI versions this plugin speaks")]
    DelegateVersion {
        /// The delegate's type.
        plugin: String,
        /// What the delegate reported.
        supported: Vec<String>,
    },
    /// CNI_* environment variables missing or invalid.
    #[error("{0}")]
    Env(String),
    /// CNI_CONTAINERID is empty.
    #[error("missing containerID")]
    MissingContainerId,
    /// stdin is not a network config we can decode.
    #[error("failed to load netconf: {0}")]
    Decode(String),
    /// The network config decodes but is not valid.
    #[error("{0}")]
    InvalidConfig(String),
    /// subnet.env does not exist (yet).
    #[error("{path} does not exist: check the flannel agent on this node (it writes this file once the node has a pod subnet lease)")]
    SubnetEnvMissing {
        /// The subnet file.
        path: PathBuf,
    },
    /// subnet.env exists but cannot be read.
    #[error("cannot read {path}: {source}: check the flannel agent on this node")]
    SubnetEnvUnreadable {
        /// The subnet file.
        path: PathBuf,
        /// The operating system's answer.
        #[source]
        source: io::Error,
    },
    /// subnet.env content is unusable.
    #[error("{path} is not a valid flannel subnet file: {problem}: check the flannel agent on this node")]
    SubnetEnvInvalid {
        /// The subnet file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Reading or writing the saved delegate config failed.
    #[error("{path}: could not {step}: {source}")]
    State {
        /// The file or directory.
        path: PathBuf,
        /// What we were doing.
        step: &'static str,
        /// The operating system's answer.
        #[source]
        source: io::Error,
    },
    /// CHECK for a container this plugin never added.
    #[error(
        "no saved delegate config {path}: container {container_id} was not added by this plugin"
    )]
    UnknownContainer {
        /// The container.
        container_id: String,
        /// Where the config would be.
        path: PathBuf,
    },
    /// The delegate plugin could not be found or started.
    #[error("{0}")]
    DelegateExec(String),
    /// The delegate returned a CNI error.
    #[error("failed to delegate {command}: {msg}")]
    DelegateFailed {
        /// ADD, DEL, CHECK.
        command: &'static str,
        /// The delegate's code.
        code: u32,
        /// The delegate's msg.
        msg: String,
        /// The delegate's details.
        details: String,
    },
    /// The delegate printed something unusable.
    #[error("delegate plugin {plugin:?} returned an unusable answer: {problem}")]
    DelegateOutput {
        /// The delegate's type.
        plugin: String,
        /// What is wrong.
        problem: String,
    },
    /// STATUS: the plugin cannot serve ADD right now.
    #[error("plugin not available: {0}")]
    NotAvailable(Box<Error>),
}

impl Error {
    /// The CNI error code.
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion { .. }
            | Error::CommandNotInVersion { .. }
            | Error::DelegateVersion { .. } => CODE_INCOMPATIBLE_VERSION,
            Error::Env(_) => CODE_INVALID_ENV,
            Error::MissingContainerId | Error::UnknownContainer { .. } => CODE_UNKNOWN_CONTAINER,
            Error::Decode(_) => CODE_DECODE,
            Error::InvalidConfig(_) => CODE_INVALID_CONFIG,
            Error::SubnetEnvMissing { .. } => CODE_TRY_AGAIN_LATER,
            Error::SubnetEnvUnreadable { .. } | Error::State { .. } => CODE_IO,
            Error::SubnetEnvInvalid { .. } => CODE_BAD_SUBNET_ENV,
            Error::DelegateExec(_) => CODE_DELEGATE_EXEC,
            Error::DelegateFailed { code, .. } => *code,
            Error::DelegateOutput { .. } => CODE_DELEGATE_OUTPUT,
            Error::NotAvailable(_) => CODE_NOT_AVAILABLE,
        }
    }

    /// The error's `details` (may be empty).
    pub fn details(&self) -> String {
        match self {
            Error::IncompatibleVersion { requested } => format!(
                "config is {requested:?}, plugin supports {:?}",
                CniVersion::supported_strings()
            ),
            Error::DelegateVersion { supported, .. } => format!(
                "delegate supports {supported:?}, plugin supports {:?}",
                CniVersion::supported_strings()
            ),
            Error::DelegateFailed { details, .. } => details.clone(),
            _ => String::new(),
        }
    }

    /// The CNI error object printed on stdout; `details` only when not
    /// empty.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut value = json!({
            "cniVersion": version.as_str(),
            "code": self.code(),
            "msg": self.to_string(),
        });
        let details = self.details();
        if !details.is_empty() {
            value["details"] = Value::String(details);
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        let io = || io::Error::from(io::ErrorKind::PermissionDenied);
        let cases: Vec<(Error, u32)> = vec![
            (
                Error::IncompatibleVersion {
                    requested: "0.2.0".into(),
                },
                1,
            ),
            (Error::MissingContainerId, 3),
            (Error::Env("x".into()), 4),
            (
                Error::State {
                    path: "/d".into(),
                    step: "write it",
                    source: io(),
                },
                5,
            ),
            (Error::Decode("x".into()), 6),
            (Error::InvalidConfig("x".into()), 7),
            (
                Error::SubnetEnvMissing {
                    path: "/run/flannel/subnet.env".into(),
                },
                11,
            ),
            (Error::NotAvailable(Box::new(Error::Env("x".into()))), 50),
            (
                Error::SubnetEnvInvalid {
                    path: "/s".into(),
                    problem: "x".into(),
                },
                100,
            ),
            (Error::DelegateExec("x".into()), 101),
            (
                Error::DelegateFailed {
                    command: "ADD",
                    code: 11,
                    msg: "busy".into(),
                    details: String::new(),
                },
                11,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error}");
        }
    }

    #[test]
    fn error_json_has_spec_shape() {
        let error = Error::IncompatibleVersion {
            requested: "0.2.0".into(),
        };
        assert_eq!(
            error.to_json(CniVersion::LATEST),
            json!({
                "cniVersion": "1.1.0",
                "code": 1,
                "msg": "incompatible CNI versions",
                "details": "config is \"0.2.0\", plugin supports [\"0.3.0\", \"0.3.1\", \"0.4.0\", \"1.0.0\", \"1.1.0\"]"
            })
        );
        let plain = Error::Env("required env variables [CNI_PATH] missing".into());
        let value = plain.to_json(CniVersion::V1_0_0);
        assert_eq!(value.get("details"), None);
        assert_eq!(value["code"], 4);
    }

    #[test]
    fn missing_subnet_env_names_the_file_and_the_agent() {
        let message = Error::SubnetEnvMissing {
            path: "/run/flannel/subnet.env".into(),
        }
        .to_string();
        assert!(message.contains("/run/flannel/subnet.env"), "{message}");
        assert!(
            message.contains("check the flannel agent on this node"),
            "{message}"
        );
    }
}
