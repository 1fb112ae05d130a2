//! The MQTT transport: requests on `qwenedge/<device>/request` (and, in a fleet, a shared
//! subscription to `qwenedge/fleet/request`) in the socket's JSON, events back to a reply
//! topic, a retained status topic with a last will, Hermes NLU answers and Home Assistant
//! discovery. Like the socket transport it only turns messages into typed scheduler jobs and
//! events back into messages.
//!
//! Delivery: the daemon keeps a persistent session and its own [`outbox`] of unacknowledged
//! publishes that is re-sent after every reconnect; redelivered requests are recognised by
//! their id and reply topic and run once. The outbox is bounded (`mqtt.max_outbox_bytes`):
//! when the broker stalls past it, the running MQTT requests are cancelled and the oldest
//! waiting messages dropped first. The pieces: [`topics`] (names derived from `[mqtt]`,
//! which `config::mqtt` defines), [`link`] (rumqttc, TLS, reconnect pacing with
//! [`backoff`]), [`session`] (the loop), [`request`] (payload → request + reply topic),
//! [`outbox`], [`status`], [`hermes`], [`discovery`].

pub mod backoff;
pub mod discovery;
pub mod hermes;
pub mod link;
pub mod outbox;
pub mod request;
mod session;
pub mod status;
pub mod topics;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::warn;

use link::{LinkEvent, LinkOptions};
use outbox::{Message, Outbox};
use qwenedge_config::MqttSettings;
use qwenedge_scheduler::{Requests, Scheduler};

/// What can go wrong setting up or using the MQTT connection.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A setting's contents are unusable (certificate, key).
    #[error("{key}: {message}")]
    Setting {
        /// The key, `mqtt.…`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A file named by a setting cannot be read (the message names the key).
    #[error("{0}")]
    File(String),
    /// rustls refused the TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// rumqttc refused a request (its queue is full or closed).
    #[error("MQTT client: {0}")]
    Link(String),
    /// The broker could not be reached or refused the connection.
    #[error("{0}")]
    Broker(String),
    /// No CONNACK or acknowledgements in time.
    #[error("no answer from the broker within {0:?}")]
    Timeout(Duration),
}

/// The running MQTT transport.
#[derive(Debug)]
pub struct MqttTransport {
    close: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl MqttTransport {
    /// Checks the files `[mqtt]` names (password, certificates) without connecting, so that a
    /// bad one stops start-up before the model is loaded.
    pub fn check(settings: &MqttSettings) -> Result<(), MqttError> {
        link::check(settings)
    }

    /// Starts the transport with `settings`; it connects in the background and keeps
    /// reconnecting. Fails at once only when the settings are unusable (unreadable password
    /// file, bad certificates). Must run inside a tokio runtime.
    pub fn start(settings: Arc<MqttSettings>, scheduler: Scheduler, requests: &Requests) -> Result<Self, MqttError> {
        let topics = topics::topics(&settings);
        let will = (topics.status.clone(), serde_json::to_vec(&status::offline(&topics.device)).unwrap_or_default());
        let opts = LinkOptions { client_id: settings.client(), persistent: true, will: Some(will) };
        let (client, link) = link::open(&settings, &opts)?;
        tracing::info!(url = %settings.url, client_id = %opts.client_id, device = %topics.device, "MQTT transport starting");
        let (close, closing) = oneshot::channel();
        let session = session::Session::new(settings, topics, client, scheduler, requests);
        let task = tokio::spawn(session.run(link, closing));
        Ok(Self { close: Some(close), task })
    }

    /// Delivers what is still in the outbox (the scheduler has finished, so nothing more
    /// comes), publishes `offline`, disconnects cleanly. Gives up after `within` when the
    /// broker is unreachable.
    pub async fn close(mut self, within: Duration) {
        if let Some(c) = self.close.take() {
            let _ = c.send(());
        }
        if tokio::time::timeout(within, &mut self.task).await.is_err() {
            warn!(within_ms = within.as_millis() as u64, "MQTT: the broker did not take the last messages in time; closing anyway");
            self.task.abort();
        }
    }
}

/// Connects once with a clean session under `<client id>-<suffix>` and waits for CONNACK.
async fn connect_once(
    settings: &MqttSettings,
    suffix: &str,
    within: Duration,
) -> Result<(link::Link, tokio::sync::mpsc::Receiver<LinkEvent>), MqttError> {
    let opts = LinkOptions { client_id: format!("{}-{suffix}", settings.client()), persistent: false, will: None };
    let (client, mut link) = link::open(settings, &opts)?;
    let connected = tokio::time::timeout(within, async {
        loop {
            match link.recv().await {
                Some(LinkEvent::Connected { .. }) => return Ok(()),
                Some(LinkEvent::Lost { error, .. }) => return Err(MqttError::Broker(error)),
                Some(_) => {}
                None => return Err(MqttError::Broker("the connection ended".into())),
            }
        }
    })
    .await
    .map_err(|_| MqttError::Timeout(within))?;
    connected.map(|()| (client, link))
}

/// Checks that the broker accepts a connection with these settings (`qwenedge doctor`).
pub async fn probe(settings: &MqttSettings, within: Duration) -> Result<(), MqttError> {
    let (client, link) = connect_once(settings, "doctor", within).await?;
    disconnect(&client, link).await;
    Ok(())
}

/// Removes this device from Home Assistant: empty retained payloads on every discovery
/// configuration topic and the sensor state topic. Returns how many topics were cleared.
pub async fn forget(settings: &MqttSettings, within: Duration) -> Result<usize, MqttError> {
    let topics = topics::topics(settings);
    let (client, mut link) = connect_once(settings, "forget", within).await?;
    let mut outbox = Outbox::new(link::WINDOW);
    let mut cleared = discovery::config_topics(&topics);
    cleared.push(topics.state.clone());
    for t in &cleared {
        outbox.push(Message::retained(t.clone(), Vec::new()));
    }
    outbox.connected();
    let delivered = tokio::time::timeout(within, async {
        while !outbox.is_empty() {
            while let Some((no, p)) = outbox.next_publication() {
                if client.publish(&p).is_err() {
                    outbox.unhand(no);
                    break;
                }
            }
            match link.recv().await {
                Some(LinkEvent::Published(pkid)) => {
                    outbox.published(pkid);
                }
                Some(LinkEvent::Acked(pkid)) => {
                    outbox.acked(pkid, std::time::Instant::now());
                }
                Some(LinkEvent::Lost { error, .. }) => return Err(MqttError::Broker(error)),
                Some(_) => {}
                None => return Err(MqttError::Broker("the connection ended".into())),
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| MqttError::Timeout(within))?;
    delivered?;
    disconnect(&client, link).await;
    Ok(cleared.len())
}

/// Sends DISCONNECT and waits (briefly) until it has left.
async fn disconnect(client: &link::Link, mut link: tokio::sync::mpsc::Receiver<LinkEvent>) {
    if client.disconnect().is_ok() {
        let _ =
            tokio::time::timeout(Duration::from_secs(2), async { while !matches!(link.recv().await, Some(LinkEvent::Closed) | None) {} })
                .await;
    }
}
