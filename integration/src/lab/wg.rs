//! What a lab node's WireGuard devices hold, as `wg show DEV dump` (real
//! wireguard-tools, run inside the node so it finds that node's own
//! `/run/wireguard`) reports it.

use super::{Lab, LabError};

/// The IPv4 (or only) device.
pub const WG_DEVICE: &str = "flannel-wg";
/// The IPv6 device (separate mode).
pub const WG_DEVICE_V6: &str = "flannel-wg-v6";

/// One peer line of `wg show DEV dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeerRow {
    /// base64 public key.
    pub public_key: String,
    /// `(none)` or the base64 PSK.
    pub preshared_key: String,
    /// `ip:port` / `[ip6]:port`, None for `(none)`.
    pub endpoint: Option<String>,
    /// AllowedIPs (empty for `(none)`).
    pub allowed_ips: Vec<String>,
    /// Latest handshake, seconds since the epoch (0: never).
    pub latest_handshake: u64,
    /// Persistent keepalive (None: off).
    pub keepalive: Option<u64>,
}

/// A device from `wg show DEV dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDump {
    /// The device's public key.
    pub public_key: String,
    /// Its listen port.
    pub listen_port: u16,
    /// Its peers.
    pub peers: Vec<WgPeerRow>,
}

impl WgDump {
    /// The peer with this public key.
    pub fn peer(&self, public_key: &str) -> Option<&WgPeerRow> {
        self.peers.iter().find(|p| p.public_key == public_key)
    }
}

/// Parses `wg show DEV dump`: the interface line (private key, public
/// key, listen port, fwmark), then one tab-separated line per peer.
pub fn parse_dump(text: &str) -> Option<WgDump> {
    let mut lines = text.lines();
    let first: Vec<&str> = lines.next()?.split('\t').collect();
    let mut dump = WgDump {
        public_key: first.get(1)?.to_string(),
        listen_port: first.get(2)?.parse().ok()?,
        peers: Vec::new(),
    };
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 8 {
            continue;
        }
        dump.peers.push(WgPeerRow {
            public_key: f[0].to_string(),
            preshared_key: f[1].to_string(),
            endpoint: (f[2] != "(none)").then(|| f[2].to_string()),
            allowed_ips: if f[3] == "(none)" {
                Vec::new()
            } else {
                f[3].split(',').map(str::to_string).collect()
            },
            latest_handshake: f[4].parse().unwrap_or(0),
            keepalive: f[7].parse().ok(),
        });
    }
    Some(dump)
}

/// `ip:port`, or `[ip6]:port` for IPv6, as `wg` prints endpoints.
pub fn endpoint(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

impl Lab {
    /// `wg show DEV dump` inside node `index`; None when the device does
    /// not exist (or does not answer).
    pub fn wg_show(&self, index: usize, device: &str) -> Result<Option<WgDump>, LabError> {
        let output = self.exec(index, "wg", &["show", device, "dump"])?;
        if !output.status.success() {
            return Ok(None);
        }
        Ok(parse_dump(&String::from_utf8_lossy(&output.stdout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_lines_parse() {
        let text = "cHJpdmF0ZQ==\tpub0\t51820\toff\npub1\t(none)\t192.168.1.11:51820\t10.42.1.0/24\t1700000000\t10\t20\t25\npub2\t(none)\t(none)\t(none)\t0\t0\t0\toff\n";
        let dump = parse_dump(text).unwrap();
        assert_eq!(dump.public_key, "pub0");
        assert_eq!(dump.listen_port, 51820);
        assert_eq!(dump.peers.len(), 2);
        assert_eq!(
            dump.peers[0].endpoint.as_deref(),
            Some("192.168.1.11:51820")
        );
        assert_eq!(dump.peers[0].allowed_ips, ["10.42.1.0/24"]);
        assert_eq!(dump.peers[0].keepalive, Some(25));
        assert!(dump.peers[1].allowed_ips.is_empty());
        assert_eq!(dump.peers[1].keepalive, None);
        assert_eq!(endpoint("fd00::2", 51821), "[fd00::2]:51821");
    }
}
