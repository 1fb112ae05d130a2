//! The connection to the broker: rumqttc's MQTT 3.1.1 or MQTT 5 client behind one small
//! interface, TLS through rustls (CA file or the system trust store, optional client
//! certificate), credentials, the last will, and the task that drives rumqttc's event loop.
//!
//! rumqttc reconnects as soon as it is polled after a failure and drops its unacknowledged
//! publishes when the broker has no stored session. The link task therefore pauses with
//! [`Backoff`] between attempts and, before reconnecting, waits until the session has moved
//! its in-flight messages back to the outbox; it then empties rumqttc's own retransmission
//! queue, so every message is re-sent exactly once, by the outbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{v5, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::backoff::Backoff;
use super::outbox::Publication;
use super::MqttError;
use qwenedge_config::mqtt::{read_setting_file, MqttSettings, ProtocolVersion};

/// Requests queued towards rumqttc's event loop (publishes in flight, acks, subscriptions).
const CHANNEL: usize = 512;
/// Most publications the outbox keeps in flight.
pub const WINDOW: usize = 64;

/// What the connection reports.
#[derive(Debug)]
pub enum LinkEvent {
    /// CONNACK received.
    Connected {
        /// The broker still had this client's session.
        session_present: bool,
    },
    /// A message on a subscribed topic.
    Message(Box<InMessage>),
    /// The next handed publication left with this packet id.
    Published(u16),
    /// The broker acknowledged this packet id.
    Acked(u16),
    /// The connection failed or could not be made. The link waits for `resume` before it
    /// tries again (after the backoff).
    Lost {
        /// Why.
        error: String,
        /// Send (or drop) once in-flight messages are back in the outbox.
        resume: oneshot::Sender<()>,
    },
    /// DISCONNECT was sent; the link has ended.
    Closed,
}

/// An incoming PUBLISH.
#[derive(Debug)]
pub struct InMessage {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// MQTT 5 response topic.
    pub response_topic: Option<String>,
    /// MQTT 5 correlation data.
    pub correlation: Option<Bytes>,
    /// Retained message (sent because of a subscription, not just published).
    pub retain: bool,
    /// What acknowledges it.
    pub ack: AckToken,
}

/// Enough of an incoming PUBLISH to acknowledge it.
#[derive(Debug, Clone)]
pub enum AckToken {
    /// QoS 0: nothing to acknowledge.
    None,
    /// MQTT 3.1.1.
    V4(rumqttc::Publish),
    /// MQTT 5.
    V5(v5::mqttbytes::v5::Publish),
}

/// Sends requests to the event loop; never blocks.
#[derive(Debug, Clone)]
pub enum Link {
    /// MQTT 3.1.1.
    V4(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(v5::AsyncClient),
}

impl Link {
    /// Queues a QoS 1 publish.
    pub fn publish(&self, p: &Publication) -> Result<(), MqttError> {
        let r = match self {
            Link::V4(c) => c.try_publish(p.topic.as_str(), QoS::AtLeastOnce, p.retain, p.payload.clone()).map_err(|e| e.to_string()),
            Link::V5(c) => {
                let props = v5::mqttbytes::v5::PublishProperties {
                    payload_format_indicator: Some(1),
                    correlation_data: p.correlation.clone(),
                    ..Default::default()
                };
                c.try_publish_with_properties(p.topic.as_str(), v5::mqttbytes::QoS::AtLeastOnce, p.retain, p.payload.clone(), props)
                    .map_err(|e| e.to_string())
            }
        };
        r.map_err(MqttError::Link)
    }

    /// Queues a QoS 1 subscription.
    pub fn subscribe(&self, filter: &str) -> Result<(), MqttError> {
        match self {
            Link::V4(c) => c.try_subscribe(filter, QoS::AtLeastOnce).map_err(|e| e.to_string()),
            Link::V5(c) => c.try_subscribe(filter, v5::mqttbytes::QoS::AtLeastOnce).map_err(|e| e.to_string()),
        }
        .map_err(MqttError::Link)
    }

