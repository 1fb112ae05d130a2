//! The device's budgets: what the kernel says about temperature, memory and pressure. The
//! readers take a root directory (`/` on a device, a fake tree in tests), and a missing file is
//! never an error — it only means less is known.

pub mod readers;
