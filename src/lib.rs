//! novabox: a single-host OpenStack-style compute cloud.
//!
//! The library holds everything the `novabox` binary does; `src/main.rs` and `src/cli/` only
//! parse arguments, print and map errors to exit codes.

pub mod api;
pub mod bootstrap;
pub mod bus;
pub mod cidr;
pub mod client;
pub mod clock;
pub mod clouds_yaml;
pub mod compute;
pub mod conductor;
pub mod config;
pub mod db;
pub mod devstack;
pub mod doctor;
pub mod faults;
pub mod home;
pub mod hostpkgs;
pub mod image_build;
pub mod image_import;
pub mod images;
pub mod metadata;
pub mod network;
pub mod policy;
pub mod rpcapi;
pub mod scheduler;
pub mod secrets;
pub mod stack;
pub mod supervise;
pub mod trace;
pub mod volumes;
