//! The rule model: which masquerade and forward rules a node wants (pure),
//! and their text for `iptables-restore` and `nft -f`.

use std::fmt;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::MasqError;
use crate::files::SubnetEnv;

/// kube-proxy's masquerade mark: packets carrying it are left to
/// kube-proxy's own rules (upstream `KubeProxyMark`, `0x4000/0x4000`).
pub const KUBE_PROXY_MARK: u32 = 0x4000;

/// The comment on every masquerade rule (iptables).
pub const MASQ_COMMENT: &str = "flanneld masq";
/// The comment on every forward rule (iptables).
pub const FORWARD_COMMENT: &str = "flanneld forward";

/// IP family of a rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4: `iptables`, nft family `ip`, table `flannel-ipv4`.
    V4,
    /// IPv6: `ip6tables`, nft family `ip6`, table `flannel-ipv6`.
    V6,
}

impl Family {
    /// Both families, v4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The network's family.
    pub fn of(network: &IpNetwork) -> Family {
        match network {
            IpNetwork::V4(_) => Family::V4,
            IpNetwork::V6(_) => Family::V6,
        }
    }

    /// Multicast range that is never masqueraded.
    pub fn multicast(self) -> IpNetwork {
        match self {
            Family::V4 => IpNetwork::V4(Ipv4Network::new([224, 0, 0, 0].into(), 4).expect("/4")),
            Family::V6 => IpNetwork::V6(
                Ipv6Network::new([0xff00, 0, 0, 0, 0, 0, 0, 0].into(), 8).expect("/8"),
            ),
        }
    }

    /// `iptables` or `ip6tables`.
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// nft address family: `ip` or `ip6` (also the payload protocol).
    pub fn nft_family(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// nft table name: `flannel-ipv4` or `flannel-ipv6` (upstream's names).
    pub fn nft_table(self) -> &'static str {
        match self {
            Family::V4 => "flannel-ipv4",
            Family::V6 => "flannel-ipv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Which of our two chains a rule belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Chain {
    /// Masquerading: iptables `nat`/`FLANNEL-POSTRTG` (jumped to from
    /// `POSTROUTING`), nft chain `postrtg` (nat, postrouting, srcnat).
    Masq,
    /// Forwarding: iptables `filter`/`FLANNEL-FWD` (jumped to from
    /// `FORWARD`), nft chain `forward` (filter, forward, filter).
    Forward,
}

impl Chain {
    /// Both chains, in the order they are written.
    pub const ALL: [Chain; 2] = [Chain::Masq, Chain::Forward];

    /// iptables table: `nat` or `filter`.
    pub fn iptables_table(self) -> &'static str {
        match self {
            Chain::Masq => "nat",
            Chain::Forward => "filter",
        }
    }

    /// iptables chain: `FLANNEL-POSTRTG` or `FLANNEL-FWD`.
    pub fn iptables_chain(self) -> &'static str {
        match self {
            Chain::Masq => "FLANNEL-POSTRTG",
            Chain::Forward => "FLANNEL-FWD",
        }
    }

    /// The built-in iptables chain that jumps to ours.
    pub fn iptables_parent(self) -> &'static str {
        match self {
            Chain::Masq => "POSTROUTING",
            Chain::Forward => "FORWARD",
        }
    }

    /// The `--comment` on the chain's rules.
    pub fn comment(self) -> &'static str {
        match self {
            Chain::Masq => MASQ_COMMENT,
            Chain::Forward => FORWARD_COMMENT,
        }
    }

    /// nft chain name: `postrtg` or `forward` (upstream's names).
    pub fn nft_chain(self) -> &'static str {
        match self {
            Chain::Masq => "postrtg",
            Chain::Forward => "forward",
        }
    }

    /// nft base chain: (type, hook, priority number, priority keyword).
    pub fn nft_base(self) -> (&'static str, &'static str, i64, &'static str) {
        match self {
            Chain::Masq => ("nat", "postrouting", 100, "srcnat"),
            Chain::Forward => ("filter", "forward", 0, "filter"),
        }
    }

    /// Upstream's nft chain comment.
    pub fn nft_comment(self) -> &'static str {
        match self {
            Chain::Masq => "chain to manage traffic masquerading by flannel",
            Chain::Forward => "chain to accept flannel traffic",
        }
    }

    /// The iptables jump from the built-in chain into ours, as `iptables -S`
    /// prints it.
    pub fn iptables_jump(self) -> String {
        format!(
            "-A {} -m comment --comment \"{}\" -j {}",
            self.iptables_parent(),
            self.comment(),
            self.iptables_chain()
        )
    }
}

