//! Transports: each decodes its own wire format into `api` requests, registers them in the
//! scheduler's request table (one client per connection or session, with its bounded event
//! queue), submits them, and encodes the events back. They never touch the engine and never
//! import each other; a new transport is a thin codec over the same path.

pub mod mqtt;
pub mod unix;
