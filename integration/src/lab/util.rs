//! Small helpers: running a command with an error that names the step,
//! CIDR arithmetic for the lab's address plan (IPv4 and IPv6), and polling.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::LabError;

/// Runs `command` and returns its stdout; a failure names `step`, the
/// program and what it wrote to stderr.
pub(crate) fn run(step: &str, command: &mut Command) -> Result<String, LabError> {
    let output = output(step, command)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(LabError::new(
        step,
        format!(
            "{} failed ({}): {}",
            describe(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    ))
}

/// Runs `command` and returns its output whatever the exit status; only a
/// failure to start it is an error.
pub(crate) fn output(step: &str, command: &mut Command) -> Result<Output, LabError> {
    command
        .output()
        .map_err(|e| LabError::new(step, format!("cannot run {}: {e}", describe(command))))
}

/// `program arg arg ...` for messages.
pub(crate) fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// `ip <args>`.
pub(crate) fn ip(step: &str, args: &[&str]) -> Result<String, LabError> {
    run(step, Command::new("ip").args(args))
}

/// `ip -n <netns> <args>`.
pub(crate) fn ip_in(step: &str, netns: &str, args: &[&str]) -> Result<String, LabError> {
    run(step, Command::new("ip").arg("-n").arg(netns).args(args))
}

/// Polls `check` every 20 ms until it gives a value or `limit` passes.
pub fn poll<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An IPv4 network `addr/prefix` with the host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// Parses `10.42.0.0/16`; host bits must be zero.
    pub fn parse(text: &str) -> Result<Ipv4Cidr, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not an IPv4 CIDR such as 10.42.0.0/16"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{text:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{text:?}: bad prefix length {prefix:?}"))?;
        let cidr = Ipv4Cidr { addr, prefix };
        if u32::from(addr) & !cidr.mask() != 0 {
            return Err(format!("{text:?} has host bits set"));
        }
        Ok(cidr)
    }

    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// How many /24s the network holds (0 when it is smaller than a /24).
    pub fn slash24_count(self) -> u64 {
        if self.prefix > 24 {
            0
        } else {
            1u64 << (24 - self.prefix)
        }
    }

    /// The `index`-th /24 inside the network, as kube-controller-manager
    /// hands out node podCIDRs (`--node-cidr-mask-size 24`).
    pub fn slash24(self, index: u32) -> Option<Ipv4Cidr> {
        if u64::from(index) >= self.slash24_count() {
            return None;
        }
        Some(Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(self.addr) + (index << 8)),
            prefix: 24,
        })
    }

    /// The first address after the network address (the bridge gateway).
    pub fn first_host(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv6 network `addr/prefix` with the host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Cidr {
    /// The network address.
    pub addr: Ipv6Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Ipv6Cidr {
    /// Parses `fd00:42::/56`; host bits must be zero.
    pub fn parse(text: &str) -> Result<Ipv6Cidr, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not an IPv6 CIDR such as fd00:42::/56"))?;
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("{text:?}: {addr:?} is not an IPv6 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 128)
            .ok_or_else(|| format!("{text:?}: bad prefix length {prefix:?}"))?;
        let cidr = Ipv6Cidr { addr, prefix };
        if u128::from(addr) & !cidr.mask() != 0 {
            return Err(format!("{text:?} has host bits set"));
        }
        Ok(cidr)
    }

    fn mask(self) -> u128 {
        if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - self.prefix)
        }
    }

    /// How many /64s the network holds (0 when it is smaller than a /64,
    /// at most `u64::MAX`).
    pub fn slash64_count(self) -> u64 {
        match self.prefix {
            p if p > 64 => 0,
            0 => u64::MAX,
            p => 1u64 << (64 - p),
        }
    }

    /// The `index`-th /64 inside the network, as kube-controller-manager
    /// hands out IPv6 node podCIDRs (`--node-cidr-mask-size-ipv6 64`).
    pub fn slash64(self, index: u32) -> Option<Ipv6Cidr> {
        if u64::from(index) >= self.slash64_count() {
            return None;
        }
        Some(Ipv6Cidr {
            addr: Ipv6Addr::from(u128::from(self.addr) + (u128::from(index) << 64)),
            prefix: 64,
        })
    }
}

impl std::fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The lab's `--cluster-cidr`: an IPv4 network, optionally with an IPv6
/// one (dual-stack), in either order, comma-separated as k3s takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCidrs {
    /// The IPv4 pod network (node podCIDRs are its /24s).
    pub v4: Ipv4Cidr,
    /// The IPv6 pod network when dual-stack (node podCIDRs are its /64s).
    pub v6: Option<Ipv6Cidr>,
}

