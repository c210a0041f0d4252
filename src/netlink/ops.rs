//! Typed netlink operations on what flannel owns: the vxlan device, its
//! address, neighbours and FDB entries on it, routes and nexthop objects
//! with our protocol number. Requests are pipelined (many in flight on one
//! socket; nexthop requests batched on the raw socket, see `nexthop.rs`);
//! EEXIST/ENOENT are the idempotent outcomes they are (except EEXIST on a
//! new nexthop id: someone else took it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::nexthop::{del_nexthop_request, new_nexthop_request, NexthopDump};
use super::{KernelEvent, NetlinkError, NetlinkHandle, NexthopSupport};
use crate::backend::vxlan::{FoundVxlan, VxlanDeviceSpec};
use crate::backend::{
    FdbEntry, KernelEntries, Observation, Op, OpFailure, RouteEntry, ROUTE_PROTOCOL,
};
use crate::mac::MacAddr;

/// How many requests may be in flight on one socket at once.
pub const MAX_IN_FLIGHT: usize = 128;

const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

/// The errno of a netlink error reply, if it is one.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|c| -c.get()),
        _ => None,
    }
}

impl NetlinkHandle {
    /// The link called `name`, if any.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let result: Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_collect()
            .await;
        match result {
            Ok(mut links) => Ok(links.pop()),
            Err(e) if matches!(errno(&e), Some(ENOENT) | Some(19)) => Ok(None),
            Err(e) => Err(self.request_error("link lookup")(e)),
        }
    }

    /// The link called `name` as a vxlan device to compare with a spec.
    pub async fn find_vxlan(&self, name: &str) -> Result<Option<FoundVxlan>, NetlinkError> {
        Ok(self.link_by_name(name).await?.map(|m| found_vxlan(&m)))
    }

    /// Creates the vxlan device (down; [`NetlinkHandle::set_link`] brings it
    /// up).
    pub async fn create_vxlan(&self, spec: &VxlanDeviceSpec) -> Result<(), NetlinkError> {
        let mut builder = LinkVxlan::new(&spec.name, spec.vni)
            .dev(spec.underlay_index)
            .port(spec.port)
            .learning(spec.learning);
        builder = match spec.local {
            IpAddr::V4(v4) => builder.local(v4),
            IpAddr::V6(v6) => builder.local6(v6),
        };
        if spec.gbp {
            builder = builder.gbp();
        }
        let message = builder.mtu(spec.mtu).address(spec.mac.0.to_vec()).build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                what: "vxlan device creation",
                netns: self.netns.clone(),
                source,
            })
    }

    /// Deletes a link (ENOENT is fine).
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(ENOENT) | Some(19)) => Ok(()),
            Err(e) => Err(self.request_error("link deletion")(e)),
        }
    }

    /// Sets MTU and brings the link up.
    pub async fn set_link(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(self.request_error("link set mtu/up"))
    }

    /// Makes `wanted` the only address inside `network` on the link (other
    /// addresses outside `network` are left alone).
    pub async fn ensure_only_address(
        &self,
        index: u32,
        wanted: IpNetwork,
        network: IpNetwork,
    ) -> Result<bool, NetlinkError> {
        let addresses: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(self.request_error("address dump"))?;
        let mut have = false;
        let mut changed = false;
        for message in addresses {
            let Some(found) = super::address_from_message(&message) else {
                continue;
            };
            if found.address == wanted.ip() && found.prefix_len == wanted.prefix() {
                have = true;
            } else if network.contains(found.address) {
                self.handle
                    .address()
                    .del(message)
                    .execute()
                    .await
                    .map_err(self.request_error("address deletion"))?;
                changed = true;
            }
        }
        if !have {
            match self
                .handle
                .address()
                .add(index, wanted.ip(), wanted.prefix())
                .execute()
                .await
            {
                Ok(()) => changed = true,
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(self.request_error("address add")(e)),
            }
        }
        Ok(changed)
    }

    /// The neighbours and FDB entries on `device_index` and our routes
    /// (protocol 77) of one family, as the kernel holds them now.
    pub async fn dump_entries(
        &self,
        device_index: u32,
        ipv6: bool,
    ) -> Result<KernelEntries, NetlinkError> {
        let mut entries = KernelEntries::default();
        let family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        // Dumps are folded message by message, never collected: at tens of
        // thousands of peers a collected dump would be the agent's peak
        // memory.
        let mut neighbours = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute();
        while let Some(message) = neighbours
            .try_next()
            .await
            .map_err(self.request_error("neighbour dump"))?
        {
            if message.header.ifindex != device_index
                || message.header.state != NeighbourState::Permanent
            {
                continue;
            }
            let (ip, mac) = neighbour_fields(&message);
            if let (Some(ip), Some(mac)) = (ip, mac) {
                entries.neighbours.insert(ip, mac);
            }
        }
        let mut fdb = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(message) = fdb
            .try_next()
            .await
            .map_err(self.request_error("fdb dump"))?
        {
            if message.header.ifindex != device_index {
                continue;
            }
            let (dst, mac) = neighbour_fields(&message);
            if let (Some(dst), Some(mac)) = (dst, mac) {
                if dst.is_ipv6() == ipv6 {
                    entries.fdb.insert(FdbEntry { mac, dst });
                }
            }
        }
        let routes = self.dump_routes_and_nexthops(!ipv6, ipv6).await?;
        entries.routes = routes.routes;
        entries.nexthops = routes.nexthops;
        entries.other_nexthop_ids = routes.other_nexthop_ids;
        entries.nexthops_used_elsewhere = routes.nexthops_used_elsewhere;
        Ok(entries)
    }

    /// Our routes (protocol 77) of the given families and, unless the
    /// kernel has no nexthop objects, our nexthop objects of those
    /// families, every other nexthop id in the namespace, and which of ours
    /// a route that is not ours points at.
    pub async fn dump_routes_and_nexthops(
        &self,
        ipv4: bool,
        ipv6: bool,
    ) -> Result<KernelEntries, NetlinkError> {
        let mut entries = KernelEntries::default();
        let mut foreign_users = BTreeSet::new();
        for (wanted, family_v6) in [(ipv4, false), (ipv6, true)] {
            if wanted {
                let (ours, users) = self.dump_routes(family_v6).await?;
                entries.routes.extend(ours);
                foreign_users.extend(users);
            }
        }
        if matches!(
            self.nexthop_support().await?,
            NexthopSupport::Unsupported(_)
        ) {
            return Ok(entries);
        }
        let found = self
            .raw
            .dump_nexthops()
            .await
            .map_err(|source| NetlinkError::Nexthop {
                what: "nexthop dump",
                netns: self.netns.clone(),
                source,
            })?;
        let dump = NexthopDump::split(&found, ipv4, ipv6);
        entries.nexthops_used_elsewhere = foreign_users
            .into_iter()
            .filter(|id| dump.ours.contains_key(id))
            .collect();
        entries.nexthops = dump.ours;
        entries.other_nexthop_ids = dump.others;
        // Without nexthop_compat_mode a route shows only its nhid: give it
        // its object's meaning (for messages; the diff compares ids).
        for route in entries.routes.values_mut() {
            if let Some(object) = route.nexthop.and_then(|id| entries.nexthops.get(&id)) {
                if route.gateway.is_unspecified() {
                    route.gateway = object.gateway;
                    route.oif = object.oif;
                    route.onlink = object.onlink;
                }
            }
        }
        Ok(entries)
    }

    /// Our routes (protocol 77, any table entry of the main dump) of one
    /// family.
    pub async fn dump_our_routes(
        &self,
        ipv6: bool,
    ) -> Result<BTreeMap<IpNetwork, RouteEntry>, NetlinkError> {
        Ok(self.dump_routes(ipv6).await?.0)
    }

    /// Our routes of one family, and the nexthop ids that routes which are
    /// not ours point at.
    async fn dump_routes(
        &self,
        ipv6: bool,
    ) -> Result<(BTreeMap<IpNetwork, RouteEntry>, BTreeSet<u32>), NetlinkError> {
        let request = if ipv6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let mut routes = self.handle.route().get(request).execute();
        let mut ours = BTreeMap::new();
        let mut foreign_users = BTreeSet::new();
        while let Some(message) = routes
            .try_next()
            .await
            .map_err(self.request_error("route dump"))?
        {
            if u8::from(message.header.protocol) == ROUTE_PROTOCOL {
                if let Some(route) = our_route(&message) {
                    ours.insert(route.dst, route);
                }
            } else {
                foreign_users.extend(message.attributes.iter().filter_map(|a| match a {
                    RouteAttribute::NhId(id) => Some(*id),
                    _ => None,
                }));
            }
        }
        Ok((ours, foreign_users))
    }

    /// Applies one phase of operations on `device_index`, up to
    /// [`MAX_IN_FLIGHT`] at a time. Returns the operations that failed, with
    /// the error (EEXIST on an add and ENOENT on a delete count as done).
    pub async fn apply(&self, device_index: u32, ops: &[Op]) -> Vec<OpFailure> {
        let (nexthop_ops, rtnl_ops): (Vec<Op>, Vec<Op>) =
            ops.iter().partition(|op| op.is_nexthop());
        let (mut failures, rtnl_failures) = tokio::join!(
            self.apply_nexthops(&nexthop_ops),
            self.apply_rtnl(device_index, &rtnl_ops)
        );
        failures.extend(rtnl_failures);
        failures
    }

    /// Nexthop operations, batched on the raw socket.
    async fn apply_nexthops(&self, ops: &[Op]) -> Vec<OpFailure> {
        if ops.is_empty() {
            return Vec::new();
        }
        let requests: Vec<(Op, Vec<u8>)> = ops
            .iter()
            .filter_map(|op| match op {
                Op::AddNexthop(n) => Some((*op, new_nexthop_request(n, false))),
                Op::ReplaceNexthop(n) => Some((*op, new_nexthop_request(n, true))),
                Op::DelNexthop(n) => Some((*op, del_nexthop_request(n.id))),
                // Never routed here (see `apply`).
                _ => None,
            })
            .collect();
        let bytes: Vec<Vec<u8>> = requests.iter().map(|(_, r)| r.clone()).collect();
        let results = self.raw.transact(&bytes).await;
        requests
            .iter()
            .map(|(op, _)| op)
            .zip(results)
            .filter_map(|(op, result)| {
                let error = result.err()?;
                let failure = |message: String| OpFailure {
                    op: *op,
                    errno: (error.errno != 0).then_some(error.errno),
                    held_back_by: None,
                    message,
                };
                match op {
                    Op::DelNexthop(_) if [ENOENT, ESRCH].contains(&error.errno) => None,
                    Op::AddNexthop(n) if error.errno == EEXIST => Some(failure(format!(
                        "nexthop id {} was taken meanwhile ({error}); the next pass picks another id",
                        n.id
                    ))),
                    _ => Some(failure(error.to_string())),
                }
            })
            .collect()
    }

    /// Neighbour, FDB and route operations, pipelined on the rtnetlink
    /// connection.
    async fn apply_rtnl(&self, device_index: u32, ops: &[Op]) -> Vec<OpFailure> {
        stream::iter(ops.iter().copied())
            .map(|op| async move {
                let result = self.apply_one(device_index, op).await;
                match result {
                    Ok(()) => None,
                    Err(e) => match (op, errno(&e)) {
                        (Op::SetNeighbour(_) | Op::SetFdb(_) | Op::SetRoute(_), Some(EEXIST)) => {
                            None
                        }
                        (
                            Op::DelNeighbour(_) | Op::DelFdb(_) | Op::DelRoute(_),
                            Some(ENOENT | ESRCH),
                        ) => None,
                        (_, errno) => Some(OpFailure {
                            op,
                            errno,
                            held_back_by: None,
                            message: e.to_string(),
                        }),
                    },
                }
            })
            .buffer_unordered(MAX_IN_FLIGHT)
            .filter_map(|failure| async move { failure })
            .collect()
            .await
    }

    async fn apply_one(&self, device_index: u32, op: Op) -> Result<(), rtnetlink::Error> {
        let neighbours = self.handle.neighbours();
        match op {
            Op::SetNeighbour(n) => {
                neighbours
                    .add(device_index, n.ip)
                    .link_layer_address(&n.mac.0)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
            }
            Op::DelNeighbour(n) => {
                let mut message = NeighbourMessage::default();
                message.header.family = family_of(n.ip);
                message.header.ifindex = device_index;
                message
                    .attributes
                    .push(NeighbourAttribute::Destination(neighbour_address(n.ip)));
                neighbours.del(message).execute().await
            }
            Op::SetFdb(e) => {
                neighbours
                    .add_bridge(device_index, &e.mac.0)
                    .destination(e.dst)
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
            }
            Op::DelFdb(e) => {
                let mut message = NeighbourMessage::default();
                message.header.family = AddressFamily::Bridge;
                message.header.ifindex = device_index;
                message.header.flags = NeighbourFlags::Own;
                message
                    .attributes
                    .push(NeighbourAttribute::LinkLayerAddress(e.mac.0.to_vec()));
                message
                    .attributes
                    .push(NeighbourAttribute::Destination(neighbour_address(e.dst)));
                neighbours.del(message).execute().await
            }
            Op::SetRoute(r) => {
                self.handle
                    .route()
                    .add(route_message(&r))
                    .replace()
                    .execute()
                    .await
            }
            Op::DelRoute(r) => self.handle.route().del(route_message(&r)).execute().await,
            Op::AddNexthop(_) | Op::ReplaceNexthop(_) | Op::DelNexthop(_) => {
                Err(rtnetlink::Error::RequestFailed)
            }
        }
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn neighbour_fields(message: &NeighbourMessage) -> (Option<IpAddr>, Option<MacAddr>) {
    let mut ip = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6))
            }
            // FDB dumps (AF_BRIDGE) carry the remote address as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(bytes.as_slice())
                        .ok()
                        .map(IpAddr::from),
                    _ => None,
                }
            }
            NeighbourAttribute::LinkLayerAddress(bytes) if bytes.len() == 6 => {
                let mut octets = [0u8; 6];
                octets.copy_from_slice(bytes);
                mac = Some(MacAddr(octets));
            }
            _ => {}
        }
    }
    (ip, mac)
}

