//! Netlink in a network namespace. A netlink socket belongs to the namespace
//! of the thread that created it, so the socket is opened on a short-lived
//! std thread that has entered the target namespace; the tokio workers never
//! call setns. One process can therefore drive many lab nodes.

mod iface;
mod nexthop;
mod ops;
mod tunnel;

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::{self, Stream, StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::AsyncSocket;
use rtnetlink::RouteMessageBuilder;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use iface::{choose_external_interface, ExternalInterface, Link, LinkAddress, RouteEntry};
#[doc(hidden)]
pub use nexthop::decode_datagram;
use nexthop::set_receive_buffer;
pub use nexthop::{FoundNexthop, NexthopDump, NexthopEvent, RequestError};
pub use ops::{observation, MAX_IN_FLIGHT};
pub use tunnel::{TunnelLink, EOPNOTSUPP};

use nexthop::RawSocket;

use crate::backend::Observation;
use crate::config::InterfaceSelector;

/// Environment variable that turns nexthop objects off
/// (`FLANNEL_EMBED_NEXTHOPS=off`, also `0`, `false`, `no`): routes are then
/// plain onlink routes, as on kernels without nexthop objects.
pub const NEXTHOPS_ENV: &str = "FLANNEL_EMBED_NEXTHOPS";

/// Whether routes point at nexthop objects in this namespace; decided once
/// per handle ([`NetlinkHandle::nexthop_support`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NexthopSupport {
    /// Every route of ours points at a nexthop object of its own.
    Used,
    /// Turned off with [`NEXTHOPS_ENV`]: plain routes; nexthop objects of
    /// ours left by an earlier run are removed.
    Off,
    /// The kernel has no nexthop objects (before 5.3): plain routes.
    Unsupported(String),
}

/// A netlink operation failed; names the namespace and the step.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A sysctl of the namespace could not be read or written.
    #[error("cannot set a sysctl in {netns}: {problem}")]
    Sysctl {
        /// The namespace (path, or "the agent's own namespace").
        netns: String,
        /// What failed.
        problem: String,
    },
    /// Entering the namespace or opening the socket failed.
    #[error("cannot open a netlink socket in {netns}: {problem}")]
    Open {
        /// The namespace (path, or "the agent's own namespace").
        netns: String,
        /// What failed.
        problem: String,
    },
    /// A nexthop dump failed.
    #[error("netlink {what} in {netns} failed: {source}")]
    Nexthop {
        /// What was asked for (`nexthop dump`).
        what: &'static str,
        /// The namespace.
        netns: String,
        /// The kernel's answer.
        #[source]
        source: RequestError,
    },
    /// A dump or request failed.
    #[error("netlink {what} in {netns} failed: {source}")]
    Request {
        /// What was asked for (`link dump`, ...).
        what: &'static str,
        /// The namespace.
        netns: String,
        /// rtnetlink's error.
        #[source]
        source: rtnetlink::Error,
    },
    /// No interface fits the selection.
    #[error("{0}")]
    NoInterface(String),
    /// A WireGuard device could not be made, read or written (the cause
    /// keeps its errno).
    #[error(transparent)]
    Wireguard(#[from] crate::wireguard::WgError),
}

/// What [`NetlinkHandle::disable_accept_ra`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptRa {
    /// Already 0, or no IPv6 in this kernel.
    Unchanged,
    /// Set to 0 now.
    Disabled,
    /// `/proc/sys` refused the write (read-only or not permitted); what
    /// the kernel said.
    NotWritable(String),
}

/// An rtnetlink handle whose sockets live in one network namespace: the
/// rtnetlink connection, and a raw socket for nexthop objects.
#[derive(Debug, Clone)]
pub struct NetlinkHandle {
    handle: rtnetlink::Handle,
    netns: String,
    /// The namespace's path, for work that needs a thread inside it.
    netns_path: Option<PathBuf>,
    raw: Arc<RawSocket>,
    nexthops: Arc<tokio::sync::OnceCell<NexthopSupport>>,
}

