pub mod api;
pub mod config;
pub mod engine;
pub mod scheduler;
pub mod service;
pub mod transport;
