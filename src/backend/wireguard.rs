//! The wireguard backend's decisions (pure): which devices, which peers on
//! each, and what to change on a device given what it holds. Peers are
//! keyed by public key and the whole desired set is compared with the
//! device, so a node whose key changed leaves no stale peer behind
//! (upstream k3s #5216), peers deleted while the agent was down go at the
//! next start, and a recreated device gets every peer back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnetwork::IpNetwork;

use crate::config::{WireguardConf, WireguardMode};
use crate::kube_subnet::{Peer, PeerBackend, PeerSet};
use crate::wireguard::{DeviceState, DeviceUpdate, Key, PeerChange, PeerConfig, PrivateKey};

/// How recent a handshake keeps an endpoint WireGuard learnt (roaming,
/// NAT) instead of the published one we wrote: WireGuard re-handshakes
/// every 2 minutes while traffic flows, and a keepalive keeps it flowing.
pub const ROAMING_GRACE_SECONDS: u64 = 180;

/// The IPv4 (or single) device.
pub const DEVICE_V4: &str = "flannel-wg";
/// The IPv6 device in separate mode.
pub const DEVICE_V6: &str = "flannel-wg-v6";
/// What WireGuard adds to a packet: the device MTU is the outer MTU less
/// this (upstream's figure, for an IPv6 underlay).
pub const OVERHEAD: u32 = 80;

/// Which family's endpoint a device's peers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointFamily {
    /// The peer's `public-ip`.
    V4,
    /// The peer's `public-ipv6`.
    V6,
    /// Chosen per peer (mode `auto`).
    Auto,
}

/// One device we run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDeviceSpec {
    /// `flannel-wg` or `flannel-wg-v6`.
    pub name: String,
    /// UDP port it listens on.
    pub port: u16,
    /// Device MTU (outer MTU - 80).
    pub mtu: u32,
    /// Whether it carries IPv4 pod traffic.
    pub carries_v4: bool,
    /// Whether it carries IPv6 pod traffic.
    pub carries_v6: bool,
    /// Which endpoint its peers get.
    pub endpoints: EndpointFamily,
}

/// This node's public addresses (for the `auto` endpoint choice).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnPublic {
    /// Our external IPv4.
    pub ipv4: Option<Ipv4Addr>,
    /// Our external IPv6.
    pub ipv6: Option<Ipv6Addr>,
}

/// The devices for a configuration: separate mode has one per enabled
/// family, the single-device modes one carrying both.
pub fn device_specs(
    conf: &WireguardConf,
    outer_mtu: u32,
    ipv4: bool,
    ipv6: bool,
) -> Vec<WgDeviceSpec> {
    let mtu = conf.mtu.unwrap_or(outer_mtu).saturating_sub(OVERHEAD);
    match conf.mode {
        WireguardMode::Separate => {
            let mut specs = Vec::new();
            if ipv4 {
                specs.push(WgDeviceSpec {
                    name: DEVICE_V4.into(),
                    port: conf.listen_port,
                    mtu,
                    carries_v4: true,
                    carries_v6: false,
                    endpoints: EndpointFamily::V4,
                });
            }
            if ipv6 {
                specs.push(WgDeviceSpec {
                    name: DEVICE_V6.into(),
                    port: conf.listen_port_v6,
                    mtu,
                    carries_v4: false,
                    carries_v6: true,
                    endpoints: EndpointFamily::V6,
                });
            }
            specs
        }
        mode => vec![WgDeviceSpec {
            name: DEVICE_V4.into(),
            port: conf.listen_port,
            mtu,
            carries_v4: ipv4,
            carries_v6: ipv6,
            endpoints: match mode {
                WireguardMode::Ipv6 => EndpointFamily::V6,
                WireguardMode::Ipv4 => EndpointFamily::V4,
                _ => EndpointFamily::Auto,
            },
        }],
    }
}