impl NetlinkHandle {
    /// Opens netlink sockets inside the namespace at `netns` (or the
    /// process's own namespace for `None`). The returned [`Driver`] reads
    /// the kernel's answers for the handle: the caller runs it (spawns it
    /// on its runtime, where it can cancel and await it) for as long as it
    /// uses the handle. The rtnetlink socket closes with the driver, which
    /// also ends by itself once every clone of the handle is gone; the
    /// nexthop socket closes with the last clone.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), flannel_embed::netlink::NetlinkError> {
    /// use flannel_embed::netlink::NetlinkHandle;
    ///
    /// let (netlink, driver) = NetlinkHandle::open(Some("/run/netns/node-1".as_ref())).await?;
    /// let driver = tokio::spawn(driver);
    /// println!("{} links", netlink.links().await?.len());
    /// driver.abort();
    /// # Ok(()) }
    /// ```
    pub async fn open(netns: Option<&Path>) -> Result<(NetlinkHandle, Driver), NetlinkError> {
        let label = netns_label(netns);
        let (connection, handle, _messages) = open_connection(netns).await?;
        let raw = on_netns_thread(netns, RawSocket::new).await?;
        let handle = NetlinkHandle {
            handle,
            netns: label,
            netns_path: netns.map(Path::to_path_buf),
            raw: Arc::new(raw),
            nexthops: Arc::new(tokio::sync::OnceCell::new()),
        };
        Ok((handle, Driver::new(connection)))
    }

    /// Sets `net.ipv6.conf.<device>.accept_ra` to 0 inside the namespace
    /// (flanneld does the same: router advertisements arriving over the
    /// overlay must not configure it), on a thread that entered the
    /// namespace, since /proc/sys/net belongs to the reader's namespace.
    /// A kernel without IPv6 has nothing to change. A `/proc/sys` that
    /// refuses the write (read-only, as a container runtime mounts it in a
    /// non-privileged pod) is [`AcceptRa::NotWritable`], not an error, as
    /// upstream ignores it too: the overlay works without it.
    pub async fn disable_accept_ra(&self, device: &str) -> Result<AcceptRa, NetlinkError> {
        if device.is_empty() || device.contains('/') || device.starts_with('.') {
            return Err(NetlinkError::NoInterface(format!(
                "'{device}' is not a device name"
            )));
        }
        let path = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{device}/accept_ra"));
        let outcome = on_netns_thread(self.netns_path.as_deref(), move || {
            Ok((|| {
                let current = match std::fs::read_to_string(&path) {
                    Ok(current) => current,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(AcceptRa::Unchanged)
                    }
                    Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
                };
                if current.trim() == "0" {
                    return Ok(AcceptRa::Unchanged);
                }
                match std::fs::write(&path, "0") {
                    Ok(()) => Ok(AcceptRa::Disabled),
                    // EROFS: a read-only /proc/sys; EACCES/EPERM: no right
                    // to it. Nothing a retry could change.
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EROFS | libc::EACCES | libc::EPERM)
                        ) =>
                    {
                        Ok(AcceptRa::NotWritable(format!(
                            "cannot write 0 to {}: {e}",
                            path.display()
                        )))
                    }
                    Err(e) => Err(format!("cannot write 0 to {}: {e}", path.display())),
                }
            })())
        })
        .await?;
        outcome.map_err(|problem| NetlinkError::Sysctl {
            netns: self.netns.clone(),
            problem,
        })
    }

    /// Whether routes use nexthop objects here, decided on first use: a
    /// nexthop dump that the kernel refuses (EOPNOTSUPP, EINVAL) means no
    /// nexthop objects; [`NEXTHOPS_ENV`]`=off` turns them off. Logged once.
    pub async fn nexthop_support(&self) -> Result<&NexthopSupport, NetlinkError> {
        self.nexthops
            .get_or_try_init(|| async {
                let support = match self.raw.dump_nexthops().await {
                    Ok(_) if nexthops_turned_off() => NexthopSupport::Off,
                    Ok(_) => NexthopSupport::Used,
                    Err(e)
                        if [libc::EOPNOTSUPP, libc::EINVAL, libc::EAFNOSUPPORT]
                            .contains(&e.errno) =>
                    {
                        NexthopSupport::Unsupported(e.to_string())
                    }
                    Err(source) => {
                        return Err(NetlinkError::Nexthop {
                            what: "nexthop dump",
                            netns: self.netns.clone(),
                            source,
                        })
                    }
                };
                match &support {
                    NexthopSupport::Used => tracing::info!(
                        netns = %self.netns,
                        "routes use nexthop objects (`ip nexthop`, protocol 77)"
                    ),
                    NexthopSupport::Off => tracing::info!(
                        netns = %self.netns,
                        "nexthop objects turned off by {NEXTHOPS_ENV}: plain onlink routes"
                    ),
                    NexthopSupport::Unsupported(why) => tracing::info!(
                        netns = %self.netns,
                        "this kernel has no nexthop objects ({why}): plain onlink routes"
                    ),
                }
                Ok(support)
            })
            .await
    }

    /// The namespace this handle works in, for messages.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    fn request_error(
        &self,
        what: &'static str,
    ) -> impl FnOnce(rtnetlink::Error) -> NetlinkError + '_ {
        move |source| NetlinkError::Request {
            what,
            netns: self.netns.clone(),
            source,
        }
    }

    /// Every link: index, name, MTU, up.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.request_error("link dump"))?;
        Ok(messages.iter().map(link_from_message).collect())
    }

    /// Every address of both families.
    pub async fn addresses(&self) -> Result<Vec<LinkAddress>, NetlinkError> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.request_error("address dump"))?;
        Ok(messages.iter().filter_map(address_from_message).collect())
    }

    /// The routes of the main table of both families.
    pub async fn main_routes(&self) -> Result<Vec<RouteEntry>, NetlinkError> {
        let mut routes = Vec::new();
        for message in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let dumped: Vec<RouteMessage> = self
                .handle
                .route()
                .get(message)
                .execute()
                .try_collect()
                .await
                .map_err(self.request_error("route dump"))?;
            routes.extend(dumped.iter().filter_map(route_from_message));
        }
        Ok(routes)
    }

    /// Finds the interface flannel sends through: `--flannel-iface` by name
    /// or address, else the interface of the default route.
    pub async fn external_interface(
        &self,
        selector: Option<&InterfaceSelector>,
        want_ipv4: bool,
        want_ipv6: bool,
    ) -> Result<ExternalInterface, NetlinkError> {
        let links = self.links().await?;
        let addresses = self.addresses().await?;
        let routes = self.main_routes().await?;
        choose_external_interface(&links, &addresses, &routes, selector, want_ipv4, want_ipv6)
            .map_err(|problem| NetlinkError::NoInterface(format!("in {}: {problem}", self.netns)))
    }
}

