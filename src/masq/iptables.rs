//! The iptables driver: `iptables-save` / `ip6tables-save` to look,
//! `iptables-restore --noflush` / `ip6tables-restore --noflush` to write.
//!
//! Our chains (`FLANNEL-POSTRTG`, `FLANNEL-FWD`) belong to us alone, so a
//! chain that differs from the wanted rules in any way (a rule deleted,
//! added, reordered, or left from a previous lease or Network) is rewritten
//! as a whole: declaring the chain in `--noflush` mode flushes it, and the
//! wanted rules follow in the same `*table ... COMMIT` transaction. The
//! jump from `POSTROUTING` / `FORWARD` must be there exactly once; any other
//! rule in those built-in chains carrying our comment (a duplicate jump, or
//! rules an older flannel put there directly) is deleted in the same
//! transaction. A chain that matches is not written at all.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::{info, warn};

use super::exec::Runner;
use super::rules::{Chain, Family, Rule, RuleSet};
use super::{lock, DriverKind, MasqError, Outcome, RuleDriver};
use crate::config::IptablesMode;

/// How long `iptables-restore` waits for the xtables lock (`-w 5`) before
/// it gives up with exit status 4: a lock held by another program is then
/// a failed check the keeper reports and retries, not a command that hangs
/// until it is killed. (iptables-nft takes no lock and ignores it.)
const XTABLES_WAIT_SECONDS: &str = "5";

/// One table of `iptables-save` output.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SavedTable {
    /// Every chain declared (`:NAME POLICY [x:y]`).
    pub chains: BTreeSet<String>,
    /// Every rule line (`-A CHAIN ...`), in order.
    pub rules: Vec<String>,
}

/// Parses `iptables-save` output into tables.
pub(crate) fn parse_save(text: &str) -> BTreeMap<String, SavedTable> {
    let mut tables: BTreeMap<String, SavedTable> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix('*') {
            current = Some(name.to_string());
            tables.entry(name.to_string()).or_default();
        } else if line == "COMMIT" {
            current = None;
        } else if let Some(table) = current.as_ref().and_then(|t| tables.get_mut(t)) {
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    table.chains.insert(name.to_string());
                }
            } else if line.starts_with("-A ") {
                table.rules.push(line.to_string());
            }
        }
    }
    tables
}

/// What a dump says about one of our chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainState {
    /// The chain is declared.
    pub exists: bool,
    /// Its rules, as printed.
    pub rules: Vec<String>,
    /// Rules in the built-in parent chain that carry our comment.
    pub parent_ours: Vec<String>,
}

pub(crate) fn chain_state(tables: &BTreeMap<String, SavedTable>, chain: Chain) -> ChainState {
    let empty = SavedTable::default();
    let table = tables.get(chain.iptables_table()).unwrap_or(&empty);
    let own = format!("-A {} ", chain.iptables_chain());
    let parent = format!("-A {} ", chain.iptables_parent());
    let comment = format!("--comment \"{}\"", chain.comment());
    ChainState {
        exists: table.chains.contains(chain.iptables_chain()),
        rules: table
            .rules
            .iter()
            .filter(|r| r.starts_with(&own))
            .cloned()
            .collect(),
        parent_ours: table
            .rules
            .iter()
            .filter(|r| r.starts_with(&parent) && r.contains(&comment))
            .cloned()
            .collect(),
    }
}

