//! The MQTT session loop: one task that owns the outbox and the routes of its requests, fed by
//! the link (connection events, incoming messages, packet ids and acknowledgements), by the
//! session's queue in the request table (every job's events, tagged with the job's table
//! number) and by two timers (status every second when it changed, sensor state every ten
//! seconds). Every branch it waits on is cancel-safe, and it never blocks on rumqttc: requests
//! go through `try_*`. When the broker stops taking messages and the outbox passes
//! `mqtt.max_outbox_bytes`, the running MQTT requests are cancelled (one log line).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::discovery::{self, DeviceInfo};
use super::hermes::{self, NluQuery};
use super::link::{InMessage, Link, LinkEvent, WINDOW};
use super::outbox::{Body, Message, Outbox, StreamKey};
use super::request::{self, Incoming, Reply};
use super::status;
use super::topics::{Topics, FLEET_REQUEST};
use qwenedge_api::{ErrorCode, Event, EventBody, Phase};
use qwenedge_config::MqttSettings;
use qwenedge_scheduler::{self as scheduler, CancelReason, Cancelled, ClientPolicy, Duplicate, Job, Outbound, Requests, Scheduler, Ticket};
use qwenedge_transport::dispatch::{self, dispatch, submit};

/// How often the status topic is compared and refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How often the sensor state topic is published.
const STATE_EVERY: Duration = Duration::from_secs(10);
/// The most request keys remembered for duplicate detection (QoS 1 redeliveries).
const REMEMBERED: usize = 4096;

/// Where the events of a job go.
enum AnswerTo {
    /// A request's reply topic.
    Request { key: StreamKey, reply: Reply },
    /// A Hermes query's answer topics.
    Hermes(Box<NluQuery>),
}

/// The session's state.
pub(super) struct Session {
    settings: Arc<MqttSettings>,
    topics: Topics,
    client: Link,
    scheduler: Scheduler,
    requests: scheduler::Client,
    inbox: Arc<Outbound>,
    routes: HashMap<u64, AnswerTo>,
    outbox: Outbox,
    connected: bool,
    failures: u64,
    last_status: Option<status::Online>,
}

/// The key of a request in the table: its reply topic and id (a topic has no NUL).
fn table_key(key: &StreamKey) -> String {
    format!("{}\0{}", key.topic, key.id)
}

impl Session {
    pub(super) fn new(settings: Arc<MqttSettings>, topics: Topics, client: Link, scheduler: Scheduler, requests: &Requests) -> Self {
        // The session moves its jobs' events into the outbox as they come, so this queue stays
        // short; the outbox holds what the broker has not taken.
        let inbox = Arc::new(Outbound::new(settings.max_outbox_bytes));
        let policy = ClientPolicy { remember: REMEMBERED, reject_recent: true, unread_key: "mqtt.max_outbox_bytes", transport: "mqtt" };
        let requests = requests.client(policy, Arc::clone(&inbox));
        let outbox = Outbox::bounded(WINDOW, settings.max_outbox_bytes);
        Self {
            settings,
            topics,
            client,
            scheduler,
            requests,
            inbox,
            routes: HashMap::new(),
            outbox,
            connected: false,
            failures: 0,
            last_status: None,
        }
    }

