//! `flannel-agent install-cni`, the real binary with the real plugins (the
//! workspace's `flannel`, the static one, the static delegates and
//! Debian's), into scratch CNI directories: idempotent, keeps a working
//! plugin the node already has, and never leaves a partial file where a
//! runtime could execute it.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flannel_embed::cni::install::{CONFLIST_NAME, RECORD_NAME};
use flannel_embed::files::K3S_CNI_CONFLIST;
use integration::builds;
use integration::lab::workspace_bin_dir;

const DELEGATES: [&str; 5] = ["bridge", "host-local", "loopback", "portmap", "bandwidth"];

/// An image's plugin directory: `flannel` from `plugin`, the static
/// delegates.
fn image_plugins(dir: &Path, plugin: &Path) -> PathBuf {
    let delegates = builds::static_delegates().unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(plugin, dir.join("flannel")).unwrap();
    for delegate in DELEGATES {
        std::fs::copy(delegates.join(delegate), dir.join(delegate)).unwrap();
    }
    dir.to_path_buf()
}

/// A scratch node's CNI directories and an image's plugins (the
/// workspace's `flannel`): (scratch, plugins, bin dir, conf dir).
fn node_and_image() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let scratch = tempfile::tempdir().unwrap();
    let plugins = image_plugins(
        &scratch.path().join("image"),
        &workspace_bin_dir().join("flannel"),
    );
    let bin = scratch.path().join("opt/cni/bin");
    let conf = scratch.path().join("etc/cni/net.d");
    (scratch, plugins, bin, conf)
}

fn install_cni(plugins: &Path, bin: &Path, conf: &Path) -> Output {
    let output = Command::new(workspace_bin_dir().join("flannel-agent"))
        .arg("install-cni")
        .arg(format!("--plugins-dir={}", plugins.display()))
        .arg(format!("--cni-bin-dir={}", bin.display()))
        .arg(format!("--cni-conf-dir={}", conf.display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "install-cni: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Every entry of `dir` with its inode and modification time.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, i64, i64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (meta.ino(), meta.mtime(), meta.mtime_nsec()),
            )
        })
        .collect()
}

#[test]
fn twice_is_the_same_as_once() {
    let (_scratch, plugins, bin, conf) = node_and_image();
    let first = install_cni(&plugins, &bin, &conf);
    let said = String::from_utf8_lossy(&first.stderr);
    for plugin in DELEGATES.iter().chain(&["flannel"]) {
        assert!(
            said.contains(&format!("installed {plugin} into {}", bin.display())),
            "{said}"
        );
        assert_eq!(
            std::fs::read(bin.join(plugin)).unwrap(),
            std::fs::read(plugins.join(plugin)).unwrap()
        );
    }
    assert_eq!(
        std::fs::read_to_string(conf.join(CONFLIST_NAME)).unwrap(),
        K3S_CNI_CONFLIST
    );
    let bin_before = snapshot(&bin);
    let conf_before = snapshot(&conf);
    let mut names: Vec<&String> = bin_before.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            RECORD_NAME,
            "bandwidth",
            "bridge",
            "flannel",
            "host-local",
            "loopback",
            "portmap"
        ]
    );
    assert_eq!(conf_before.keys().collect::<Vec<_>>(), [CONFLIST_NAME]);

    let second = install_cni(&plugins, &bin, &conf);
    let said = String::from_utf8_lossy(&second.stderr);
    assert_eq!(said.matches("is up to date").count(), 7, "{said}");
    // Not one file rewritten, renamed or added.
    assert_eq!(snapshot(&bin), bin_before);
    assert_eq!(snapshot(&conf), conf_before);
}

#[test]
fn a_newer_plugin_on_the_node_is_kept_as_the_one_copy() {
    let (_scratch, plugins, bin, conf) = node_and_image();
    std::fs::create_dir_all(&bin).unwrap();
    // The node's own portmap (Debian's build, not the image's): it answers
    // VERSION with 1.0.0, so it stays.
    let nodes = std::fs::read("/usr/lib/cni/portmap").unwrap();
    std::fs::write(bin.join("portmap"), &nodes).unwrap();
    std::fs::set_permissions(
        bin.join("portmap"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    assert_ne!(nodes, std::fs::read(plugins.join("portmap")).unwrap());
    for _ in 0..2 {
        let output = install_cni(&plugins, &bin, &conf);
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains(&format!(
                "kept {}/portmap: the node's own copy works",
                bin.display()
            )),
            "{said}"
        );
        assert_eq!(std::fs::read(bin.join("portmap")).unwrap(), nodes);
        let entries: Vec<String> = snapshot(&bin).into_keys().collect();
        assert_eq!(
            entries.iter().filter(|e| e.contains("portmap")).count(),
            1,
            "{entries:?}"
        );
        assert!(
            entries
                .iter()
                .all(|e| !e.contains(".tmp") && !e.starts_with(".flannel-embed-install.")),
            "{entries:?}"
        );
    }
}

#[test]
fn a_runtime_never_sees_a_partial_plugin() {
    let scratch = tempfile::tempdir().unwrap();
    // Two builds of our plugin, of different sizes: every reinstall
    // replaces one with the other.
    let dynamic = workspace_bin_dir().join("flannel");
    let static_build = builds::static_cni_plugin().unwrap_or_else(|e| panic!("{e}"));
    let one = image_plugins(&scratch.path().join("image-1"), &dynamic);
    let two = image_plugins(&scratch.path().join("image-2"), &static_build);
    let versions = [
        std::fs::read(one.join("flannel")).unwrap(),
        std::fs::read(two.join("flannel")).unwrap(),
    ];
    assert_ne!(versions[0].len(), versions[1].len());
    let bin = scratch.path().join("opt/cni/bin");
    let conf = scratch.path().join("etc/cni/net.d");
    install_cni(&one, &bin, &conf);

    // A runtime's view, meanwhile: read the plugin's bytes and run it.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let target = bin.join("flannel");
        let versions = versions.clone();
        std::thread::spawn(move || {
            let (mut reads, mut runs) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let bytes = std::fs::read(&target).expect("the plugin is always there");
                assert!(
                    versions.contains(&bytes),
                    "read {} bytes that are neither build",
                    bytes.len()
                );
                reads += 1;
                let output = Command::new(&target)
                    .env_clear()
                    .env("CNI_COMMAND", "VERSION")
                    .output()
                    .expect("the plugin can always be executed");
                assert!(output.status.success(), "{output:?}");
                runs += 1;
            }
            (reads, runs)
        })
    };
    for round in 0..20 {
        let source = if round % 2 == 0 { &two } else { &one };
        install_cni(source, &bin, &conf);
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, runs) = watcher.join().expect("the runtime's view was always whole");
    assert!(reads > 20 && runs > 20, "{reads} reads, {runs} runs");
    // The last round installed `one`.
    assert_eq!(std::fs::read(bin.join("flannel")).unwrap(), versions[0]);
    let entries: Vec<String> = snapshot(&bin).into_keys().collect();
    assert_eq!(entries.len(), 7, "{entries:?}");
}