/// Lines to write inside the chain's `*table ... COMMIT` block, and why;
/// `None` when the chain is as wanted. `want` is `None` when the chain must
/// not exist; `accepted` is how this iptables prints the wanted rules when
/// that differs from our text (learnt after a write).
pub(crate) fn plan_chain(
    chain: Chain,
    state: &ChainState,
    want: Option<&[String]>,
    accepted: Option<&[String]>,
) -> Option<(Vec<String>, String)> {
    let jump = chain.iptables_jump();
    let name = chain.iptables_chain();
    let parent = chain.iptables_parent();
    let delete = |line: &String| format!("-D{}", &line[2..]);
    match want {
        Some(want) => {
            let rules_ok =
                state.exists && (state.rules == want || accepted.is_some_and(|a| state.rules == a));
            let jumps = state.parent_ours.iter().filter(|r| **r == jump).count();
            let parent_ok = jumps == 1 && state.parent_ours.len() == 1;
            if rules_ok && parent_ok {
                return None;
            }
            let mut reasons = Vec::new();
            if !state.exists {
                reasons.push(format!("chain {name} was missing"));
            } else if !rules_ok {
                let missing = want.iter().filter(|w| !state.rules.contains(w)).count();
                let extra = state.rules.iter().filter(|r| !want.contains(r)).count();
                reasons.push(format!(
                    "{name} differed ({missing} of {} rules missing, {extra} unexpected)",
                    want.len()
                ));
            }
            if jumps == 0 {
                reasons.push(format!("the jump from {parent} was missing"));
            }
            let stale = state.parent_ours.len().saturating_sub(jumps.min(1));
            if stale > 0 {
                reasons.push(format!("{stale} stale or duplicate rule(s) in {parent}"));
            }
            let mut lines = vec![format!(":{name} - [0:0]")];
            let mut kept_jump = false;
            for line in &state.parent_ours {
                if *line == jump && !kept_jump {
                    kept_jump = true;
                } else {
                    lines.push(delete(line));
                }
            }
            if !kept_jump {
                lines.push(jump);
            }
            lines.extend(want.iter().cloned());
            Some((lines, reasons.join(", ")))
        }
        None => {
            if !state.exists && state.parent_ours.is_empty() {
                return None;
            }
            let mut lines: Vec<String> = state.parent_ours.iter().map(delete).collect();
            if state.exists {
                lines.push(format!(":{name} - [0:0]"));
                lines.push(format!("-X {name}"));
            }
            Some((lines, format!("{name} is not wanted")))
        }
    }
}

/// `iptables-restore` input for the planned chains.
pub(crate) fn restore_input(plans: &[(Chain, Vec<String>, String)]) -> String {
    let mut out = String::new();
    for (chain, lines, _) in plans {
        out += &format!("*{}\n", chain.iptables_table());
        for line in lines {
            out += line;
            out.push('\n');
        }
        out += "COMMIT\n";
    }
    out
}

#[derive(Debug, Default)]
struct State {
    /// The rule set of the last successful `ensure`.
    last: Option<RuleSet>,
    /// Per (family, chain): (our text, how iptables printed it back).
    accepted: HashMap<(Family, Chain), (Vec<String>, Vec<String>)>,
    /// Families whose cleanup failed (warned once).
    warned: HashSet<Family>,
}

/// kubelet's chains that say which iptables it writes with: since
/// Kubernetes 1.24 it creates `KUBE-IPTABLES-HINT` (mangle) in the
/// variant it uses, and `KUBE-KUBELET-CANARY` before that.
const KUBELET_HINT_CHAINS: [&str; 2] = ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"];

