//! The MQTT session loop: one task that owns the outbox and the request bookkeeping, fed by
//! the link (connection events, incoming messages, packet ids and acknowledgements), by the
//! per-job forwarders (scheduler events tagged with their reply topic) and by two timers
//! (status every second when it changed, sensor state every ten seconds). Every branch it
//! waits on is cancel-safe, and it never blocks on rumqttc: requests go through `try_*`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::discovery::{self, DeviceInfo};
use super::hermes;
use super::link::{Client, InMessage, LinkEvent, WINDOW};
use super::outbox::{Body, Message, Outbox, StreamKey};
use super::request::{self, Incoming, Recent, Reply};
use super::settings::{MqttSettings, Topics, FLEET_REQUEST};
use super::status;
use crate::api::{ErrorCode, Event, EventBody, Op};
use crate::budget::readers::SysRoot;
use crate::scheduler::{Job, Phase, Scheduler};

/// How often the status topic is compared and refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How often the sensor state topic is published.
const STATE_EVERY: Duration = Duration::from_secs(10);

/// An event of a job, with where it goes.
struct Tagged {
    key: StreamKey,
    reply: Reply,
    event: Event,
}

/// The session's state.
pub(super) struct Session {
    settings: MqttSettings,
    topics: Topics,
    client: Client,
    scheduler: Scheduler,
    outbox: Outbox,
    running: HashMap<StreamKey, Arc<AtomicBool>>,
    recent: Recent,
    events_tx: mpsc::UnboundedSender<Tagged>,
    events_rx: mpsc::UnboundedReceiver<Tagged>,
    /// Hermes answers (topic, payload) of finished NLU queries.
    hermes_tx: mpsc::UnboundedSender<Vec<(String, Vec<u8>)>>,
    hermes_rx: mpsc::UnboundedReceiver<Vec<(String, Vec<u8>)>>,
    forwarders: JoinSet<()>,
    connected: bool,
    failures: u64,
    last_status: Option<Value>,
}

