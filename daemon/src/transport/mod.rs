//! Transports: each decodes its own wire format into `api` requests for the scheduler and
//! encodes the events back. They never touch the engine.

pub mod mqtt;
pub mod unix;