/// A source or destination match, possibly negated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrMatch {
    /// The prefix.
    pub net: IpNetwork,
    /// `! -s` / `saddr !=`.
    pub negated: bool,
}

impl AddrMatch {
    fn is(net: IpNetwork) -> AddrMatch {
        AddrMatch {
            net: normalise(net),
            negated: false,
        }
    }

    fn not(net: IpNetwork) -> AddrMatch {
        AddrMatch {
            net: normalise(net),
            negated: true,
        }
    }
}

/// What a rule does with a matching packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Leave the chain (no masquerade).
    Return,
    /// Accept (forward chain).
    Accept,
    /// Masquerade to the outgoing interface's address.
    Masquerade {
        /// `--random-fully` / `fully-random` port mapping.
        random_fully: bool,
    },
}

/// One rule of one of our chains. The meaning is the same for both
/// drivers; [`Rule::iptables`] and [`Rule::nft`] give each driver's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The chain it lives in.
    pub chain: Chain,
    /// `mark & mask == value` (value, mask).
    pub mark: Option<(u32, u32)>,
    /// Source match.
    pub src: Option<AddrMatch>,
    /// Destination match.
    pub dst: Option<AddrMatch>,
    /// The verdict.
    pub verdict: Verdict,
}

impl Rule {
    fn new(chain: Chain, verdict: Verdict) -> Rule {
        Rule {
            chain,
            mark: None,
            src: None,
            dst: None,
            verdict,
        }
    }

    fn src(mut self, m: AddrMatch) -> Rule {
        self.src = Some(m);
        self
    }

    fn dst(mut self, m: AddrMatch) -> Rule {
        self.dst = Some(m);
        self
    }

    /// The rule as `iptables -S` prints it (and as `iptables-restore`
    /// reads it), e.g.
    /// `-A FLANNEL-POSTRTG -s 10.42.0.0/24 -d 10.42.0.0/16 -m comment --comment "flanneld masq" -j RETURN`.
    pub fn iptables(&self) -> String {
        let mut out = format!("-A {}", self.chain.iptables_chain());
        for (flag, m) in [("-s", self.src), ("-d", self.dst)] {
            if let Some(m) = m {
                let bang = if m.negated { "! " } else { "" };
                out += &format!(" {bang}{flag} {}", m.net);
            }
        }
        if let Some((value, mask)) = self.mark {
            out += &format!(" -m mark --mark {value:#x}/{mask:#x}");
        }
        out += &format!(" -m comment --comment \"{}\"", self.chain.comment());
        out += match self.verdict {
            Verdict::Return => " -j RETURN",
            Verdict::Accept => " -j ACCEPT",
            Verdict::Masquerade { random_fully: true } => " -j MASQUERADE --random-fully",
            Verdict::Masquerade {
                random_fully: false,
            } => " -j MASQUERADE",
        };
        out
    }

    /// The rule as an nft statement (without the chain), e.g.
    /// `ip saddr 10.42.0.0/24 ip daddr 10.42.0.0/16 return`.
    pub fn nft(&self) -> String {
        let mut parts = Vec::new();
        if let Some((value, mask)) = self.mark {
            parts.push(format!("meta mark & {mask:#x} == {value:#x}"));
        }
        for (field, m) in [("saddr", self.src), ("daddr", self.dst)] {
            if let Some(m) = m {
                let proto = Family::of(&m.net).nft_family();
                let op = if m.negated { "!= " } else { "" };
                parts.push(format!("{proto} {field} {op}{}", m.net));
            }
        }
        parts.push(
            match self.verdict {
                Verdict::Return => "return",
                Verdict::Accept => "accept",
                Verdict::Masquerade { random_fully: true } => "masquerade fully-random",
                Verdict::Masquerade {
                    random_fully: false,
                } => "masquerade",
            }
            .to_string(),
        );
        parts.join(" ")
    }
}

