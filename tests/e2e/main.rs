//! The end-to-end tests, one binary: the real `qwenedge` binary and library against the model
//! fixtures, ONNX Runtime, the client libraries users' software uses and a real Mosquitto
//! (`deploy/test.sh` prepares them). Each module is one area; `cargo test --release --features
//! e2e --test e2e AREA::` runs one of them.

#[path = "../common/mod.rs"]
mod common;

mod backpressure;
mod bad_models;
mod budget;
mod chat_template;
mod cli;
mod daemon;
mod daemon_lifecycle;
mod devices;
mod fast_intents;
#[cfg(feature = "tract")]
mod full_width;
mod http;
mod hub;
mod intents;
mod layouts;
mod local_intents;
mod model_faults;
mod mqtt;
mod mqtt_faults;
mod mqtt_tls;
mod npu;
mod optimized_session;
mod parity;
mod plugin_eps;
mod prefix_cache;
mod soak;
mod static_backend;
mod systemd_units;
mod tokenizer;
#[cfg(feature = "tract")]
mod tract;
#[cfg(feature = "tract")]
mod tract_serve;
mod turns;
mod wyoming;
