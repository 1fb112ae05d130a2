//! One transcript answered: through the shared request table and scheduler (interactive, like
//! every voice request), as the intent program (the catalog, its grammar and confidence, as the
//! socket's `intent` op) and, when the handle program is offered too, a chat answer for words
//! that are no intent. Every outcome sends something Home Assistant acts on: an `intent`,
//! `not-recognized` with what to say, `handled` (always, after a streamed answer: Home
//! Assistant waits for it) or `not-handled` with a spoken reason.

use serde_json::{json, Value};

use super::conn::Out;
use super::events::{self, NOT_UNDERSTOOD};
use super::{Service, TRANSPORT};
use qwenedge_api::{ErrorCode, EventBody, GenerateRequest, GenerateSpec, Place, Prompt, Sampling};
use qwenedge_config::WyomingProgram;
use qwenedge_transport::running::{RequestPath, Submitted};

/// A `transcript` (or `recognize`) to answer.
pub(super) struct Transcript {
    /// What was said.
    pub text: String,
    /// Its language.
    pub language: Option<String>,
    /// Echoed in the answer.
    pub context: Option<Value>,
}

/// What the intent program made of a transcript.
enum Recognition {
    Intent(Value),
    NotAnIntent,
    Refused(ErrorCode),
    Failed(ErrorCode, String),
}

fn route(service: &Service) -> RequestPath<'_> {
    RequestPath {
        scheduler: &service.scheduler,
        requests: &service.requests,
        max_unread_bytes: service.settings.max_unread_bytes,
        unread_key: "wyoming.max_unread_bytes",
        transport: TRANSPORT,
    }
}

/// Whether `code` is the daemon declining (heat, load, memory, restart) rather than failing.
fn refusal(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Thermal | ErrorCode::Overloaded | ErrorCode::Memory | ErrorCode::ShuttingDown | ErrorCode::Timeout)
}

async fn recognize(service: &Service, t: &Transcript) -> Recognition {
    // A language the sentence templates cannot name is left to `intents.language`.
    let language = t.language.clone().filter(|l| Place { language: Some(l.clone()), ..Place::default() }.check().is_ok());
    // Home Assistant's transcript context names the satellite; `intents.site_areas` maps it to
    // the area "turn on the lights" means.
    let site = ["satellite_id", "device_id"]
        .iter()
        .find_map(|k| t.context.as_ref()?.get(*k)?.as_str().filter(|s| !s.is_empty() && s.len() <= qwenedge_api::MAX_ID_LEN))
        .map(str::to_string);
    let place = Place { language, site_id: site, ..Place::default() };
    let mut spec = GenerateSpec::new(Prompt::Intent { text: t.text.clone(), filter: None, place });
    spec.sampling = Sampling { temperature: service.temperature, ..Sampling::default() };
    let request = match GenerateRequest::new(spec, &service.scheduler.limits()) {
        Ok(r) => r,
        Err(e) => return Recognition::Failed(ErrorCode::BadRequest, e.to_string()),
    };
    let running = match Submitted::submit(route(service), request) {
        Ok(r) => r,
        Err(r) => return Recognition::Refused(r.code),
    };
    match running.collect().await.1 {
        EventBody::Intent { recognized: true, intent: Some(i), slots, .. } => {
            Recognition::Intent(events::intent(&i.name, &slots, &t.context))
        }
        EventBody::Intent { .. } => Recognition::NotAnIntent,
        EventBody::Error { code, .. } if refusal(code) => Recognition::Refused(code),
        EventBody::Error { code, message } => Recognition::Failed(code, message),
        other => Recognition::Failed(ErrorCode::ModelError, format!("unexpected answer {other:?}")),
    }
}

/// The chat request of the handle program: a short spoken answer.
fn handle_request(service: &Service, t: &Transcript) -> Result<GenerateRequest, String> {
    let language = t.language.as_deref().or(service.settings.languages.first().map(String::as_str)).unwrap_or("en");
    let system = format!(
        "You are a voice assistant running on a small device in the user's home. Answer in one or two short \
         spoken sentences, in plain words, without lists, markdown or emoji. Answer in the language with the \
         code '{language}'."
    );
    let messages = vec![json!({"role": "system", "content": system}), json!({"role": "user", "content": t.text})];
    let spec = GenerateSpec {
        max_tokens: Some(service.settings.handle_max_tokens),
        ..GenerateSpec::new(Prompt::Chat { messages, tools: None, thinking: false })
    };
    GenerateRequest::new(spec, &service.scheduler.limits()).map_err(|e| e.to_string())
}

/// Streams a chat answer as `handled-start`, `handled-chunk`…, `handled`, `handled-stop`, or
/// answers `not-handled` with a spoken reason when the request is refused before it starts.
async fn handle(service: &Service, t: &Transcript, out: &mut Out) -> std::io::Result<()> {
    let not_handled = |code: ErrorCode| events::handled(Some(events::spoken_reason(code)), &t.context);
    let request = match handle_request(service, t) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "Wyoming: transcript refused");
            return out.send("not-handled", &not_handled(ErrorCode::BadRequest)).await;
        }
    };
    let mut running = match Submitted::submit(route(service), request) {
        Ok(r) => r,
        Err(r) => return out.send("not-handled", &not_handled(r.code)).await,
    };
    let mut event = running.next().await;
    match &event {
        Some(EventBody::Error { code, .. }) => return out.send("not-handled", &not_handled(*code)).await,
        None => return out.send("not-handled", &not_handled(ErrorCode::ModelError)).await,
        Some(_) => {}
    }
    out.send("handled-start", &events::handled(None, &t.context)).await?;
    let mut text = String::new();
    loop {
        match event {
            Some(EventBody::Token { text: piece }) => {
                if !piece.is_empty() {
                    text.push_str(&piece);
                    out.send("handled-chunk", &json!({"text": piece})).await?;
                }
            }
            Some(EventBody::Done { text: all, .. }) => {
                text = all;
                break;
            }
            Some(EventBody::Error { code, .. }) => {
                let reason = events::spoken_reason(code);
                out.send("handled-chunk", &json!({"text": format!(" {reason}")})).await?;
                text = format!("{} {reason}", text.trim_end());
                break;
            }
            Some(_) | None => break,
        }
        event = running.next().await;
    }
    out.send("handled", &events::handled(Some(text.trim()), &t.context)).await?;
    // Home Assistant closes the connection once it has `handled`; a failed write here is fine.
    let _ = out.send("handled-stop", &json!({})).await;
    Ok(())
}

/// Answers one transcript.
pub(super) async fn answer(service: &Service, t: Transcript, out: &mut Out) -> std::io::Result<()> {
    let settings = &service.settings;
    if !settings.offers(WyomingProgram::Intent) {
        return handle(service, &t, out).await;
    }
    match recognize(service, &t).await {
        Recognition::Intent(event) => out.send("intent", &event).await,
        Recognition::NotAnIntent if settings.offers(WyomingProgram::Handle) => handle(service, &t, out).await,
        Recognition::NotAnIntent => out.send("not-recognized", &events::not_recognized(NOT_UNDERSTOOD, &t.context)).await,
        Recognition::Refused(code) => out.send("not-recognized", &events::not_recognized(events::spoken_reason(code), &t.context)).await,
        Recognition::Failed(code, message) => {
            tracing::warn!(code = code.as_str(), error = %message, "Wyoming: intent request failed");
            out.send("error", &events::error(&format!("{} ({message})", events::spoken_reason(code)), code.as_str())).await
        }
    }
}