/// Host bits cleared (`10.42.0.1/24` → `10.42.0.0/24`), as iptables and
/// nft print prefixes.
pub fn normalise(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}

/// Upstream's masquerade rules for cluster `network` and own `lease`, in
/// order (flanneld `masqRules` / `masqIP6Rules`):
///
/// 1. kube-proxy mark `0x4000/0x4000` → RETURN
/// 2. `-s lease -d network` → RETURN (pod to pod)
/// 3. `-s network -d lease` → RETURN (pod to pod)
/// 4. `! -s network -d lease` → RETURN (outside traffic to our pods keeps
///    its source)
/// 5. `-s network ! -d multicast` → MASQUERADE (pods to the outside)
/// 6. `! -s network -d network` → MASQUERADE (host to remote pods)
pub fn masq_rules(
    network: IpNetwork,
    lease: IpNetwork,
    random_fully: bool,
) -> Result<Vec<Rule>, MasqError> {
    let family = same_family(network, lease)?;
    let masq = Verdict::Masquerade { random_fully };
    let c = Chain::Masq;
    let mut mark = Rule::new(c, Verdict::Return);
    mark.mark = Some((KUBE_PROXY_MARK, KUBE_PROXY_MARK));
    Ok(vec![
        mark,
        Rule::new(c, Verdict::Return)
            .src(AddrMatch::is(lease))
            .dst(AddrMatch::is(network)),
        Rule::new(c, Verdict::Return)
            .src(AddrMatch::is(network))
            .dst(AddrMatch::is(lease)),
        Rule::new(c, Verdict::Return)
            .src(AddrMatch::not(network))
            .dst(AddrMatch::is(lease)),
        Rule::new(c, masq)
            .src(AddrMatch::is(network))
            .dst(AddrMatch::not(family.multicast())),
        Rule::new(c, masq)
            .src(AddrMatch::not(network))
            .dst(AddrMatch::is(network)),
    ])
}

/// Upstream's forward rules: ACCEPT from and to the cluster network.
pub fn forward_rules(network: IpNetwork) -> Vec<Rule> {
    vec![
        Rule::new(Chain::Forward, Verdict::Accept).src(AddrMatch::is(network)),
        Rule::new(Chain::Forward, Verdict::Accept).dst(AddrMatch::is(network)),
    ]
}

fn same_family(network: IpNetwork, lease: IpNetwork) -> Result<Family, MasqError> {
    let family = Family::of(&network);
    if family != Family::of(&lease) {
        return Err(MasqError::FamilyMismatch { network, lease });
    }
    Ok(family)
}

/// What one family needs: the cluster network, the node's lease, and which
/// of the two chains to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyRules {
    network: IpNetwork,
    lease: IpNetwork,
    masq: bool,
    forward: bool,
}

impl FamilyRules {
    /// Masquerade and forward rules for cluster `network` and own `lease`
    /// (host bits are ignored: `10.42.0.1/24` is the lease `10.42.0.0/24`).
    pub fn new(network: IpNetwork, lease: IpNetwork) -> Result<FamilyRules, MasqError> {
        same_family(network, lease)?;
        Ok(FamilyRules {
            network: normalise(network),
            lease: normalise(lease),
            masq: true,
            forward: true,
        })
    }

    /// Whether to install the masquerade chain (default on).
    pub fn with_masq(mut self, on: bool) -> FamilyRules {
        self.masq = on;
        self
    }

    /// Whether to install the forward chain (default on).
    pub fn with_forward(mut self, on: bool) -> FamilyRules {
        self.forward = on;
        self
    }

    /// The family.
    pub fn family(&self) -> Family {
        Family::of(&self.network)
    }

    /// The cluster network.
    pub fn network(&self) -> IpNetwork {
        self.network
    }

    /// The node's lease.
    pub fn lease(&self) -> IpNetwork {
        self.lease
    }

    /// Whether the masquerade chain is wanted.
    pub fn masq(&self) -> bool {
        self.masq
    }

    /// Whether the forward chain is wanted.
    pub fn forward(&self) -> bool {
        self.forward
    }

