//! The compute service: runs guests on this host through a virt driver. It never opens the
//! database: instance state goes to the conductor over the bus. `api` is not part of it: it
//! is nova's compute API, which runs in the API process and writes the database there.

pub mod api;
pub mod manager;
pub mod net;
pub mod states;
pub mod virt;

pub use manager::ComputeManager;

pub const BINARY: &str = "novabox-compute";
