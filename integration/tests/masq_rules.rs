//! Masquerade and forward rules against the real iptables and nft, each
//! test in namespaces it made itself (never the machine's own rules):
//! upstream's golden `iptables -S` lines, no writes when intact, restore
//! after a hand deletion (one check, and the 5 s loop within 6 s), a
//! previous lease's rules removed, driver switching, IPv6 masquerade.

use std::time::{Duration, Instant};

use flannel_embed::files::SubnetEnv;
use flannel_embed::masq::{keep_rules, DriverKind, MasqRules, RuleSet, RESYNC_PERIOD};
use integration::netns::TestNetns;

/// flanneld's masquerade rules for Network 10.42.0.0/16 and lease
/// 10.42.0.0/24, as `iptables -t nat -S` prints them.
const GOLDEN_NAT: [&str; 6] = [
    "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN",
    "-A FLANNEL-POSTRTG -s 10.42.0.0/24 -d 10.42.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN",
    "-A FLANNEL-POSTRTG -s 10.42.0.0/16 -d 10.42.0.0/24 -m comment --comment \"flanneld masq\" -j RETURN",
    "-A FLANNEL-POSTRTG ! -s 10.42.0.0/16 -d 10.42.0.0/24 -m comment --comment \"flanneld masq\" -j RETURN",
    "-A FLANNEL-POSTRTG -s 10.42.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
    "-A FLANNEL-POSTRTG ! -s 10.42.0.0/16 -d 10.42.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
];
const GOLDEN_JUMP: &str =
    "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG";
const GOLDEN_FWD: [&str; 3] = [
    "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD",
    "-A FLANNEL-FWD -s 10.42.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
    "-A FLANNEL-FWD -d 10.42.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
];
/// The same for IPv6: Network fd00:42::/56, lease fd00:42::/64.
const GOLDEN_NAT6: [&str; 6] = [
    "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN",
    "-A FLANNEL-POSTRTG -s fd00:42::/64 -d fd00:42::/56 -m comment --comment \"flanneld masq\" -j RETURN",
    "-A FLANNEL-POSTRTG -s fd00:42::/56 -d fd00:42::/64 -m comment --comment \"flanneld masq\" -j RETURN",
    "-A FLANNEL-POSTRTG ! -s fd00:42::/56 -d fd00:42::/64 -m comment --comment \"flanneld masq\" -j RETURN",
    "-A FLANNEL-POSTRTG -s fd00:42::/56 ! -d ff00::/8 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
    "-A FLANNEL-POSTRTG ! -s fd00:42::/56 -d fd00:42::/56 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
];

fn v4(lease: &str) -> RuleSet {
    RuleSet::for_lease(
        Some(("10.42.0.0/16".parse().unwrap(), lease.parse().unwrap())),
        None,
        true,
        false,
    )
}

fn dual(ipv6_masq: bool) -> RuleSet {
    RuleSet::for_lease(
        Some((
            "10.42.0.0/16".parse().unwrap(),
            "10.42.0.0/24".parse().unwrap(),
        )),
        Some((
            "fd00:42::/56".parse().unwrap(),
            "fd00:42::/64".parse().unwrap(),
        )),
        true,
        ipv6_masq,
    )
}

