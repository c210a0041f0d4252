//! Kernel WireGuard over generic netlink: the `wireguard` family's
//! WG_CMD_GET_DEVICE (a dump: a device with many peers comes in several
//! messages) and WG_CMD_SET_DEVICE (large peer lists split over several
//! messages, as `wg setconf` does). The socket is opened on a thread inside
//! the node's network namespace, like every other netlink socket here.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipnetwork::IpNetwork;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use rtnetlink::packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use rtnetlink::sys::{AsyncSocket, AsyncSocketExt, TokioSocket};

use super::{DeviceState, DeviceUpdate, Key, PeerChange, PeerState, WgError};

/// How long one request may wait for its answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Peers per WG_CMD_SET_DEVICE message: about 200 bytes each, so a
/// message stays far below the socket's send buffer.
pub const PEERS_PER_MESSAGE: usize = 100;

const NETLINK_GENERIC: isize = 16;
const NLM_F_DUMP_INTR: u16 = 16;
const DUMP_INTERRUPTED: &str = "the dump was interrupted (the device changed meanwhile)";
const ENOENT: i32 = 2;

/// A generic netlink socket bound to the `wireguard` family.
pub struct GenlSocket {
    socket: tokio::sync::Mutex<TokioSocket>,
    family: u16,
    seq: AtomicU32,
    netns: String,
}

impl std::fmt::Debug for GenlSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenlSocket")
            .field("family", &self.family)
            .field("netns", &self.netns)
            .finish_non_exhaustive()
    }
}

impl GenlSocket {
    /// Opens the socket in `netns` and resolves the family. A kernel
    /// without WireGuard has no such family: [`WgError::NoKernelSupport`].
    pub async fn open(netns: Option<&Path>) -> Result<GenlSocket, WgError> {
        let label = crate::netlink::netns_label(netns);
        let socket = crate::netlink::on_netns_thread(netns, || {
            let mut socket =
                TokioSocket::new(NETLINK_GENERIC).map_err(|e| format!("socket: {e}"))?;
            socket
                .socket_mut()
                .bind_auto()
                .map_err(|e| format!("bind: {e}"))?;
            let _ = socket.socket_ref().set_ext_ack(true);
            Ok(socket)
        })
        .await
        .map_err(|e| WgError::Protocol {
            what: "opening a generic netlink socket",
            device: label.clone(),
            problem: e.to_string(),
        })?;
        let mut found = GenlSocket {
            socket: tokio::sync::Mutex::new(socket),
            family: 0,
            seq: AtomicU32::new(1),
            netns: label,
        };
        found.family = found.resolve_family().await?;
        Ok(found)
    }

    fn next_seq(&self) -> u32 {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if seq == 0 {
            self.seq.fetch_add(1, Ordering::Relaxed)
        } else {
            seq
        }
    }