/// Background work that a netlink handle or notification queue needs:
/// reading the socket. This module never spawns it; the caller runs it
/// (`tokio::spawn`, a task tracker) so that it can cancel and await it.
/// It ends by itself only if the socket fails or its users are gone;
/// dropping it closes the socket it reads.
#[must_use = "a netlink driver does nothing unless it is polled (spawn it)"]
pub struct Driver(Pin<Box<dyn Future<Output = ()> + Send + 'static>>);

impl Driver {
    fn new(work: impl Future<Output = ()> + Send + 'static) -> Driver {
        Driver(Box::pin(work))
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Driver")
    }
}

pub(crate) fn netns_label(netns: Option<&Path>) -> String {
    netns.map_or_else(
        || "the agent's own namespace".to_string(),
        |p| p.display().to_string(),
    )
}

fn nexthops_turned_off() -> bool {
    std::env::var(NEXTHOPS_ENV).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "off" | "0" | "false" | "no"
        )
    })
}

/// An rtnetlink notification.
pub type KernelMessage = NetlinkMessage<RouteNetlinkMessage>;

/// What [`monitor`] reports.
#[derive(Debug, Clone)]
pub enum KernelEvent {
    /// A link, address, neighbour or route notification.
    Rtnl(KernelMessage),
    /// A nexthop object was added, replaced or deleted.
    Nexthop(NexthopEvent),
    /// Notifications were lost: anything may have changed.
    Overrun,
}

/// Opens a netlink connection whose socket is created inside `netns`: on a
/// fresh std thread that enters the namespace and ends right after, never on
/// a tokio worker.
async fn open_connection(
    netns: Option<&Path>,
) -> Result<
    (
        rtnetlink::proto::Connection<RouteNetlinkMessage>,
        rtnetlink::Handle,
        impl Stream<Item = (KernelMessage, rtnetlink::sys::SocketAddr)> + Unpin + Send,
    ),
    NetlinkError,
> {
    on_netns_thread(netns, || {
        rtnetlink::new_connection().map_err(|e| format!("socket: {e}"))
    })
    .await
}

/// Runs `make` (which creates sockets) on a fresh std thread that has
/// entered `netns` and has the caller's runtime entered, so the sockets
/// belong to that namespace and register with the caller's reactor; the
/// thread ends right after. Never on a tokio worker.
pub(crate) async fn on_netns_thread<T, F>(netns: Option<&Path>, make: F) -> Result<T, NetlinkError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, String> + Send + 'static,
{
    let label = netns_label(netns);
    let runtime = tokio::runtime::Handle::current();
    let path: Option<PathBuf> = netns.map(Path::to_path_buf);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("flannel-netns".into())
        .spawn(move || {
            let result = (|| {
                if let Some(path) = &path {
                    enter_netns(path)?;
                }
                let _runtime = runtime.enter();
                make()
            })();
            let _ = sender.send(result);
        })
        .map_err(|e| NetlinkError::Open {
            netns: label.clone(),
            problem: format!("cannot start a thread: {e}"),
        })?;
    receiver
        .await
        .map_err(|_| NetlinkError::Open {
            netns: label.clone(),
            problem: "the namespace thread ended without an answer".into(),
        })?
        .map_err(|problem| NetlinkError::Open {
            netns: label,
            problem,
        })
}