/// Chooses between iptables-legacy and iptables-nft the way
/// kubernetes-sigs/iptables-wrappers does (kube-flannel's and
/// kube-proxy's images): the variant holding kubelet's hint chain wins;
/// else the one with more rules; else nft. Each argument is that
/// variant's `iptables-save` plus `ip6tables-save` output, `None` when
/// the variant is not installed. Returns the mode (`Nft` or `Legacy`)
/// and why, or `None` when neither is installed.
///
/// ```
/// use flannel_embed::config::IptablesMode;
/// use flannel_embed::masq::detect_iptables_mode;
///
/// let legacy = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n";
/// let nft = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n";
/// let (mode, why) = detect_iptables_mode(Some(legacy), Some(nft)).unwrap();
/// assert_eq!(mode, IptablesMode::Nft);
/// assert!(why.contains("KUBE-IPTABLES-HINT"));
/// ```
pub fn detect_iptables_mode(
    legacy: Option<&str>,
    nft: Option<&str>,
) -> Option<(IptablesMode, String)> {
    let hint = |text: &str| {
        let tables = parse_save(text);
        KUBELET_HINT_CHAINS
            .into_iter()
            .find(|chain| tables.values().any(|t| t.chains.contains(*chain)))
    };
    let rules = |text: &str| -> usize { parse_save(text).values().map(|t| t.rules.len()).sum() };
    match (legacy, nft) {
        (None, None) => None,
        (Some(_), None) => Some((
            IptablesMode::Legacy,
            "only iptables-legacy is installed".into(),
        )),
        (None, Some(_)) => Some((IptablesMode::Nft, "only iptables-nft is installed".into())),
        (Some(legacy), Some(nft)) => Some(if let Some(chain) = hint(nft) {
            (
                IptablesMode::Nft,
                format!("kubelet's {chain} chain is in nft"),
            )
        } else if let Some(chain) = hint(legacy) {
            (
                IptablesMode::Legacy,
                format!("kubelet's {chain} chain is in legacy"),
            )
        } else {
            let (l, n) = (rules(legacy), rules(nft));
            if l > n {
                (
                    IptablesMode::Legacy,
                    format!("no kubelet hint chain; legacy has more rules ({l} against {n})"),
                )
            } else {
                (
                    IptablesMode::Nft,
                    format!("no kubelet hint chain; legacy has no more rules than nft ({l} against {n})"),
                )
            }
        }),
    }
}

/// The iptables driver (`iptables-save`, `iptables-restore --noflush`,
/// and the `ip6tables` twins, or their `-nft` / `-legacy` variants), in
/// one network namespace.
#[derive(Debug)]
pub struct Iptables {
    runner: Runner,
    mode: IptablesMode,
    /// The variant in use (`Detect` resolved at first use, once).
    resolved: OnceLock<IptablesMode>,
    writes: AtomicU64,
    state: Mutex<State>,
}

impl Iptables {
    /// A driver for the namespace at `netns` (`None`: our own), with the
    /// `iptables` programs on `PATH`.
    pub fn new(netns: Option<&Path>) -> Iptables {
        Iptables::with_mode(netns, IptablesMode::Path)
    }

    /// A driver that runs the programs `mode` names.
    pub fn with_mode(netns: Option<&Path>, mode: IptablesMode) -> Iptables {
        Iptables {
            runner: Runner::new(netns),
            mode,
            resolved: OnceLock::new(),
            writes: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        }
    }

    /// The program for `family` and `tool` (`save`, `restore`) in `mode`.
    fn program(mode: IptablesMode, family: Family, tool: &str) -> String {
        match mode {
            IptablesMode::Nft => format!("{}-nft-{tool}", family.iptables()),
            IptablesMode::Legacy => format!("{}-legacy-{tool}", family.iptables()),
            IptablesMode::Path | IptablesMode::Detect => format!("{}-{tool}", family.iptables()),
        }
    }

    /// The variant in use; in detect mode, looks at both once (called
    /// with the state lock held, so two checks never detect twice).
    fn resolved(&self) -> Result<IptablesMode, MasqError> {
        if let Some(mode) = self.resolved.get() {
            return Ok(*mode);
        }
        if self.mode != IptablesMode::Detect {
            return Ok(*self.resolved.get_or_init(|| self.mode));
        }
        // Both families, as iptables-wrappers counts them; a variant whose
        // IPv4 save is missing is not installed; any other failure counts
        // as no rules (the other variant or nft then wins).
        let save_all = |mode: IptablesMode| -> Option<String> {
            let mut text = String::new();
            for family in Family::ALL {
                match self
                    .runner
                    .run(&Iptables::program(mode, family, "save"), &[], None)
                {
                    Ok(out) => text += &out,
                    Err(MasqError::Missing { .. }) if family == Family::V4 => return None,
                    Err(e) => {
                        warn!(netns = %self.runner.label(), "detecting the iptables variant: {e}")
                    }
                }
            }
            Some(text)
        };
        let legacy = save_all(IptablesMode::Legacy);
        let nft = save_all(IptablesMode::Nft);
        let Some((mode, why)) = detect_iptables_mode(legacy.as_deref(), nft.as_deref()) else {
            return Err(MasqError::Missing {
                program: "iptables-nft-save or iptables-legacy-save (--iptables-mode detect)"
                    .into(),
                netns: self.runner.label(),
            });
        };
        info!(netns = %self.runner.label(), "iptables mode: {} ({why})", mode.as_str());
        Ok(*self.resolved.get_or_init(|| mode))
    }