/// The ports this node publishes in `backend-data` and `backend-v6-data`.
/// Separate mode: each device's own. Single-device modes: the one device's
/// port in both (upstream publishes ListenPortV6 there, where nothing
/// listens; see vendor-notes/wireguard.md).
pub fn published_ports(conf: &WireguardConf) -> (u16, u16) {
    match conf.mode {
        WireguardMode::Separate => (conf.listen_port, conf.listen_port_v6),
        _ => (conf.listen_port, conf.listen_port),
    }
}

/// The key and port a peer node gives for the device `spec`.
fn peer_key_port(peer: &Peer, spec: &WgDeviceSpec) -> Option<(String, u16)> {
    let data = |backend: &Option<PeerBackend>| match backend {
        Some(PeerBackend::Wireguard { public_key, port }) => Some((public_key.clone(), *port)),
        _ => None,
    };
    match (spec.carries_v4, spec.carries_v6) {
        (true, false) => data(&peer.backend_v4),
        (false, true) => data(&peer.backend_v6),
        // One device: the IPv4 data names the port the peer's single
        // device listens on (its IPv6 data may name ListenPortV6, which is
        // not listening in that mode).
        _ => data(&peer.backend_v4).or_else(|| data(&peer.backend_v6)),
    }
}

/// Upstream's `auto` choice: the peer's IPv4 unless it has no IPv6, or
/// ... in order: v4 if the peer has no public v6, or its public v4 is not
/// private (RFC 1918) and we have an external v4; else v6 if both sides
/// have a global (non-ULA) v6; else v4.
fn auto_endpoint(peer: &Peer, own: &OwnPublic) -> Option<IpAddr> {
    let v4 = peer.public_ip.map(IpAddr::V4);
    let Some(peer_v6) = peer.public_ipv6 else {
        return v4;
    };
    if let Some(peer_v4) = peer.public_ip {
        if !peer_v4.is_private() && own.ipv4.is_some() {
            return v4;
        }
    }
    let global = |a: &Ipv6Addr| (a.segments()[0] & 0xfe00) != 0xfc00;
    if global(&peer_v6) && own.ipv6.as_ref().is_some_and(global) {
        return Some(IpAddr::V6(peer_v6));
    }
    v4.or(Some(IpAddr::V6(peer_v6)))
}

/// A peer node that cannot be a WireGuard peer on a device, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    /// Node name.
    pub node: String,
    /// Why.
    pub reason: String,
}

/// The peers `spec` should hold: per peer node, its key, endpoint
/// (`ip:port`, `[ip6]:port`), exactly its lease(s) as AllowedIPs, the PSK
/// and keepalive. Two nodes with one public key (a cloned machine) cannot
/// both be peers: the first by name wins and the other is reported; a node
/// publishing our own key (`own_key`) is no peer at all (WireGuard ignores
/// it silently).
pub fn desired_peers(
    peers: &PeerSet,
    own_key: Key,
    spec: &WgDeviceSpec,
    conf: &WireguardConf,
    psk: Option<Key>,
    own: &OwnPublic,
) -> (BTreeMap<Key, PeerConfig>, Vec<Unusable>) {
    let mut desired: BTreeMap<Key, PeerConfig> = BTreeMap::new();
    let mut owners: BTreeMap<Key, String> = BTreeMap::new();
    let mut unusable = Vec::new();
    let keepalive = u16::try_from(conf.persistent_keepalive_interval).unwrap_or(u16::MAX);
    for peer in peers.iter() {
        let Some((key_text, port)) = peer_key_port(peer, spec) else {
            continue;
        };
        let Ok(key) = Key::from_base64(&key_text) else {
            unusable.push(Unusable {
                node: peer.name.clone(),
                reason: format!("its public key '{key_text}' is not a WireGuard key"),
            });
            continue;
        };
        let address = match spec.endpoints {
            EndpointFamily::V4 => peer.public_ip.map(IpAddr::V4),
            EndpointFamily::V6 => peer.public_ipv6.map(IpAddr::V6),
            EndpointFamily::Auto => auto_endpoint(peer, own),
        };
        let Some(address) = address else {
            unusable.push(Unusable {
                node: peer.name.clone(),
                reason: "it publishes no address of the endpoint family".into(),
            });
            continue;
        };
        let mut allowed_ips = BTreeSet::new();
        if spec.carries_v4 {
            allowed_ips.extend(peer.lease.ipv4.map(IpNetwork::V4));
        }
        if spec.carries_v6 {
            allowed_ips.extend(peer.lease.ipv6.map(IpNetwork::V6));
        }
        if allowed_ips.is_empty() {
            continue;
        }
        if key == own_key {
            unusable.push(Unusable {
                node: peer.name.clone(),
                reason: "it publishes this node's own WireGuard public key; give one of the two a new key (delete its key file)".into(),
            });
            continue;
        }
        if let Some(owner) = owners.get(&key) {
            unusable.push(Unusable {
                node: peer.name.clone(),
                reason: format!(
                    "it publishes the same WireGuard public key as node {owner}; give one of them a new key (delete its key file)"
                ),
            });
            continue;
        }
        owners.insert(key, peer.name.clone());
        desired.insert(
            key,
            PeerConfig {
                public_key: key,
                preshared_key: psk,
                endpoint: SocketAddr::new(address, port),
                keepalive,
                allowed_ips,
            },
        );
    }
    (desired, unusable)
}

