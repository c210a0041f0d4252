//! Nexthop objects (`ip nexthop`, kernel 5.3+) over a raw NETLINK_ROUTE
//! socket: netlink-packet-route has no RTM_NEWNEXTHOP/RTM_DELNEXTHOP/
//! RTM_GETNEXTHOP messages, so `struct nhmsg` and its NHA_* attributes are
//! encoded here (values from include/uapi/linux/nexthop.h and
//! rtnetlink.h, checked against `ip -d nexthop` on the lab kernel).
//!
//! Requests are batched: many messages in one sendmsg buffer, which the
//! kernel processes in order within that one call. Only the last message
//! of a batch asks for an acknowledgement; a failing request is answered
//! with an error carrying its sequence number (the kernel always reports
//! errors), so when the last acknowledgement arrives every earlier request
//! without an error succeeded.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::stream::{self, Stream, StreamExt};
use rtnetlink::sys::{AsyncSocket, AsyncSocketExt, TokioSocket};

use crate::backend::{Nexthop, ROUTE_PROTOCOL};

/// `RTM_NEWNEXTHOP` (rtnetlink.h).
pub(crate) const RTM_NEWNEXTHOP: u16 = 104;
/// `RTM_DELNEXTHOP`.
pub(crate) const RTM_DELNEXTHOP: u16 = 105;
/// `RTM_GETNEXTHOP`.
pub(crate) const RTM_GETNEXTHOP: u16 = 106;
/// `RTNLGRP_NEXTHOP`: nexthop notifications.
pub(crate) const RTNLGRP_NEXTHOP: u32 = 32;

// nexthop.h attributes.
const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_FDB: u16 = 11;
/// `RTNH_F_ONLINK` (rtnetlink.h), in `nhmsg.nh_flags`.
const RTNH_F_ONLINK: u32 = 4;

// netlink.h.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
/// In an error reply: the original payload was left out (NETLINK_CAP_ACK).
const NLM_F_CAPPED: u16 = 0x100;
/// In an error reply: extended-ack TLVs follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_ROUTE: isize = 0;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Requests per sendmsg buffer. Each is processed inside that one system
/// call; 256 keeps a call in the low milliseconds and the error replies of
/// a batch that fails as a whole well inside the receive buffer.
const BATCH: usize = 256;
/// Receive buffer asked for (SO_RCVBUFFORCE as root, else as much as
/// rmem_max allows).
const RECEIVE_BUFFER: libc::c_int = 4 << 20;
/// How long to wait for the acknowledgement of a batch or the end of a
/// dump before giving up on it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one netlink request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// errno (positive), 0 when there is none (lost reply, timeout).
    pub errno: i32,
    /// The kernel's extended-ack message, or what went wrong locally.
    pub message: Option<String>,
}

impl RequestError {
    fn local(message: impl Into<String>) -> RequestError {
        RequestError {
            errno: 0,
            message: Some(message.into()),
        }
    }

    fn io(error: &std::io::Error) -> RequestError {
        RequestError {
            errno: error.raw_os_error().unwrap_or(0),
            message: None,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.message, self.errno) {
            (Some(message), 0) => f.write_str(message),
            (Some(message), errno) => write!(
                f,
                "{message} ({})",
                std::io::Error::from_raw_os_error(errno)
            ),
            (None, errno) => write!(f, "{}", std::io::Error::from_raw_os_error(errno)),
        }
    }
}

impl std::error::Error for RequestError {}

/// A nexthop object as the kernel reports it (dump or notification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundNexthop {
    /// Id.
    pub id: u32,
    /// AF_INET, AF_INET6 (or AF_UNSPEC for groups).
    pub family: u8,
    /// Protocol (77 = ours).
    pub protocol: u8,
    /// Gateway, if any.
    pub gateway: Option<IpAddr>,
    /// Device, if any.
    pub oif: Option<u32>,
    /// RTNH_F_ONLINK.
    pub onlink: bool,
    /// A group, blackhole or FDB nexthop: never one of the plain objects
    /// flannel-embed makes.
    pub special: bool,
}

impl FoundNexthop {
    /// Ours (protocol 77, a gateway and a device) as the model's
    /// [`Nexthop`], or `None`.
    pub fn ours(&self) -> Option<Nexthop> {
        if self.protocol != ROUTE_PROTOCOL || self.special {
            return None;
        }
        Some(Nexthop {
            id: self.id,
            gateway: self.gateway?,
            oif: self.oif?,
            onlink: self.onlink,
        })
    }