    /// The rules of `chain` (empty when that chain is not wanted).
    pub fn chain_rules(&self, chain: Chain, random_fully: bool) -> Vec<Rule> {
        match chain {
            Chain::Masq if self.masq => {
                masq_rules(self.network, self.lease, random_fully).unwrap_or_default()
            }
            Chain::Forward if self.forward => forward_rules(self.network),
            _ => Vec::new(),
        }
    }

    /// Whether `chain` is wanted.
    pub fn wants(&self, chain: Chain) -> bool {
        match chain {
            Chain::Masq => self.masq,
            Chain::Forward => self.forward,
        }
    }
}

/// The whole desired state of one node: per family, what to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSet {
    /// IPv4 rules, if any.
    pub ipv4: Option<FamilyRules>,
    /// IPv6 rules, if any.
    pub ipv6: Option<FamilyRules>,
    /// Masquerade with `--random-fully` (upstream's default; k3s never
    /// turns it off).
    pub random_fully: bool,
}

impl RuleSet {
    /// k3s's choice for a node whose lease is `ipv4` / `ipv6` (each as
    /// `(cluster network, lease)`): forward rules for every family, IPv4
    /// masquerade when `ip_masq`, IPv6 masquerade only when `ip_masq` and
    /// `--flannel-ipv6-masq`.
    pub fn for_lease(
        ipv4: Option<(Ipv4Network, Ipv4Network)>,
        ipv6: Option<(Ipv6Network, Ipv6Network)>,
        ip_masq: bool,
        ipv6_masq: bool,
    ) -> RuleSet {
        let v4 = ipv4.and_then(|(n, l)| FamilyRules::new(n.into(), l.into()).ok());
        let v6 = ipv6.and_then(|(n, l)| FamilyRules::new(n.into(), l.into()).ok());
        RuleSet {
            ipv4: v4.map(|f| f.with_masq(ip_masq)),
            ipv6: v6.map(|f| f.with_masq(ip_masq && ipv6_masq)),
            random_fully: true,
        }
    }

    /// The networks and leases a previous run wrote to subnet.env
    /// (`FLANNEL_NETWORK` / `FLANNEL_SUBNET` and the IPv6 twins; the first
    /// network of each family, as flanneld reads them back).
    pub fn previous(env: &SubnetEnv) -> (Option<FamilyRules>, Option<FamilyRules>) {
        let v4 = match (env.networks.first(), env.subnet) {
            (Some(n), Some(l)) => FamilyRules::new((*n).into(), l.into()).ok(),
            _ => None,
        };
        let v6 = match (env.ipv6_networks.first(), env.ipv6_subnet) {
            (Some(n), Some(l)) => FamilyRules::new((*n).into(), l.into()).ok(),
            _ => None,
        };
        (v4, v6)
    }

    /// The rules of `family`, if that family is present.
    pub fn family(&self, family: Family) -> Option<&FamilyRules> {
        match family {
            Family::V4 => self.ipv4.as_ref(),
            Family::V6 => self.ipv6.as_ref(),
        }
    }

    /// Whether `family`'s `chain` is wanted.
    pub fn wants(&self, family: Family, chain: Chain) -> bool {
        self.family(family).is_some_and(|f| f.wants(chain))
    }

    /// The rules of `family`'s `chain` (empty when not wanted).
    pub fn chain_rules(&self, family: Family, chain: Chain) -> Vec<Rule> {
        self.family(family)
            .map(|f| f.chain_rules(chain, self.random_fully))
            .unwrap_or_default()
    }

    /// `iptables-restore --noflush` input that installs `family`'s rules on
    /// a clean node: our chains declared (which flushes them), the jumps,
    /// then the rules, one `*table ... COMMIT` block per table.
    pub fn iptables_restore_input(&self, family: Family) -> String {
        let mut out = String::new();
        for chain in Chain::ALL {
            if !self.wants(family, chain) {
                continue;
            }
            out += &format!(
                "*{}\n:{} - [0:0]\n{}\n",
                chain.iptables_table(),
                chain.iptables_chain(),
                chain.iptables_jump()
            );
            for rule in self.chain_rules(family, chain) {
                out += &rule.iptables();
                out.push('\n');
            }
            out += "COMMIT\n";
        }
        out
    }

