//! Links and routes of the wireguard backend: a `wireguard` link (or the
//! TUN device a userspace implementation made), and one route per device
//! for the whole cluster network, `<Network> dev flannel-wg scope link
//! proto 77`.

use std::net::{Ipv4Addr, Ipv6Addr};

use futures_util::stream::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{LinkWireguard, RouteMessageBuilder};

use super::{NetlinkError, NetlinkHandle};
use crate::backend::ROUTE_PROTOCOL;

/// EOPNOTSUPP: the kernel knows no `wireguard` link kind (no module).
pub const EOPNOTSUPP: i32 = 95;

/// A link found by name, as the wireguard backend needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelLink {
    /// ifindex.
    pub index: u32,
    /// Link kind (`wireguard`, `tun`, ...), if the kernel says.
    pub kind: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// IFF_UP.
    pub up: bool,
}

impl NetlinkHandle {
    /// The link called `name` with its kind.
    pub async fn find_tunnel(&self, name: &str) -> Result<Option<TunnelLink>, NetlinkError> {
        Ok(self.link_by_name(name).await?.map(|m| tunnel_link(&m)))
    }

    /// Creates a kernel WireGuard link with `mtu` (down). Returns the
    /// errno on failure, so EOPNOTSUPP (no module) can be told apart.
    pub async fn create_wireguard(
        &self,
        name: &str,
        mtu: u32,
    ) -> Result<(), (Option<i32>, NetlinkError)> {
        let message = LinkWireguard::new(name).mtu(mtu).build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|source| {
                let errno = match &source {
                    rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
                    _ => None,
                };
                (
                    errno,
                    NetlinkError::Request {
                        what: "wireguard device creation",
                        netns: self.netns.clone(),
                        source,
                    },
                )
            })
    }

    /// Makes `<dst> dev <index> scope link proto 77` the main table's route
    /// for `dst` (replacing another route for it). Returns whether it
    /// changed anything.
    pub async fn ensure_link_route(
        &self,
        index: u32,
        dst: IpNetwork,
    ) -> Result<bool, NetlinkError> {
        let request = match dst {
            IpNetwork::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpNetwork::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let mut routes = self.handle.route().get(request).execute();
        while let Some(message) = routes
            .try_next()
            .await
            .map_err(self.request_error("route dump"))?
        {
            if is_link_route(&message, index, dst) {
                return Ok(false);
            }
        }
        let protocol = RouteProtocol::from(ROUTE_PROTOCOL);
        let message = match dst {
            IpNetwork::V4(net) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix())
                .output_interface(index)
                .scope(RouteScope::Link)
                .protocol(protocol)
                .build(),
            IpNetwork::V6(net) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(net.network(), net.prefix())
                .output_interface(index)
                .scope(RouteScope::Link)
                .protocol(protocol)
                .build(),
        };
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(self.request_error("route replace"))?;
        Ok(true)
    }
}

fn is_link_route(message: &RouteMessage, index: u32, dst: IpNetwork) -> bool {
    // The kernel keeps IPv6 routes at scope global whatever was asked
    // for (`ip -6 route` shows no scope): only IPv4 keeps `scope link`.
    let scope_ok = dst.is_ipv6() || message.header.scope == RouteScope::Link;
    if message.header.destination_prefix_length != dst.prefix()
        || u8::from(message.header.protocol) != ROUTE_PROTOCOL
        || !scope_ok
    {
        return false;
    }
    let mut destination = None;
    let mut oif = None;
    let mut table = u32::from(message.header.table);
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                destination = Some(std::net::IpAddr::V4(*a))
            }
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                destination = Some(std::net::IpAddr::V6(*a))
            }
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Gateway(_) => return false,
            _ => {}
        }
    }
    table == 254 && destination == Some(dst.network()) && oif == Some(index)
}

fn tunnel_link(message: &LinkMessage) -> TunnelLink {
    let mut link = TunnelLink {
        index: message.header.index,
        kind: None,
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(match kind {
                            InfoKind::Wireguard => "wireguard".to_string(),
                            InfoKind::Tun => "tun".to_string(),
                            other => other.to_string(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    link
}
