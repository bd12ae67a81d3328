//! IPv4 networks in CIDR notation (`10.42.0.0/24`): parsing, membership and host ranges.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("`{0}` is not an IPv4 CIDR such as 10.42.0.0/24")]
    Syntax(String),
    #[error("`{0}` has host bits set; did you mean {1}?")]
    HostBits(String, Ipv4Cidr),
    #[error("`{0}` is too small for guests: use a prefix of /29 or shorter")]
    TooSmall(String),
}

impl Ipv4Cidr {
    /// A CIDR from parts, for constants; `None` when host bits are set or the prefix is > 32.
    pub const fn new_const(octets: [u8; 4], prefix: u8) -> Option<Ipv4Cidr> {
        if prefix > 32 {
            return None;
        }
        let addr = u32::from_be_bytes(octets);
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        if addr & !mask != 0 {
            return None;
        }
        Some(Ipv4Cidr { network: Ipv4Addr::from_bits(addr), prefix })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
    /// The first usable address, which novabox gives the bridge (the gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }
    /// Addresses handed to guests: after the gateway, before the broadcast.
    pub fn host_range(&self) -> (Ipv4Addr, Ipv4Addr) {
        let first = u32::from(self.network) + 2;
        let last = u32::from(self.broadcast()) - 1;
        (Ipv4Addr::from(first), Ipv4Addr::from(last))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if prefix > 32 {
            return Err(syntax());
        }
        let candidate = Ipv4Cidr { network: addr, prefix };
        let masked = Ipv4Cidr { network: Ipv4Addr::from(u32::from(addr) & candidate.mask()), prefix };
        if masked.network != addr {
            return Err(CidrError::HostBits(s.to_string(), masked));
        }
        if prefix > 29 {
            return Err(CidrError::TooSmall(s.to_string()));
        }
        Ok(masked)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_derives_addresses() {
        let c: Ipv4Cidr = "10.42.0.0/24".parse().unwrap();
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 42, 0, 1));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 42, 0, 255));
        assert_eq!(c.host_range(), (Ipv4Addr::new(10, 42, 0, 2), Ipv4Addr::new(10, 42, 0, 254)));
        assert!(c.contains(Ipv4Addr::new(10, 42, 0, 77)));
        assert!(!c.contains(Ipv4Addr::new(10, 43, 0, 1)));
    }

    #[test]
    fn rejects_bad_input_with_a_hint() {
        assert!(matches!("10.42.0.0".parse::<Ipv4Cidr>(), Err(CidrError::Syntax(_))));
        assert!(matches!("10.42.0.0/33".parse::<Ipv4Cidr>(), Err(CidrError::Syntax(_))));
        let err = "10.42.0.5/24".parse::<Ipv4Cidr>().unwrap_err();
        assert_eq!(err.to_string(), "`10.42.0.5/24` has host bits set; did you mean 10.42.0.0/24?");
        assert!(matches!("10.42.0.0/30".parse::<Ipv4Cidr>(), Err(CidrError::TooSmall(_))));
    }

    #[test]
    fn overlap_is_symmetric() {
        let a: Ipv4Cidr = "172.16.0.0/12".parse().unwrap();
        let b: Ipv4Cidr = "172.17.0.0/16".parse().unwrap();
        let c: Ipv4Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }
}