    fn dump(&self, family: Family) -> Result<BTreeMap<String, SavedTable>, MasqError> {
        let save = Iptables::program(self.resolved()?, family, "save");
        Ok(parse_save(&self.runner.run(&save, &[], None)?))
    }

    /// Brings `family` to `desired` (`None` for a family: remove ours).
    fn ensure_family(
        &self,
        state: &mut State,
        family: Family,
        desired: Option<&RuleSet>,
        outcome: &mut Outcome,
    ) -> Result<(), MasqError> {
        let wanted = |chain: Chain| -> Option<Vec<String>> {
            desired.filter(|d| d.wants(family, chain)).map(|d| {
                d.chain_rules(family, chain)
                    .iter()
                    .map(Rule::iptables)
                    .collect()
            })
        };
        let tables = self.dump(family)?;
        let mut plans = Vec::new();
        for chain in Chain::ALL {
            let want = wanted(chain);
            let accepted = state
                .accepted
                .get(&(family, chain))
                .filter(|(ours, _)| Some(ours) == want.as_ref())
                .map(|(_, printed)| printed.as_slice());
            let current = chain_state(&tables, chain);
            if let Some((lines, why)) = plan_chain(chain, &current, want.as_deref(), accepted) {
                plans.push((chain, lines, why));
            }
        }
        if plans.is_empty() {
            return Ok(());
        }
        let restore = Iptables::program(self.resolved()?, family, "restore");
        self.runner.run(
            &restore,
            &["--noflush", "-w", XTABLES_WAIT_SECONDS],
            Some(&restore_input(&plans)),
        )?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        outcome.written = true;
        for (chain, lines, why) in &plans {
            let what = if wanted(*chain).is_some() {
                "rewrote"
            } else {
                "removed"
            };
            let change = format!(
                "{family} {} table: {what} {} ({why}; {} line(s) via {restore})",
                chain.iptables_table(),
                chain.iptables_chain(),
                lines.len()
            );
            info!(netns = %self.runner.label(), "{change}");
            outcome.changes.push(change);
        }
        // Read back once: if this iptables prints a wanted rule differently
        // from our text, remember its form so the next check does not
        // rewrite an intact chain every time.
        let tables = self.dump(family)?;
        for (chain, _, _) in &plans {
            let Some(want) = wanted(*chain) else { continue };
            let printed = chain_state(&tables, *chain).rules;
            if printed != want {
                warn!(
                    netns = %self.runner.label(),
                    "{} prints {} differently from the rules written (wanted {want:?}, printed {printed:?}); treating the printed form as intact",
                    family.iptables(),
                    chain.iptables_chain()
                );
                state.accepted.insert((family, *chain), (want, printed));
            }
        }
        Ok(())
    }
}

impl RuleDriver for Iptables {
    fn kind(&self) -> DriverKind {
        DriverKind::Iptables
    }

    fn ensure(&self, desired: &RuleSet) -> Result<Outcome, MasqError> {
        let mut state = lock(&self.state);
        let mut outcome = Outcome::default();
        // A family the rule set does not use is only looked at when the
        // rule set changes (start-up, lease change), not on every check.
        let sweep = state.last.as_ref() != Some(desired);
        for family in Family::ALL {
            let used = desired.family(family).is_some();
            if !used && !sweep {
                continue;
            }
            match self.ensure_family(&mut state, family, Some(desired), &mut outcome) {
                Ok(()) => {}
                Err(MasqError::Missing { .. }) if !used => {}
                Err(e) if !used => {
                    if state.warned.insert(family) {
                        warn!("cannot check for stale {family} flannel rules: {e}");
                    }
                }
                Err(e) => return Err(e),
            }
        }
        state.last = Some(*desired);
        Ok(outcome)
    }