    /// Runs until closed: after `closing` fires (the engine has stopped, so every job has
    /// answered), delivers the remaining events, publishes `offline` and disconnects.
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
                _ = self.inbox.ready(), if !offline_sent => self.on_events(),
                _ = status_tick.tick(), if !offline_sent => self.refresh_status(),
                _ = state_tick.tick(), if self.settings.discovery && !close_requested => self.publish_state(),
                _ = &mut closing, if !close_requested => {
                    close_requested = true;
                    info!(waiting = self.outbox.len(), "MQTT: delivering the last events before disconnecting");
                }
            }
            if close_requested && !offline_sent {
                self.on_events();
                let offline = serde_json::to_vec(&status::offline(&self.topics.device)).unwrap_or_default();
                self.enqueue(Message::retained(self.topics.status.clone(), offline));
                offline_sent = true;
            }
            self.pump();
            if offline_sent && !disconnect_sent && self.outbox.is_empty() {
                info!("MQTT: everything delivered; disconnecting");
                disconnect_sent = self.client.disconnect().is_ok();
            }
        }
    }

    /// Puts a message in the outbox; when the broker has stopped taking them and the outbox is
    /// past its bound, cancels the running MQTT requests (once per stall).
    fn enqueue(&mut self, msg: Message) {
        let pushed = self.outbox.push(msg);
        if pushed.over_first {
            let reason = CancelReason::Unread { limit: self.settings.max_outbox_bytes, key: "mqtt.max_outbox_bytes" };
            let cancelled = self.requests.cancel_all(reason);
            warn!(
                waiting_bytes = self.outbox.bytes(),
                limit = self.settings.max_outbox_bytes,
                cancelled,
                "MQTT: the broker is not taking messages and the outbox is full; cancelling the running MQTT requests and dropping the oldest waiting messages"
            );
            self.scheduler.nudge();
        }
        if pushed.dropped > 0 {
            debug!(dropped = pushed.dropped, "MQTT: oldest waiting messages dropped (mqtt.max_outbox_bytes)");
        }
    }

    /// Moves the jobs' events into the outbox, to the topics their routes say.
    fn on_events(&mut self) {
        for d in self.inbox.take() {
            let terminal = d.event.is_terminal();
            let route = if terminal { self.routes.remove(&d.no) } else { None };
            match route.as_ref().or_else(|| self.routes.get(&d.no)) {
                Some(AnswerTo::Request { key, reply }) => {
                    let (key, reply) = (key.clone(), reply.clone());
                    self.reply_event(&reply, Some(key), d.event);
                }
                Some(AnswerTo::Hermes(query)) => {
                    if terminal {
                        for (topic, payload) in hermes::reply(query, &d.event.body) {
                            self.enqueue(Message::raw(topic, payload));
                        }
                    }
                }
                None => debug!(no = d.no, "MQTT: an event of no known request"),
            }
        }
    }

    /// Hands waiting publications to rumqttc while the window allows.
    fn pump(&mut self) {
        while let Some((no, p)) = self.outbox.next_publication() {
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
                if self.connected || self.failures.is_multiple_of(10) {
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
            LinkEvent::Message(m) => self.on_message(*m),
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
        self.enqueue(Message {
            topic: reply.topic.clone(),
            correlation: reply.correlation.clone(),
            retain: false,
            replaceable: false,
            body: Body::Event { event: Box::new(event), stream },
        });
    }

    fn on_request(&mut self, m: &InMessage, fleet: bool) {
        let limits = self.scheduler.limits();
        let incoming =
            Incoming { payload: &m.payload, response_topic: m.response_topic.as_deref(), correlation: m.correlation.as_ref(), fleet };
        let routed = request::route(incoming, &self.topics, self.settings.max_payload_bytes, &limits);
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
        let id = request.id.into_string();
        let key = StreamKey { topic: reply.topic.clone(), id: id.clone() };
        dispatch(&self.scheduler.clone(), &id, request.op, &mut Exchange { session: self, key, reply });
    }

    fn on_hermes(&mut self, payload: &[u8]) {
        let temperature = self.scheduler.settings().intents.temperature;
        let parsed = hermes::parse_query(payload, self.settings.max_payload_bytes)
            .and_then(|query| hermes::request(&query, temperature, &self.scheduler.limits()).map(|r| (query, r)));
        match parsed {
            Ok((query, request)) => {
                debug!(id = ?query.id, site = %query.site_id, "Hermes: NLU query");
                let id = query.id.clone().unwrap_or_else(|| "hermes".into());
                let ticket = self.requests.begin_unkeyed(&id);
                self.routes.insert(ticket.no, AnswerTo::Hermes(Box::new(query)));
                submit(&self.scheduler, Job::new(ticket, request));
            }
            Err(e) => {
                warn!(error = %e, "Hermes: refused an NLU query");
                let (topic, payload) = hermes::error_message(&e);
                self.enqueue(Message::raw(topic, payload));
            }
        }
    }

    fn refresh_status(&mut self) {
        let now = status::online(&self.scheduler.status(), &self.topics.device);
        if self.last_status.as_ref() != Some(&now) {
            self.enqueue(Message::retained(self.topics.status.clone(), serde_json::to_vec(&now).unwrap_or_default()));
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
            self.enqueue(Message::retained(topic, payload));
        }
    }

    fn publish_state(&mut self) {
        let sensors = status::sensors(&self.scheduler.status());
        self.enqueue(Message::retained(self.topics.state.clone(), serde_json::to_vec(&sensors).unwrap_or_default()));
    }
}

/// One MQTT request's side of the shared dispatch: the request table is keyed by reply topic
/// and id, replies go to the request's reply topic, and a redelivered duplicate is answered
/// once (by the first).
struct Exchange<'a> {
    session: &'a mut Session,
    key: StreamKey,
    reply: Reply,
}

impl dispatch::Session for Exchange<'_> {
    fn begin(&mut self, id: &str) -> Result<Ticket, Duplicate> {
        let ticket = self.session.requests.begin(&table_key(&self.key), id)?;
        debug!(id = %id, reply = %self.reply.topic, "MQTT: request accepted");
        self.session.routes.insert(ticket.no, AnswerTo::Request { key: self.key.clone(), reply: self.reply.clone() });
        Ok(ticket)
    }

    fn duplicate(&mut self, id: &str) {
        info!(id = %id, reply = %self.reply.topic, "MQTT: duplicate request (redelivered); it is answered once");
    }

    fn cancel(&mut self, _id: &str) -> Cancelled {
        self.session.requests.cancel(&table_key(&self.key))
    }

    fn unknown_cancel(&mut self, id: &str) {
        let message = format!("cancel: no request '{id}' in progress for reply topic {}", self.reply.topic);
        self.reply(id, EventBody::error(ErrorCode::BadRequest, message));
    }

    fn reply(&mut self, id: &str, body: EventBody) {
        self.session.reply_event(&self.reply, None, Event { id: Some(id.to_string()), body });
    }
}
