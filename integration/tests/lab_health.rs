//! The agent's health as an operator sees it: a read-only `/proc/sys`
//! (as in a non-privileged pod) is a warning, not a failed start (case 8),
//! and `--healthz-bind` serves `/healthz` and `/readyz` (case 9), with
//! clear errors for a bad value or an address in use.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use integration::lab::{Lab, Options};
use integration::{workspace_bin, write_kubeconfig, Finished, Running};

/// Where nothing listens: the agent's API calls fail and are retried.
const NO_API_SERVER: &str = "http://127.0.0.1:9";

fn up(options: &Options) -> Lab {
    let lab = Lab::up(options, &mut |line| eprintln!("{line}")).unwrap();
    let table = lab.wait_peers_programmed(Duration::from_secs(10));
    assert!(table.everyone_has_everyone(), "{}", table.render());
    lab
}

fn free_port() -> u16 {
    integration::free_local_port()
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    integration::http_get(addr, path)
}

/// Polls `GET path` until it answers `code` (or `limit` passes); the last
/// answer.
fn get_until(addr: SocketAddr, path: &str, code: u16, limit: Duration) -> (u16, String) {
    let deadline = Instant::now() + limit;
    loop {
        let answer = get(addr, path);
        match answer {
            Ok((got, body)) if got == code || Instant::now() >= deadline => return (got, body),
            Err(e) if Instant::now() >= deadline => panic!("GET http://{addr}{path}: {e}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Case 8: the agents run with a read-only /proc/sys. Disabling accept_ra
/// on flannel.1 is refused; the agent warns once and goes on, and the
/// overlay works.
#[test]
fn a_read_only_proc_sys_is_a_warning_and_the_overlay_works() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut options = Options::for_tests("rosys", &tmp.path().join("lab"));
    options.nodes = 2;
    options.backend = "vxlan".into();
    options.pods_per_node = 1;
    options.wait = Duration::from_secs(20);
    options.read_only_proc_sys = true;
    let lab = up(&options);
    eprintln!("lab up and programmed in {:?}", started.elapsed());

    for index in 0..2 {
        assert!(lab.agent_running(index), "node-{index}'s agent exited");
    }
    let matrix = lab.ping_matrix();
    eprintln!("{}", matrix.render());
    assert!(matrix.all_ok(), "{}", matrix.render());

    for index in 0..2 {
        let log = std::fs::read_to_string(lab.agent_log(index)).unwrap();
        let warning = log
            .lines()
            .find(|l| l.contains("WARN") && l.contains("accept_ra") && l.contains("read-only"))
            .unwrap_or_else(|| panic!("node-{index}: no accept_ra warning in:\n{log}"));
        eprintln!("node-{index}: {warning}");
        assert!(
            !log.contains("failed to register flannel network"),
            "node-{index}:\n{log}"
        );
        // The write really was refused: the kernel's value is untouched.
        let out = lab
            .exec(
                index,
                "cat",
                &["/proc/sys/net/ipv6/conf/flannel.1/accept_ra"],
            )
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "1",
            "node-{index}"
        );
    }
    lab.down().unwrap();
    eprintln!("case 8 done in {:?}", started.elapsed());
}

/// Case 9: each agent gets its own `--healthz-bind`; once the lab is
/// programmed, `/healthz` and `/readyz` answer 200 `ok`, anything else 404.
#[test]
fn healthz_and_readyz_answer_ok_on_a_healthy_lab() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut options = Options::for_tests("healthz", &tmp.path().join("lab"));
    options.nodes = 2;
    options.pods_per_node = 0;
    options.wait = Duration::from_secs(20);
    let addrs: Vec<SocketAddr> = (0..options.nodes)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    for (index, addr) in addrs.iter().enumerate() {
        options
            .node_agent_args
            .insert(index, vec![format!("--healthz-bind={addr}")]);
    }
    let mut lab = up(&options);
    eprintln!("lab up and programmed in {:?}", started.elapsed());

    for (index, &addr) in addrs.iter().enumerate() {
        let limit = Duration::from_secs(10);
        let log = || std::fs::read_to_string(lab.agent_log(index)).unwrap_or_default();
        assert_eq!(
            get_until(addr, "/readyz", 200, limit),
            (200, "ok\n".to_string()),
            "node-{index} /readyz; log:\n{}",
            log()
        );
        assert_eq!(
            get(addr, "/healthz").unwrap(),
            (200, "ok\n".into()),
            "node-{index}"
        );
        let (code, _) = get(addr, "/nope").unwrap();
        assert_eq!(code, 404, "node-{index} /nope");
        assert!(
            log().contains(&format!("serving /healthz and /readyz on http://{addr}")),
            "node-{index}:\n{}",
            log()
        );
    }

    // The flags survive a restart of the agent, and the port is free again
    // after a stop (the server ends with the agent).
    lab.stop_agent(1);
    assert!(
        get(addrs[1], "/healthz").is_err(),
        "nothing listens after a stop"
    );
    lab.start_agent(1).unwrap();
    assert_eq!(
        get_until(addrs[1], "/readyz", 200, Duration::from_secs(20)),
        (200, "ok\n".to_string())
    );
    lab.down().unwrap();
    eprintln!("case 9 done in {:?}", started.elapsed());
}

fn agent(dir: &std::path::Path, args: &[&str]) -> Running {
    let mut command = std::process::Command::new(workspace_bin("flannel-agent"));
    command
        .arg("--node-name=node-a")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!(
            "--subnet-file={}",
            dir.join("run/flannel/subnet.env").display()
        ))
        .arg(format!(
            "--kubeconfig={}",
            write_kubeconfig(dir, NO_API_SERVER).display()
        ))
        .args(args)
        .env("RUST_LOG", "info");
    Running::start(command)
}

