//! The end-to-end tests: one binary (one link step) that drives the real `novabox` binary.

mod bus;
mod clients;
mod common;
mod compute;
mod doctor;
mod guestkit;
mod guests;
mod init;
mod network;
mod reliability;
mod sandbox;