    /// IPv6 (for the per-family split of a dump).
    pub fn is_ipv6(&self) -> bool {
        self.family == AF_INET6 || self.gateway.is_some_and(|g| g.is_ipv6())
    }
}

/// What a data path needs from a nexthop dump: our objects of the asked
/// families, and every other id in the namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NexthopDump {
    /// Ours, by id.
    pub ours: BTreeMap<u32, Nexthop>,
    /// Every other id (other owners, other families, groups).
    pub others: BTreeSet<u32>,
}

impl NexthopDump {
    /// Splits a dump: ours of the wanted families, the rest.
    pub fn split(found: &[FoundNexthop], ipv4: bool, ipv6: bool) -> NexthopDump {
        let mut dump = NexthopDump::default();
        for nexthop in found {
            let family_wanted = if nexthop.is_ipv6() { ipv6 } else { ipv4 };
            match nexthop.ours().filter(|_| family_wanted) {
                Some(ours) => {
                    dump.ours.insert(ours.id, ours);
                }
                None => {
                    dump.others.insert(nexthop.id);
                }
            }
        }
        dump
    }
}

/// A nexthop notification (RTNLGRP_NEXTHOP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NexthopEvent {
    /// RTM_DELNEXTHOP (else RTM_NEWNEXTHOP: added or replaced).
    pub deleted: bool,
    /// The object.
    pub nexthop: FoundNexthop,
}

// ---- encoding -------------------------------------------------------------

fn family_of(ip: IpAddr) -> u8 {
    if ip.is_ipv6() {
        AF_INET6
    } else {
        AF_INET
    }
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// A request without its sequence number (set when it is sent).
fn message(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut buf = Vec::with_capacity(align4(len));
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // seq
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    buf.extend_from_slice(payload);
    buf.resize(align4(len), 0);
    buf
}

fn nhmsg(family: u8, protocol: u8, flags: u32) -> Vec<u8> {
    let mut buf = vec![family, 0, protocol, 0];
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

/// `ip nexthop add|replace id <id> via <gw> dev <oif> [onlink] proto 77`.
/// `replace`: NLM_F_CREATE|NLM_F_REPLACE (an object of ours); else
/// NLM_F_CREATE|NLM_F_EXCL, which fails with EEXIST instead of overwriting
/// an id someone else took meanwhile.
pub(crate) fn new_nexthop_request(nexthop: &Nexthop, replace: bool) -> Vec<u8> {
    let flags = if nexthop.onlink { RTNH_F_ONLINK } else { 0 };
    let mut payload = nhmsg(family_of(nexthop.gateway), ROUTE_PROTOCOL, flags);
    push_attr(&mut payload, NHA_ID, &nexthop.id.to_ne_bytes());
    match nexthop.gateway {
        IpAddr::V4(gw) => push_attr(&mut payload, NHA_GATEWAY, &gw.octets()),
        IpAddr::V6(gw) => push_attr(&mut payload, NHA_GATEWAY, &gw.octets()),
    }
    push_attr(&mut payload, NHA_OIF, &nexthop.oif.to_ne_bytes());
    let mode = if replace {
        NLM_F_CREATE | NLM_F_REPLACE
    } else {
        NLM_F_CREATE | NLM_F_EXCL
    };
    message(RTM_NEWNEXTHOP, mode, &payload)
}

/// `ip nexthop del id <id>` (the kernel wants a zeroed header and the id).
pub(crate) fn del_nexthop_request(id: u32) -> Vec<u8> {
    let mut payload = nhmsg(AF_UNSPEC, 0, 0);
    push_attr(&mut payload, NHA_ID, &id.to_ne_bytes());
    message(RTM_DELNEXTHOP, 0, &payload)
}

/// `ip nexthop show` (all families; filtered here).
fn dump_nexthops_request() -> Vec<u8> {
    message(RTM_GETNEXTHOP, NLM_F_DUMP, &nhmsg(AF_UNSPEC, 0, 0))
}

// ---- decoding -------------------------------------------------------------

/// One netlink message of a datagram.
struct Message<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The messages of a datagram; stops at the first malformed one.
fn messages(mut buf: &[u8]) -> Vec<Message<'_>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        out.push(Message {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

/// `(type, value)` of each attribute; stops at the first malformed one.
fn attributes(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        if len < 4 || len > buf.len() {
            break;
        }
        // NLA_F_NESTED / NLA_F_NET_BYTEORDER live in the top bits.
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        out.push((kind, &buf[4..len]));
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

fn u32_of(value: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(value.get(..4)?.try_into().ok()?))
}

/// Parses the payload of an RTM_NEWNEXTHOP/RTM_DELNEXTHOP message.
pub(crate) fn parse_nexthop(payload: &[u8]) -> Option<FoundNexthop> {
    if payload.len() < 8 {
        return None;
    }
    let flags = u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]);
    let mut found = FoundNexthop {
        id: 0,
        family: payload[0],
        protocol: payload[2],
        gateway: None,
        oif: None,
        onlink: flags & RTNH_F_ONLINK != 0,
        special: false,
    };
    for (kind, value) in attributes(&payload[8..]) {
        match kind {
            NHA_ID => found.id = u32_of(value)?,
            NHA_OIF => found.oif = u32_of(value),
            NHA_GATEWAY => {
                found.gateway = match value.len() {
                    4 => <[u8; 4]>::try_from(value)
                        .ok()
                        .map(Ipv4Addr::from)
                        .map(IpAddr::V4),
                    16 => <[u8; 16]>::try_from(value)
                        .ok()
                        .map(Ipv6Addr::from)
                        .map(IpAddr::V6),
                    _ => None,
                }
            }
            NHA_GROUP | NHA_BLACKHOLE | NHA_FDB => found.special = true,
            _ => {}
        }
    }
    (found.id != 0).then_some(found)
}

