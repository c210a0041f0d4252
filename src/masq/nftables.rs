//! The nftables driver: tables `ip flannel-ipv4` / `ip6 flannel-ipv6`
//! (upstream's names) with chains `postrtg` (type nat, hook postrouting,
//! priority srcnat) and `forward` (type filter, hook forward, priority
//! filter).
//!
//! Looking is `nft -j list tables` plus `nft -j list table <family> <name>`
//! for each table we want; the JSON rules are parsed back into [`Rule`]s
//! and compared by meaning, so nft's own spelling (`0x00004000`, counters)
//! does not matter. A table that differs is replaced as a whole in one
//! `nft -f` transaction (`add table`, `delete table`, the full table), so a
//! packet sees either the old rules or the new ones, never none; an intact
//! table is not written.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ipnetwork::IpNetwork;
use serde_json::Value;
use tracing::{info, warn};

use super::exec::Runner;
use super::rules::{AddrMatch, Chain, Family, Rule, RuleSet, Verdict};
use super::{lock, DriverKind, MasqError, Outcome, RuleDriver};

/// One chain of one of our tables, as nft reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainState {
    /// Chain name.
    pub name: String,
    /// Base chain: (type, hook, priority, policy).
    pub base: Option<(String, String, i64, String)>,
    /// Rules; `None` for a rule whose expressions are not ours.
    pub rules: Vec<Option<RuleKey>>,
}

/// A rule's meaning without its chain (the chain is the parent's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RuleKey {
    mark: Option<(u32, u32)>,
    src: Option<(IpNetwork, bool)>,
    dst: Option<(IpNetwork, bool)>,
    verdict: u8,
    random_fully: bool,
}

impl RuleKey {
    fn of(rule: &Rule) -> RuleKey {
        let addr = |m: Option<AddrMatch>| m.map(|m| (m.net, m.negated));
        let (verdict, random_fully) = match rule.verdict {
            Verdict::Return => (0, false),
            Verdict::Accept => (1, false),
            Verdict::Masquerade { random_fully } => (2, random_fully),
        };
        RuleKey {
            mark: rule.mark,
            src: addr(rule.src),
            dst: addr(rule.dst),
            verdict,
            random_fully,
        }
    }
}

/// One of our tables, as nft reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct TableState {
    /// Chains, sorted by name.
    pub chains: Vec<ChainState>,
    /// Objects that are not chains or rules (sets, maps, ...).
    pub others: usize,
}

/// The table `desired` wants for `family` (no chains: no table).
pub(crate) fn desired_table(desired: &RuleSet, family: Family) -> TableState {
    let mut chains: Vec<ChainState> = Chain::ALL
        .iter()
        .filter(|c| desired.wants(family, **c))
        .map(|chain| {
            let (kind, hook, prio, _) = chain.nft_base();
            ChainState {
                name: chain.nft_chain().to_string(),
                base: Some((
                    kind.to_string(),
                    hook.to_string(),
                    prio,
                    "accept".to_string(),
                )),
                rules: desired
                    .chain_rules(family, *chain)
                    .iter()
                    .map(|r| Some(RuleKey::of(r)))
                    .collect(),
            }
        })
        .collect();
    chains.sort_by(|a, b| a.name.cmp(&b.name));
    TableState { chains, others: 0 }
}

fn objects(json: &Value) -> Result<&Vec<Value>, String> {
    json.get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| "no \"nftables\" array".to_string())
}

/// `(family, name)` of every table in `nft -j list tables` output.
pub(crate) fn parse_tables(text: &str) -> Result<BTreeSet<(String, String)>, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(objects(&json)?
        .iter()
        .filter_map(|o| o.get("table"))
        .filter_map(|t| {
            Some((
                t.get("family")?.as_str()?.to_string(),
                t.get("name")?.as_str()?.to_string(),
            ))
        })
        .collect())
}

/// Parses `nft -j list table <family> <name>` output.
pub(crate) fn parse_table(text: &str, family: Family) -> Result<TableState, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut table = TableState::default();
    let mut rules: Vec<(String, Option<RuleKey>)> = Vec::new();
    for object in objects(&json)? {
        let Some((kind, body)) = object.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        match kind.as_str() {
            "metainfo" | "table" => {}
            "chain" => {
                let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_string);
                let name = text("name").ok_or("a chain without a name")?;
                let base = match (text("type"), text("hook")) {
                    (Some(kind), Some(hook)) => Some((
                        kind,
                        hook,
                        body.get("prio").and_then(Value::as_i64).unwrap_or(i64::MIN),
                        text("policy").unwrap_or_else(|| "accept".to_string()),
                    )),
                    _ => None,
                };
                table.chains.push(ChainState {
                    name,
                    base,
                    rules: Vec::new(),
                });
            }
            "rule" => {
                let chain = body
                    .get("chain")
                    .and_then(Value::as_str)
                    .ok_or("a rule without a chain")?;
                let key = body
                    .get("expr")
                    .and_then(Value::as_array)
                    .and_then(|e| parse_rule(e, family));
                rules.push((chain.to_string(), key));
            }
            _ => table.others += 1,
        }
    }
    for (chain, key) in rules {
        match table.chains.iter_mut().find(|c| c.name == chain) {
            Some(c) => c.rules.push(key),
            None => table.others += 1,
        }
    }
    table.chains.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(table)
}

