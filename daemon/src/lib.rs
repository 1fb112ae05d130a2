//! qwenedge: an on-device inference daemon for Qwen3.5 Small ONNX models.
//!
//! This crate composes the daemon from its rooms, each a crate of the workspace:
//! `qwenedge-api` (wire types) · `qwenedge-engine` · `qwenedge-toolcall`, `qwenedge-budget`,
//! `qwenedge-intent` · `qwenedge-config` · `qwenedge-scheduler` · `qwenedge-transport` and one
//! crate per transport (`qwenedge-unix`, `qwenedge-mqtt`, `qwenedge-http`, `qwenedge-wyoming`)
//! · this crate's [`service`] and the binary. Dependencies point down only; the workspace's
//! manifest is the layering, and a test reads `cargo metadata` to keep it so.

pub mod daemon;
pub mod service;

pub use daemon::{Daemon, DaemonError, Endpoints};

#[cfg(test)]
mod crate_graph;
#[cfg(test)]
mod end_to_end;
#[cfg(test)]
mod fuzz;
