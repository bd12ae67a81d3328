//! The end-to-end tests: one binary (one link step) that drives the real `novabox` binary.

mod aggregates;
mod bench;
mod bus;
mod clients;
mod cloudimage;
mod common;
mod compute;
mod consoles;
mod devstack;
mod doctor;
mod faults;
mod guestkit;
mod guests;
mod identity;
mod init;
mod libvirt;
mod network;
mod newcomer;
mod reliability;
mod sandbox;
mod server_actions;
mod server_meta;
mod tempest;
mod volumes;