/// What to write so the device holds exactly `desired`: the private key
/// and port where they differ, every peer that is missing or differs
/// (endpoint, AllowedIPs, PSK, keepalive) set in full, and, once the peer
/// list is complete (`synced`), every other peer removed. Removals come
/// first so an AllowedIP moving from an old key to a new one is never
/// held by both.
///
/// An endpoint that differs is left alone when WireGuard learnt it
/// (roaming, NAT): the published one is what we wrote last
/// (`roaming.written`) and the peer handshook within
/// [`ROAMING_GRACE_SECONDS`]. A newly published endpoint is always written.
pub fn device_update(
    actual: &DeviceState,
    private_key: &PrivateKey,
    port: u16,
    desired: &BTreeMap<Key, PeerConfig>,
    synced: bool,
    roaming: &Roaming<'_>,
) -> DeviceUpdate {
    let mut update = DeviceUpdate {
        private_key: (actual.public_key != Some(private_key.public_key()))
            .then(|| private_key.clone()),
        listen_port: (actual.listen_port != port).then_some(port),
        peers: Vec::new(),
    };
    let held: BTreeMap<Key, &crate::wireguard::PeerState> =
        actual.peers.iter().map(|p| (p.public_key, p)).collect();
    if synced {
        for key in held.keys() {
            if !desired.contains_key(key) {
                update.peers.push(PeerChange::Remove(*key));
            }
        }
    }
    for (key, want) in desired {
        let same = held.get(key).is_some_and(|have| {
            let roamed = roaming.written.get(key) == Some(&want.endpoint)
                && have.endpoint.is_some()
                && have.last_handshake > 0
                && roaming.now.saturating_sub(have.last_handshake) < ROAMING_GRACE_SECONDS;
            (have.endpoint == Some(want.endpoint) || roamed)
                && have.allowed_ips == want.allowed_ips
                && have.preshared_key == want.preshared_key
                && have.keepalive == want.keepalive
        });
        if !same {
            update.peers.push(PeerChange::Set(want.clone()));
        }
    }
    update
}