    /// The nft table for `family` (`table ip flannel-ipv4 { ... }`), or
    /// `None` when the family wants nothing.
    pub fn nft_table(&self, family: Family) -> Option<String> {
        if !Chain::ALL.iter().any(|c| self.wants(family, *c)) {
            return None;
        }
        let mut out = format!(
            "table {} {} {{\n\tcomment \"rules for {}\"\n",
            family.nft_family(),
            family.nft_table(),
            family.nft_table()
        );
        for chain in Chain::ALL {
            if !self.wants(family, chain) {
                continue;
            }
            let (kind, hook, _, priority) = chain.nft_base();
            out += &format!(
                "\tchain {} {{\n\t\tcomment \"{}\"\n\t\ttype {kind} hook {hook} priority {priority}; policy accept;\n",
                chain.nft_chain(),
                chain.nft_comment()
            );
            for rule in self.chain_rules(family, chain) {
                out += &format!("\t\t{}\n", rule.nft());
            }
            out += "\t}\n";
        }
        out += "}\n";
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNetwork {
        text.parse().expect("test CIDR")
    }

    /// flanneld v0.28's rules for Network 10.42.0.0/16 and lease
    /// 10.42.0.0/24, as `iptables -t nat -S` / `iptables -S` print them
    /// (iptables 1.8.9, nf_tables backend).
    const UPSTREAM_NAT_V4: [&str; 6] = [
        "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN",
        "-A FLANNEL-POSTRTG -s 10.42.0.0/24 -d 10.42.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN",
        "-A FLANNEL-POSTRTG -s 10.42.0.0/16 -d 10.42.0.0/24 -m comment --comment \"flanneld masq\" -j RETURN",
        "-A FLANNEL-POSTRTG ! -s 10.42.0.0/16 -d 10.42.0.0/24 -m comment --comment \"flanneld masq\" -j RETURN",
        "-A FLANNEL-POSTRTG -s 10.42.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
        "-A FLANNEL-POSTRTG ! -s 10.42.0.0/16 -d 10.42.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
    ];

    #[test]
    fn masq_rules_are_upstreams_iptables_lines() {
        let rules =
            masq_rules(net("10.42.0.0/16"), net("10.42.0.0/24"), true).expect("same family");
        let lines: Vec<String> = rules.iter().map(Rule::iptables).collect();
        assert_eq!(lines, UPSTREAM_NAT_V4);
        assert_eq!(
            Chain::Masq.iptables_jump(),
            "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG"
        );
    }

    #[test]
    fn forward_rules_are_upstreams_iptables_lines() {
        let lines: Vec<String> = forward_rules(net("10.42.0.0/16"))
            .iter()
            .map(Rule::iptables)
            .collect();
        assert_eq!(
            lines,
            [
                "-A FLANNEL-FWD -s 10.42.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
                "-A FLANNEL-FWD -d 10.42.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
            ]
        );
        assert_eq!(
            Chain::Forward.iptables_jump(),
            "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD"
        );
    }

    #[test]
    fn ipv6_uses_ff00_and_no_random_fully_when_off() {
        let rules = masq_rules(net("fd00:42::/56"), net("fd00:42::/64"), false).expect("v6");
        let lines: Vec<String> = rules.iter().map(Rule::iptables).collect();
        assert_eq!(
            lines[4],
            "-A FLANNEL-POSTRTG -s fd00:42::/56 ! -d ff00::/8 -m comment --comment \"flanneld masq\" -j MASQUERADE"
        );
        assert_eq!(
            lines[1],
            "-A FLANNEL-POSTRTG -s fd00:42::/64 -d fd00:42::/56 -m comment --comment \"flanneld masq\" -j RETURN"
        );
    }

    #[test]
    fn host_bits_are_cleared_and_families_must_match() {
        let family = FamilyRules::new(net("10.42.0.7/16"), net("10.42.0.1/24")).expect("v4");
        assert_eq!(family.network(), net("10.42.0.0/16"));
        assert_eq!(family.lease(), net("10.42.0.0/24"));
        let err = FamilyRules::new(net("10.42.0.0/16"), net("fd00:42::/64")).unwrap_err();
        assert!(err.to_string().contains("10.42.0.0/16"), "{err}");
    }

    #[test]
    fn nft_rules_have_the_iptables_meaning() {
        let rules = masq_rules(net("10.42.0.0/16"), net("10.42.0.0/24"), true).expect("v4");
        let lines: Vec<String> = rules.iter().map(Rule::nft).collect();
        assert_eq!(
            lines,
            [
                "meta mark & 0x4000 == 0x4000 return",
                "ip saddr 10.42.0.0/24 ip daddr 10.42.0.0/16 return",
                "ip saddr 10.42.0.0/16 ip daddr 10.42.0.0/24 return",
                "ip saddr != 10.42.0.0/16 ip daddr 10.42.0.0/24 return",
                "ip saddr 10.42.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
                "ip saddr != 10.42.0.0/16 ip daddr 10.42.0.0/16 masquerade fully-random",
            ]
        );
        let v6 = masq_rules(net("fd00:42::/56"), net("fd00:42::/64"), true).expect("v6");
        assert_eq!(
            v6[4].nft(),
            "ip6 saddr fd00:42::/56 ip6 daddr != ff00::/8 masquerade fully-random"
        );
    }

    #[test]
    fn k3s_choice_of_chains() {
        let v4 = Some((
            "10.42.0.0/16".parse().unwrap(),
            "10.42.0.0/24".parse().unwrap(),
        ));
        let v6 = Some((
            "fd00:42::/56".parse().unwrap(),
            "fd00:42::/64".parse().unwrap(),
        ));
        let off = RuleSet::for_lease(v4, v6, true, false);
        assert!(off.wants(Family::V4, Chain::Masq) && off.wants(Family::V4, Chain::Forward));
        assert!(!off.wants(Family::V6, Chain::Masq) && off.wants(Family::V6, Chain::Forward));
        let on = RuleSet::for_lease(v4, v6, true, true);
        assert!(on.wants(Family::V6, Chain::Masq));
        let none = RuleSet::for_lease(v4, None, false, true);
        assert!(!none.wants(Family::V4, Chain::Masq) && none.ipv6.is_none());
    }

    #[test]
    fn restore_input_and_nft_table() {
        let set = RuleSet::for_lease(
            Some((
                "10.42.0.0/16".parse().unwrap(),
                "10.42.0.0/24".parse().unwrap(),
            )),
            None,
            true,
            false,
        );
        let input = set.iptables_restore_input(Family::V4);
        let mut expected = String::from("*nat\n:FLANNEL-POSTRTG - [0:0]\n-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n");
        for line in UPSTREAM_NAT_V4 {
            expected += line;
            expected.push('\n');
        }
        expected += "COMMIT\n*filter\n:FLANNEL-FWD - [0:0]\n-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n-A FLANNEL-FWD -s 10.42.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n-A FLANNEL-FWD -d 10.42.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\nCOMMIT\n";
        assert_eq!(input, expected);
        assert_eq!(set.iptables_restore_input(Family::V6), "");

        let table = set.nft_table(Family::V4).expect("v4 table");
        assert!(table.starts_with("table ip flannel-ipv4 {\n"), "{table}");
        assert!(
            table.contains("\tchain postrtg {\n\t\tcomment \"chain to manage traffic masquerading by flannel\"\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tmeta mark & 0x4000 == 0x4000 return\n"),
            "{table}"
        );
        assert!(
            table.contains("\t\ttype filter hook forward priority filter; policy accept;\n\t\tip saddr 10.42.0.0/16 accept\n\t\tip daddr 10.42.0.0/16 accept\n"),
            "{table}"
        );
        assert_eq!(set.nft_table(Family::V6), None);
    }

    #[test]
    fn previous_lease_comes_from_subnet_env() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.3.1/24\nFLANNEL_IPV6_NETWORK=fd00:42::/56\nFLANNEL_IPV6_SUBNET=fd00:42:0:3::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .expect("valid subnet.env");
        let (v4, v6) = RuleSet::previous(&env);
        let v4 = v4.expect("v4");
        assert_eq!(
            (v4.network(), v4.lease()),
            (net("10.42.0.0/16"), net("10.42.3.0/24"))
        );
        assert_eq!(v6.expect("v6").lease(), net("fd00:42:0:3::/64"));
    }
}
