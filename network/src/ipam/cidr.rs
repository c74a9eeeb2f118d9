//! CIDR ranges parsed with `std::net` only (no `ipnet`), and the address
//! arithmetic IPAM needs.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::IpamError;

/// An IP network: an address and a prefix length, always normalised so that
/// `addr` is the network address (host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Builds a CIDR from an address and a prefix length, clearing host bits.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, IpamError> {
        if u32::from(prefix) > bits(addr) {
            return Err(IpamError::ParseCidr {
                input: format!("{addr}/{prefix}"),
                reason: "prefix length longer than the address",
            });
        }
        let mask = host_mask(addr, prefix);
        Ok(Self { addr: from_u128(to_u128(addr) & !mask, addr.is_ipv4()), prefix })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network address (same as [`Cidr::addr`]).
    pub fn network(&self) -> IpAddr {
        self.addr
    }

    /// The gateway: the first usable address, network + 1. For a /32 or /128
    /// (no host bits) this is the network address itself.
    pub fn gateway(&self) -> IpAddr {
        self.nth(1)
    }

    /// The broadcast address (last address) for IPv4; `None` for IPv6, which has
    /// no broadcast.
    pub fn broadcast(&self) -> Option<IpAddr> {
        match self.addr {
            IpAddr::V4(_) => Some(self.nth(self.host_mask())),
            IpAddr::V6(_) => None,
        }
    }

    /// Whether `ip` is inside this network (a different family never is).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && to_u128(ip) & !self.host_mask() == to_u128(self.addr)
    }

    /// All host bits set: the largest offset inside the network.
    pub(crate) fn host_mask(&self) -> u128 {
        host_mask(self.addr, self.prefix)
    }

    /// The address at `offset` from the network address; offsets are masked to
    /// the host bits so the result always lies inside the network.
    pub(crate) fn nth(&self, offset: u128) -> IpAddr {
        from_u128(to_u128(self.addr) | (offset & self.host_mask()), self.addr.is_ipv4())
    }

    /// The offset of `ip` from the network address, if `ip` is inside it.
    pub(crate) fn offset_of(&self, ip: IpAddr) -> Option<u128> {
        self.contains(ip).then(|| to_u128(ip) & self.host_mask())
    }

    /// Directory name for this range's allocations: `/` replaced by `_`.
    pub(crate) fn dir_name(&self) -> String {
        format!("{}_{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = IpamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| IpamError::ParseCidr { input: s.to_owned(), reason };
        let (addr, prefix) = s.split_once('/').ok_or_else(|| err("missing '/prefix'"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("invalid address"))?;
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("invalid prefix length"));
        }
        let prefix: u8 = prefix.parse().map_err(|_| err("invalid prefix length"))?;
        if u32::from(prefix) > bits(addr) {
            return Err(err("prefix length longer than the address"));
        }
        Self::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn bits(addr: IpAddr) -> u32 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn host_mask(addr: IpAddr, prefix: u8) -> u128 {
    let all = if addr.is_ipv4() { u128::from(u32::MAX) } else { u128::MAX };
    all.checked_shr(u32::from(prefix)).unwrap_or(0)
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        // Only the low 32 bits are ever set for a v4 value (masked by callers).
        IpAddr::V4(Ipv4Addr::from((v & u128::from(u32::MAX)) as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().expect("test address or cidr")
    }

    #[test]
    fn parses_and_formats_v4() {
        let n = c("10.88.0.0/16");
        assert_eq!(n.to_string(), "10.88.0.0/16");
        assert_eq!(n.prefix(), 16);
        assert_eq!(n.network(), "10.88.0.0".parse::<IpAddr>().expect("test address"));
        assert_eq!(n.gateway(), "10.88.0.1".parse::<IpAddr>().expect("test address"));
        assert_eq!(n.broadcast(), Some("10.88.255.255".parse().expect("test address")));
        assert!(n.contains("10.88.3.4".parse().expect("test address")));
        assert!(!n.contains("10.89.0.1".parse().expect("test address")));
        assert!(!n.contains("::1".parse().expect("test address")));
        assert_eq!(n.dir_name(), "10.88.0.0_16");
    }

    #[test]
    fn parses_and_formats_v6() {
        let n = c("fd00:10:88::/64");
        assert_eq!(n.to_string(), "fd00:10:88::/64");
        assert_eq!(n.gateway(), "fd00:10:88::1".parse::<IpAddr>().expect("test address"));
        assert_eq!(n.broadcast(), None);
        assert!(n.contains("fd00:10:88::ffff:1".parse().expect("test address")));
        assert!(!n.contains("fd00:10:89::1".parse().expect("test address")));
        assert!(!n.contains("10.88.0.1".parse().expect("test address")));
        assert_eq!(c("::/0").to_string(), "::/0");
        assert!(c("::/0").contains("2001:db8::1".parse().expect("test address")));
        assert_eq!(c("0.0.0.0/0").broadcast(), Some("255.255.255.255".parse().expect("test address")));
    }

    #[test]
    fn host_bits_are_normalised() {
        assert_eq!(c("10.88.1.7/16").to_string(), "10.88.0.0/16");
        assert_eq!(c("fd00:10:88::77/64").to_string(), "fd00:10:88::/64");
        assert_eq!(c("10.0.0.5/32").to_string(), "10.0.0.5/32");
        assert_eq!(c("10.0.0.5/32").gateway(), "10.0.0.5".parse::<IpAddr>().expect("test address"));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "10.88.0.0",
            "10.88.0.0/",
            "10.88.0.0/33",
            "fd00::/129",
            "10.88.0/16",
            "x/8",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/0016",
            "10.0.0.0/1 6",
            " 10.0.0.0/8",
        ] {
            let err = bad.parse::<Cidr>().expect_err("should fail");
            assert!(matches!(err, IpamError::ParseCidr { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn serde_round_trip() {
        let n = c("fd00:10:88::/64");
        let json = serde_json::to_string(&n).expect("json");
        assert_eq!(json, "\"fd00:10:88::/64\"");
        assert_eq!(serde_json::from_str::<Cidr>(&json).expect("json"), n);
        assert!(serde_json::from_str::<Cidr>("\"nope\"").is_err());
    }
}
