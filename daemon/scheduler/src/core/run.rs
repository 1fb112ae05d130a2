//! The requests in progress on the engine thread: starting one (preparing it, memory
//! admission counting every sequence already held, the model's start) and stepping one (a
//! prefill chunk or a token, its events, the turn it counts against, its end). Which one steps
//! when is decided in `core.rs`.

use std::time::{Duration, Instant};

use tracing::info_span;

use super::turns::Did;
use super::{answer_error, context, failed, log_done, max_tokens, Active, Core, Ran, WorkInputs};
use crate::job::Job;
use crate::model::{Clock, Loader, Model, Progress, Refusal};
use qwenedge_api::{ErrorCode, EventBody, Priority};

impl<L: Loader> Core<L> {
    /// Memory the requests in progress may still take (MiB): what each was admitted for less
    /// what its state holds now.
    pub(super) fn promised_mb(&self) -> f64 {
        let Some(model) = self.model.as_ref() else { return 0.0 };
        self.active.iter().map(|a| (a.need_mb - model.held_mb(&a.run)).max(0.0)).sum()
    }

    /// Interactive requests in progress.
    pub(super) fn interactive_held(&self) -> usize {
        self.active.iter().filter(|a| a.interactive()).count()
    }

    pub(super) fn start(&mut self, job: Job, snap: &WorkInputs, load_ms: f64, ran: &mut Ran) {
        let _span = info_span!("request", id = %job.id()).entered();
        let promised = self.promised_mb();
        let interactive_held = self.interactive_held();
        let Some(model) = self.model.as_mut() else {
            let why = self.last_error.as_deref().unwrap_or("see the daemon log");
            let msg = format!("no model is loaded (loading it failed: {why}); the next request tries again");
            return answer_error(ran, job, Refusal::new(ErrorCode::ModelError, msg));
        };
        let ctx = context(snap, max_tokens(&job, snap));
        let prepared = match model.prepare(job.request(), &ctx) {
            Ok(p) => p,
            Err(refused) => return answer_error(ran, job, refused),
        };
        if let Some(room) = snap.budget.memory_room_mb.filter(|room| prepared.need_mb + promised > *room) {
            let interactive = job.request().priority() == Priority::Interactive;
            if prepared.need_mb <= room && interactive && interactive_held > 0 {
                // It fits once a request in progress ends: it waits first in line till then.
                tracing::info!(
                    need_mb = prepared.need_mb,
                    room_mb = room,
                    promised_mb = promised,
                    "waiting for memory held by requests in progress"
                );
                self.memory_wait = Some(interactive_held);
                ran.requeue = Some(job);
                return;
            }
            let held =
                if promised > 0.0 { format!(" ({promised:.0} MiB of it promised to the requests in progress)") } else { String::new() };
            let message = format!(
                "this request needs about {:.0} MiB for {} tokens of state, but only {room:.0} MiB is free{held}; ask for fewer max_tokens or a shorter prompt",
                prepared.need_mb, prepared.tokens
            );
            return answer_error(ran, job, Refusal::new(ErrorCode::Memory, message));
        }
        self.memory_wait = None;
        match model.start(prepared.job) {
            Ok(run) => {
                let deadline = job.deadline(snap.settings.scheduler.default_deadline_ms);
                self.next_seq += 1;
                let seq = self.next_seq;
                let started = Instant::now();
                if job.request().priority() == Priority::Interactive {
                    self.turns.give(seq, snap.settings.scheduler.turn_tokens);
                }
                let need_mb = prepared.need_mb;
                self.active.push(Active { seq, job, run, started, deadline, load_ms, paced: Duration::ZERO, need_mb });
                self.step(self.active.len() - 1, snap, ran);
            }
            Err(refused) => answer_error(ran, job, refused),
        }
    }

    /// One step of the request in progress at `i`. Cancellation and deadlines were checked
    /// just before (`settle`).
    pub(super) fn step(&mut self, i: usize, snap: &WorkInputs, ran: &mut Ran) {
        let Some(model) = self.model.as_mut() else {
            let a = self.active.remove(i);
            return answer_error(ran, a.job, Refusal::new(ErrorCode::ModelError, "no model is loaded"));
        };
        let a = &mut self.active[i];
        let _span = info_span!("request", id = %a.job.id()).entered();
        ran.charged = Some(a.seq);
        self.last_stepped = Some(a.seq);
        let began = Instant::now();
        let progress = model.step(&mut a.run);
        ran.busy = began.elapsed();
        let outcome = match progress {
            // An interactive prompt is not paced: pacing starts with its first token, so a
            // warm device still answers a voice request promptly.
            Ok(Progress::Prefilled) => {
                if a.interactive() {
                    ran.busy = Duration::ZERO;
                }
                Ok(if model.prompt_done(&a.run) { Did::LastChunk } else { Did::Chunk })
            }
            Ok(Progress::Token(piece)) => {
                if a.job.request().stream() && !piece.is_empty() {
                    // A dropped token means the client is gone or not reading; its
                    // requests are cancelled already and the next turn sees it.
                    a.job.send(EventBody::Token { text: piece });
                }
                Ok(Did::Token)
            }
            Ok(Progress::Finished(tail)) => {
                if a.job.request().stream() && !tail.is_empty() {
                    a.job.send(EventBody::Token { text: tail });
                }
                Ok(Did::Ended)
            }
            Err(error) => Err(Refusal::new(ErrorCode::ModelError, error.to_string())),
        };
        let seq = a.seq;
        self.turns.stepped(seq, outcome.as_ref().map_or(Did::Ended, |did| *did));
        match outcome {
            Ok(Did::Ended) => {
                let a = self.active.remove(i);
                let clock = Clock { received: a.job.received(), started: a.started, load_ms: a.load_ms, paced: a.paced };
                match model.finish(a.run, &clock, &context(snap, 0)) {
                    Ok(body) => {
                        log_done(&body);
                        ran.answers.push((a.job, body));
                    }
                    Err(error) => answer_error(ran, a.job, Refusal::new(ErrorCode::ModelError, error.to_string())),
                }
            }
            Ok(_) => {}
            Err(refused) => {
                let a = self.active.remove(i);
                answer_error(ran, a.job, refused);
            }
        }
    }

    /// Ends the requests in progress that were cancelled or whose deadline passed (a paused one
    /// is answered at once, not at its next turn).
    pub(super) fn stop_ended(&mut self, now: Instant) -> Vec<(Job, EventBody)> {
        let mut ended = Vec::new();
        let mut i = 0;
        while i < self.active.len() {
            let a = &self.active[i];
            let refused = if let Some(reason) = a.job.cancel().reason() {
                Refusal::new(ErrorCode::Cancelled, reason.message(false))
            } else if a.deadline.is_some_and(|d| now >= d) {
                let n = self.model.as_ref().map_or(0, |m| m.generated(&a.run));
                Refusal::new(ErrorCode::Timeout, format!("the deadline passed after {n} generated tokens"))
            } else {
                i += 1;
                continue;
            };
            let a = self.active.remove(i);
            self.turns.stepped(a.seq, Did::Ended);
            let _span = info_span!("request", id = %a.job.id()).entered();
            ended.push(failed(a.job, refused));
        }
        ended
    }
}
