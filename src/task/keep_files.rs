//! The three files the task owns, kept level-triggered: the CNI conflist,
//! net-conf.json (unless the user brought their own) and, once the data
//! path is ready, subnet.env. Every [`FILE_CHECK`] each is read and, if it
//! is missing or its bytes differ, written again atomically; a write that
//! fails is a problem of [`Part::Files`] (naming the path), retried on the
//! next check, never the end of the task.

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

use super::scope::Scope;
use super::{Part, Progress};
use crate::config::Config;
use crate::files::{self, FileError, SubnetEnv};

/// How often the files are compared with what they should be: a file
/// deleted or edited by hand is back within about this long. A check is a
/// read and a compare per file.
pub(super) const FILE_CHECK: Duration = Duration::from_secs(1);

/// What one check did: the files written again, and the failures (each
/// names its path).
#[derive(Debug, Default)]
pub(super) struct FileCheck {
    pub restored: Vec<PathBuf>,
    pub failures: Vec<FileError>,
}

/// One check of every file (blocking I/O).
pub(super) fn check_files(config: &Config, subnet_env: Option<&SubnetEnv>) -> FileCheck {
    let mut check = FileCheck::default();
    let mut note = |path: PathBuf, result: Result<bool, FileError>| match result {
        Ok(true) => check.restored.push(path),
        Ok(false) => {}
        Err(error) => check.failures.push(error),
    };
    let conflist = config.cni_conflist_path();
    note(
        conflist.clone(),
        files::write_cni_conflist(&conflist, config.cni_conf_override()),
    );
    if config.netconf_override().is_none() {
        if let Some(text) =
            crate::config::render_k3s_netconf(config.cluster_cidrs(), config.backend())
        {
            let path = config.netconf_path();
            note(path.clone(), files::write_atomic(&path, text.as_bytes()));
        }
    }
    if let Some(env) = subnet_env {
        let path = config.subnet_file().to_path_buf();
        note(path.clone(), env.write(&path));
    }
    check
}

/// Checks the files every [`FILE_CHECK`] until `stopping`; subnet.env joins
/// once `subnet_env` holds it (after the first complete pass).
pub(super) async fn keep_files(
    config: Config,
    mut subnet_env: watch::Receiver<Option<SubnetEnv>>,
    progress: Arc<Progress>,
    scope: Scope,
    stopping: impl Future<Output = ()>,
) {
    let mut stopping = pin!(stopping);
    let mut ticks = tokio::time::interval(FILE_CHECK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Once the loop that hands subnet.env over is gone, the last value
    // stays.
    let mut handover_open = true;
    loop {
        tokio::select! {
            () = &mut stopping => return,
            _ = ticks.tick() => {}
            changed = subnet_env.changed(), if handover_open => {
                handover_open = changed.is_ok();
            }
        }
        let env = subnet_env.borrow_and_update().clone();
        let config = config.clone();
        let Ok(check) = scope
            .blocking(move || check_files(&config, env.as_ref()))
            .await
        else {
            continue;
        };
        for path in &check.restored {
            info!(path = %path.display(), "restored {}: it was missing or changed", path.display());
        }
        match check.failures.first() {
            Some(first) => {
                let more = check.failures.len() - 1;
                let suffix = if more > 0 {
                    format!(" (and {more} more file(s))")
                } else {
                    String::new()
                };
                progress.problem(Part::Files, format!("{first}{suffix}"));
            }
            None => progress.resolved(Part::Files),
        }
    }
}