/// Every message of a datagram decoded as the socket's readers decode
/// them (error/acknowledgement, nexthop), for the fuzz target: what the
/// kernel (or anything able to write to our socket) sends must never make
/// the decoders panic or loop. Returns how many messages decoded to
/// something.
#[doc(hidden)]
pub fn decode_datagram(datagram: &[u8]) -> usize {
    messages(datagram)
        .iter()
        .filter(|m| match m.kind {
            NLMSG_ERROR => parse_error(m.flags, m.payload).is_some(),
            RTM_NEWNEXTHOP | RTM_DELNEXTHOP => parse_nexthop(m.payload).is_some(),
            _ => false,
        })
        .count()
}

/// The error of an NLMSG_ERROR payload (`None` for an acknowledgement).
fn parse_error(flags: u16, payload: &[u8]) -> Option<RequestError> {
    let code = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    if code == 0 {
        return None;
    }
    let mut error = RequestError {
        // The kernel sends -errno; a malformed i32::MIN must not overflow.
        errno: code.saturating_neg(),
        message: None,
    };
    if flags & NLM_F_ACK_TLVS != 0 {
        // After the error code: the request's header (and, unless capped,
        // its payload), then the TLVs.
        let original = payload
            .get(4..8)
            .and_then(u32_of)
            .map_or(NLMSG_HDRLEN, |l| l as usize);
        let skip = 4 + if flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            align4(original)
        };
        if let Some(tlvs) = payload.get(skip..) {
            for (kind, value) in attributes(tlvs) {
                if kind == NLMSGERR_ATTR_MSG {
                    let text = value.split(|b| *b == 0).next().unwrap_or_default();
                    error.message = Some(String::from_utf8_lossy(text).into_owned());
                }
            }
        }
    }
    Some(error)
}

// ---- the socket -----------------------------------------------------------

/// A raw NETLINK_ROUTE socket (opened inside the target namespace) for the
/// messages rtnetlink lacks. One batch or dump at a time.
pub(crate) struct RawSocket {
    socket: TokioSocket,
    seq: AtomicU32,
    busy: tokio::sync::Mutex<()>,
}

impl fmt::Debug for RawSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawSocket")
            .field("fd", &self.socket.as_raw_fd())
            .finish()
    }
}

impl RawSocket {
    /// Creates the socket in the calling thread's namespace (call on the
    /// namespace thread, inside the runtime).
    pub(crate) fn new() -> Result<RawSocket, String> {
        let socket = TokioSocket::new(NETLINK_ROUTE).map_err(|e| format!("socket: {e}"))?;
        let raw = socket.socket_ref();
        // Extended acks name the problem; capped acks keep error replies
        // small. Both are best effort (old kernels lack them).
        let _ = raw.set_ext_ack(true);
        let _ = raw.set_cap_ack(true);
        set_receive_buffer(socket.as_raw_fd());
        Ok(RawSocket {
            socket,
            seq: AtomicU32::new(1),
            busy: tokio::sync::Mutex::new(()),
        })
    }

