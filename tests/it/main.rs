//! The end-to-end tests: one binary (one link step) that drives the real `novabox` binary.

mod common;
mod doctor;
mod guests;
mod init;
