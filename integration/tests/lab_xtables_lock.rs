//! Case 3 (and the degraded half of case 9): another program holds the
//! node's `/run/xtables.lock` for 20 s, as kube-proxy or a firewall
//! manager does during a long iptables-legacy run. The agents use legacy
//! iptables here (iptables-nft takes no lock): a shim directory first on
//! their PATH points `iptables`, `iptables-save` and `iptables-restore`
//! (and the ip6 ones) at xtables-legacy-multi. While the lock is held the
//! agent reports the masquerade part degraded (`/readyz` 503, `/healthz`
//! 200) and keeps repairing the data path; after the release the rules
//! converge within 5 s and `/readyz` is 200 again.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use integration::lab::util::poll;
use integration::lab::{Lab, Options};
use integration::Running;

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    integration::http_get(addr, path).ok()
}

/// A directory whose iptables commands are the legacy ones.
fn legacy_shims(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    for family in ["iptables", "ip6tables"] {
        for suffix in ["", "-save", "-restore"] {
            let target = format!("/usr/sbin/{family}-legacy{suffix}");
            let link = dir.join(format!("{family}{suffix}"));
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link).unwrap();
        }
    }
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    )
}

const MASQ_JUMP: &str = "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG";

/// The node's legacy nat table (`iptables-legacy-save` takes no lock).
fn nat_rules(lab: &Lab, index: usize) -> String {
    let out = lab
        .exec(index, "iptables-legacy-save", &["-t", "nat"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_held_xtables_lock_degrades_masquerade_only_and_rules_converge_after_release() {
    let tmp = tempfile::tempdir().unwrap();
    let mut options = Options::for_tests("xtlock", &tmp.path().join("lab"));
    options.nodes = 2;
    options.pods_per_node = 0;
    options.wait = Duration::from_secs(20);
    let addr: SocketAddr = format!("127.0.0.1:{}", integration::free_local_port())
        .parse()
        .unwrap();
    options
        .node_agent_args
        .insert(0, vec![format!("--healthz-bind={addr}")]);
    options
        .agent_env
        .push(("PATH".into(), legacy_shims(&tmp.path().join("legacy"))));
    let lab = Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap();
    let ready = poll(Duration::from_secs(20), || {
        (get(addr, "/readyz")?.0 == 200).then_some(())
    });
    assert!(
        ready.is_some(),
        "node-0 never ready: {:?}",
        get(addr, "/readyz")
    );
    assert!(
        nat_rules(&lab, 0).contains(MASQ_JUMP),
        "{}",
        nat_rules(&lab, 0)
    );

    // The jump is deleted, then the lock taken (and the deletion checked
    // again under it: the keeper may have run in between).
    let mut holder = None;
    for _ in 0..5 {
        lab.exec(
            0,
            "iptables-legacy",
            &[
                "-w",
                "5",
                "-t",
                "nat",
                "-D",
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "FLANNEL-POSTRTG",
            ],
        )
        .unwrap();
        let running =
            Running::start(lab.node_command(0, "flock", &["/run/xtables.lock", "sleep", "20"]));
        std::thread::sleep(Duration::from_millis(200));
        if !nat_rules(&lab, 0).contains(MASQ_JUMP) {
            holder = Some(running);
            break;
        }
        running.signal(libc::SIGKILL);
        let _ = running.wait(Duration::from_secs(5));
    }
    let holder = holder.expect("the jump stays deleted under the lock");
    let locked = Instant::now();

    // Degraded within the keeper's period plus the 5 s lock wait.
    let degraded = poll(Duration::from_secs(15), || {
        let (code, body) = get(addr, "/readyz")?;
        (code == 503).then_some(body)
    });
    let body = degraded.expect("/readyz 503 while the lock is held");
    eprintln!("degraded after {:?}: {body}", locked.elapsed());
    assert!(body.contains("masquerade"), "{body}");
    assert!(body.contains("xtables lock"), "{body}");
    assert_eq!(get(addr, "/healthz").map(|(c, _)| c), Some(200));

    // The data path is unaffected meanwhile: a deleted route comes back.
    let peer = lab.node(1).pod_cidr.clone();
    lab.ip(0, &["route", "del", &peer]).unwrap();
    let repaired = poll(Duration::from_secs(2), || {
        lab.ip(0, &["route", "show", &peer])
            .ok()
            .filter(|r| !r.trim().is_empty())
    });
    assert!(
        repaired.is_some(),
        "route to {peer} not restored under the lock"
    );
    assert!(
        locked.elapsed() < Duration::from_secs(19),
        "the checks above took too long to mean anything"
    );

    // Released at 20 s: the rules converge within 5 s, ready again.
    let _ = holder.wait(Duration::from_secs(25));
    let released = Instant::now();
    let converged = poll(Duration::from_secs(5), || {
        nat_rules(&lab, 0).contains(MASQ_JUMP).then_some(())
    });
    assert!(
        converged.is_some(),
        "rules not back 5 s after the release: {}",
        nat_rules(&lab, 0)
    );
    eprintln!("rules back {:?} after the release", released.elapsed());
    let ready_again = poll(Duration::from_secs(3), || {
        (get(addr, "/readyz")?.0 == 200).then_some(())
    });
    assert!(ready_again.is_some(), "{:?}", get(addr, "/readyz"));
    lab.down().unwrap();
}