/// A rule's expressions as a [`RuleKey`], or `None` if they say anything
/// our rules do not (counters are ignored: they do not change meaning).
fn parse_rule(expr: &[Value], family: Family) -> Option<RuleKey> {
    let mut key = RuleKey {
        mark: None,
        src: None,
        dst: None,
        verdict: u8::MAX,
        random_fully: false,
    };
    for statement in expr {
        let (kind, body) = statement.as_object()?.iter().next()?;
        match kind.as_str() {
            "counter" => {}
            "return" => key.verdict = 0,
            "accept" => key.verdict = 1,
            "masquerade" => {
                key.verdict = 2;
                key.random_fully = match body {
                    Value::Null => false,
                    Value::Object(o) => match o.get("flags") {
                        None => false,
                        Some(Value::String(f)) if f == "fully-random" => true,
                        Some(Value::Array(flags))
                            if flags.len() == 1 && flags[0] == "fully-random" =>
                        {
                            true
                        }
                        Some(_) => return None,
                    },
                    _ => return None,
                };
            }
            "match" => {
                let op = body.get("op")?.as_str()?;
                let left = body.get("left")?;
                let right = body.get("right")?;
                if let Some(payload) = left.get("payload") {
                    if payload.get("protocol")?.as_str()? != family.nft_family() {
                        return None;
                    }
                    let negated = match op {
                        "==" => false,
                        "!=" => true,
                        _ => return None,
                    };
                    let net = parse_prefix(right)?;
                    match payload.get("field")?.as_str()? {
                        "saddr" if key.src.is_none() => key.src = Some((net, negated)),
                        "daddr" if key.dst.is_none() => key.dst = Some((net, negated)),
                        _ => return None,
                    }
                } else if op == "==" && key.mark.is_none() {
                    let value = u32::try_from(right.as_u64()?).ok()?;
                    key.mark = Some(match left.get("&") {
                        Some(and) => {
                            let and = and.as_array()?;
                            if and.len() != 2 || !is_meta_mark(&and[0]) {
                                return None;
                            }
                            (value, u32::try_from(and[1].as_u64()?).ok()?)
                        }
                        None if is_meta_mark(left) => (value, u32::MAX),
                        None => return None,
                    });
                } else {
                    return None;
                }
            }
            _ => return None,
        }
    }
    (key.verdict != u8::MAX).then_some(key)
}

fn is_meta_mark(value: &Value) -> bool {
    value
        .get("meta")
        .and_then(|m| m.get("key"))
        .and_then(Value::as_str)
        == Some("mark")
}

/// `{"prefix": {"addr": "10.42.0.0", "len": 16}}` or a bare address.
fn parse_prefix(value: &Value) -> Option<IpNetwork> {
    match value {
        Value::String(addr) => Some(IpNetwork::from(addr.parse::<IpAddr>().ok()?)),
        Value::Object(o) => {
            let prefix = o.get("prefix")?;
            let addr: IpAddr = prefix.get("addr")?.as_str()?.parse().ok()?;
            let len = u8::try_from(prefix.get("len")?.as_u64()?).ok()?;
            IpNetwork::new(addr, len).ok()
        }
        _ => None,
    }
}

/// Why `actual` is not `want` (for the log line).
fn difference(want: &TableState, actual: &TableState) -> String {
    let mut reasons = Vec::new();
    for chain in &want.chains {
        match actual.chains.iter().find(|c| c.name == chain.name) {
            None => reasons.push(format!("chain {} was missing", chain.name)),
            Some(c) if c.base != chain.base => {
                reasons.push(format!("chain {} had the wrong hook", chain.name))
            }
            Some(c) if c.rules != chain.rules => {
                let missing = chain.rules.iter().filter(|r| !c.rules.contains(r)).count();
                let extra = c.rules.iter().filter(|r| !chain.rules.contains(r)).count();
                reasons.push(format!(
                    "chain {} differed ({missing} of {} rules missing, {extra} unexpected)",
                    chain.name,
                    chain.rules.len()
                ));
            }
            Some(_) => {}
        }
    }
    for chain in &actual.chains {
        if !want.chains.iter().any(|c| c.name == chain.name) {
            reasons.push(format!("unexpected chain {}", chain.name));
        }
    }
    if actual.others > 0 {
        reasons.push(format!("{} unexpected object(s)", actual.others));
    }
    reasons.join(", ")
}