impl ClusterCidrs {
    /// Parses `10.42.0.0/16` or `10.42.0.0/16,fd00:42::/56`.
    pub fn parse(text: &str) -> Result<ClusterCidrs, String> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "{text:?}: give one IPv4 CIDR or an IPv4 and an IPv6 CIDR separated by a comma (10.42.0.0/16,fd00:42::/56)"
            ));
        }
        let mut v4 = None;
        let mut v6 = None;
        for part in parts {
            if part.contains(':') {
                if v6.replace(Ipv6Cidr::parse(part)?).is_some() {
                    return Err(format!("{text:?}: two IPv6 CIDRs"));
                }
            } else if v4.replace(Ipv4Cidr::parse(part)?).is_some() {
                return Err(format!("{text:?}: two IPv4 CIDRs"));
            }
        }
        let v4 = v4.ok_or_else(|| {
            format!(
                "{text:?}: the lab needs an IPv4 cluster CIDR (IPv4-only or dual-stack such as 10.42.0.0/16,fd00:42::/56); its underlay and pods are IPv4 first"
            )
        })?;
        Ok(ClusterCidrs { v4, v6 })
    }

    /// How many nodes get a podCIDR of every family.
    pub fn node_capacity(self) -> u64 {
        let v4 = self.v4.slash24_count();
        self.v6.map_or(v4, |v6| v4.min(v6.slash64_count()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_and_dual_stack_cidrs() {
        let net = Ipv6Cidr::parse("fd00:42::/56").unwrap();
        assert_eq!(net.slash64_count(), 256);
        assert_eq!(net.slash64(0).unwrap().to_string(), "fd00:42::/64");
        assert_eq!(net.slash64(1).unwrap().to_string(), "fd00:42:0:1::/64");
        assert_eq!(net.slash64(255).unwrap().to_string(), "fd00:42:0:ff::/64");
        assert_eq!(net.slash64(256), None);
        assert!(Ipv6Cidr::parse("fd00:42::1/56").is_err());
        assert!(Ipv6Cidr::parse("fd00:42::/129").is_err());
        assert_eq!(Ipv6Cidr::parse("fd00::/96").unwrap().slash64_count(), 0);
        assert_eq!(Ipv6Cidr::parse("::/0").unwrap().slash64_count(), u64::MAX);

        let dual = ClusterCidrs::parse("10.42.0.0/16,fd00:42::/56").unwrap();
        assert_eq!(dual.v4.to_string(), "10.42.0.0/16");
        assert_eq!(dual.v6.unwrap().to_string(), "fd00:42::/56");
        assert_eq!(
            ClusterCidrs::parse("fd00:42::/56, 10.42.0.0/16").unwrap(),
            dual
        );
        assert_eq!(dual.node_capacity(), 256);
        let single = ClusterCidrs::parse("10.42.0.0/16").unwrap();
        assert_eq!(single.v6, None);
        for bad in [
            "",
            "fd00:42::/56",
            "10.42.0.0/16,10.43.0.0/16",
            "10.42.0.0/16,fd00::/56,fd01::/56",
            "10.42.0.0/16,",
        ] {
            assert!(ClusterCidrs::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs() {
        let net = Ipv4Cidr::parse("10.42.0.0/16").unwrap();
        assert_eq!(net.slash24_count(), 256);
        assert_eq!(net.slash24(0).unwrap().to_string(), "10.42.0.0/24");
        assert_eq!(net.slash24(7).unwrap().to_string(), "10.42.7.0/24");
        assert_eq!(net.slash24(255).unwrap().to_string(), "10.42.255.0/24");
        assert_eq!(net.slash24(256), None);
        assert_eq!(
            net.slash24(1).unwrap().first_host(),
            Ipv4Addr::new(10, 42, 1, 1)
        );
        assert!(Ipv4Cidr::parse("10.42.0.1/16").is_err());
        assert!(Ipv4Cidr::parse("10.42.0.0").is_err());
        assert!(Ipv4Cidr::parse("fd00::/56").is_err());
        assert!(Ipv4Cidr::parse("10.42.0.0/33").is_err());
        assert_eq!(Ipv4Cidr::parse("10.42.0.0/25").unwrap().slash24_count(), 0);
    }
}
