//! Ethernet (VTEP) MAC addresses in the text form flannel publishes
//! (`aa:bb:cc:dd:ee:ff`, Go's `net.HardwareAddr.String()`).

use std::fmt;
use std::io::Read;
use std::str::FromStr;

/// A 48-bit MAC address.
///
/// ```
/// use flannel_embed::MacAddr;
///
/// let mac: MacAddr = "AA:bb:0c:dd:ee:0f".parse().unwrap();
/// assert_eq!(mac.to_string(), "aa:bb:0c:dd:ee:0f");
/// assert!("aa:bb:cc".parse::<MacAddr>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// Text that is not a 48-bit MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a MAC address (six hex pairs separated by ':')")]
pub struct MacParseError(pub String);

impl MacAddr {
    /// A random locally administered unicast address, as flannel gives a
    /// new VXLAN device when it has no stored MAC.
    pub fn random_local() -> MacAddr {
        let mut bytes = [0u8; 6];
        let filled = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .is_ok();
        if !filled {
            // No /dev/urandom (unusual sandbox): the std hasher's random
            // keys still give a per-process unique value.
            use std::hash::{BuildHasher, Hasher};
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            bytes.copy_from_slice(&hasher.finish().to_le_bytes()[..6]);
        }
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        MacAddr(bytes)
    }

    /// Unicast (I/G bit clear) and not all zeros: usable as a VTEP address.
    pub fn is_usable_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0 && self.0 != [0; 6]
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || MacParseError(text.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(error)?;
            if part.len() != 2 {
                return Err(error());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| error())?;
        }
        if parts.next().is_some() {
            return Err(error());
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_local_unicast_and_differ() {
        let a = MacAddr::random_local();
        let b = MacAddr::random_local();
        assert_ne!(a, b);
        for mac in [a, b] {
            assert_eq!(mac.0[0] & 0x03, 0x02, "{mac}");
            assert!(mac.is_usable_unicast());
        }
    }

    #[test]
    fn parse_rejects_malformed_text() {
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa-bb-cc-dd-ee-ff",
            "zz:bb:cc:dd:ee:ff",
            "a:bb:cc:dd:ee:fff",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(!"01:00:5e:00:00:01"
            .parse::<MacAddr>()
            .unwrap()
            .is_usable_unicast());
        assert!(!"00:00:00:00:00:00"
            .parse::<MacAddr>()
            .unwrap()
            .is_usable_unicast());
    }
}