fn route_message(route: &RouteEntry) -> RouteMessage {
    let protocol = RouteProtocol::from(ROUTE_PROTOCOL);
    if let Some(id) = route.nexthop {
        // `<dst> nhid <id> proto 77`: gateway, device and onlink are the
        // nexthop object's (the kernel refuses them next to an id).
        let mut message = match route.dst {
            IpNetwork::V4(dst) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.network(), dst.prefix())
                .protocol(protocol)
                .build(),
            IpNetwork::V6(dst) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(dst.network(), dst.prefix())
                .protocol(protocol)
                .build(),
        };
        message.attributes.push(RouteAttribute::NhId(id));
        return message;
    }
    let mut message = match (route.dst, route.gateway) {
        (IpNetwork::V4(dst), IpAddr::V4(gw)) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .gateway(gw)
            .output_interface(route.oif)
            .protocol(protocol)
            .build(),
        (IpNetwork::V6(dst), IpAddr::V6(gw)) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .gateway(gw)
            .output_interface(route.oif)
            .protocol(protocol)
            .build(),
        // Mixed families never come out of the backends; build the
        // destination alone so the kernel rejects it with a clear error.
        (IpNetwork::V4(dst), IpAddr::V6(_)) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .build(),
        (IpNetwork::V6(dst), IpAddr::V4(_)) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .build(),
    };
    if route.onlink {
        message.header.flags |= RouteFlags::Onlink;
    }
    message
}

