//! Guest networking on a compute host.

pub mod secgroups;