    /// Creates a socket subscribed to nexthop notifications, or `None` when
    /// the kernel has no such group.
    pub(crate) fn subscribed() -> Result<Option<RawSocket>, String> {
        let mut socket = RawSocket::new()?;
        // Multicast reaches bound sockets only (an unbound one has port id
        // 0, which notifications exclude).
        socket
            .socket
            .socket_mut()
            .bind_auto()
            .map_err(|e| format!("bind: {e}"))?;
        if socket
            .socket
            .socket_ref()
            .add_membership(RTNLGRP_NEXTHOP)
            .is_err()
        {
            return Ok(None);
        }
        Ok(Some(socket))
    }

    fn next_seqs(&self, count: usize) -> u32 {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let mut first = self.seq.fetch_add(count, Ordering::Relaxed);
        if first == 0 || first.checked_add(count).is_none() {
            // Wrapped: start over (old replies carry other numbers).
            self.seq.store(1 + count, Ordering::Relaxed);
            first = 1;
        }
        first
    }

    /// Sends `requests` in batches and returns one result per request, in
    /// order.
    pub(crate) async fn transact(&self, requests: &[Vec<u8>]) -> Vec<Result<(), RequestError>> {
        let _busy = self.busy.lock().await;
        let mut results = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(BATCH) {
            results.extend(self.transact_batch(chunk).await);
        }
        results
    }

    async fn transact_batch(&self, chunk: &[Vec<u8>]) -> Vec<Result<(), RequestError>> {
        let first = self.next_seqs(chunk.len());
        let last = first + chunk.len() as u32 - 1;
        let mut buf = Vec::with_capacity(chunk.iter().map(Vec::len).sum());
        for (i, request) in chunk.iter().enumerate() {
            let start = buf.len();
            buf.extend_from_slice(request);
            if request.len() < NLMSG_HDRLEN {
                continue;
            }
            buf[start + 8..start + 12].copy_from_slice(&(first + i as u32).to_ne_bytes());
            if i + 1 == chunk.len() {
                let flags = u16::from_ne_bytes([buf[start + 6], buf[start + 7]]) | NLM_F_ACK;
                buf[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
            }
        }
        let mut answers: Vec<Option<Result<(), RequestError>>> = vec![None; chunk.len()];
        if let Err(e) = self.socket.send(&buf).await {
            let error = RequestError::io(&e);
            return vec![Err(error); chunk.len()];
        }
        // The kernel has processed the whole buffer: its replies are queued.
        let mut overrun = false;
        let mut sync: Option<u32> = None;
        let finished = tokio::time::timeout(REPLY_TIMEOUT, async {
            loop {
                let datagram = match self.socket.recv_from_full().await {
                    Ok((datagram, _)) => datagram,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        // Replies were dropped: no success can be inferred
                        // any more. Resynchronise with an acknowledged no-op,
                        // which is answered after everything before it.
                        overrun = true;
                        if sync.is_none() {
                            let seq = self.next_seqs(1);
                            let mut noop = message(NLMSG_NOOP, NLM_F_ACK, &[]);
                            noop[8..12].copy_from_slice(&seq.to_ne_bytes());
                            if self.socket.send(&noop).await.is_err() {
                                return;
                            }
                            sync = Some(seq);
                        }
                        continue;
                    }
                    Err(_) => return,
                };
                let mut done = false;
                for reply in messages(&datagram) {
                    if reply.kind != NLMSG_ERROR {
                        continue;
                    }
                    if Some(reply.seq) == sync {
                        done = true;
                    }
                    if reply.seq < first || reply.seq > last {
                        continue;
                    }
                    let index = (reply.seq - first) as usize;
                    answers[index] = Some(match parse_error(reply.flags, reply.payload) {
                        None => Ok(()),
                        Some(error) => Err(error),
                    });
                    if reply.seq == last {
                        done = true;
                    }
                }
                if done {
                    return;
                }
            }
        })
        .await
        .is_ok();
        let acknowledged = finished && answers.last().is_some_and(Option::is_some);
        answers
            .into_iter()
            .map(|answer| match answer {
                Some(result) => result,
                None if acknowledged && !overrun => Ok(()),
                None if overrun => Err(RequestError::local(
                    "its reply was lost (netlink receive buffer overrun)",
                )),
                None => Err(RequestError::local(format!(
                    "no acknowledgement within {}s",
                    REPLY_TIMEOUT.as_secs()
                ))),
            })
            .collect()
    }

