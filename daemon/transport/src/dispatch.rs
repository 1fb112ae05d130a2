//! What a request-stream transport (the Unix socket, MQTT) does with each op of a parsed
//! request, written once: a generation is registered under its id and handed to the scheduler
//! (a refusal answered at once on its own responder), a cancel acts on the request table, and
//! `status` and `models` are answered from the scheduler. Where transports differ — how a
//! duplicate id or an unknown cancel is answered, where a reply goes — they say so through
//! [`Session`].

use tracing::debug;

use qwenedge_api::{EventBody, Op};
use qwenedge_scheduler::{Cancelled, Duplicate, Job, Refusal, Scheduler, Ticket};

/// One transport's side of a request: its request table client and where replies go.
pub trait Session {
    /// Registers the generation request `id`.
    fn begin(&mut self, id: &str) -> Result<Ticket, Duplicate>;
    /// `id` is already in progress (answered once, or refused: the transport's choice).
    fn duplicate(&mut self, id: &str);
    /// Cancels the request `id`.
    fn cancel(&mut self, id: &str) -> Cancelled;
    /// A cancel named no request in progress.
    fn unknown_cancel(&mut self, id: &str);
    /// Answers `id` with one event.
    fn reply(&mut self, id: &str, body: EventBody);
}

/// Carries out `op` of the request `id` on `session`.
pub fn dispatch(scheduler: &Scheduler, id: &str, op: Op, session: &mut impl Session) {
    match op {
        Op::Generate(request) => match session.begin(id) {
            Ok(ticket) => {
                submit(scheduler, Job::new(ticket, *request));
            }
            Err(_) => session.duplicate(id),
        },
        Op::Cancel => match session.cancel(id) {
            Cancelled::Now => scheduler.nudge(),
            Cancelled::AlreadyFinished => {}
            Cancelled::Unknown => session.unknown_cancel(id),
        },
        Op::Status => session.reply(id, EventBody::Status(Box::new(scheduler.status()))),
        Op::Models => session.reply(id, EventBody::Models { models: scheduler.models() }),
    }
}

/// Hands `job` to the scheduler; a refusal (queue full, shutting down, too hot) is answered on
/// the job's own responder at once, and returned for the transport's log.
pub fn submit(scheduler: &Scheduler, job: Job) -> Option<Refusal> {
    let rejected = scheduler.submit(job).err()?;
    let refusal = rejected.refusal.clone();
    debug!(code = ?refusal.code, message = %refusal.message, "request refused");
    rejected.answer();
    Some(refusal)
}