/// `<program> <args>` inside `ns`; its stdout lines (panics on failure).
fn lines(ns: &TestNetns, program: &str, args: &[&str]) -> Vec<String> {
    let output = ns.exec(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn chain(lines: &[String], prefix: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.starts_with(prefix))
        .cloned()
        .collect()
}

fn nft(ns: &TestNetns) -> String {
    lines(ns, "nft", &["list", "ruleset"]).join("\n")
}

#[test]
fn iptables_rules_are_upstreams_and_are_restored_without_needless_writes() {
    let ns = TestNetns::new("masqgold");
    let path = ns.path();
    let (rules, outcome) =
        MasqRules::setup(DriverKind::Iptables, Some(&path), v4("10.42.0.0/24"), None)
            .expect("setup");
    assert!(outcome.written, "{outcome:?}");

    let nat = lines(&ns, "iptables", &["-t", "nat", "-S"]);
    assert_eq!(chain(&nat, "-A FLANNEL-POSTRTG "), GOLDEN_NAT, "{nat:#?}");
    assert_eq!(chain(&nat, "-A POSTROUTING "), [GOLDEN_JUMP], "{nat:#?}");
    let filter = lines(&ns, "iptables", &["-S"]);
    assert!(
        filter.contains(&"-N FLANNEL-FWD".to_string()),
        "{filter:#?}"
    );
    let mut fwd = chain(&filter, "-A FORWARD ");
    fwd.extend(chain(&filter, "-A FLANNEL-FWD "));
    assert_eq!(fwd, GOLDEN_FWD, "{filter:#?}");

    // Intact: checks write nothing.
    let writes = rules.writes();
    for _ in 0..3 {
        let again = rules.check_and_restore().expect("check");
        assert!(!again.written, "{again:?}");
    }
    assert_eq!(rules.writes(), writes);
    // A second setup (agent restart) finds everything in place too.
    let (second, outcome) =
        MasqRules::setup(DriverKind::Iptables, Some(&path), v4("10.42.0.0/24"), None)
            .expect("second setup");
    assert!(!outcome.written, "{outcome:?}");
    assert_eq!(second.writes(), 0);

    // One rule deleted by hand: one check restores it, jump still single.
    lines(
        &ns,
        "iptables",
        &["-t", "nat", "-D", "FLANNEL-POSTRTG", "4"],
    );
    let restored = rules.check_and_restore().expect("check");
    assert!(restored.written, "{restored:?}");
    assert!(
        restored
            .changes
            .iter()
            .any(|c| c.contains("1 of 6 rules missing")),
        "{restored:?}"
    );
    assert_eq!(rules.writes(), writes + 1);
    let nat = lines(&ns, "iptables", &["-t", "nat", "-S"]);
    assert_eq!(chain(&nat, "-A FLANNEL-POSTRTG "), GOLDEN_NAT);
    assert_eq!(chain(&nat, "-A POSTROUTING "), [GOLDEN_JUMP]);

    // A duplicated jump and a deleted forward jump are repaired too.
    lines(
        &ns,
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "FLANNEL-POSTRTG",
        ],
    );
    lines(&ns, "iptables", &["-D", "FORWARD", "1"]);
    assert!(rules.check_and_restore().expect("check").written);
    let nat = lines(&ns, "iptables", &["-t", "nat", "-S"]);
    assert_eq!(chain(&nat, "-A POSTROUTING "), [GOLDEN_JUMP]);
    let filter = lines(&ns, "iptables", &["-S"]);
    assert_eq!(chain(&filter, "-A FORWARD "), [GOLDEN_FWD[0]]);
}