/// What [`device_update`] needs to leave a roamed endpoint alone.
#[derive(Debug, Clone, Copy)]
pub struct Roaming<'a> {
    /// Per peer, the endpoint we wrote last.
    pub written: &'a BTreeMap<Key, SocketAddr>,
    /// Now, in seconds since the epoch (handshake times are).
    pub now: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_subnet::Lease;
    use crate::wireguard::PeerState;

    fn key(byte: u8) -> Key {
        Key([byte; 32])
    }

    fn peer(name: &str, n: u8, key_byte: u8, port: Option<u16>) -> Peer {
        let data = |p: u16| PeerBackend::Wireguard {
            public_key: key(key_byte).to_base64(),
            port: p,
        };
        Peer {
            name: name.into(),
            lease: Lease {
                ipv4: Some(format!("10.42.{n}.0/24").parse().unwrap()),
                ipv6: Some(format!("fd00:42:0:{n}::/64").parse().unwrap()),
            },
            public_ip: Some(format!("192.168.0.{n}").parse().unwrap()),
            public_ipv6: Some(format!("fd01::{n}").parse().unwrap()),
            backend_v4: Some(data(port.unwrap_or(51820))),
            backend_v6: Some(data(port.map_or(51821, |p| p + 1))),
        }
    }

    fn conf(mode: WireguardMode) -> WireguardConf {
        WireguardConf {
            persistent_keepalive_interval: 25,
            mode,
            ..WireguardConf::default()
        }
    }

    fn set(peers: Vec<Peer>) -> PeerSet {
        peers.into_iter().collect()
    }

    fn net(text: &str) -> IpNetwork {
        text.parse().unwrap()
    }

    #[test]
    fn separate_mode_has_a_device_per_family_mtu_less_80() {
        let specs = device_specs(&conf(WireguardMode::Separate), 1500, true, true);
        assert_eq!(
            specs
                .iter()
                .map(|s| (s.name.as_str(), s.port, s.mtu))
                .collect::<Vec<_>>(),
            [("flannel-wg", 51820, 1420), ("flannel-wg-v6", 51821, 1420)]
        );
        let only_v4 = device_specs(&conf(WireguardMode::Separate), 1450, true, false);
        assert_eq!(only_v4.len(), 1);
        assert_eq!(only_v4[0].mtu, 1370);
        let outer = WireguardConf {
            mtu: Some(9000),
            ..conf(WireguardMode::Auto)
        };
        let single = device_specs(&outer, 1500, true, true);
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].mtu, 8920);
        assert!(single[0].carries_v4 && single[0].carries_v6);
        assert_eq!(published_ports(&outer), (51820, 51820));
        assert_eq!(
            published_ports(&conf(WireguardMode::Separate)),
            (51820, 51821)
        );
    }

    #[test]
    fn separate_mode_peers_get_their_own_family_only() {
        let specs = device_specs(&conf(WireguardMode::Separate), 1500, true, true);
        let peers = set(vec![peer("b", 2, 2, None)]);
        let (v4, bad) = desired_peers(
            &peers,
            key(1),
            &specs[0],
            &conf(WireguardMode::Separate),
            None,
            &OwnPublic::default(),
        );
        assert!(bad.is_empty());
        let want = &v4[&key(2)];
        assert_eq!(want.endpoint, "192.168.0.2:51820".parse().unwrap());
        assert_eq!(
            want.allowed_ips,
            [net("10.42.2.0/24")].into_iter().collect()
        );
        assert_eq!(want.keepalive, 25);
        let (v6, _) = desired_peers(
            &peers,
            key(1),
            &specs[1],
            &conf(WireguardMode::Separate),
            None,
            &OwnPublic::default(),
        );
        let want = &v6[&key(2)];
        assert_eq!(want.endpoint, "[fd01::2]:51821".parse().unwrap());
        assert_eq!(want.endpoint.to_string(), "[fd01::2]:51821");
        assert_eq!(
            want.allowed_ips,
            [net("fd00:42:0:2::/64")].into_iter().collect()
        );
    }

    #[test]
    fn single_device_modes_carry_both_leases_and_pick_the_endpoint() {
        let peers = set(vec![peer("b", 2, 2, None)]);
        let own = OwnPublic {
            ipv4: Some("192.168.0.1".parse().unwrap()),
            ipv6: Some("2001:db8::1".parse().unwrap()),
        };
        let cases = [
            (WireguardMode::Ipv4, "192.168.0.2:51820"),
            // The single device listens on ListenPort; the peer's v4 data
            // says which.
            (WireguardMode::Ipv6, "[fd01::2]:51820"),
            // Private v4, ULA v6: IPv4.
            (WireguardMode::Auto, "192.168.0.2:51820"),
        ];
        for (mode, endpoint) in cases {
            let c = conf(mode);
            let spec = &device_specs(&c, 1500, true, true)[0];
            let (want, _) = desired_peers(&peers, key(1), spec, &c, None, &own);
            let want = &want[&key(2)];
            assert_eq!(want.endpoint, endpoint.parse().unwrap(), "{mode:?}");
            assert_eq!(
                want.allowed_ips,
                [net("10.42.2.0/24"), net("fd00:42:0:2::/64")]
                    .into_iter()
                    .collect()
            );
        }
    }

    #[test]
    fn auto_endpoint_follows_upstream() {
        let mut p = peer("b", 2, 2, None);
        let own_both = OwnPublic {
            ipv4: Some("192.168.0.1".parse().unwrap()),
            ipv6: Some("2001:db8::1".parse().unwrap()),
        };
        // No public v6: v4.
        p.public_ipv6 = None;
        assert_eq!(
            auto_endpoint(&p, &own_both),
            Some("192.168.0.2".parse().unwrap())
        );
        // Public (non-RFC1918) v4 and we have v4: v4.
        p.public_ipv6 = Some("2001:db8::2".parse().unwrap());
        p.public_ip = Some("203.0.113.2".parse().unwrap());
        assert_eq!(
            auto_endpoint(&p, &own_both),
            Some("203.0.113.2".parse().unwrap())
        );
        // Private v4, both sides global v6: v6.
        p.public_ip = Some("10.0.0.2".parse().unwrap());
        assert_eq!(
            auto_endpoint(&p, &own_both),
            Some("2001:db8::2".parse().unwrap())
        );
        // Private v4, we have only a ULA: v4.
        let own_ula = OwnPublic {
            ipv4: Some("10.0.0.1".parse().unwrap()),
            ipv6: Some("fd00::1".parse().unwrap()),
        };
        assert_eq!(
            auto_endpoint(&p, &own_ula),
            Some("10.0.0.2".parse().unwrap())
        );
    }

    #[test]
    fn a_peer_without_port_uses_ours_and_duplicate_keys_are_reported() {
        // backend_data() fills our port in for a peer without Port; here
        // we check the spec's use of it and the duplicate-key rule.
        let c = conf(WireguardMode::Separate);
        let spec = &device_specs(&c, 1500, true, false)[0];
        let peers = set(vec![peer("b", 2, 7, Some(51000)), peer("c", 3, 7, None)]);
        let (want, bad) = desired_peers(&peers, key(1), spec, &c, None, &OwnPublic::default());
        assert_eq!(want.len(), 1);
        assert_eq!(want[&key(7)].endpoint, "192.168.0.2:51000".parse().unwrap());
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].node, "c");
        assert!(bad[0].reason.contains("node b"), "{}", bad[0].reason);
    }

    fn held(
        k: u8,
        endpoint: &str,
        allowed: &[&str],
        psk: Option<Key>,
        keepalive: u16,
    ) -> PeerState {
        PeerState {
            public_key: key(k),
            preshared_key: psk,
            endpoint: Some(endpoint.parse().unwrap()),
            keepalive,
            allowed_ips: allowed.iter().map(|a| net(a)).collect(),
            last_handshake: 0,
        }
    }

    #[test]
    fn diff_table() {
        let c = conf(WireguardMode::Separate);
        let spec = &device_specs(&c, 1500, true, false)[0];
        let own = OwnPublic::default();
        let psk = Some(key(99));
        let right = |k: u8, n: u8| {
            held(
                k,
                &format!("192.168.0.{n}:51820"),
                &[&format!("10.42.{n}.0/24")],
                None,
                25,
            )
        };
        struct Case {
            name: &'static str,
            peers: Vec<Peer>,
            psk: Option<Key>,
            held: Vec<PeerState>,
            synced: bool,
            want: Vec<String>,
        }
        let cases = vec![
            Case {
                name: "in place: nothing",
                peers: vec![peer("b", 2, 2, None)],
                psk: None,
                held: vec![right(2, 2)],
                synced: true,
                want: vec![],
            },
            Case {
                name: "new peer",
                peers: vec![peer("b", 2, 2, None), peer("c", 3, 3, None)],
                psk: None,
                held: vec![right(2, 2)],
                synced: true,
                want: vec![format!(
                    "set peer {} endpoint 192.168.0.3:51820 allowed-ips 10.42.3.0/24",
                    key(3)
                )],
            },
            Case {
                name: "key changed: old removed first, new set",
                peers: vec![peer("b", 2, 5, None)],
                psk: None,
                held: vec![right(2, 2)],
                synced: true,
                want: vec![
                    format!("remove peer {}", key(2)),
                    format!(
                        "set peer {} endpoint 192.168.0.2:51820 allowed-ips 10.42.2.0/24",
                        key(5)
                    ),
                ],
            },
            Case {
                name: "key changed before the list is complete: no removal yet",
                peers: vec![peer("b", 2, 5, None)],
                psk: None,
                held: vec![right(2, 2)],
                synced: false,
                want: vec![format!(
                    "set peer {} endpoint 192.168.0.2:51820 allowed-ips 10.42.2.0/24",
                    key(5)
                )],
            },
            Case {
                name: "endpoint changed",
                peers: vec![peer("b", 2, 2, None)],
                psk: None,
                held: vec![held(2, "192.168.9.9:51820", &["10.42.2.0/24"], None, 25)],
                synced: true,
                want: vec![format!(
                    "set peer {} endpoint 192.168.0.2:51820 allowed-ips 10.42.2.0/24",
                    key(2)
                )],
            },
            Case {
                name: "allowed-ips lost (none)",
                peers: vec![peer("b", 2, 2, None)],
                psk: None,
                held: vec![held(2, "192.168.0.2:51820", &[], None, 25)],
                synced: true,
                want: vec![format!(
                    "set peer {} endpoint 192.168.0.2:51820 allowed-ips 10.42.2.0/24",
                    key(2)
                )],
            },
            Case {
                name: "psk configured",
                peers: vec![peer("b", 2, 2, None)],
                psk,
                held: vec![right(2, 2)],
                synced: true,
                want: vec![format!(
                    "set peer {} endpoint 192.168.0.2:51820 allowed-ips 10.42.2.0/24",
                    key(2)
                )],
            },
            Case {
                name: "keepalive differs",
                peers: vec![peer("b", 2, 2, None)],
                psk: None,
                held: vec![held(2, "192.168.0.2:51820", &["10.42.2.0/24"], None, 0)],
                synced: true,
                want: vec![format!(
                    "set peer {} endpoint 192.168.0.2:51820 allowed-ips 10.42.2.0/24",
                    key(2)
                )],
            },
            Case {
                name: "peer deleted while down",
                peers: vec![],
                psk: None,
                held: vec![right(2, 2)],
                synced: true,
                want: vec![format!("remove peer {}", key(2))],
            },
        ];
        let private = PrivateKey([11; 32]);
        let none_written = BTreeMap::new();
        let roaming = Roaming {
            written: &none_written,
            now: 1_700_000_000,
        };
        for case in cases {
            let (desired, _) = desired_peers(&set(case.peers), key(1), spec, &c, case.psk, &own);
            let actual = DeviceState {
                public_key: Some(private.public_key()),
                listen_port: 51820,
                peers: case.held,
            };
            let update = device_update(&actual, &private, 51820, &desired, case.synced, &roaming);
            assert_eq!(update.private_key, None, "{}", case.name);
            assert_eq!(update.listen_port, None, "{}", case.name);
            let got: Vec<String> = update.peers.iter().map(ToString::to_string).collect();
            assert_eq!(got, case.want, "{}", case.name);
            if let Some(psk) = case.psk {
                assert!(update
                    .peers
                    .iter()
                    .all(|c| matches!(c, PeerChange::Set(p) if p.preshared_key == Some(psk))));
            }
        }
    }

    #[test]
    fn a_fresh_device_gets_key_port_and_every_peer() {
        let c = conf(WireguardMode::Separate);
        let spec = &device_specs(&c, 1500, true, false)[0];
        let peers = set(vec![peer("b", 2, 2, None), peer("c", 3, 3, None)]);
        let (desired, _) = desired_peers(&peers, key(1), spec, &c, None, &OwnPublic::default());
        let private = PrivateKey([11; 32]);
        let written = BTreeMap::new();
        let roaming = Roaming {
            written: &written,
            now: 0,
        };
        let update = device_update(
            &DeviceState::default(),
            &private,
            51820,
            &desired,
            true,
            &roaming,
        );
        assert_eq!(update.private_key, Some(private));
        assert_eq!(update.listen_port, Some(51820));
        assert_eq!(update.peers.len(), 2);
    }

    #[test]
    fn our_own_key_on_another_node_is_no_peer() {
        let c = conf(WireguardMode::Separate);
        let spec = &device_specs(&c, 1500, true, false)[0];
        let peers = set(vec![peer("b", 2, 1, None), peer("c", 3, 3, None)]);
        let (desired, bad) = desired_peers(&peers, key(1), spec, &c, None, &OwnPublic::default());
        assert_eq!(desired.keys().copied().collect::<Vec<_>>(), [key(3)]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].node, "b");
        assert!(
            bad[0].reason.contains("own WireGuard public key"),
            "{}",
            bad[0].reason
        );
    }

    #[test]
    fn a_roamed_endpoint_is_kept_a_newly_published_one_is_written() {
        let c = conf(WireguardMode::Separate);
        let spec = &device_specs(&c, 1500, true, false)[0];
        let private = PrivateKey([11; 32]);
        let now = 1_700_000_000;
        let (desired, _) = desired_peers(
            &set(vec![peer("b", 2, 2, None)]),
            key(1),
            spec,
            &c,
            None,
            &OwnPublic::default(),
        );
        let published: SocketAddr = "192.168.0.2:51820".parse().unwrap();
        let natted = |handshake: u64| DeviceState {
            public_key: Some(private.public_key()),
            listen_port: 51820,
            peers: vec![PeerState {
                last_handshake: handshake,
                ..held(2, "203.0.113.9:40000", &["10.42.2.0/24"], None, 25)
            }],
        };
        let wrote_published: BTreeMap<Key, SocketAddr> =
            [(key(2), published)].into_iter().collect();
        let wrote_older: BTreeMap<Key, SocketAddr> =
            [(key(2), "192.168.0.99:51820".parse().unwrap())]
                .into_iter()
                .collect();
        let nothing_written = BTreeMap::new();
        let cases = [
            (
                "roamed, recent handshake: kept",
                natted(now - 10),
                &wrote_published,
                0,
            ),
            (
                "roamed, handshake stale: put back",
                natted(now - 600),
                &wrote_published,
                1,
            ),
            (
                "roamed, never handshook: put back",
                natted(0),
                &wrote_published,
                1,
            ),
            (
                "the published endpoint changed: written",
                natted(now - 10),
                &wrote_older,
                1,
            ),
            (
                "nothing written yet (a restart): written",
                natted(now - 10),
                &nothing_written,
                1,
            ),
        ];
        for (name, actual, written, changes) in cases {
            let roaming = Roaming { written, now };
            let update = device_update(&actual, &private, 51820, &desired, true, &roaming);
            assert_eq!(update.peers.len(), changes, "{name}");
        }
    }
}
