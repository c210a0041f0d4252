//! Choosing the external interface from link, address and route dumps: a
//! pure function, so every rule has a table test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::InterfaceSelector;

/// A link from a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// IFF_UP.
    pub up: bool,
}

/// An address from a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAddress {
    /// ifindex of the link holding it.
    pub index: u32,
    /// The address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Scope global (not link- or host-local).
    pub global: bool,
}

/// A route from a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// IPv6 route.
    pub ipv6: bool,
    /// Destination prefix length (0 = default route).
    pub destination_prefix: u8,
    /// Routing table.
    pub table: u32,
    /// Output interface.
    pub output_index: Option<u32>,
    /// Gateway.
    pub gateway: Option<IpAddr>,
}

/// The interface flannel's traffic leaves through, and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MTU (the vxlan device gets this − 50).
    pub mtu: u32,
    /// IPv4 address used as VTEP / public IP.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address used as VTEP / public IPv6.
    pub ipv6: Option<Ipv6Addr>,
}

const MAIN_TABLE: u32 = 254;

/// flannel's choice: `--flannel-iface` by name or by address; otherwise the
/// interface of the default route (IPv4 if enabled, else IPv6). Its first
/// global address of each wanted family is used, unless the selector named
/// an address, which is then used itself.
pub fn choose_external_interface(
    links: &[Link],
    addresses: &[LinkAddress],
    routes: &[RouteEntry],
    selector: Option<&InterfaceSelector>,
    want_ipv4: bool,
    want_ipv6: bool,
) -> Result<ExternalInterface, String> {
    let names = || {
        links
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let link = match selector {
        Some(InterfaceSelector::Name(name)) => {
            links.iter().find(|l| &l.name == name).ok_or_else(|| {
                format!(
                    "--flannel-iface: no interface named '{name}' (there are: {})",
                    names()
                )
            })?
        }
        Some(InterfaceSelector::Address(ip)) => {
            let index = addresses
                .iter()
                .find(|a| a.address == *ip)
                .map(|a| a.index)
                .ok_or_else(|| format!("--flannel-iface: no interface holds the address {ip}"))?;
            links
                .iter()
                .find(|l| l.index == index)
                .ok_or_else(|| format!("--flannel-iface: the link holding {ip} vanished"))?
        }
        None => {
            let family = if want_ipv4 { "IPv4" } else { "IPv6" };
            let index = routes
                .iter()
                .filter(|r| r.ipv6 != want_ipv4 && r.destination_prefix == 0 && r.table == MAIN_TABLE)
                .find_map(|r| r.output_index)
                .ok_or_else(|| format!("there is no {family} default route to pick the interface from; pass --flannel-iface with an interface name or address"))?;
            links
                .iter()
                .find(|l| l.index == index)
                .ok_or_else(|| format!("the {family} default route points at interface index {index}, which does not exist"))?
        }
    };
    let named = match selector {
        Some(InterfaceSelector::Address(ip)) => Some(*ip),
        _ => None,
    };
    let first_global = |v6: bool| {
        addresses
            .iter()
            .filter(|a| a.index == link.index && a.global && a.address.is_ipv6() == v6)
            .map(|a| a.address)
            .next()
    };
    let ipv4 = match named {
        Some(IpAddr::V4(ip)) => Some(ip),
        _ => first_global(false).and_then(|ip| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }),
    };
    let ipv6 = match named {
        Some(IpAddr::V6(ip)) => Some(ip),
        _ => first_global(true).and_then(|ip| match ip {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        }),
    };
    if want_ipv4 && ipv4.is_none() {
        return Err(format!(
            "interface {} has no global IPv4 address",
            link.name
        ));
    }
    if want_ipv6 && ipv6.is_none() {
        return Err(format!(
            "interface {} has no global IPv6 address",
            link.name
        ));
    }
    if link.mtu == 0 {
        return Err(format!("interface {} reports MTU 0", link.name));
    }
    Ok(ExternalInterface {
        index: link.index,
        name: link.name.clone(),
        mtu: link.mtu,
        ipv4: ipv4.filter(|_| want_ipv4),
        ipv6: ipv6.filter(|_| want_ipv6),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Vec<Link> {
        vec![
            Link {
                index: 1,
                name: "lo".into(),
                mtu: 65536,
                up: true,
            },
            Link {
                index: 2,
                name: "eth0".into(),
                mtu: 1500,
                up: true,
            },
            Link {
                index: 3,
                name: "eth1".into(),
                mtu: 9000,
                up: true,
            },
        ]
    }

    fn addr(index: u32, ip: &str, global: bool) -> LinkAddress {
        LinkAddress {
            index,
            address: ip.parse().unwrap(),
            prefix_len: 24,
            global,
        }
    }

    fn addresses() -> Vec<LinkAddress> {
        vec![
            addr(1, "127.0.0.1", false),
            addr(2, "fe80::1", false),
            addr(2, "192.168.1.12", true),
            addr(2, "192.168.1.50", true),
            addr(2, "fd00::12", true),
            addr(3, "10.0.0.12", true),
        ]
    }

    fn default_via(index: u32, ipv6: bool) -> RouteEntry {
        RouteEntry {
            ipv6,
            destination_prefix: 0,
            table: 254,
            output_index: Some(index),
            gateway: None,
        }
    }

    #[test]
    fn interface_choice() {
        let routes = vec![
            RouteEntry {
                ipv6: false,
                destination_prefix: 24,
                table: 254,
                output_index: Some(3),
                gateway: None,
            },
            RouteEntry {
                ipv6: false,
                destination_prefix: 0,
                table: 100,
                output_index: Some(3),
                gateway: None,
            },
            default_via(2, false),
            default_via(3, true),
        ];
        let name = InterfaceSelector::Name("eth1".into());
        let by_ip = InterfaceSelector::Address("192.168.1.50".parse().unwrap());
        type Case<'a> = (
            Option<&'a InterfaceSelector>,
            bool,
            bool,
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (None, true, false, "eth0", Some("192.168.1.12"), None),
            (
                None,
                true,
                true,
                "eth0",
                Some("192.168.1.12"),
                Some("fd00::12"),
            ),
            (Some(&name), true, false, "eth1", Some("10.0.0.12"), None),
            (
                Some(&by_ip),
                true,
                false,
                "eth0",
                Some("192.168.1.50"),
                None,
            ),
        ];
        for (selector, v4, v6, want_name, want_v4, want_v6) in cases {
            let chosen =
                choose_external_interface(&links(), &addresses(), &routes, selector, v4, v6)
                    .unwrap();
            assert_eq!(chosen.name, want_name, "{selector:?}");
            assert_eq!(chosen.ipv4.map(|a| a.to_string()).as_deref(), want_v4);
            assert_eq!(chosen.ipv6.map(|a| a.to_string()).as_deref(), want_v6);
        }
        // IPv6-only picks the IPv6 default route.
        let v6 = choose_external_interface(&links(), &addresses(), &routes, None, false, true);
        assert_eq!(v6.unwrap_err(), "interface eth1 has no global IPv6 address");
    }

    #[test]
    fn failures_say_what_to_do() {
        let cases: Vec<(Option<InterfaceSelector>, Vec<RouteEntry>, &str)> = vec![
            (
                None,
                vec![],
                "no IPv4 default route to pick the interface from; pass --flannel-iface",
            ),
            (
                Some(InterfaceSelector::Name("wlan0".into())),
                vec![],
                "no interface named 'wlan0' (there are: lo, eth0, eth1)",
            ),
            (
                Some(InterfaceSelector::Address("10.9.9.9".parse().unwrap())),
                vec![],
                "no interface holds the address 10.9.9.9",
            ),
            (
                Some(InterfaceSelector::Name("lo".into())),
                vec![],
                "interface lo has no global IPv4 address",
            ),
        ];
        for (selector, routes, wanted) in cases {
            let error = choose_external_interface(
                &links(),
                &addresses(),
                &routes,
                selector.as_ref(),
                true,
                false,
            )
            .unwrap_err();
            assert!(error.contains(wanted), "{error:?} lacks {wanted:?}");
        }
    }
}
