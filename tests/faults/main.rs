//! The tests that need the `fault-injection` build (a held or panicking engine thread, an ONNX
//! Runtime error on demand): `cargo test --release --features fault-injection,e2e --test faults`.

#[path = "../common/mod.rs"]
mod common;

mod engine_panic;
mod ort_error;