/// Kernel notifications about links, addresses, neighbours (and FDB
/// entries), routes and nexthop objects in `netns`: the triggers for a
/// reconcile.
pub async fn monitor(
    netns: Option<&Path>,
) -> Result<impl Stream<Item = KernelEvent> + Unpin + Send, NetlinkError> {
    let (rtnl, nexthops) = monitor_parts(netns).await?;
    Ok(stream::select(rtnl, nexthops))
}

type EventStream = futures_util::stream::BoxStream<'static, KernelEvent>;

/// The two halves of [`monitor`]: rtnetlink groups, nexthop objects.
async fn monitor_parts(netns: Option<&Path>) -> Result<(EventStream, EventStream), NetlinkError> {
    // RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE |
    // RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
    const GROUPS: u32 = 0x1 | 0x4 | 0x10 | 0x40 | 0x100 | 0x400;
    let label = netns_label(netns);
    let (mut connection, _handle, messages) = open_connection(netns).await?;
    let socket = connection.socket_mut().socket_mut();
    socket
        .bind(&rtnetlink::sys::SocketAddr::new(0, GROUPS))
        .map_err(|e| NetlinkError::Open {
            netns: label,
            problem: format!("cannot subscribe to kernel notifications: {e}"),
        })?;
    // A burst (the echo of a cold start) must not overflow the default
    // 208 KiB before the reader drains it.
    set_receive_buffer(socket.as_raw_fd());
    // The stream drives its own connection: whoever reads the
    // notifications keeps the socket open, and dropping the stream
    // closes it. Nothing is left running in the background.
    let rtnl = DrivenMessages {
        connection: Some(Box::pin(connection)),
        messages,
    }
    .map(|(message, _)| match message.payload {
        // netlink-proto's report of ENOBUFS: notifications were lost.
        NetlinkPayload::Overrun(_) => KernelEvent::Overrun,
        _ => KernelEvent::Rtnl(message),
    })
    .boxed();
    // Nexthop notifications come on a raw socket of their own (rtnetlink
    // cannot decode them); a kernel without the group has none.
    let nexthops = match on_netns_thread(netns, RawSocket::subscribed).await? {
        Some(socket) => socket
            .events()
            .map(|event| event.map_or(KernelEvent::Overrun, KernelEvent::Nexthop))
            .boxed(),
        None => stream::pending().boxed(),
    };
    Ok((rtnl, nexthops))
}

/// How many observations may wait for the reconcile loop (about 64 bytes
/// each). Past that, the rest are folded into one [`Observation::Overrun`]
/// (the next pass dumps), so a storm of notifications costs bounded memory.
/// The echo of a cold start (four entries per peer) fits up to about 8,000
/// peers; above, the first pass is followed by one dump.
pub const OBSERVATION_BACKLOG: usize = 32768;

/// Kernel notifications in `netns` reduced to [`Observation`]s, from
/// [`observations`].
pub struct Observations {
    queue: tokio::sync::mpsc::Receiver<Observation>,
    /// Set by the producer when it dropped an observation (queue full).
    lost: Arc<AtomicBool>,
    /// Told the consumer that the monitor ended.
    ended_reported: bool,
}

impl Observations {
    /// Observations fed from a channel instead of the kernel (a test's
    /// stand-in for a monitor): closing the sender ends them.
    #[doc(hidden)]
    pub fn from_channel(queue: tokio::sync::mpsc::Receiver<Observation>) -> Observations {
        Observations {
            queue,
            lost: Arc::new(AtomicBool::new(false)),
            ended_reported: false,
        }
    }

    /// The next observation. A dropped one is reported first as
    /// [`Observation::Overrun`]; the end of the kernel monitor (either half)
    /// once as [`Observation::MonitorEnded`], then `None`.
    pub async fn recv(&mut self) -> Option<Observation> {
        if self.lost.swap(false, Ordering::SeqCst) {
            return Some(Observation::Overrun);
        }
        match self.queue.recv().await {
            Some(observation) => Some(observation),
            None => self.ended(),
        }
    }