impl Session {
    pub(super) fn new(settings: MqttSettings, topics: Topics, client: Client, scheduler: Scheduler) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (hermes_tx, hermes_rx) = mpsc::unbounded_channel();
        Self {
            settings,
            topics,
            client,
            scheduler,
            outbox: Outbox::new(WINDOW),
            running: HashMap::new(),
            recent: Recent::new(request::REMEMBERED),
            events_tx,
            events_rx,
            hermes_tx,
            hermes_rx,
            forwarders: JoinSet::new(),
            connected: false,
            failures: 0,
            last_status: None,
        }
    }

    /// Runs until closed: after `closing` fires, delivers the remaining events, publishes
    /// `offline` and disconnects.
    pub(super) async fn run(mut self, mut link: mpsc::Receiver<LinkEvent>, mut closing: oneshot::Receiver<()>) {
        let mut status_tick = tokio::time::interval(STATUS_EVERY);
        let mut state_tick = tokio::time::interval(STATE_EVERY);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        state_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut close_requested = false;
        let mut offline_sent = false;
        let mut disconnect_sent = false;
        loop {
            tokio::select! {
                event = link.recv() => match event {
                    Some(LinkEvent::Closed) | None => break,
                    Some(event) => self.on_link(event),
                },
                Some(tagged) = self.events_rx.recv() => self.on_event(tagged),
                Some(answers) = self.hermes_rx.recv() => {
                    for (topic, payload) in answers {
                        self.outbox.push(Message::raw(topic, payload));
                    }
                }
                Some(_) = self.forwarders.join_next(), if !self.forwarders.is_empty() => {}
                _ = status_tick.tick(), if !offline_sent => self.refresh_status(),
                _ = state_tick.tick(), if self.settings.discovery && !close_requested => self.publish_state(),
                _ = &mut closing, if !close_requested => {
                    close_requested = true;
                    info!(waiting = self.outbox.len(), "MQTT: delivering the last events before disconnecting");
                }
            }
            if close_requested && !offline_sent && self.forwarders.is_empty() {
                while let Ok(tagged) = self.events_rx.try_recv() {
                    self.on_event(tagged);
                }
                while let Ok(answers) = self.hermes_rx.try_recv() {
                    for (topic, payload) in answers {
                        self.outbox.push(Message::raw(topic, payload));
                    }
                }
                let offline = serde_json::to_vec(&status::offline(&self.topics.device)).unwrap_or_default();
                self.outbox.push(Message::retained(self.topics.status.clone(), offline));
                offline_sent = true;
            }
            self.pump();
            if offline_sent && !disconnect_sent && self.outbox.is_empty() {
                info!("MQTT: everything delivered; disconnecting");
                disconnect_sent = self.client.disconnect().is_ok();
            }
        }
    }

    /// Hands waiting publications to rumqttc while the window allows.
    fn pump(&mut self) {
        while let Some((no, p)) = self.outbox.next() {
            if let Err(e) = self.client.publish(&p) {
                debug!(error = %e, "MQTT: client queue full; retrying later");
                self.outbox.unhand(no);
                break;
            }
        }
    }

    fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected { session_present } => {
                info!(session_present, after_failures = self.failures, "MQTT: connected to the broker");
                self.connected = true;
                self.failures = 0;
                self.subscribe();
                self.outbox.connected();
                self.last_status = None;
                self.refresh_status();
                if self.settings.discovery {
                    self.publish_discovery();
                    self.publish_state();
                }
            }
            LinkEvent::Lost { error, resume } => {
                if self.connected || self.failures % 10 == 0 {
                    warn!(error = %error, waiting = self.outbox.len(), "MQTT: no connection to the broker; retrying with backoff");
                }
                self.connected = false;
                self.failures += 1;
                self.outbox.disconnected(Instant::now());
                let _ = resume.send(());
            }
            LinkEvent::Published(pkid) => {
                if !self.outbox.published(pkid) {
                    debug!(pkid, "MQTT: a publish the outbox did not hand out");
                }
            }
            LinkEvent::Acked(pkid) => {
                self.outbox.acked(pkid, Instant::now());
            }
            LinkEvent::Message(m) => self.on_message(m),
            LinkEvent::Closed => {}
        }
    }

    fn subscribe(&self) {
        let mut filters = vec![self.topics.request.clone()];
        filters.extend(self.topics.fleet_filter.clone());
        if self.settings.hermes {
            filters.push(hermes::QUERY.to_string());
        }
        if self.settings.discovery {
            filters.push(self.topics.ha_status());
        }
        for f in filters {
            if let Err(e) = self.client.subscribe(&f) {
                warn!(filter = %f, error = %e, "MQTT: cannot subscribe");
            }
        }
    }

    fn on_message(&mut self, m: InMessage) {
        let fleet = self.topics.fleet_filter.is_some() && m.topic == FLEET_REQUEST;
        if m.topic == self.topics.request || fleet {
            if matches!(self.scheduler.phase(), Phase::Draining | Phase::Stopped) {
                // Not acknowledged: the broker keeps it in the session for the next start.
                debug!(topic = %m.topic, "MQTT: shutting down; request left with the broker");
                return;
            }
            if m.retain {
                warn!(topic = %m.topic, "MQTT: ignoring a retained request (publish requests without the retain flag)");
            } else {
                self.on_request(&m, fleet);
            }
        } else if self.settings.hermes && m.topic == hermes::QUERY {
            self.on_hermes(&m.payload);
        } else if self.settings.discovery && m.topic == self.topics.ha_status() && m.payload.as_ref() == b"online" {
            info!("MQTT: Home Assistant is online; publishing the discovery configuration");
            self.publish_discovery();
            self.publish_state();
        }
        if let Err(e) = self.client.ack(&m.ack) {
            warn!(error = %e, "MQTT: cannot acknowledge a message; the broker will send it again");
        }
    }

    fn reply_event(&mut self, reply: &Reply, stream: Option<StreamKey>, event: Event) {
        self.outbox.push(Message {
            topic: reply.topic.clone(),
            correlation: reply.correlation.clone(),
            retain: false,
            replaceable: false,
            body: Body::Event { event, stream },
        });
    }

    fn on_request(&mut self, m: &InMessage, fleet: bool) {
        let limit = self.scheduler.settings().scheduler.max_tokens_limit;
        let incoming =
            Incoming { payload: &m.payload, response_topic: m.response_topic.as_deref(), correlation: m.correlation.as_ref(), fleet };
        let routed = request::route(incoming, &self.topics, self.settings.max_payload_bytes, limit);
        let request = match routed.request {
            Ok(r) => r,
            Err(bad) => {
                warn!(id = ?bad.id, topic = %m.topic, reply = ?routed.reply.as_ref().map(|r| &r.topic), error = %bad.message, "MQTT: bad request");
                if let Some(reply) = &routed.reply {
                    self.reply_event(reply, None, Event::error(bad.id, ErrorCode::BadRequest, bad.message));
                }
                return;
            }
        };
        let Some(reply) = routed.reply else {
            warn!(id = %request.id, "MQTT: request has no reply topic (its id cannot be a topic level; set reply_to)");
            return;
        };
        let id = request.id;
        let key = StreamKey { topic: reply.topic.clone(), id: id.clone() };
        let single = |body| Event { id: Some(id.clone()), body };
        match request.op {
            Op::Generate(req) => {
                if self.running.contains_key(&key) || !self.recent.insert(&key) {
                    info!(id = %id, reply = %reply.topic, "MQTT: duplicate request (redelivered); it is answered once");
                    return;
                }
                let cancel = Arc::new(AtomicBool::new(false));
                let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
                let job = Job { id: id.clone(), request: *req, received: Instant::now(), cancel: Arc::clone(&cancel), events: tx };
                match self.scheduler.submit(job) {
                    Err((_, refusal)) => {
                        debug!(id = %id, code = ?refusal.code, "MQTT: request refused");
                        self.reply_event(&reply, Some(key), single(EventBody::Error { code: refusal.code, message: refusal.message }));
                    }
                    Ok(()) => {
                        debug!(id = %id, reply = %reply.topic, "MQTT: request accepted");
                        self.running.insert(key.clone(), cancel);
                        let out = self.events_tx.clone();
                        self.forwarders.spawn(async move {
                            while let Some(event) = rx.recv().await {
                                if out.send(Tagged { key: key.clone(), reply: reply.clone(), event }).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                }
            }
            Op::Cancel => match self.running.get(&key) {
                Some(flag) => {
                    flag.store(true, Ordering::Relaxed);
                    self.scheduler.nudge();
                }
                None if self.recent.contains(&key) => {}
                None => {
                    let message = format!("cancel: no request '{id}' in progress for reply topic {}", reply.topic);
                    self.reply_event(&reply, None, single(EventBody::Error { code: ErrorCode::BadRequest, message }));
                }
            },
            Op::Status => self.reply_event(&reply, None, single(EventBody::Status(self.scheduler.status()))),
            Op::Models => self.reply_event(&reply, None, single(EventBody::Models { models: self.scheduler.models() })),
        }
    }

    fn on_event(&mut self, t: Tagged) {
        if t.event.is_terminal() {
            self.running.remove(&t.key);
        }
        self.reply_event(&t.reply, Some(t.key), t.event);
    }

    fn on_hermes(&mut self, payload: &[u8]) {
        match hermes::parse_query(payload) {
            Ok(query) => {
                debug!(id = ?query.id, site = %query.site_id, "Hermes: NLU query");
                let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
                let id = query.id.clone().unwrap_or_else(|| "hermes".into());
                let temperature = self.scheduler.settings().intents.temperature;
                let job = Job {
                    id,
                    request: hermes::request(&query, temperature),
                    received: Instant::now(),
                    cancel: Arc::new(AtomicBool::new(false)),
                    events: tx,
                };
                if let Err((_, refusal)) = self.scheduler.submit(job) {
                    let event = EventBody::Error { code: refusal.code, message: refusal.message };
                    for (topic, payload) in hermes::reply(&query, &event) {
                        self.outbox.push(Message::raw(topic, payload));
                    }
                    return;
                }
                let out = self.hermes_tx.clone();
                self.forwarders.spawn(async move {
                    while let Some(event) = rx.recv().await {
                        if event.is_terminal() {
                            let _ = out.send(hermes::reply(&query, &event.body));
                            break;
                        }
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "Hermes: malformed NLU query");
                let (topic, payload) = hermes::error_message(&e);
                self.outbox.push(Message::raw(topic, payload));
            }
        }
    }

    fn refresh_status(&mut self) {
        let now = status::online(&self.scheduler.status(), &self.topics.device);
        if self.last_status.as_ref() != Some(&now) {
            self.outbox.push(Message::retained(self.topics.status.clone(), serde_json::to_vec(&now).unwrap_or_default()));
            self.last_status = Some(now);
        }
    }

    fn publish_discovery(&mut self) {
        let status = self.scheduler.status();
        let info = DeviceInfo {
            model: status::model_name(&status).unwrap_or_else(|| "unknown".into()),
            sw_version: env!("CARGO_PKG_VERSION").into(),
        };
        for (topic, payload) in discovery::configs(&self.topics, &info) {
            self.outbox.push(Message::retained(topic, payload));
        }
    }

    fn publish_state(&mut self) {
        let sensors = status::sensors(&self.scheduler.status(), &SysRoot::default());
        self.outbox.push(Message::retained(self.topics.state.clone(), serde_json::to_vec(&sensors).unwrap_or_default()));
    }
}
