//! The end-to-end tests: one binary (one link step) that drives the real `novabox` binary.

mod bench;
mod bus;
mod clients;
mod cloudimage;
mod common;
mod compute;
mod consoles;
mod doctor;
mod faults;
mod guestkit;
mod guests;
mod identity;
mod init;
mod libvirt;
mod network;
mod reliability;
mod sandbox;
mod volumes;
