//! One WebSocket session with Home Assistant: connect (TLS for `wss://`), authenticate with the
//! token, send commands and read their results, read subscribed events. Every wait is bounded;
//! an event that arrives while a command waits is remembered as "something changed" (the
//! session refetches on any change, so no event needs queueing).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::HaError;

/// The largest message accepted (a big home's `get_states` is a few MiB).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An authenticated session.
pub struct Connection {
    ws: WebSocketStream<Box<dyn Io>>,
    next_id: u64,
    changed: bool,
    /// Home Assistant's version, from its greeting.
    pub ha_version: String,
}

fn io_error(what: &str, e: impl std::fmt::Display) -> HaError {
    HaError::Connect(format!("{what}: {e}"))
}

async fn within<T>(limit: Duration, what: &str, f: impl std::future::Future<Output = Result<T, HaError>>) -> Result<T, HaError> {
    tokio::time::timeout(limit, f).await.map_err(|_| HaError::Timeout(format!("{what} took longer than {} s", limit.as_secs())))?
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, HaError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io_error("TLS", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Connection {
    /// Connects to `url` (`ws://` or `wss://…/api/websocket`) and authenticates with `token`.
    pub async fn open(url: &str, token: &str, limit: Duration) -> Result<Self, HaError> {
        within(limit, "connecting", Self::open_unbounded(url, token)).await
    }

    async fn open_unbounded(url: &str, token: &str) -> Result<Self, HaError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| HaError::Connect(format!("{url}: not a ws:// address")))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let tls = scheme == "wss";
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse::<u16>() {
                Ok(p) => (h.trim_start_matches('[').trim_end_matches(']').to_string(), p),
                Err(_) => (authority.to_string(), if tls { 443 } else { 80 }),
            },
            _ => (authority.to_string(), if tls { 443 } else { 80 }),
        };
        let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|e| io_error(authority, e))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = if tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| io_error(&host, e))?;
            let tls = tokio_rustls::TlsConnector::from(tls_config()?).connect(name, tcp).await.map_err(|e| io_error("TLS", e))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES)).max_frame_size(Some(MAX_MESSAGE_BYTES));
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await.map_err(|e| io_error("WebSocket handshake", e))?;
        let mut conn = Self { ws, next_id: 0, changed: false, ha_version: String::new() };
        let hello = conn.read().await?;
        if hello["type"] != "auth_required" {
            return Err(HaError::Protocol(format!("expected auth_required, got {hello}")));
        }
        conn.ha_version = hello["ha_version"].as_str().unwrap_or_default().to_string();
        conn.send(json!({"type": "auth", "access_token": token})).await?;
        let answer = conn.read().await?;
        match answer["type"].as_str() {
            Some("auth_ok") => Ok(conn),
            Some("auth_invalid") => Err(HaError::Auth(answer["message"].as_str().unwrap_or("invalid token").to_string())),
            _ => Err(HaError::Protocol(format!("expected auth_ok, got {answer}"))),
        }
    }

    async fn send(&mut self, msg: Value) -> Result<(), HaError> {
        self.ws.send(Message::text(msg.to_string())).await.map_err(|e| io_error("sending", e))
    }

    /// The next JSON message (pings are answered by the library; Home Assistant may coalesce
    /// several messages into one JSON array).
    async fn read(&mut self) -> Result<Value, HaError> {
        loop {
            let frame = self.ws.next().await.ok_or(HaError::Closed)?.map_err(|e| io_error("reading", e))?;
            match frame {
                Message::Text(t) => return serde_json::from_str(t.as_str()).map_err(|e| HaError::Protocol(format!("not JSON: {e}"))),
                Message::Close(_) => return Err(HaError::Closed),
                _ => continue,
            }
        }
    }

    /// Runs `command` (its other fields in `params`) and returns its result; `limit` bounds the
    /// wait.
    pub async fn call(&mut self, command: &str, params: Value, limit: Duration) -> Result<Value, HaError> {
        within(limit, command, async {
            self.next_id += 1;
            let id = self.next_id;
            let mut msg = json!({"id": id, "type": command});
            if let (Some(m), Value::Object(p)) = (msg.as_object_mut(), params) {
                m.extend(p);
            }
            self.send(msg).await?;
            loop {
                let answer = self.read().await?;
                let messages = match answer {
                    Value::Array(list) => list,
                    one => vec![one],
                };
                let mut found = None;
                for m in messages {
                    if m["type"] == "event" {
                        self.changed = true;
                    } else if m["id"] == id && (m["type"] == "result" || m["type"] == "pong") {
                        found = Some(m);
                    }
                }
                let Some(m) = found else { continue };
                if m["type"] == "pong" || m["success"] == true {
                    return Ok(m.get("result").cloned().unwrap_or(Value::Null));
                }
                let message = m["error"]["message"].as_str().unwrap_or("failed").to_string();
                return Err(HaError::Command { command: command.to_string(), message });
            }
        })
        .await
    }

    /// Subscribes to Home Assistant's events of `event_type`.
    pub async fn subscribe(&mut self, event_type: &str, limit: Duration) -> Result<(), HaError> {
        self.call("subscribe_events", json!({"event_type": event_type}), limit).await.map(|_| ())
    }

    /// Waits until a subscribed event arrives (at once if one came while a command waited).
    pub async fn changed(&mut self) -> Result<(), HaError> {
        if std::mem::take(&mut self.changed) {
            return Ok(());
        }
        loop {
            let m = self.read().await?;
            let events = match &m {
                Value::Array(list) => list.iter().any(|m| m["type"] == "event"),
                one => one["type"] == "event",
            };
            if events {
                return Ok(());
            }
        }
    }

    /// Closes the session.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
