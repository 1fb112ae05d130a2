//! qwenedge: an on-device inference daemon for Qwen3.5 Small ONNX models.
//!
//! Data flow: a transport decodes bytes into an [`api::Request`], the [`scheduler`] admits and
//! queues it, the engine thread runs it through [`engine`], and the events travel back over
//! the request's own channel to the same transport. Transports never touch the engine; the
//! engine never knows which transport asked.

pub mod api;
pub mod budget;
pub mod config;
pub mod engine;
pub mod intent;
pub mod scheduler;
pub mod service;
pub mod transport;