#[test]
fn the_five_second_loop_restores_a_deleted_rule_within_six_seconds() {
    for kind in [DriverKind::Iptables, DriverKind::Nftables] {
        let ns = TestNetns::new("masqloop");
        let path = ns.path();
        let (rules, _) =
            MasqRules::setup(kind, Some(&path), v4("10.42.0.0/24"), None).expect("setup");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let keeper = rules.clone();
        let (checked_tx, checked) = std::sync::mpsc::channel::<Result<bool, String>>();
        let task = runtime.spawn(keep_rules(
            keeper,
            RESYNC_PERIOD,
            async move {
                let _ = stopped.await;
            },
            move |result| {
                let _ = checked_tx.send(result.map(|o| o.written).map_err(|e| e.to_string()));
            },
        ));
        // The loop's first, immediate check finds the rules intact.
        assert_eq!(
            checked.recv_timeout(Duration::from_secs(10)),
            Ok(Ok(false)),
            "the first check writes nothing"
        );
        let writes = rules.writes();

        let (present, delete): (Box<dyn Fn() -> bool>, Vec<String>) = match kind {
            DriverKind::Iptables => (
                Box::new(|| {
                    chain(
                        &lines(&ns, "iptables", &["-t", "nat", "-S"]),
                        "-A FLANNEL-POSTRTG ",
                    ) == GOLDEN_NAT
                }),
                ["iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "5"]
                    .map(String::from)
                    .to_vec(),
            ),
            DriverKind::Nftables => {
                let listing = lines(
                    &ns,
                    "nft",
                    &["-a", "list", "chain", "ip", "flannel-ipv4", "postrtg"],
                );
                let handle = listing
                    .iter()
                    .find(|l| l.contains("masquerade") && l.contains("!= 224.0.0.0/4"))
                    .and_then(|l| l.rsplit("# handle ").next())
                    .map(|h| h.trim().to_string())
                    .expect("the masquerade rule has a handle");
                let mut delete = [
                    "nft",
                    "delete",
                    "rule",
                    "ip",
                    "flannel-ipv4",
                    "postrtg",
                    "handle",
                ]
                .map(String::from)
                .to_vec();
                delete.push(handle);
                (
                    Box::new(|| {
                        nft(&ns).contains("ip daddr != 224.0.0.0/4 masquerade fully-random")
                    }),
                    delete,
                )
            }
        };
        assert!(present());
        let args: Vec<&str> = delete[1..].iter().map(String::as_str).collect();
        lines(&ns, &delete[0], &args);
        let deleted = Instant::now();
        assert!(!present(), "{kind}: the rule was not deleted");
        while !present() && deleted.elapsed() < Duration::from_secs(6) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let took = deleted.elapsed();
        assert!(present(), "{kind}: not restored within 6 s");
        assert!(
            took <= Duration::from_secs(6),
            "{kind}: restored after {took:?}"
        );
        assert_eq!(rules.writes(), writes + 1, "{kind}: one write restores");

        let _ = stop.send(());
        runtime.block_on(task).expect("the loop ends when told");
    }
}

#[test]
fn a_previous_lease_is_replaced_and_switching_driver_removes_the_other() {
    let ns = TestNetns::new("masqprev");
    let path = ns.path();
    let dir = tempfile::tempdir().expect("tempdir");
    let subnet_env = dir.path().join("subnet.env");

    for kind in [DriverKind::Iptables, DriverKind::Nftables] {
        // Lease A, written to subnet.env as the task does.
        MasqRules::setup(kind, Some(&path), v4("10.42.0.0/24"), None).expect("lease A");
        SubnetEnv::for_lease(
            Some((
                "10.42.0.0/16".parse().unwrap(),
                "10.42.0.0/24".parse().unwrap(),
            )),
            None,
            1450,
            true,
        )
        .write(&subnet_env)
        .expect("subnet.env");

        // Restart with lease B: the old file says what is replaced.
        let previous = SubnetEnv::read(&subnet_env).expect("old subnet.env");
        let (rules, outcome) =
            MasqRules::setup(kind, Some(&path), v4("10.42.5.0/24"), Some(&previous))
                .expect("lease B");
        assert!(outcome.written, "{kind}: {outcome:?}");
        match kind {
            DriverKind::Iptables => {
                let nat = lines(&ns, "iptables", &["-t", "nat", "-S"]);
                let want: Vec<String> = GOLDEN_NAT
                    .iter()
                    .map(|l| l.replace("10.42.0.0/24", "10.42.5.0/24"))
                    .collect();
                assert_eq!(chain(&nat, "-A FLANNEL-POSTRTG "), want);
                assert_eq!(chain(&nat, "-A POSTROUTING "), [GOLDEN_JUMP]);
                assert!(!nat.join("\n").contains("10.42.0.0/24"), "{nat:#?}");
            }
            DriverKind::Nftables => {
                let ruleset = nft(&ns);
                assert!(!ruleset.contains("10.42.0.0/24"), "{ruleset}");
                assert!(
                    ruleset.contains("ip saddr 10.42.5.0/24 ip daddr 10.42.0.0/16 return"),
                    "{ruleset}"
                );
            }
        }
        assert!(!rules.check_and_restore().expect("check").written);
    }

    // The loop above ended with nftables: the iptables chains are gone.
    let nat = lines(&ns, "iptables", &["-t", "nat", "-S"]).join("\n");
    let filter = lines(&ns, "iptables", &["-S"]).join("\n");
    assert!(
        !nat.contains("FLANNEL") && !nat.contains("flanneld"),
        "{nat}"
    );
    assert!(
        !filter.contains("FLANNEL") && !filter.contains("flanneld"),
        "{filter}"
    );
    assert!(nft(&ns).contains("table ip flannel-ipv4"));

    // And back to iptables: the nft table goes.
    MasqRules::setup(DriverKind::Iptables, Some(&path), v4("10.42.5.0/24"), None)
        .expect("back to iptables");
    let ruleset = nft(&ns);
    assert!(!ruleset.contains("flannel-ipv4"), "{ruleset}");
    let nat = lines(&ns, "iptables", &["-t", "nat", "-S"]);
    assert_eq!(chain(&nat, "-A FLANNEL-POSTRTG ").len(), 6);
}

#[test]
fn ipv6_masquerade_only_with_flannel_ipv6_masq() {
    let ns = TestNetns::new("masqv6");
    let path = ns.path();

    // iptables: on → upstream's six lines with ff00::/8.
    let (rules, _) =
        MasqRules::setup(DriverKind::Iptables, Some(&path), dual(true), None).expect("setup");
    let nat6 = lines(&ns, "ip6tables", &["-t", "nat", "-S"]);
    assert_eq!(
        chain(&nat6, "-A FLANNEL-POSTRTG "),
        GOLDEN_NAT6,
        "{nat6:#?}"
    );
    assert_eq!(chain(&nat6, "-A POSTROUTING "), [GOLDEN_JUMP]);
    assert!(!rules.check_and_restore().expect("check").written);

    // Off → no IPv6 masquerade chain; forward rules stay (as in k3s).
    MasqRules::setup(DriverKind::Iptables, Some(&path), dual(false), None).expect("off");
    let nat6 = lines(&ns, "ip6tables", &["-t", "nat", "-S"]).join("\n");
    assert!(
        !nat6.contains("FLANNEL-POSTRTG") && !nat6.contains("flanneld"),
        "{nat6}"
    );
    let filter6 = lines(&ns, "ip6tables", &["-S"]);
    assert!(
        filter6.contains(
            &"-A FLANNEL-FWD -s fd00:42::/56 -m comment --comment \"flanneld forward\" -j ACCEPT"
                .to_string()
        ),
        "{filter6:#?}"
    );
    let nat4 = lines(&ns, "iptables", &["-t", "nat", "-S"]);
    assert_eq!(chain(&nat4, "-A FLANNEL-POSTRTG "), GOLDEN_NAT);

    // nftables: on → table ip6 flannel-ipv6 with a postrtg chain.
    let (rules, _) =
        MasqRules::setup(DriverKind::Nftables, Some(&path), dual(true), None).expect("nft on");
    let table6 = lines(&ns, "nft", &["list", "table", "ip6", "flannel-ipv6"]).join("\n");
    for needle in [
        "type nat hook postrouting priority srcnat; policy accept;",
        "ip6 saddr fd00:42::/64 ip6 daddr fd00:42::/56 return",
        "ip6 saddr != fd00:42::/56 ip6 daddr fd00:42::/64 return",
        "ip6 saddr fd00:42::/56 ip6 daddr != ff00::/8 masquerade fully-random",
        "ip6 saddr != fd00:42::/56 ip6 daddr fd00:42::/56 masquerade fully-random",
    ] {
        assert!(table6.contains(needle), "missing {needle:?} in\n{table6}");
    }
    assert!(!rules.check_and_restore().expect("check").written);
    let ip6 = lines(&ns, "ip6tables", &["-S"]).join("\n");
    assert!(!ip6.contains("FLANNEL"), "{ip6}");

    // Off → the ip6 table keeps only the forward chain.
    MasqRules::setup(DriverKind::Nftables, Some(&path), dual(false), None).expect("nft off");
    let table6 = lines(&ns, "nft", &["list", "table", "ip6", "flannel-ipv6"]).join("\n");
    assert!(
        !table6.contains("postrtg") && !table6.contains("masquerade"),
        "{table6}"
    );
    assert!(table6.contains("ip6 saddr fd00:42::/56 accept"), "{table6}");
    assert!(nft(&ns).contains("table ip flannel-ipv4"));
}

#[test]
fn errors_name_the_command_and_the_namespace() {
    let missing = std::path::PathBuf::from("/run/netns/fe-masq-no-such-namespace");
    let error = MasqRules::setup(
        DriverKind::Iptables,
        Some(&missing),
        v4("10.42.0.0/24"),
        None,
    )
    .expect_err("no such namespace")
    .to_string();
    assert!(
        error.contains("iptables-save") && error.contains("fe-masq-no-such-namespace"),
        "{error}"
    );
}

/// `--iptables-mode detect`, as in the DaemonSet image that carries both
/// variants: the rules go where kubelet's hint chain is (legacy here,
/// although this machine's plain `iptables` is nft), and with no hint to
/// the variant with more rules; explicit modes write where they say.
#[test]
fn detect_mode_writes_where_kubelet_writes() {
    use flannel_embed::config::IptablesMode;
    let has_flannel_chain = |ns: &TestNetns, program: &str| {
        lines(ns, program, &["-t", "nat", "-S"]).contains(&"-N FLANNEL-POSTRTG".to_string())
    };
    let legacy_works = {
        let ns = TestNetns::new("masqlegacy");
        ns.exec("iptables-legacy", &["-t", "nat", "-S"])
            .status
            .success()
    };
    if !legacy_works {
        eprintln!("skipped: iptables-legacy cannot run here (no ip_tables module)");
        return;
    }

    // kubelet's hint in legacy: detect follows it.
    let ns = TestNetns::new("masqdetl");
    let path = ns.path();
    assert!(ns
        .exec(
            "iptables-legacy",
            &["-t", "mangle", "-N", "KUBE-IPTABLES-HINT"]
        )
        .status
        .success());
    MasqRules::setup_with(
        DriverKind::Iptables,
        IptablesMode::Detect,
        Some(&path),
        v4("10.42.0.0/24"),
        None,
    )
    .expect("setup, detect");
    assert!(has_flannel_chain(&ns, "iptables-legacy"));
    assert!(!has_flannel_chain(&ns, "iptables-nft"));
    let nat = lines(&ns, "iptables-legacy", &["-t", "nat", "-S"]);
    assert_eq!(chain(&nat, "-A FLANNEL-POSTRTG "), GOLDEN_NAT, "{nat:#?}");

    // No hint, more rules in nft: nft.
    let ns = TestNetns::new("masqdetn");
    let path = ns.path();
    assert!(ns
        .exec("iptables-nft", &["-A", "INPUT", "-j", "ACCEPT"])
        .status
        .success());
    MasqRules::setup_with(
        DriverKind::Iptables,
        IptablesMode::Detect,
        Some(&path),
        v4("10.42.0.0/24"),
        None,
    )
    .expect("setup, detect");
    assert!(has_flannel_chain(&ns, "iptables-nft"));
    assert!(!has_flannel_chain(&ns, "iptables-legacy"));

    // Explicit legacy, whatever the node has.
    let ns = TestNetns::new("masqexpl");
    let path = ns.path();
    let (rules, _) = MasqRules::setup_with(
        DriverKind::Iptables,
        IptablesMode::Legacy,
        Some(&path),
        v4("10.42.0.0/24"),
        None,
    )
    .expect("setup, legacy");
    assert!(has_flannel_chain(&ns, "iptables-legacy"));
    assert!(!has_flannel_chain(&ns, "iptables-nft"));
    assert!(!rules.check_and_restore().expect("check").written);
}
