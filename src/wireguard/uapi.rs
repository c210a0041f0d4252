//! The cross-platform userspace API of wireguard-go and boringtun: a unix
//! socket `<dir>/<ifname>.sock` speaking `key=value` lines. `get=1` is
//! answered with the device and its peers, `set=1` with changes; every
//! answer ends with `errno=N` and a blank line (wireguard-go sends a
//! negative errno on error). Keys are hex here, not base64.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{DeviceState, DeviceUpdate, Key, PeerChange, PeerState, WgError};

/// How long one request may take (connect, write, read the answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read (a device with tens of thousands of peers).
const MAX_ANSWER: usize = 64 << 20;

/// A device's control socket.
#[derive(Debug, Clone)]
pub struct UapiClient {
    device: String,
    path: PathBuf,
}

impl UapiClient {
    /// The client for device `device` whose socket is `path`.
    pub fn new(device: &str, path: &Path) -> UapiClient {
        UapiClient {
            device: device.to_string(),
            path: path.to_path_buf(),
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `get=1`.
    pub async fn get(&self) -> Result<DeviceState, WgError> {
        let answer = self.request("get", b"get=1\n\n").await?;
        let (state, errno) = parse_get(&answer).map_err(|problem| self.protocol("get", problem))?;
        check_errno("get", &self.device, errno)?;
        Ok(state)
    }

    /// `set=1` with `update`.
    pub async fn set(&self, update: &DeviceUpdate) -> Result<(), WgError> {
        if update.is_empty() {
            return Ok(());
        }
        let request = encode_set(update);
        let answer = self.request("set", request.as_bytes()).await?;
        let errno = parse_errno(&answer).map_err(|problem| self.protocol("set", problem))?;
        check_errno("set", &self.device, errno)
    }

    fn protocol(&self, what: &'static str, problem: String) -> WgError {
        WgError::Protocol {
            what: uapi_what(what),
            device: self.device.clone(),
            problem,
        }
    }

    async fn request(&self, what: &'static str, request: &[u8]) -> Result<String, WgError> {
        let exchange = async {
            let mut stream = UnixStream::connect(&self.path)
                .await
                .map_err(|e| WgError::Errno {
                    what: uapi_what(what),
                    device: self.device.clone(),
                    errno: e.raw_os_error().unwrap_or(0),
                    message: Some(format!("cannot connect to {}", self.path.display())),
                })?;
            stream
                .write_all(request)
                .await
                .map_err(|e| self.io(what, &e))?;
            let mut answer = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stream.read(&mut buf).await.map_err(|e| self.io(what, &e))?;
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
                if answer.ends_with(b"\n\n") && has_errno_line(&answer) {
                    break;
                }
                if answer.len() > MAX_ANSWER {
                    return Err(self.protocol(what, "the answer is too large".into()));
                }
            }
            String::from_utf8(answer)
                .map_err(|_| self.protocol(what, "the answer is not UTF-8".into()))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(self.protocol(
                what,
                format!(
                    "no answer within {} s on {}",
                    REQUEST_TIMEOUT.as_secs(),
                    self.path.display()
                ),
            )),
        }
    }

    fn io(&self, what: &'static str, error: &std::io::Error) -> WgError {
        WgError::Errno {
            what: uapi_what(what),
            device: self.device.clone(),
            errno: error.raw_os_error().unwrap_or(0),
            message: Some(format!("on {}", self.path.display())),
        }
    }
}

fn uapi_what(what: &'static str) -> &'static str {
    match what {
        "get" => "userspace API get",
        _ => "userspace API set",
    }
}

/// Whether the answer's last line is `errno=N` (the answer is complete):
/// only the tail is looked at, so reading a large answer stays linear.
fn has_errno_line(answer: &[u8]) -> bool {
    let body = answer.strip_suffix(b"\n\n").unwrap_or(answer);
    let start = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    body[start..].starts_with(b"errno=")
}

fn check_errno(what: &'static str, device: &str, errno: i64) -> Result<(), WgError> {
    if errno == 0 {
        return Ok(());
    }
    Err(WgError::Errno {
        what: uapi_what(what),
        device: device.to_string(),
        // wireguard-go answers with a negative errno, boringtun with a
        // positive one.
        errno: i32::try_from(errno.unsigned_abs()).unwrap_or(i32::MAX),
        message: Some("the userspace implementation refused the request".into()),
    })
}

/// The `set=1` request for `update`: device fields, then per peer
/// (`public_key=` starts one) either `remove=true` or every field with
/// `replace_allowed_ips=true`, so nothing of an older configuration
/// survives. A blank line ends it.
pub fn encode_set(update: &DeviceUpdate) -> String {
    let mut out = String::from("set=1\n");
    if let Some(key) = &update.private_key {
        out.push_str(&format!("private_key={}\n", key.as_key().to_hex()));
    }
    if let Some(port) = update.listen_port {
        out.push_str(&format!("listen_port={port}\n"));
    }
    for change in &update.peers {
        match change {
            PeerChange::Remove(key) => {
                out.push_str(&format!("public_key={}\nremove=true\n", key.to_hex()));
            }
            PeerChange::Set(peer) => {
                out.push_str(&format!("public_key={}\n", peer.public_key.to_hex()));
                let psk = peer.preshared_key.unwrap_or_default();
                out.push_str(&format!("preshared_key={}\n", psk.to_hex()));
                out.push_str(&format!("endpoint={}\n", peer.endpoint));
                out.push_str(&format!(
                    "persistent_keepalive_interval={}\n",
                    peer.keepalive
                ));
                out.push_str("replace_allowed_ips=true\n");
                for net in &peer.allowed_ips {
                    out.push_str(&format!("allowed_ip={}/{}\n", net.network(), net.prefix()));
                }
            }
        }
    }
    out.push('\n');
    out
}

/// Parses a `get=1` answer: the device, its peers and the errno. An error
/// names the line at fault but never the device's private key or a
/// preshared key (the cluster's PSK), wherever in a malformed answer they
/// appear.
pub fn parse_get(answer: &str) -> Result<(DeviceState, i64), String> {
    parse_get_unredacted(answer).map_err(|mut problem| {
        for secret in answer
            .lines()
            .filter_map(|line| {
                line.strip_prefix("private_key=")
                    .or_else(|| line.strip_prefix("preshared_key="))
            })
            .filter(|secret| !secret.is_empty())
        {
            problem = problem.replace(secret, "<redacted>");
        }
        problem
    })
}

fn parse_get_unredacted(answer: &str) -> Result<(DeviceState, i64), String> {
    let mut state = DeviceState::default();
    let mut errno = None;
    let mut peer: Option<PeerState> = None;
    for line in answer.lines() {
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line '{line}' is not key=value"))?;
        let bad = |what: &str| format!("{key}='{value}' is not {what}");
        match key {
            "private_key" => {
                // Never in an error message: it is the device's secret.
                let private = Key::from_hex(value)
                    .map_err(|_| "private_key=<redacted> is not a hex key".to_string())?;
                state.public_key =
                    (!private.is_zero()).then(|| super::PrivateKey(private.0).public_key());
            }
            // boringtun answers with its public key instead.
            "own_public_key" => {
                state.public_key = Some(Key::from_hex(value).map_err(|_| bad("a hex key"))?)
            }
            "listen_port" => state.listen_port = value.parse().map_err(|_| bad("a port"))?,
            "public_key" => {
                if let Some(done) = peer.take() {
                    state.peers.push(done);
                }
                peer = Some(PeerState {
                    public_key: Key::from_hex(value).map_err(|_| bad("a hex key"))?,
                    preshared_key: None,
                    endpoint: None,
                    keepalive: 0,
                    allowed_ips: BTreeSet::new(),
                    last_handshake: 0,
                });
            }
            "errno" => errno = Some(value.parse::<i64>().map_err(|_| bad("a number"))?),
            _ => {
                let Some(peer) = peer.as_mut() else {
                    // Device fields we do not use (fwmark, ...).
                    continue;
                };
                match key {
                    "preshared_key" => {
                        let psk = Key::from_hex(value).map_err(|_| bad("a hex key"))?;
                        peer.preshared_key = (!psk.is_zero()).then_some(psk);
                    }
                    "endpoint" => {
                        // An endpoint we cannot parse (an IPv6 zone set by
                        // hand: `[fe80::1%eth0]:51820`) is one we never
                        // want: as good as none, so the peer is set right.
                        peer.endpoint = Some(match value.parse::<SocketAddr>() {
                            Ok(endpoint) => endpoint,
                            Err(_) => continue,
                        })
                    }
                    "persistent_keepalive_interval" => {
                        peer.keepalive = value.parse().map_err(|_| bad("a number"))?
                    }
                    "allowed_ip" => {
                        peer.allowed_ips.insert(
                            value
                                .parse::<IpNetwork>()
                                .map_err(|_| bad("an address/prefix"))?,
                        );
                    }
                    "last_handshake_time_sec" => {
                        peer.last_handshake = value.parse().map_err(|_| bad("a number"))?
                    }
                    // rx_bytes, tx_bytes, protocol_version, nsec...
                    _ => {}
                }
            }
        }
    }
    if let Some(done) = peer.take() {
        state.peers.push(done);
    }
    let errno = errno.ok_or_else(|| "the answer has no errno line".to_string())?;
    state.peers.sort_by_key(|p| p.public_key);
    Ok((state, errno))
}

/// The errno of a `set=1` answer.
pub fn parse_errno(answer: &str) -> Result<i64, String> {
    answer
        .lines()
        .find_map(|line| line.strip_prefix("errno="))
        .ok_or_else(|| "the answer has no errno line".to_string())?
        .parse()
        .map_err(|_| "the errno is not a number".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::PeerConfig;

    fn key(byte: u8) -> Key {
        Key([byte; 32])
    }

    #[test]
    fn set_request_writes_every_field_and_removals() {
        let update = DeviceUpdate {
            private_key: Some(crate::wireguard::PrivateKey([1; 32])),
            listen_port: Some(51820),
            peers: vec![
                PeerChange::Remove(key(2)),
                PeerChange::Set(PeerConfig {
                    public_key: key(3),
                    preshared_key: None,
                    endpoint: "[fd00::2]:51821".parse().unwrap(),
                    keepalive: 25,
                    allowed_ips: [
                        "10.42.1.0/24".parse().unwrap(),
                        "fd00:42:0:1::/64".parse().unwrap(),
                    ]
                    .into_iter()
                    .collect(),
                }),
            ],
        };
        let text = encode_set(&update);
        let expected = format!(
            "set=1\nprivate_key={}\nlisten_port=51820\npublic_key={}\nremove=true\npublic_key={}\npreshared_key={}\nendpoint=[fd00::2]:51821\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.42.1.0/24\nallowed_ip=fd00:42:0:1::/64\n\n",
            "01".repeat(32),
            "02".repeat(32),
            "03".repeat(32),
            "00".repeat(32),
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn get_answer_parses_device_and_peers() {
        let answer = format!(
            "private_key={}\nlisten_port=51820\nfwmark=0\npublic_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=192.168.0.2:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\ntx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=25\nallowed_ip=10.42.1.0/24\npublic_key={}\npreshared_key={}\nprotocol_version=1\nlast_handshake_time_sec=0\npersistent_keepalive_interval=0\nerrno=0\n\n",
            "11".repeat(32),
            "05".repeat(32),
            "07".repeat(32),
            "04".repeat(32),
            "00".repeat(32),
        );
        let (state, errno) = parse_get(&answer).unwrap();
        assert_eq!(errno, 0);
        assert_eq!(state.listen_port, 51820);
        assert!(state.public_key.is_some());
        // Sorted by key.
        assert_eq!(state.peers.len(), 2);
        assert_eq!(state.peers[0].public_key, key(4));
        assert_eq!(state.peers[0].endpoint, None);
        assert_eq!(state.peers[0].preshared_key, None);
        assert!(state.peers[0].allowed_ips.is_empty());
        let second = &state.peers[1];
        assert_eq!(second.public_key, key(5));
        assert_eq!(second.preshared_key, Some(key(7)));
        assert_eq!(second.endpoint, Some("192.168.0.2:51820".parse().unwrap()));
        assert_eq!(second.keepalive, 25);
        assert_eq!(second.last_handshake, 1_700_000_000);
        assert_eq!(
            second
                .allowed_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.42.1.0/24"]
        );
    }

    #[test]
    fn errors_are_named() {
        assert!(parse_get("listen_port=x\nerrno=0\n\n")
            .unwrap_err()
            .contains("listen_port='x'"));
        assert!(parse_get("listen_port=1\n\n")
            .unwrap_err()
            .contains("no errno"));
        assert_eq!(parse_errno("errno=-22\n\n").unwrap(), -22);
        let error = check_errno("set", "flannel-wg", -22).unwrap_err();
        assert_eq!(error.errno(), Some(22));
        assert!(error.to_string().contains("flannel-wg"), "{error}");
    }

    #[test]
    fn no_error_quotes_the_private_key() {
        // Found by the wg_uapi fuzz target: a malformed line whose value
        // holds the key was quoted in the error.
        let secret = "58d5532fc80f3d3c51e83ab846b8967fccc9a453d8e49ccdc0f99258201ffc7f";
        let answer =
            format!("private_key={secret}\nlisten_port=518private_key={secret}\nerrno=0\n\n");
        let problem = parse_get(&answer).unwrap_err();
        assert_eq!(
            problem,
            "listen_port='518private_key=<redacted>' is not a port"
        );
        // Nor the cluster's preshared key (found in review).
        let psk = "f3770d4fc4c402ea475336cd21f69e76e2e4f869b6e01ad780fd3d3b1ebdf425";
        let key = "a".repeat(64);
        for answer in [
            format!("public_key={key}\npreshared_key={psk} \nerrno=0\n\n"),
            format!(
                "public_key={key}\npreshared_key={psk}\npersistent_keepalive_interval=25preshared_key={psk}\nerrno=0\n\n"
            ),
        ] {
            let problem = parse_get(&answer).unwrap_err();
            assert!(!problem.contains(psk) && problem.contains("<redacted>"), "{problem}");
        }
    }
}
