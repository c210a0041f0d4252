//! Builds the tests and benchmarks need beyond the workspace's own
//! binaries, made the way a user makes them: the host crates under
//! `integration/embedders` (a workspace of their own, with their own
//! Kubernetes API version), the static `flannel` CNI plugin
//! (`integration/build-static-cni.sh`), the static delegate plugins
//! (`build-static-delegates.sh`) and the image (`build-image.sh`). Each goes to its own directory
//! under the workspace's target directory, so it never waits for the lock
//! of the `cargo test` that runs it; cargo rebuilds only what changed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's top directory.
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The workspace's target directory, from the running test or tool
/// (`<target>/<profile>/[deps/]<exe>`).
pub fn target_dir() -> PathBuf {
    let mut dir = crate::lab::workspace_bin_dir();
    dir.pop();
    dir
}

/// `integration/embedders/Cargo.toml`.
pub fn embedders_manifest() -> PathBuf {
    repo_dir().join("integration/embedders/Cargo.toml")
}

/// Where the host crates are built.
pub fn embedders_target_dir() -> PathBuf {
    target_dir().join("embedders")
}

/// Drops what the outer cargo gave this process (its jobserver and
/// target directory), which an inner cargo must not inherit.
fn without_outer_cargo(command: &mut Command) -> &mut Command {
    for key in ["CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS", "CARGO_TARGET_DIR"] {
        command.env_remove(key);
    }
    command
}

/// A cargo command for the embedders' workspace.
fn cargo(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    without_outer_cargo(&mut command)
        .args(args)
        .current_dir(repo_dir());
    command
}

fn run(mut command: Command, what: &str) -> Result<Output, String> {
    let output = command
        .output()
        .map_err(|e| format!("{what}: cannot run {command:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(output)
}

/// Builds `package` of the embedders' workspace on its own (`-p`: only
/// its own features), `--locked`, and returns its binary.
pub fn build_embedder(package: &str) -> Result<PathBuf, String> {
    let manifest = embedders_manifest();
    let target = embedders_target_dir();
    run(
        cargo(&[
            "build",
            "--locked",
            "--manifest-path",
            &manifest.to_string_lossy(),
            "--target-dir",
            &target.to_string_lossy(),
            "-p",
            package,
        ]),
        &format!("building the host crate {package}"),
    )?;
    Ok(target.join("debug").join(package))
}

/// `cargo tree <args>` for `package` of the embedders' workspace, as text.
pub fn embedder_tree(package: &str, args: &[&str]) -> Result<String, String> {
    let manifest = embedders_manifest();
    let mut all = vec![
        "tree",
        "--locked",
        "--manifest-path",
        manifest.to_str().unwrap_or_default(),
        "-p",
        package,
    ];
    all.extend_from_slice(args);
    let output = run(cargo(&all), &format!("cargo tree of {package}"))?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `integration/build-static-cni.sh` into `<target>/static` and
/// returns the static `flannel` plugin it built.
pub fn static_cni_plugin() -> Result<PathBuf, String> {
    build_script("build-static-cni.sh", "static")
}

/// Runs `integration/build-static-delegates.sh` into
/// `<target>/static-delegates` and returns the directory holding the
/// static bridge, host-local, loopback, portmap and bandwidth.
pub fn static_delegates() -> Result<PathBuf, String> {
    build_script("build-static-delegates.sh", "static-delegates")
}

/// Runs `integration/build-image.sh` into `<target>/image` and returns the
/// image archive (`<target>/image/layout` is the same image unpacked).
pub fn image() -> Result<PathBuf, String> {
    build_script("build-image.sh", "image")
}

/// The fuzz targets of `integration/fuzz` (its Cargo.toml's `[[bin]]`s).
pub const FUZZ_TARGETS: [&str; 8] = [
    "netconf",
    "subnet_env",
    "node_peer",
    "peer_resolver",
    "cni_invocation",
    "netlink_datagram",
    "wg_uapi",
    "wg_key_file",
];

/// `integration/fuzz`, the fuzz targets' own workspace.
pub fn fuzz_dir() -> PathBuf {
    repo_dir().join("integration/fuzz")
}

/// `cargo fuzz SUBCOMMAND --fuzz-dir integration/fuzz ARGS` (stable Rust
/// needs `--sanitizer none` among ARGS), as the outer cargo's child:
/// without its jobserver or target directory.
pub fn cargo_fuzz(subcommand: &str, args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    without_outer_cargo(&mut command)
        .args(["fuzz", subcommand, "--fuzz-dir"])
        .arg(fuzz_dir())
        .args(args)
        .current_dir(repo_dir());
    command
}

/// Runs one of the repository's build scripts with `<target>/<out>` as its
/// argument; each prints what it built as its last line.
fn build_script(script: &str, out: &str) -> Result<PathBuf, String> {
    let what = format!("integration/{script}");
    let mut command = Command::new("bash");
    without_outer_cargo(&mut command)
        .arg(repo_dir().join("integration").join(script))
        .arg(target_dir().join(out))
        .current_dir(repo_dir());
    let output = run(command, &what)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout.lines().last().unwrap_or_default().trim();
    if path.is_empty() {
        return Err(format!("{what} printed no path"));
    }
    Ok(PathBuf::from(path))
}

/// The program interpreter (PT_INTERP) an ELF executable asks for, `None`
/// for a static one: read from the file's program headers.
pub fn elf_interpreter(path: &Path) -> Result<Option<String>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = |what: &str| format!("{}: {what}", path.display());
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let phoff = u64_at(0x20).ok_or_else(|| bad("short header"))? as usize;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(|| bad("short header"))?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(|| bad("short header"))?);
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let kind = bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad("short program header"))?;
        if kind != PT_INTERP {
            continue;
        }
        let offset = u64_at(at + 8).ok_or_else(|| bad("short program header"))? as usize;
        let size = u64_at(at + 32).ok_or_else(|| bad("short program header"))? as usize;
        let name = bytes
            .get(offset..offset + size)
            .ok_or_else(|| bad("PT_INTERP outside the file"))?;
        return Ok(Some(
            String::from_utf8_lossy(name)
                .trim_end_matches('\0')
                .to_string(),
        ));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_names_its_interpreter() {
        // This test binary is linked dynamically against glibc.
        let me = std::env::current_exe().unwrap();
        let interp = elf_interpreter(&me).unwrap().expect("dynamic");
        assert!(interp.contains("ld-linux"), "{interp}");
        assert!(elf_interpreter(Path::new("/etc/hostname")).is_err());
    }
}
