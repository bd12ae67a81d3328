//! The compute service: runs guests on this host through a virt driver. It never opens the
//! database: instance state goes to the conductor over the bus.

pub mod api;
pub mod manager;
pub mod net;
pub mod states;
pub mod virt;

pub use manager::ComputeManager;

pub const BINARY: &str = "novabox-compute";
