//! qwenedge: an on-device inference daemon for Qwen3.5 Small ONNX models.
//!
//! Data flow: a transport decodes bytes into an [`api::Request`] and registers it in the
//! scheduler's request table, which hands back a cancellation token and a responder bound to
//! the client's bounded event queue; the [`scheduler`] admits and queues it, the engine thread
//! runs it through [`engine`], and the events travel back through the responder to the same
//! transport. Transports never touch the engine; the engine never knows which transport asked.
//!
//! Layers, bottom up: [`api`] (wire types) · [`engine`] · [`budget`], [`intent`], [`dialect`] · [`config`] ·
//! [`scheduler`] · [`transport`] · [`service`] and the binary. Imports point down only; a test
//! (`layering`) checks it on the sources.

pub mod api;
pub mod budget;
pub mod config;
pub mod dialect;
pub mod engine;
pub mod intent;
pub mod scheduler;
pub mod service;
pub mod transport;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod layering;
/// The tests' waits, shared with the end-to-end tests (one scale, one report when a wait runs
/// out).
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../tests/common/wait.rs"]
mod test_wait;