    /// As [`Observations::recv`], without waiting.
    pub fn try_recv(&mut self) -> Option<Observation> {
        if self.lost.swap(false, Ordering::SeqCst) {
            return Some(Observation::Overrun);
        }
        match self.queue.try_recv() {
            Ok(observation) => Some(observation),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => self.ended(),
        }
    }

    fn ended(&mut self) -> Option<Observation> {
        if self.ended_reported {
            return None;
        }
        self.ended_reported = true;
        Some(Observation::MonitorEnded)
    }
}

/// Kernel notifications in `netns`, already reduced to [`Observation`]s
/// (everything unrelated to the data paths dropped) by the returned
/// [`Driver`], which the caller runs beside its consumer (so a long pass
/// of the consumer never leaves the socket unread), through a bounded
/// queue. When the queue is full, observations are dropped and the
/// consumer's next receive says [`Observation::Overrun`]; when either half
/// of the kernel monitor ends, or the driver is dropped, the queue closes.
pub async fn observations(netns: Option<&Path>) -> Result<(Observations, Driver), NetlinkError> {
    use tokio::sync::mpsc::error::TrySendError;
    let (rtnl, nexthops) = monitor_parts(netns).await?;
    // `None` marks the end of a half: notifications of that kind would
    // stop silently.
    let mut events = stream::select(
        rtnl.map(Some).chain(stream::iter([None])),
        nexthops.map(Some).chain(stream::iter([None])),
    );
    let (tx, queue) = tokio::sync::mpsc::channel(OBSERVATION_BACKLOG);
    let lost = Arc::new(AtomicBool::new(false));
    let producer_lost = lost.clone();
    let producer = Driver::new(async move {
        while let Some(Some(event)) = events.next().await {
            let observation = observation(&event);
            if observation == Observation::Unrelated {
                continue;
            }
            match tx.try_send(observation) {
                Ok(()) => {}
                // The queue is not empty, so the consumer is about to
                // receive and see the flag.
                Err(TrySendError::Full(_)) => producer_lost.store(true, Ordering::SeqCst),
                Err(TrySendError::Closed(_)) => return,
            }
        }
        // Dropping `tx` closes the queue: the consumer sees MonitorEnded.
    });
    let observations = Observations {
        queue,
        lost,
        ended_reported: false,
    };
    Ok((observations, producer))
}

/// The notifications of a monitor connection, with the connection polled
/// by the stream itself. The connection reads the socket and queues what
/// it reads; when it ends (socket closed), the queue ends after what it
/// holds.
struct DrivenMessages<M> {
    connection: Option<Pin<Box<rtnetlink::proto::Connection<RouteNetlinkMessage>>>>,
    messages: M,
}

impl<M: Stream + Unpin> Stream for DrivenMessages<M> {
    type Item = M::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(connection) = self.connection.as_mut() {
            if connection.as_mut().poll(cx).is_ready() {
                // Dropping the connection drops the sending half: the
                // queue yields what it holds, then ends.
                self.connection = None;
            }
        }
        self.messages.poll_next_unpin(cx)
    }
}

fn enter_netns(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: setns only reads the descriptor; it changes this thread's
    // namespace, and this thread is ours alone and ends right after.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "setns into {} failed: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn link_from_message(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            _ => {}
        }
    }
    link
}

pub(crate) fn address_from_message(message: &AddressMessage) -> Option<LinkAddress> {
    // IFA_LOCAL is the interface's own address on point-to-point links;
    // IFA_ADDRESS otherwise.
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => address = Some(*ip),
            AddressAttribute::Address(ip) if address.is_none() => address = Some(*ip),
            _ => {}
        }
    }
    Some(LinkAddress {
        index: message.header.index,
        address: address?,
        prefix_len: message.header.prefix_len,
        global: message.header.scope == AddressScope::Universe,
    })
}

fn route_from_message(message: &RouteMessage) -> Option<RouteEntry> {
    let ipv6 = match message.header.address_family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    let mut entry = RouteEntry {
        ipv6,
        destination_prefix: message.header.destination_prefix_length,
        table: u32::from(message.header.table),
        output_index: None,
        gateway: None,
    };
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Oif(index) => entry.output_index = Some(*index),
            RouteAttribute::Table(table) => entry.table = *table,
            RouteAttribute::Gateway(RouteAddress::Inet(gw)) => {
                entry.gateway = Some(IpAddr::V4(*gw))
            }
            RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => {
                entry.gateway = Some(IpAddr::V6(*gw))
            }
            _ => {}
        }
    }
    Some(entry)
}
