//! The `flannel` CNI plugin: reads subnet.env and delegates to the bridge
//! and host-local plugins, as upstream's flannel CNI plugin does.
//!
//! A container runtime runs `CNI_PATH/flannel` with the conflist's
//! `flannel` entry on stdin. ADD reads subnet.env, builds the delegate's
//! config ([`build_delegate`]), saves it to `<dataDir>/<containerID>` and
//! runs the delegate (`bridge` with `host-local` IPAM) from CNI_PATH,
//! printing its result converted to the requested CNI version. DEL runs the
//! delegate's DEL with the saved config and then removes it. CHECK runs the
//! delegate's CHECK with the saved config and the prevResult; STATUS (1.1.0)
//! reports whether subnet.env and the delegate are there; GC (1.1.0) tears
//! down saved attachments the runtime no longer knows.
//!
//! Nothing but the CNI result or error JSON goes to stdout; logs (set with
//! `RUST_LOG`, default `warn`) go to stderr.
//!
//! A host binary can be a multi-call binary, as k3s is:
//!
//! ```no_run
//! # #[cfg(feature = "cni-plugin")]
//! fn main() -> std::process::ExitCode {
//!     let argv0 = std::env::args_os().next().unwrap_or_default();
//!     if std::path::Path::new(&argv0).file_name() == Some("flannel".as_ref()) {
//!         return flannel_embed::cni::main();
//!     }
//!     // ... the host's own main
//!     std::process::ExitCode::SUCCESS
//! }
//! # #[cfg(not(feature = "cni-plugin"))]
//! # fn main() {}
//! ```

mod delegate;
mod error;
mod exec;
pub mod install;
mod netconf;
mod plugin;
mod state;
mod version;

#[cfg(feature = "cni-plugin")]
use std::io::Write;
#[cfg(feature = "cni-plugin")]
use std::process::ExitCode;

pub use delegate::{build_delegate, delegate_type, render_delegate};
pub use error::{
    Error, CODE_BAD_SUBNET_ENV, CODE_DECODE, CODE_DELEGATE_EXEC, CODE_DELEGATE_OUTPUT,
    CODE_INCOMPATIBLE_VERSION, CODE_INVALID_CONFIG, CODE_INVALID_ENV, CODE_IO, CODE_NOT_AVAILABLE,
    CODE_TRY_AGAIN_LATER, CODE_UNKNOWN_CONTAINER,
};
pub use netconf::{Attachment, NetConf, DEFAULT_DATA_DIR, DEFAULT_SUBNET_FILE};
#[doc(hidden)]
pub use plugin::invocation_until_exec;
pub use plugin::{run, valid_container_id, version_info, Outcome, GC_IFNAME};
pub use state::{state_path, DATA_DIR_MODE, STATE_FILE_MODE};
pub use version::{
    convert_result, fill_route_gateways, negotiate_delegate_version, CniVersion, ConversionError,
    UnsupportedVersion, SUPPORTED_VERSIONS,
};

/// The plugin's `main`: reads the CNI environment and stdin, prints the
/// result or error JSON on stdout and returns the exit code. Call it before
/// anything in the host writes to stdout. Logs go to stderr (`RUST_LOG`,
/// default `warn`); a tracing subscriber the host already installed is
/// kept.
///
/// Needs the `cni-plugin` feature.
#[cfg(feature = "cni-plugin")]
pub fn main() -> ExitCode {
    // Every pod start pays for this: the filter parser only runs when
    // RUST_LOG asks for something.
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(filter) => logs.with_env_filter(filter).try_init(),
        Err(_) => logs.with_max_level(tracing::Level::WARN).try_init(),
    };
    let outcome = run(
        &|name| std::env::var(name).ok(),
        &mut std::io::stdin().lock(),
    );
    if let Some(text) = &outcome.stdout {
        let mut stdout = std::io::stdout().lock();
        // Nothing sensible is left to do if stdout is gone.
        let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
    }
    ExitCode::from(outcome.exit_code)
}