    /// Dumps every nexthop object. A dump the kernel marks as interrupted
    /// (objects changed meanwhile) is repeated.
    pub(crate) async fn dump_nexthops(&self) -> Result<Vec<FoundNexthop>, RequestError> {
        let _busy = self.busy.lock().await;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (found, interrupted) = self.dump_once().await?;
            if !interrupted || attempts >= 3 {
                return Ok(found);
            }
        }
    }

    async fn dump_once(&self) -> Result<(Vec<FoundNexthop>, bool), RequestError> {
        let seq = self.next_seqs(1);
        let mut request = dump_nexthops_request();
        request[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.socket
            .send(&request)
            .await
            .map_err(|e| RequestError::io(&e))?;
        let mut found = Vec::new();
        let mut interrupted = false;
        let result = tokio::time::timeout(REPLY_TIMEOUT, async {
            loop {
                let (datagram, _) = self
                    .socket
                    .recv_from_full()
                    .await
                    .map_err(|e| RequestError::io(&e))?;
                for reply in messages(&datagram) {
                    if reply.seq != seq {
                        continue;
                    }
                    interrupted |= reply.flags & NLM_F_DUMP_INTR != 0;
                    match reply.kind {
                        NLMSG_DONE => {
                            // The dump's own status follows NLMSG_DONE.
                            if let Some(error) = parse_error(0, reply.payload) {
                                return Err(error);
                            }
                            return Ok(());
                        }
                        NLMSG_ERROR => {
                            if let Some(error) = parse_error(reply.flags, reply.payload) {
                                return Err(error);
                            }
                        }
                        RTM_NEWNEXTHOP => found.extend(parse_nexthop(reply.payload)),
                        _ => {}
                    }
                }
            }
        })
        .await;
        match result {
            Ok(Ok(())) => Ok((found, interrupted)),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(RequestError::local(format!(
                "the dump did not end within {}s",
                REPLY_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Nexthop notifications, as a stream. A receive error (an overrun:
    /// notifications were lost) is reported as `None` items, which mean
    /// "something may have changed".
    pub(crate) fn events(self) -> impl Stream<Item = Option<NexthopEvent>> + Send + Unpin {
        Box::pin(
            stream::unfold(self, |socket| async move {
                let events = match socket.socket.recv_from_full().await {
                    Ok((datagram, _)) => messages(&datagram)
                        .into_iter()
                        .filter(|m| m.kind == RTM_NEWNEXTHOP || m.kind == RTM_DELNEXTHOP)
                        .filter_map(|m| {
                            parse_nexthop(m.payload).map(|nexthop| NexthopEvent {
                                deleted: m.kind == RTM_DELNEXTHOP,
                                nexthop,
                            })
                        })
                        .map(Some)
                        .collect(),
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => vec![None],
                    Err(_) => return None,
                };
                Some((stream::iter(events), socket))
            })
            .flatten(),
        )
    }
}

pub(crate) fn set_receive_buffer(fd: std::os::fd::RawFd) {
    let size = RECEIVE_BUFFER;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a valid
        // c_int; the descriptor is a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nexthop(id: u32, gw: &str, oif: u32, onlink: bool) -> Nexthop {
        Nexthop {
            id,
            gateway: gw.parse().unwrap(),
            oif,
            onlink,
        }
    }

    #[test]
    fn requests_are_encoded_as_ip_nexthop_sends_them() {
        // `ip nexthop add id 7 via 10.42.1.0 dev #3 onlink proto 77`, as
        // strace shows iproute2 sending it (the sequence number aside).
        let request = new_nexthop_request(&nexthop(7, "10.42.1.0", 3, true), false);
        let mut wanted = Vec::new();
        wanted.extend_from_slice(&48u32.to_ne_bytes());
        wanted.extend_from_slice(&104u16.to_ne_bytes());
        wanted.extend_from_slice(&(0x1u16 | 0x400 | 0x200).to_ne_bytes());
        wanted.extend_from_slice(&[0; 8]);
        wanted.extend_from_slice(&[2, 0, 77, 0]);
        wanted.extend_from_slice(&4u32.to_ne_bytes());
        wanted.extend_from_slice(&[8, 0, 1, 0]);
        wanted.extend_from_slice(&7u32.to_ne_bytes());
        wanted.extend_from_slice(&[8, 0, 6, 0, 10, 42, 1, 0]);
        wanted.extend_from_slice(&[8, 0, 5, 0]);
        wanted.extend_from_slice(&3u32.to_ne_bytes());
        assert_eq!(request, wanted);

        // Replace: NLM_F_CREATE|NLM_F_REPLACE.
        let replace = new_nexthop_request(&nexthop(7, "10.42.1.0", 3, true), true);
        assert_eq!(
            u16::from_ne_bytes([replace[6], replace[7]]),
            0x1 | 0x400 | 0x100
        );
        // `ip nexthop del id 7`: a zeroed header and the id.
        let del = del_nexthop_request(7);
        assert_eq!(del.len(), 32);
        assert_eq!(u16::from_ne_bytes([del[4], del[5]]), 105);
        assert_eq!(&del[16..24], &[0; 8]);
        // IPv6 gateway: 16 bytes, family AF_INET6.
        let v6 = new_nexthop_request(&nexthop(9, "fd00:42:0:1::", 4, true), false);
        assert_eq!(v6[16], 10);
        assert_eq!(v6.len(), 16 + 8 + 8 + 20 + 8);
    }

    #[test]
    fn requests_parse_back() {
        for (nh, onlink) in [
            (nexthop(7, "10.42.1.0", 3, true), true),
            (nexthop(8, "192.168.1.13", 2, false), false),
            (nexthop(9, "fd00:42:0:1::", 4, true), true),
        ] {
            let request = new_nexthop_request(&nh, false);
            let parsed = messages(&request);
            assert_eq!(parsed.len(), 1);
            let found = parse_nexthop(parsed[0].payload).unwrap();
            assert_eq!(found.ours(), Some(nh));
            assert_eq!(found.onlink, onlink);
        }
    }

    #[test]
    fn only_plain_protocol_77_objects_are_ours() {
        let ours = FoundNexthop {
            id: 5,
            family: AF_INET,
            protocol: 77,
            gateway: Some("10.42.1.0".parse().unwrap()),
            oif: Some(3),
            onlink: true,
            special: false,
        };
        let foreign = FoundNexthop {
            id: 6,
            protocol: 4,
            ..ours.clone()
        };
        let group = FoundNexthop {
            id: 7,
            gateway: None,
            oif: None,
            special: true,
            ..ours.clone()
        };
        let v6 = FoundNexthop {
            id: 8,
            family: AF_INET6,
            gateway: Some("fd00::1".parse().unwrap()),
            ..ours.clone()
        };
        let all = [ours.clone(), foreign, group, v6];
        let dump = NexthopDump::split(&all, true, false);
        assert_eq!(dump.ours.keys().copied().collect::<Vec<_>>(), vec![5]);
        assert_eq!(dump.others, [6, 7, 8].into());
        let both = NexthopDump::split(&all, true, true);
        assert_eq!(both.ours.keys().copied().collect::<Vec<_>>(), vec![5, 8]);
    }

    #[test]
    fn error_replies_carry_the_kernels_message() {
        // NLMSG_ERROR payload: -EINVAL, the capped request header, then an
        // NLMSGERR_ATTR_MSG TLV.
        let mut payload = Vec::new();
        payload.extend_from_slice(&(-22i32).to_ne_bytes());
        payload.extend_from_slice(&48u32.to_ne_bytes());
        payload.extend_from_slice(&[0; 12]);
        let text = b"Nexthop has invalid gateway\0";
        payload.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        payload.extend_from_slice(&1u16.to_ne_bytes());
        payload.extend_from_slice(text);
        let error = parse_error(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload).unwrap();
        assert_eq!(error.errno, 22);
        assert_eq!(
            error.message.as_deref(),
            Some("Nexthop has invalid gateway")
        );
        assert!(error
            .to_string()
            .starts_with("Nexthop has invalid gateway ("));
        // An acknowledgement is no error.
        assert_eq!(parse_error(0, &0i32.to_ne_bytes()), None);
        // Found by the netlink_datagram fuzz target: -i32::MIN overflowed.
        assert_eq!(
            parse_error(0, &i32::MIN.to_ne_bytes()).map(|e| e.errno),
            Some(i32::MAX)
        );
        assert_eq!(
            decode_datagram(&[20, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]),
            1
        );
        // Truncated input is no panic.
        assert_eq!(parse_nexthop(&[2, 0]), None);
        assert!(messages(&[0xff; 10]).is_empty());
        assert!(messages(&[200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_empty());
    }
}
