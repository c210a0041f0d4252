//! The saved delegate configs in `dataDir`: one file per container, named
//! by its container ID, written before the delegate's ADD and consumed by
//! DEL.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::Error;

/// Mode of `dataDir` when we create it.
pub const DATA_DIR_MODE: u32 = 0o700;
/// Mode of a saved delegate config.
pub const STATE_FILE_MODE: u32 = 0o600;

/// `<dataDir>/<containerID>`.
pub fn state_path(data_dir: &Path, container_id: &str) -> PathBuf {
    data_dir.join(container_id)
}

fn state_error(path: &Path, step: &'static str) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::State { path, step, source }
}

/// Saves `bytes` as the container's delegate config: directory 0700 (made
/// if missing), file 0600, written to a temporary file and renamed into
/// place, so a reader (a DEL after a killed ADD) sees either no file or
/// the whole of it; after a power loss within the file system's commit
/// interval it may be missing or empty (DEL handles both). Not fsynced, as
/// upstream and the IPAM plugin it sits
/// beside: see vendor-notes/cni.md (an fsync here forces a journal commit
/// on every pod start, which costs about 1 ms per ADD+DEL and stalls other
/// writers of the file system, for a durability the IPAM reservation next
/// to it does not have).
pub fn save(data_dir: &Path, container_id: &str, bytes: &[u8]) -> Result<PathBuf, Error> {
    DirBuilder::new()
        .recursive(true)
        .mode(DATA_DIR_MODE)
        .create(data_dir)
        .map_err(state_error(data_dir, "create the directory"))?;
    let path = state_path(data_dir, container_id);
    // Container IDs start with an alphanumeric character, so a dot file
    // never collides with a saved config.
    let temp = data_dir.join(format!(".{container_id}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(STATE_FILE_MODE)
            .open(&temp)
            .map_err(state_error(&temp, "create the temporary file"))?;
        file.set_permissions(Permissions::from_mode(STATE_FILE_MODE))
            .map_err(state_error(&temp, "set mode 0600"))?;
        file.write_all(bytes)
            .map_err(state_error(&temp, "write the temporary file"))?;
        fs::rename(&temp, &path).map_err(state_error(&path, "rename the temporary file into place"))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    Ok(path)
}

/// The saved config, `None` when there is none.
pub fn load(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(state_error(path, "read the saved delegate config")(e)),
    }
}

/// Removes the saved config; a missing file is fine.
pub fn remove(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(state_error(path, "remove the saved delegate config")(e)),
    }
}

/// `(container ID, path)` of every saved config (names that are valid
/// container IDs only); an absent directory holds none.
pub fn list(data_dir: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    let entries = match fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(state_error(data_dir, "list the directory")(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(state_error(data_dir, "list the directory"))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if super::plugin::valid_container_id(&name) && entry.path().is_file() {
            found.push((name, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn save_load_remove_with_upstream_modes() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("a/flannel");
        let old = unsafe { libc::umask(0o077) };
        let saved = save(&data_dir, "abc", b"{}");
        unsafe { libc::umask(old) };
        let path = saved.unwrap();
        assert_eq!(path, data_dir.join("abc"));
        assert_eq!(fs::metadata(&data_dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(load(&path).unwrap().as_deref(), Some(&b"{}"[..]));
        // Overwrite, no temporary files left.
        save(&data_dir, "abc", b"{\"a\":1}").unwrap();
        assert_eq!(load(&path).unwrap().as_deref(), Some(&b"{\"a\":1}"[..]));
        let names: Vec<_> = fs::read_dir(&data_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["abc"]);
        assert_eq!(
            list(&data_dir).unwrap(),
            [("abc".to_string(), path.clone())]
        );
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(load(&path).unwrap(), None);
        assert!(list(&dir.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn a_failing_save_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the directory should be.
        let blocker = dir.path().join("flannel");
        fs::write(&blocker, b"").unwrap();
        let message = save(&blocker, "abc", b"{}").unwrap_err().to_string();
        assert!(
            message.contains("flannel") && message.contains("create the directory"),
            "{message}"
        );
    }
}