    /// Acknowledges an incoming message.
    pub fn ack(&self, token: &AckToken) -> Result<(), MqttError> {
        match (self, token) {
            (Link::V4(c), AckToken::V4(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            (Link::V5(c), AckToken::V5(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            _ => Ok(()),
        }
        .map_err(MqttError::Link)
    }

    /// Queues DISCONNECT (the last will is not sent).
    pub fn disconnect(&self) -> Result<(), MqttError> {
        match self {
            Link::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Link::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        }
        .map_err(MqttError::Link)
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Link id.
    pub client_id: String,
    /// Keep the session across disconnects.
    pub persistent: bool,
    /// Last will (topic, payload), published retained.
    pub will: Option<(String, Vec<u8>)>,
}

/// The largest packet accepted from the broker: room for `max_payload_bytes` requests and
/// much more, so an oversized request is read and answered `bad_request` rather than breaking
/// the connection. MQTT 5 brokers are told, and drop anything larger.
pub fn incoming_limit(max_payload: usize) -> usize {
    (max_payload.saturating_mul(16)).clamp(1 << 20, 256 << 20)
}

fn tls_config(s: &MqttSettings) -> Result<rustls::ClientConfig, MqttError> {
    let setting = |key: &str, message: String| MqttError::Setting { key: format!("mqtt.{key}"), message };
    let mut roots = rustls::RootCertStore::empty();
    match &s.ca_file {
        Some(f) => {
            let bytes = read_setting_file("ca_file", f).map_err(MqttError::File)?;
            for cert in CertificateDer::pem_slice_iter(&bytes) {
                let cert = cert.map_err(|e| setting("ca_file", format!("{}: {e}", f.display())))?;
                roots.add(cert).map_err(|e| setting("ca_file", format!("{}: {e}", f.display())))?;
            }
            if roots.is_empty() {
                return Err(setting("ca_file", format!("{}: no PEM certificate found", f.display())));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(setting("ca_file", "is not set and the system has no CA certificates".into()));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&s.client_cert_file, &s.client_key_file) {
        (Some(cert), Some(key)) => {
            let bytes = read_setting_file("client_cert_file", cert).map_err(MqttError::File)?;
            let chain = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| setting("client_cert_file", format!("{}: {e}", cert.display())))?;
            if chain.is_empty() {
                return Err(setting("client_cert_file", format!("{}: no PEM certificate found", cert.display())));
            }
            let bytes = read_setting_file("client_key_file", key).map_err(MqttError::File)?;
            let key_der =
                PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| setting("client_key_file", format!("{}: {e}", key.display())))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| setting("client_key_file", format!("{}: {e}", key.display())))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

enum Loop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

impl Loop {
    /// The next event worth reporting (`Ok(None)`: nothing for the session; `Err(None)`: every
    /// client handle is gone).
    async fn next(&mut self) -> Result<Option<LinkEvent>, Option<String>> {
        use rumqttc::{Event, Outgoing, Packet};
        match self {
            Loop::V4(el) => Ok(
                match el.poll().await.map_err(|e| match e {
                    rumqttc::ConnectionError::RequestsDone => None,
                    e => Some(e.to_string()),
                })? {
                    Event::Incoming(Packet::ConnAck(c)) => Some(LinkEvent::Connected { session_present: c.session_present }),
                    Event::Incoming(Packet::Publish(p)) => {
                        let ack = match p.qos {
                            QoS::AtMostOnce => AckToken::None,
                            qos => {
                                let mut token = rumqttc::Publish::new("", qos, Vec::new());
                                token.pkid = p.pkid;
                                AckToken::V4(token)
                            }
                        };
                        Some(LinkEvent::Message(Box::new(InMessage {
                            topic: p.topic,
                            payload: p.payload,
                            response_topic: None,
                            correlation: None,
                            retain: p.retain,
                            ack,
                        })))
                    }
                    Event::Incoming(Packet::PubAck(a)) => Some(LinkEvent::Acked(a.pkid)),
                    Event::Outgoing(Outgoing::Publish(pkid)) => Some(LinkEvent::Published(pkid)),
                    Event::Outgoing(Outgoing::Disconnect) => Some(LinkEvent::Closed),
                    _ => None,
                },
            ),
            Loop::V5(el) => Ok(
                match el.poll().await.map_err(|e| match e {
                    v5::ConnectionError::RequestsDone => None,
                    e => Some(e.to_string()),
                })? {
                    v5::Event::Incoming(v5::mqttbytes::v5::Packet::ConnAck(c)) => {
                        Some(LinkEvent::Connected { session_present: c.session_present })
                    }
                    v5::Event::Incoming(v5::mqttbytes::v5::Packet::Publish(p)) => {
                        let ack = match p.qos {
                            v5::mqttbytes::QoS::AtMostOnce => AckToken::None,
                            qos => {
                                let mut token = v5::mqttbytes::v5::Publish::new("", qos, Vec::new(), None);
                                token.pkid = p.pkid;
                                AckToken::V5(token)
                            }
                        };
                        let props = p.properties.unwrap_or_default();
                        Some(LinkEvent::Message(Box::new(InMessage {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload,
                            response_topic: props.response_topic,
                            correlation: props.correlation_data,
                            retain: p.retain,
                            ack,
                        })))
                    }
                    v5::Event::Incoming(v5::mqttbytes::v5::Packet::PubAck(a)) => Some(LinkEvent::Acked(a.pkid)),
                    v5::Event::Outgoing(Outgoing::Publish(pkid)) => Some(LinkEvent::Published(pkid)),
                    v5::Event::Outgoing(Outgoing::Disconnect) => Some(LinkEvent::Closed),
                    _ => None,
                },
            ),
        }
    }

    /// Forgets everything rumqttc would retransmit or report from the lost connection; the
    /// outbox re-sends instead.
    fn reset(&mut self) {
        match self {
            Loop::V4(el) => {
                el.clean();
                el.pending.clear();
                el.state.events.clear();
            }
            Loop::V5(el) => {
                el.clean();
                el.pending.clear();
                el.state.events.clear();
            }
        }
    }
}

/// Reads the files the settings name (password, certificates, key) and builds the TLS
/// configuration, without connecting: what [`open`] would refuse, refused before anything
/// starts.
pub fn check(s: &MqttSettings) -> Result<(), MqttError> {
    s.password().map_err(|e| {
        MqttError::File(format!("mqtt.password_file: {}: {e}", s.password_file.as_deref().unwrap_or(std::path::Path::new("")).display()))
    })?;
    if s.url.tls {
        tls_config(s)?;
    }
    Ok(())
}

/// Builds the client and starts the link task. Fails only on settings (files, TLS).
pub fn open(s: &MqttSettings, opts: &LinkOptions) -> Result<(Link, mpsc::Receiver<LinkEvent>), MqttError> {
    let endpoint = &s.url;
    let password = s.password().map_err(|e| {
        MqttError::File(format!("mqtt.password_file: {}: {e}", s.password_file.as_deref().unwrap_or(std::path::Path::new("")).display()))
    })?;
    let transport = match endpoint.tls {
        true => Some(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls_config(s)?)))),
        false => None,
    };
    let limit = incoming_limit(s.max_payload_bytes);
    let keep_alive = Duration::from_secs(u64::from(s.keep_alive_s.max(5)));
    let (client, el) = match s.protocol_version {
        ProtocolVersion::V311 => {
            let mut o = rumqttc::MqttOptions::new(&opts.client_id, &endpoint.host, endpoint.port);
            o.set_keep_alive(keep_alive).set_clean_session(!opts.persistent).set_manual_acks(true);
            o.set_max_packet_size(limit, 256 << 20).set_request_channel_capacity(CHANNEL).set_inflight(WINDOW as u16);
            if let (Some(user), pass) = (&s.username, &password) {
                o.set_credentials(user, pass.clone().unwrap_or_default());
            }
            if let Some((topic, payload)) = &opts.will {
                o.set_last_will(rumqttc::LastWill::new(topic, payload.clone(), QoS::AtLeastOnce, true));
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, el) = rumqttc::AsyncClient::new(o, CHANNEL);
            (Link::V4(c), Loop::V4(Box::new(el)))
        }
        ProtocolVersion::V5 => {
            let mut o = v5::MqttOptions::new(&opts.client_id, &endpoint.host, endpoint.port);
            o.set_keep_alive(keep_alive).set_clean_start(!opts.persistent).set_manual_acks(true);
            if opts.persistent {
                o.set_session_expiry_interval(Some(s.session_expiry_s));
            }
            o.set_max_packet_size(Some(limit as u32)).set_request_channel_capacity(CHANNEL);
            o.set_outgoing_inflight_upper_limit(WINDOW as u16).set_connection_timeout(5);
            if let (Some(user), pass) = (&s.username, &password) {
                o.set_credentials(user, pass.clone().unwrap_or_default());
            }
            if let Some((topic, payload)) = &opts.will {
                o.set_last_will(v5::mqttbytes::v5::LastWill::new(topic, payload.clone(), v5::mqttbytes::QoS::AtLeastOnce, true, None));
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, el) = v5::AsyncClient::new(o, CHANNEL);
            (Link::V5(c), Loop::V5(Box::new(el)))
        }
    };
    let backoff = Backoff::new(Duration::from_millis(s.reconnect_min_ms), Duration::from_millis(s.reconnect_max_ms));
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(drive(el, tx, backoff));
    Ok((client, rx))
}

async fn drive(mut el: Loop, tx: mpsc::Sender<LinkEvent>, mut backoff: Backoff) {
    loop {
        match el.next().await {
            Ok(None) => {}
            Ok(Some(event)) => {
                let closed = matches!(event, LinkEvent::Closed);
                if let LinkEvent::Connected { .. } = event {
                    backoff.connected(Instant::now());
                }
                if tx.send(event).await.is_err() || closed {
                    return;
                }
            }
            Err(None) => return,
            Err(Some(error)) => {
                let (resume, resumed) = oneshot::channel();
                if tx.send(LinkEvent::Lost { error, resume }).await.is_err() {
                    return;
                }
                let _ = resumed.await;
                if tx.is_closed() {
                    return;
                }
                el.reset();
                let delay = backoff.next_delay(Instant::now(), &mut rand::rng());
                debug!(delay_ms = delay.as_millis() as u64, "reconnecting to the broker after a pause");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