#[derive(Debug, Default)]
struct State {
    /// Per family: (wanted table, how nft reported it after our write),
    /// when the two differ.
    accepted: HashMap<Family, (TableState, TableState)>,
}

/// The nftables driver (`nft`), in one network namespace.
#[derive(Debug)]
pub struct Nftables {
    runner: Runner,
    writes: AtomicU64,
    state: Mutex<State>,
}

impl Nftables {
    /// A driver for the namespace at `netns` (`None`: our own).
    pub fn new(netns: Option<&Path>) -> Nftables {
        Nftables {
            runner: Runner::new(netns),
            writes: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        }
    }

    fn parse_error(&self, command: &str, problem: String) -> MasqError {
        MasqError::Parse {
            command: command.to_string(),
            netns: self.runner.label(),
            problem,
        }
    }

    fn tables(&self) -> Result<BTreeSet<(String, String)>, MasqError> {
        let out = self.runner.run("nft", &["-j", "list", "tables"], None)?;
        parse_tables(&out).map_err(|p| self.parse_error("nft -j list tables", p))
    }

    fn table(&self, family: Family) -> Result<TableState, MasqError> {
        let args = [
            "-j",
            "list",
            "table",
            family.nft_family(),
            family.nft_table(),
        ];
        let out = self.runner.run("nft", &args, None)?;
        parse_table(&out, family)
            .map_err(|p| self.parse_error(&format!("nft {}", args.join(" ")), p))
    }

    fn exists(tables: &BTreeSet<(String, String)>, family: Family) -> bool {
        tables.contains(&(
            family.nft_family().to_string(),
            family.nft_table().to_string(),
        ))
    }

    /// Brings both families to `desired` (`None`: remove our tables).
    fn apply(&self, desired: Option<&RuleSet>) -> Result<Outcome, MasqError> {
        let mut state = lock(&self.state);
        let mut outcome = Outcome::default();
        let present = self.tables()?;
        let mut script = String::new();
        let mut changes = Vec::new();
        let mut rewritten = Vec::new();
        for family in Family::ALL {
            let (fam, name) = (family.nft_family(), family.nft_table());
            let exists = Self::exists(&present, family);
            let want =
                desired.and_then(|d| d.nft_table(family).map(|t| (desired_table(d, family), t)));
            match want {
                Some((want, text)) => {
                    let why = if exists {
                        let actual = self.table(family)?;
                        let accepted = state
                            .accepted
                            .get(&family)
                            .is_some_and(|(w, printed)| *w == want && *printed == actual);
                        if actual == want || accepted {
                            continue;
                        }
                        difference(&want, &actual)
                    } else {
                        format!("table {fam} {name} was missing")
                    };
                    script += &format!("add table {fam} {name}\ndelete table {fam} {name}\n{text}");
                    changes.push(format!("{family}: rewrote table {fam} {name} ({why})"));
                    rewritten.push((family, want));
                }
                None if exists => {
                    script += &format!("delete table {fam} {name}\n");
                    changes.push(format!("{family}: removed table {fam} {name} (not wanted)"));
                }
                None => {}
            }
        }
        if script.is_empty() {
            return Ok(outcome);
        }
        self.runner.run("nft", &["-f", "-"], Some(&script))?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        outcome.written = true;
        for change in changes {
            info!(netns = %self.runner.label(), "{change} via nft -f");
            outcome.changes.push(change);
        }
        // Read back once so a form nft reports differently from what we
        // mean cannot make every later check rewrite the table.
        for (family, want) in rewritten {
            let actual = self.table(family)?;
            if actual != want {
                warn!(
                    netns = %self.runner.label(),
                    "nft reports table {} {} differently from the rules written ({}); treating that form as intact",
                    family.nft_family(),
                    family.nft_table(),
                    difference(&want, &actual)
                );
                state.accepted.insert(family, (want, actual));
            }
        }
        Ok(outcome)
    }
}

impl RuleDriver for Nftables {
    fn kind(&self) -> DriverKind {
        DriverKind::Nftables
    }

    fn ensure(&self, desired: &RuleSet) -> Result<Outcome, MasqError> {
        self.apply(Some(desired))
    }