    fn remove_all(&self) -> Result<Outcome, MasqError> {
        let mut state = lock(&self.state);
        let mut outcome = Outcome::default();
        for family in Family::ALL {
            match self.ensure_family(&mut state, family, None, &mut outcome) {
                Ok(()) | Err(MasqError::Missing { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        state.last = None;
        Ok(outcome)
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_iptables_mode_table() {
        const EMPTY: &str = "";
        const HINT: &str =
            "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n";
        const CANARY: &str = "*nat\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n";
        const TWO_RULES: &str =
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\n-A INPUT -j DROP\nCOMMIT\n";
        const ONE_RULE: &str =
            "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j RETURN\nCOMMIT\n";
        // iptables-nft-save's note about legacy tables is a comment, not a rule.
        const NOTE: &str =
            "# Warning: iptables-legacy tables present, use iptables-legacy-save to see them\n";
        use IptablesMode::{Legacy, Nft};
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Option<IptablesMode>,
            &'a str,
        );
        let cases: [Case; 10] = [
            (None, None, None, ""),
            (Some(TWO_RULES), None, Some(Legacy), "only iptables-legacy"),
            (None, Some(EMPTY), Some(Nft), "only iptables-nft"),
            (Some(EMPTY), Some(EMPTY), Some(Nft), "(0 against 0)"),
            (
                Some(TWO_RULES),
                Some(ONE_RULE),
                Some(Legacy),
                "(2 against 1)",
            ),
            (Some(ONE_RULE), Some(TWO_RULES), Some(Nft), "(1 against 2)"),
            (Some(ONE_RULE), Some(NOTE), Some(Legacy), "(1 against 0)"),
            // The hint beats the rule count, nft's hint beats legacy's.
            (
                Some(TWO_RULES),
                Some(HINT),
                Some(Nft),
                "KUBE-IPTABLES-HINT chain is in nft",
            ),
            (
                Some(HINT),
                Some(TWO_RULES),
                Some(Legacy),
                "KUBE-IPTABLES-HINT chain is in legacy",
            ),
            (Some(CANARY), Some(HINT), Some(Nft), "in nft"),
        ];
        for (legacy, nft, want, why) in cases {
            let got = detect_iptables_mode(legacy, nft);
            assert_eq!(got.as_ref().map(|(m, _)| *m), want, "{legacy:?} {nft:?}");
            if let Some((_, reason)) = got {
                assert!(reason.contains(why), "{reason:?} lacks {why:?}");
            }
        }
        assert!(detect_iptables_mode(Some(CANARY), Some(EMPTY))
            .unwrap()
            .1
            .contains("KUBE-KUBELET-CANARY chain is in legacy"));
    }

    #[test]
    fn program_names_per_mode() {
        assert_eq!(
            Iptables::program(IptablesMode::Path, Family::V4, "save"),
            "iptables-save"
        );
        assert_eq!(
            Iptables::program(IptablesMode::Nft, Family::V6, "restore"),
            "ip6tables-nft-restore"
        );
        assert_eq!(
            Iptables::program(IptablesMode::Legacy, Family::V4, "restore"),
            "iptables-legacy-restore"
        );
    }

    const SAVE: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Thu Nov 26 06:26:15 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:FLANNEL-FWD - [0:0]
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.42.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.42.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
# Completed on Thu Nov 26 06:26:15 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.42.0.0/24 -d 10.42.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.42.0.0/16 -d 10.42.0.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.42.0.0/16 -d 10.42.0.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.42.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.42.0.0/16 -d 10.42.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
COMMIT
"#;

    fn desired(lease: &str) -> RuleSet {
        RuleSet::for_lease(
            Some(("10.42.0.0/16".parse().unwrap(), lease.parse().unwrap())),
            None,
            true,
            false,
        )
    }

    fn want(set: &RuleSet, chain: Chain) -> Vec<String> {
        set.chain_rules(Family::V4, chain)
            .iter()
            .map(Rule::iptables)
            .collect()
    }

    #[test]
    fn an_intact_dump_needs_no_write() {
        let tables = parse_save(SAVE);
        let set = desired("10.42.0.0/24");
        for chain in Chain::ALL {
            let state = chain_state(&tables, chain);
            assert!(state.exists);
            assert_eq!(
                plan_chain(chain, &state, Some(&want(&set, chain)), None),
                None
            );
        }
    }

    #[test]
    fn a_deleted_rule_rewrites_the_chain_but_keeps_the_jump() {
        let text = SAVE.replace(
            "-A FLANNEL-POSTRTG ! -s 10.42.0.0/16 -d 10.42.0.0/24 -m comment --comment \"flanneld masq\" -j RETURN\n",
            "",
        );
        let tables = parse_save(&text);
        let set = desired("10.42.0.0/24");
        let want = want(&set, Chain::Masq);
        let state = chain_state(&tables, Chain::Masq);
        let (lines, why) = plan_chain(Chain::Masq, &state, Some(&want), None).expect("a write");
        assert_eq!(lines[0], ":FLANNEL-POSTRTG - [0:0]");
        assert_eq!(&lines[1..], want.as_slice());
        assert!(why.contains("1 of 6 rules missing, 0 unexpected"), "{why}");
    }

    #[test]
    fn a_previous_lease_and_duplicate_jumps_are_replaced() {
        let text = SAVE.replace("10.42.0.0/24", "10.42.7.0/24").replace(
            "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n",
            "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n-A POSTROUTING -s 10.42.0.0/16 -d 10.42.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN\n-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n",
        );
        let tables = parse_save(&text);
        let set = desired("10.42.0.0/24");
        let want = want(&set, Chain::Masq);
        let state = chain_state(&tables, Chain::Masq);
        assert_eq!(state.parent_ours.len(), 3);
        let (lines, why) = plan_chain(Chain::Masq, &state, Some(&want), None).expect("a write");
        assert_eq!(
            &lines[..3],
            [
                ":FLANNEL-POSTRTG - [0:0]",
                "-D POSTROUTING -s 10.42.0.0/16 -d 10.42.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN",
                "-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG",
            ]
        );
        assert_eq!(&lines[3..], want.as_slice());
        assert!(why.contains("3 of 6 rules missing, 3 unexpected"), "{why}");
        assert!(why.contains("2 stale or duplicate"), "{why}");
    }

    #[test]
    fn a_missing_chain_gets_chain_jump_and_rules() {
        let tables = parse_save("*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n");
        let set = desired("10.42.0.0/24");
        let want = want(&set, Chain::Masq);
        let state = chain_state(&tables, Chain::Masq);
        let (lines, why) = plan_chain(Chain::Masq, &state, Some(&want), None).expect("a write");
        assert_eq!(lines[1], Chain::Masq.iptables_jump());
        assert_eq!(lines.len(), 2 + want.len());
        assert!(why.contains("was missing"), "{why}");
        let input = restore_input(&[(Chain::Masq, lines, why)]);
        assert!(input.starts_with("*nat\n:FLANNEL-POSTRTG - [0:0]\n-A POSTROUTING "));
        assert!(input.ends_with("COMMIT\n"));
    }

    #[test]
    fn unwanted_chains_are_deleted_with_their_jumps() {
        let tables = parse_save(SAVE);
        let state = chain_state(&tables, Chain::Forward);
        let (lines, _) = plan_chain(Chain::Forward, &state, None, None).expect("a write");
        assert_eq!(
            lines,
            [
                "-D FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD",
                ":FLANNEL-FWD - [0:0]",
                "-X FLANNEL-FWD",
            ]
        );
        let empty = parse_save("");
        assert_eq!(
            plan_chain(
                Chain::Forward,
                &chain_state(&empty, Chain::Forward),
                None,
                None
            ),
            None
        );
    }

    #[test]
    fn a_learnt_printed_form_counts_as_intact() {
        let tables = parse_save(SAVE);
        let state = chain_state(&tables, Chain::Masq);
        let ours = vec!["-A FLANNEL-POSTRTG something else".to_string()];
        assert!(plan_chain(Chain::Masq, &state, Some(&ours), None).is_some());
        assert_eq!(
            plan_chain(Chain::Masq, &state, Some(&ours), Some(&state.rules)),
            None
        );
    }
}