    async fn resolve_family(&self) -> Result<u16, WgError> {
        let request = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName("wireguard".into())],
        });
        let answers = self
            .exchange(
                "wireguard family lookup",
                &self.netns,
                request,
                NLM_F_REQUEST | NLM_F_ACK,
            )
            .await;
        let answers = match answers {
            Ok(answers) => answers,
            Err(WgError::Errno { errno: ENOENT, .. }) => {
                return Err(WgError::NoKernelSupport(format!(
                    "no generic netlink family 'wireguard' in {}",
                    self.netns
                )))
            }
            Err(other) => return Err(other),
        };
        answers
            .iter()
            .flat_map(|m| m.payload.nlas.iter())
            .find_map(|nla| match nla {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| WgError::Protocol {
                what: "wireguard family lookup",
                device: self.netns.clone(),
                problem: "the answer has no family id".into(),
            })
    }

    /// WG_CMD_GET_DEVICE for `device`.
    pub async fn get_device(&self, device: &str) -> Result<DeviceState, WgError> {
        let mut request = GenlMessage::from_payload(WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::IfName(device.to_string())],
        });
        request.set_resolved_family_id(self.family);
        // A dump the kernel marks as interrupted (the device changed
        // meanwhile) is read again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self
                .exchange(
                    "WireGuard get",
                    device,
                    request.clone(),
                    NLM_F_REQUEST | NLM_F_DUMP,
                )
                .await
            {
                Err(WgError::Protocol { problem, .. })
                    if problem == DUMP_INTERRUPTED && attempts < 3 =>
                {
                    continue
                }
                Err(error) => return Err(error),
                Ok(answers) => return Ok(device_state(answers.iter().map(|m| &m.payload))),
            }
        }
    }

    /// WG_CMD_SET_DEVICE for `device`, in as many messages as the peers
    /// need.
    pub async fn set_device(&self, device: &str, update: &DeviceUpdate) -> Result<(), WgError> {
        for message in set_messages(device, update) {
            let mut request = GenlMessage::from_payload(message);
            request.set_resolved_family_id(self.family);
            self.exchange("WireGuard set", device, request, NLM_F_REQUEST | NLM_F_ACK)
                .await?;
        }
        Ok(())
    }

    /// Sends one request and collects its answers until the ack (or the
    /// end of the dump).
    async fn exchange<F>(
        &self,
        what: &'static str,
        device: &str,
        payload: GenlMessage<F>,
        flags: u16,
    ) -> Result<Vec<GenlMessage<F>>, WgError>
    where
        GenlMessage<F>: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
        F: std::fmt::Debug,
    {
        let protocol = |problem: String| WgError::Protocol {
            what,
            device: device.to_string(),
            problem,
        };
        let seq = self.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        message.finalize();
        let mut buf = vec![0u8; message.buffer_len()];
        message.serialize(&mut buf);
        let socket = self.socket.lock().await;
        socket.send(&buf).await.map_err(|e| WgError::Errno {
            what,
            device: device.to_string(),
            errno: e.raw_os_error().unwrap_or(0),
            message: None,
        })?;
        let mut answers = Vec::new();
        let mut interrupted = false;
        let collect = async {
            loop {
                let (datagram, _) = socket.recv_from_full().await.map_err(|e| WgError::Errno {
                    what,
                    device: device.to_string(),
                    errno: e.raw_os_error().unwrap_or(0),
                    message: None,
                })?;
                let mut offset = 0;
                while offset + 16 <= datagram.len() {
                    let length = u32::from_ne_bytes([
                        datagram[offset],
                        datagram[offset + 1],
                        datagram[offset + 2],
                        datagram[offset + 3],
                    ]) as usize;
                    if length < 16 || offset + length > datagram.len() {
                        return Err(protocol(format!("a reply of {length} bytes does not fit")));
                    }
                    let bytes = &datagram[offset..offset + length];
                    offset += (length + 3) & !3;
                    let reply = NetlinkMessage::<GenlMessage<F>>::deserialize(bytes)
                        .map_err(|e| protocol(format!("cannot parse a reply: {e}")))?;
                    if reply.header.sequence_number != seq {
                        continue;
                    }
                    interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
                    match reply.payload {
                        NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                        NetlinkPayload::Done(_) if interrupted => {
                            return Err(protocol(DUMP_INTERRUPTED.to_string()))
                        }
                        NetlinkPayload::Done(_) => return Ok(()),
                        NetlinkPayload::Error(error) => {
                            return match error.code {
                                None => Ok(()),
                                Some(code) => Err(WgError::Errno {
                                    what,
                                    device: device.to_string(),
                                    errno: -code.get(),
                                    message: None,
                                }),
                            }
                        }
                        _ => {}
                    }
                }
            }
        };
        match tokio::time::timeout(REPLY_TIMEOUT, collect).await {
            Ok(Ok(())) => Ok(answers),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(protocol(format!(
                "no answer within {} s",
                REPLY_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Merges the messages of a GET_DEVICE dump: a peer whose allowed IPs did
/// not fit one message continues in the next with the same public key.
pub fn device_state<'a>(messages: impl Iterator<Item = &'a WireguardMessage>) -> DeviceState {
    let mut state = DeviceState::default();
    for message in messages {
        for attribute in &message.attributes {
            match attribute {
                WireguardAttribute::PublicKey(key) => {
                    let key = Key(*key);
                    state.public_key = (!key.is_zero()).then_some(key);
                }
                WireguardAttribute::ListenPort(port) => state.listen_port = *port,
                WireguardAttribute::Peers(peers) => {
                    for peer in peers {
                        let parsed = peer_state(peer);
                        match state.peers.last_mut() {
                            Some(last) if last.public_key == parsed.public_key => {
                                last.allowed_ips.extend(parsed.allowed_ips)
                            }
                            _ => state.peers.push(parsed),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    state.peers.sort_by_key(|p| p.public_key);
    state
}

fn peer_state(peer: &WireguardPeer) -> PeerState {
    let mut state = PeerState {
        public_key: Key::default(),
        preshared_key: None,
        endpoint: None,
        keepalive: 0,
        allowed_ips: BTreeSet::new(),
        last_handshake: 0,
    };
    for attribute in &peer.0 {
        match attribute {
            WireguardPeerAttribute::PublicKey(key) => state.public_key = Key(*key),
            WireguardPeerAttribute::PresharedKey(key) => {
                let key = Key(*key);
                state.preshared_key = (!key.is_zero()).then_some(key);
            }
            WireguardPeerAttribute::Endpoint(endpoint) => {
                // An unset endpoint comes as family 0, which the crate
                // reports as the unspecified address.
                state.endpoint =
                    (!endpoint.ip().is_unspecified() || endpoint.port() != 0).then_some(*endpoint);
            }
            WireguardPeerAttribute::PersistentKeepalive(seconds) => state.keepalive = *seconds,
            WireguardPeerAttribute::LastHandshake(time) => {
                state.last_handshake = u64::try_from(time.seconds).unwrap_or(0)
            }
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    let mut address = None;
                    let mut cidr = None;
                    for attr in &ip.0 {
                        match attr {
                            WireguardAllowedIpAttr::IpAddr(a) => address = Some(*a),
                            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
                            _ => {}
                        }
                    }
                    if let Some(net) = address
                        .zip(cidr)
                        .and_then(|(a, c)| IpNetwork::new(a, c).ok())
                    {
                        state.allowed_ips.insert(net);
                    }
                }
            }
            _ => {}
        }
    }
    state
}

/// The WG_CMD_SET_DEVICE messages for `update`: the device fields with the
/// first peers, then the rest of the peers [`PEERS_PER_MESSAGE`] at a time.
pub fn set_messages(device: &str, update: &DeviceUpdate) -> Vec<WireguardMessage> {
    let mut messages = Vec::new();
    let mut chunks = update.peers.chunks(PEERS_PER_MESSAGE);
    let first = chunks.next().unwrap_or(&[]);
    let mut attributes = vec![WireguardAttribute::IfName(device.to_string())];
    if let Some(key) = &update.private_key {
        attributes.push(WireguardAttribute::PrivateKey(key.0));
    }
    if let Some(port) = update.listen_port {
        attributes.push(WireguardAttribute::ListenPort(port));
    }
    if !first.is_empty() {
        attributes.push(WireguardAttribute::Peers(
            first.iter().map(peer_message).collect(),
        ));
    }
    messages.push(WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes,
    });
    for chunk in chunks {
        messages.push(WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes: vec![
                WireguardAttribute::IfName(device.to_string()),
                WireguardAttribute::Peers(chunk.iter().map(peer_message).collect()),
            ],
        });
    }
    messages
}

fn peer_message(change: &PeerChange) -> WireguardPeer {
    match change {
        PeerChange::Remove(key) => WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey(key.0),
            WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
        ]),
        PeerChange::Set(peer) => WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey(peer.public_key.0),
            WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
            // All zeroes clears a pre-shared key.
            WireguardPeerAttribute::PresharedKey(peer.preshared_key.unwrap_or_default().0),
            WireguardPeerAttribute::Endpoint(peer.endpoint),
            WireguardPeerAttribute::PersistentKeepalive(peer.keepalive),
            WireguardPeerAttribute::AllowedIps(
                peer.allowed_ips
                    .iter()
                    .map(|net| {
                        WireguardAllowedIp(vec![
                            WireguardAllowedIpAttr::Family(if net.is_ipv6() {
                                WireguardAddressFamily::Ipv6
                            } else {
                                WireguardAddressFamily::Ipv4
                            }),
                            WireguardAllowedIpAttr::IpAddr(net.network()),
                            WireguardAllowedIpAttr::Cidr(net.prefix()),
                        ])
                    })
                    .collect(),
            ),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::PeerConfig;
    use rtnetlink::packet_core::Emitable;

    fn peer(byte: u8) -> PeerChange {
        PeerChange::Set(PeerConfig {
            public_key: Key([byte; 32]),
            preshared_key: None,
            endpoint: "192.168.0.2:51820".parse().unwrap(),
            keepalive: 25,
            allowed_ips: [IpNetwork::V4(format!("10.42.{byte}.0/24").parse().unwrap())]
                .into_iter()
                .collect(),
        })
    }

    #[test]
    fn many_peers_are_split_and_the_device_fields_come_first() {
        let update = DeviceUpdate {
            private_key: Some(crate::wireguard::PrivateKey([9; 32])),
            listen_port: Some(51820),
            peers: (0..=250u8).map(peer).collect(),
        };
        let messages = set_messages("flannel-wg", &update);
        assert_eq!(messages.len(), 3);
        let peers = |m: &WireguardMessage| {
            m.attributes
                .iter()
                .find_map(|a| match a {
                    WireguardAttribute::Peers(p) => Some(p.len()),
                    _ => None,
                })
                .unwrap_or(0)
        };
        assert_eq!(
            messages.iter().map(peers).collect::<Vec<_>>(),
            [100, 100, 51]
        );
        assert!(messages[0]
            .attributes
            .contains(&WireguardAttribute::ListenPort(51820)));
        assert!(!messages[1]
            .attributes
            .iter()
            .any(|a| matches!(a, WireguardAttribute::PrivateKey(_))));
        for message in &messages {
            assert!(message.buffer_len() < 32 * 1024);
        }
    }

    #[test]
    fn a_dump_split_over_messages_merges_into_one_peer() {
        let half = |net: &str| WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![
                WireguardAttribute::ListenPort(51820),
                WireguardAttribute::Peers(vec![WireguardPeer(vec![
                    WireguardPeerAttribute::PublicKey([4; 32]),
                    WireguardPeerAttribute::AllowedIps(vec![WireguardAllowedIp(vec![
                        WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
                        WireguardAllowedIpAttr::IpAddr(net.parse().unwrap()),
                        WireguardAllowedIpAttr::Cidr(24),
                    ])]),
                ])]),
            ],
        };
        let messages = [half("10.42.1.0"), half("10.42.2.0")];
        let state = device_state(messages.iter());
        assert_eq!(state.listen_port, 51820);
        assert_eq!(state.peers.len(), 1);
        assert_eq!(state.peers[0].allowed_ips.len(), 2);
    }
}