/// A route with a destination and an output interface and neither a
/// gateway nor a nexthop object: `<dst> dev <oif>`.
fn link_route(message: &RouteMessage) -> Option<(IpNetwork, u32)> {
    let mut dst = None;
    let mut oif = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Gateway(_) | RouteAttribute::NhId(_) | RouteAttribute::MultiPath(_) => {
                return None
            }
            _ => {}
        }
    }
    let dst = IpNetwork::new(dst?, message.header.destination_prefix_length).ok()?;
    Some((dst, oif?))
}

fn our_route(message: &RouteMessage) -> Option<RouteEntry> {
    let mut dst_addr = None;
    let mut gateway = None;
    let mut oif = None;
    let mut nexthop = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::NhId(id) => nexthop = Some(*id),
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst_addr = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst_addr = Some(IpAddr::V6(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    let dst = IpNetwork::new(dst_addr?, message.header.destination_prefix_length).ok()?;
    let onlink = message.header.flags.contains(RouteFlags::Onlink);
    if nexthop.is_some() {
        // With nexthop_compat_mode (the default) the kernel adds the
        // object's gateway and device; without, only the id is there.
        let unspecified = if dst.is_ipv6() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        return Some(RouteEntry {
            dst,
            gateway: gateway.unwrap_or(unspecified),
            oif: oif.unwrap_or(0),
            onlink,
            nexthop,
        });
    }
    Some(RouteEntry {
        dst,
        gateway: gateway?,
        oif: oif?,
        onlink,
        nexthop: None,
    })
}

/// A kernel notification in the data path's terms: which neighbour, FDB
/// entry, route or nexthop object of ours (or which link) it is about.
pub fn observation(event: &KernelEvent) -> Observation {
    let message = match event {
        KernelEvent::Rtnl(message) => message,
        KernelEvent::Nexthop(event) => {
            return Observation::Nexthop {
                id: event.nexthop.id,
                ours: event.nexthop.ours(),
                deleted: event.deleted,
            }
        }
        KernelEvent::Overrun => return Observation::Overrun,
    };
    let NetlinkPayload::InnerMessage(inner) = &message.payload else {
        return Observation::Unrelated;
    };
    match inner {
        RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link) => {
            Observation::Link {
                index: link.header.index,
                name: link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                }),
            }
        }
        RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
            Observation::Address {
                index: a.header.index,
                address: super::address_from_message(a).map(|found| found.address),
            }
        }
        RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
            let deleted = matches!(inner, RouteNetlinkMessage::DelNeighbour(_));
            let (ip, mac) = neighbour_fields(n);
            let Some(ip) = ip else {
                return Observation::Unrelated;
            };
            if n.header.family == AddressFamily::Bridge {
                match mac {
                    Some(mac) => Observation::Fdb {
                        ifindex: n.header.ifindex,
                        entry: FdbEntry { mac, dst: ip },
                        deleted,
                    },
                    None => Observation::Unrelated,
                }
            } else {
                Observation::Neighbour {
                    ifindex: n.header.ifindex,
                    ip,
                    mac,
                    permanent: n.header.state == NeighbourState::Permanent,
                    deleted,
                }
            }
        }
        RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
            let deleted = matches!(inner, RouteNetlinkMessage::DelRoute(_));
            if u8::from(r.header.protocol) == ROUTE_PROTOCOL {
                return match our_route(r) {
                    Some(route) => Observation::Route { route, deleted },
                    None => match link_route(r) {
                        Some((dst, oif)) => Observation::LinkRoute { dst, oif, deleted },
                        // Ours, yet not a shape we make: dump and see.
                        None => Observation::Overrun,
                    },
                };
            }
            if deleted || route_table(r) != MAIN_TABLE {
                return Observation::Unrelated;
            }
            let mut dst = None;
            let mut nexthop = None;
            for attribute in &r.attributes {
                match attribute {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                        dst = Some(IpAddr::V4(*a))
                    }
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                        dst = Some(IpAddr::V6(*a))
                    }
                    RouteAttribute::NhId(id) => nexthop = Some(*id),
                    _ => {}
                }
            }
            match dst.and_then(|a| IpNetwork::new(a, r.header.destination_prefix_length).ok()) {
                Some(dst) => Observation::ForeignRoute { dst, nexthop },
                None => Observation::Unrelated,
            }
        }
        _ => Observation::Unrelated,
    }
}

