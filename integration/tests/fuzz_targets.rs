//! A bounded run of every fuzz target in `integration/fuzz` (cargo-fuzz,
//! libFuzzer, on stable Rust with `--sanitizer none`): each starts from
//! its seed corpus (the real files the other tests use) and runs a fixed
//! number of inputs from a fixed random seed, about 20 s each here, so
//! runs on any machine search nearly the same inputs (libFuzzer's
//! coverage feedback is not bit-for-bit repeatable) and a CI result can
//! be reproduced;
//! `FLANNEL_FUZZ_SCALE` multiplies the counts (longer searches: `cargo
//! fuzz run` by hand, see vendor-notes/fuzzing.md). Any input that
//! panics, breaks a target's assertion (errors name their input, accepted
//! inputs round-trip, no secret in a message) or runs away fails the test
//! with the reproducer. New inputs go to a scratch corpus, never into the
//! repository. The executions per target are printed.

use std::path::Path;
use std::time::Instant;

use integration::builds::{cargo_fuzz, fuzz_dir, FUZZ_TARGETS};

/// Inputs per target: about 20 s each on the 2-core development VM.
fn runs(target: &str) -> u64 {
    let base: u64 = match target {
        "netconf" => 6_000_000,
        "subnet_env" => 5_000_000,
        "node_peer" => 3_000_000,
        "peer_resolver" => 100_000,
        "cni_invocation" => 1_500_000,
        "netlink_datagram" => 15_000_000,
        "wg_uapi" => 700_000,
        "wg_key_file" => 6_000_000,
        other => panic!("no run count for fuzz target {other}"),
    };
    let scale: f64 = std::env::var("FLANNEL_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((base as f64) * scale).max(1000.0) as u64
}

/// libFuzzer's `-print_final_stats` line `stat::NAME: VALUE`.
fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn every_fuzz_target_survives_a_bounded_run_from_its_seeds() {
    let started = Instant::now();
    let build = cargo_fuzz("build", &["--sanitizer", "none"])
        .output()
        .expect("running cargo fuzz (cargo install cargo-fuzz; .ci/install-deps does)");
    assert!(
        build.status.success(),
        "cargo fuzz build failed (is cargo-fuzz installed? .ci/install-deps installs it):\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let built = started.elapsed();
    let scratch = tempfile::tempdir().unwrap();
    let mut summary = Vec::new();
    for target in FUZZ_TARGETS {
        let seeds = fuzz_dir().join("corpus").join(target);
        assert!(
            seeds.is_dir() && seeds.read_dir().unwrap().next().is_some(),
            "{target} has no seeds in {}",
            seeds.display()
        );
        let corpus = scratch.path().join(target);
        std::fs::create_dir_all(&corpus).unwrap();
        let artifacts = format!("{}/{target}-", scratch.path().display());
        let run_started = Instant::now();
        let output = cargo_fuzz(
            "run",
            &[
                "--sanitizer",
                "none",
                target,
                &corpus.to_string_lossy(),
                &seeds.to_string_lossy(),
                "--",
                "-seed=1",
                &format!("-runs={}", runs(target)),
                // A bound for a much slower machine (the run then is not the
                // same everywhere any more).
                "-max_total_time=300",
                "-timeout=10",
                "-rss_limit_mb=1024",
                &format!("-artifact_prefix={artifacts}"),
                "-print_final_stats=1",
            ],
        )
        .output()
        .unwrap();
        let log = String::from_utf8_lossy(&output.stderr);
        let found: Vec<String> = std::fs::read_dir(scratch.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&format!("{target}-")))
            .collect();
        if !output.status.success() || !found.is_empty() {
            // Keep the reproducers where a developer finds them.
            let keep = fuzz_dir().join("artifacts").join(target);
            std::fs::create_dir_all(&keep).unwrap();
            for name in &found {
                let _ = std::fs::copy(scratch.path().join(name), keep.join(name));
            }
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!(
                "fuzz target {target} failed ({}); inputs kept in {} (reproduce with `cargo fuzz run --fuzz-dir integration/fuzz --sanitizer none {target} FILE`):\n{}",
                output.status,
                keep.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let runs = stat(&log, "number_of_executed_units").unwrap_or(0);
        let rss = stat(&log, "peak_rss_mb").unwrap_or(0);
        let new_inputs = count(&corpus);
        // All of them ran (not an early exit that proves nothing).
        assert!(
            runs >= self::runs(target),
            "{target}: only {runs} executions:\n{log}"
        );
        summary.push(format!(
            "{target:<17} {runs:>10} executions in {:>4.1} s ({:>7.0}/s), {new_inputs:>5} new corpus inputs, peak RSS {rss} MB",
            run_started.elapsed().as_secs_f64(),
            runs as f64 / run_started.elapsed().as_secs_f64().max(0.001),
        ));
    }
    println!(
        "fuzz targets (build {:.0} s, seed 1):\n{}",
        built.as_secs_f64(),
        summary.join("\n")
    );
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}