fn run_to_end(args: &[&str]) -> (Finished, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let finished = agent(dir.path(), args).wait(Duration::from_secs(20));
    (finished, dir)
}

#[test]
fn a_bad_healthz_bind_value_exits_1_naming_the_flag() {
    for value in ["127.0.0.1", "localhost:8080", "127.0.0.1:99999", ""] {
        let (finished, dir) = run_to_end(&[&format!("--healthz-bind={value}")]);
        assert_eq!(finished.status.code(), Some(1), "{value:?}: {finished:?}");
        assert!(
            finished.stderr.contains("--healthz-bind"),
            "{value:?}: {}",
            finished.stderr
        );
        assert!(!dir.path().join("data").exists(), "nothing may be written");
    }
}

#[test]
fn a_healthz_bind_address_in_use_stops_startup() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (finished, dir) = run_to_end(&[&format!("--healthz-bind={addr}")]);
    assert_eq!(finished.status.code(), Some(1), "{finished:?}");
    assert!(
        finished
            .stderr
            .contains(&format!("--healthz-bind {addr}: cannot listen: ")),
        "{}",
        finished.stderr
    );
    assert!(!dir.path().join("data").exists(), "nothing may be written");
}

/// Without an API server the task stays starting: live but not ready, and
/// `/readyz` says why; SIGTERM ends the server with the task.
#[test]
fn a_starting_agent_is_live_but_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let running = agent(dir.path(), &[&format!("--healthz-bind={addr}")]);
    let (code, body) = get_until(addr, "/healthz", 200, Duration::from_secs(20));
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = get(addr, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("starting\n"), "{body}");
    let (code, _) = get(addr, "/").unwrap();
    assert_eq!(code, 404);
    running.signal(libc::SIGTERM);
    let finished = running.wait(Duration::from_secs(20));
    assert!(finished.status.success(), "{finished:?}");
    assert!(
        get(addr, "/healthz").is_err(),
        "the server ended with the agent"
    );
}
