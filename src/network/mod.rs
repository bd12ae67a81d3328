//! Networking decided as pure code, apart from the database that stores it (`src/db/network.rs`)
//! and the host plumbing that applies it (`src/compute/net/`).

pub mod ipam;

/// The address every cloud's guests expect the metadata service on. Here, rather than in the
/// metadata service, so that configuration can name it without depending on that service.
pub const METADATA_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 169, 254);