    fn remove_all(&self) -> Result<Outcome, MasqError> {
        self.apply(None)
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nft -j list table ip flannel-ipv4` (nft 1.0.6) after our script,
    /// trimmed to one rule per kind.
    const LISTED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
 {"table": {"family": "ip", "name": "flannel-ipv4", "handle": 5}},
 {"chain": {"family": "ip", "table": "flannel-ipv4", "name": "postrtg", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
 {"chain": {"family": "ip", "table": "flannel-ipv4", "name": "forward", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
 {"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "postrtg", "handle": 3, "expr": [{"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 16384]}, "right": 16384}}, {"return": null}]}},
 {"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "postrtg", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.42.0.0", "len": 24}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.42.0.0", "len": 16}}}}, {"return": null}]}},
 {"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "postrtg", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.42.0.0", "len": 16}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.42.0.0", "len": 24}}}}, {"return": null}]}},
 {"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "postrtg", "handle": 6, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.42.0.0", "len": 16}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.42.0.0", "len": 24}}}}, {"return": null}]}},
 {"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "postrtg", "handle": 7, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.42.0.0", "len": 16}}}}, {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "224.0.0.0", "len": 4}}}}, {"masquerade": {"flags": "fully-random"}}]}},
 {"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "postrtg", "handle": 8, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.42.0.0", "len": 16}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.42.0.0", "len": 16}}}}, {"counter": {"packets": 0, "bytes": 0}}, {"masquerade": {"flags": "fully-random"}}]}},
 {"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "forward", "handle": 9, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.42.0.0", "len": 16}}}}, {"accept": null}]}},
 {"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "forward", "handle": 10, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.42.0.0", "len": 16}}}}, {"accept": null}]}}
]}"#;

    fn desired(lease: &str) -> RuleSet {
        RuleSet::for_lease(
            Some(("10.42.0.0/16".parse().unwrap(), lease.parse().unwrap())),
            None,
            true,
            false,
        )
    }

    #[test]
    fn a_listed_table_means_what_we_want() {
        let actual = parse_table(LISTED, Family::V4).expect("valid JSON");
        assert_eq!(actual, desired_table(&desired("10.42.0.0/24"), Family::V4));
        let other = desired_table(&desired("10.42.9.0/24"), Family::V4);
        assert_ne!(actual, other);
        assert!(
            difference(&other, &actual)
                .contains("chain postrtg differed (3 of 6 rules missing, 3 unexpected)"),
            "{}",
            difference(&other, &actual)
        );
    }

    #[test]
    fn upstreams_nft_rules_differ_in_meaning() {
        // Upstream's nftables set: `meta mark 0x4000` (exact, no mask) and
        // `saddr != <lease> daddr <network> return` as its fourth rule.
        let upstream = LISTED
            .replace(
                r#"{"&": [{"meta": {"key": "mark"}}, 16384]}"#,
                r#"{"meta": {"key": "mark"}}"#,
            )
            .replace(
                r#"{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.42.0.0", "len": 16}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.42.0.0", "len": 24}}}}"#,
                r#"{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.42.0.0", "len": 24}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.42.0.0", "len": 16}}}}"#,
            );
        let actual = parse_table(&upstream, Family::V4).expect("valid JSON");
        let want = desired_table(&desired("10.42.0.0/24"), Family::V4);
        assert!(
            difference(&want, &actual).contains("2 of 6 rules missing, 2 unexpected"),
            "{}",
            difference(&want, &actual)
        );
    }

    #[test]
    fn unknown_statements_and_wrong_hooks_are_differences() {
        let odd = LISTED.replace(r#"{"accept": null}"#, r#"{"drop": null}"#);
        let actual = parse_table(&odd, Family::V4).expect("valid JSON");
        assert!(actual.chains.iter().any(|c| c.rules.contains(&None)));
        let hooked = LISTED.replace(r#""prio": 100"#, r#""prio": -100"#);
        let want = desired_table(&desired("10.42.0.0/24"), Family::V4);
        let actual = parse_table(&hooked, Family::V4).expect("valid JSON");
        assert_eq!(
            difference(&want, &actual),
            "chain postrtg had the wrong hook"
        );
    }

    #[test]
    fn table_listing_and_bad_json() {
        let tables = parse_tables(r#"{"nftables": [{"metainfo": {}}, {"table": {"family": "ip", "name": "nat", "handle": 1}}, {"table": {"family": "ip6", "name": "flannel-ipv6", "handle": 6}}]}"#).expect("valid");
        assert!(Nftables::exists(&tables, Family::V6));
        assert!(!Nftables::exists(&tables, Family::V4));
        assert!(parse_tables("not json").is_err());
        assert!(parse_table(r#"{"other": []}"#, Family::V4).is_err());
    }
}