/// RT_TABLE_MAIN.
const MAIN_TABLE: u32 = 254;

/// A route's table: RTA_TABLE when present (tables above 255), else the
/// header's.
fn route_table(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or_else(|| u32::from(message.header.table))
}

fn found_vxlan(message: &LinkMessage) -> FoundVxlan {
    let mut found = FoundVxlan {
        index: message.header.index,
        is_vxlan: false,
        vni: None,
        local: None,
        underlay_index: None,
        port: None,
        gbp: false,
        learning: true,
        mtu: 0,
        mac: None,
        up: message.header.flags.contains(LinkFlags::Up),
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Mtu(mtu) => found.mtu = *mtu,
            LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                let mut octets = [0u8; 6];
                octets.copy_from_slice(bytes);
                found.mac = Some(MacAddr(octets));
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Vxlan) => found.is_vxlan = true,
                        LinkInfo::Data(InfoData::Vxlan(items)) => {
                            for item in items {
                                match item {
                                    InfoVxlan::Id(id) => found.vni = Some(*id),
                                    InfoVxlan::Local(a) => found.local = Some(IpAddr::V4(*a)),
                                    InfoVxlan::Local6(a) => found.local = Some(IpAddr::V6(*a)),
                                    InfoVxlan::Link(index) => found.underlay_index = Some(*index),
                                    InfoVxlan::Port(port) => found.port = Some(*port),
                                    InfoVxlan::Learning(on) => found.learning = *on,
                                    InfoVxlan::Gbp => found.gbp = true,
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    found
}
