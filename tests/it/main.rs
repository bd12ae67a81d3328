//! End-to-end tests: one test binary that drives the real `novabox` binary (one link step).

mod bus;
mod common;
