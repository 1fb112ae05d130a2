//! The home's names from Home Assistant (`[homeassistant]`): the entities exposed to Assist with
//! their names, aliases, domain, device class, area and floor, and the areas and floors with
//! their aliases, read over Home Assistant's WebSocket API and followed as they change (registry
//! and exposure updates), so a rename in Home Assistant reaches the voice commands without a
//! restart. The last copy is kept in a file: while Home Assistant is unreachable or refuses the
//! token, it serves (one log line), and reconnection is retried with backoff.
//!
//! [`start`] spawns the session on the current Tokio runtime and hands back a [`HomeSync`]
//! whose watch channels carry the home (for the matcher and the model's catalog) and the link's
//! state (for `status`, `doctor` and the MQTT sensors).

mod client;
mod copy;
mod home;
mod sync;

pub use client::Connection;
pub use copy::{load_copy, save_copy};
pub use home::{build, exposed_registry_ids, HaHome, Registries};
pub use sync::{fetch, start, HomeSync};

/// What went wrong talking to Home Assistant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaError {
    /// No connection (refused, unreachable, TLS, handshake).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// Home Assistant refused the token.
    #[error("the token was refused ({0}); make a new long-lived access token of an administrator")]
    Auth(String),
    /// The token file cannot be used (read again at each attempt, so a fix needs no restart).
    #[error("homeassistant.token_file: {0}")]
    Token(String),
    /// A command failed.
    #[error("{command}: {message}")]
    Command {
        /// The command.
        command: String,
        /// Home Assistant's message.
        message: String,
    },
    /// An answer of the wrong shape.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// An answer did not come in time.
    #[error("{0}")]
    Timeout(String),
    /// Home Assistant closed the connection.
    #[error("the connection closed")]
    Closed,
    /// The last copy could not be read or written.
    #[error("{0}")]
    Copy(String),
}
