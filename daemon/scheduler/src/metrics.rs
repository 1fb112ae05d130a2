//! What the scheduler counts for monitoring: every answered request by transport, operation
//! and outcome; tokens in and out; time to first token and decode speed as histograms. Pure
//! data, updated under the board's lock where each request's terminal event is sent; the HTTP
//! transport renders it for Prometheus.

use std::collections::BTreeMap;

use qwenedge_api::{EventBody, IntentSource, Prompt};

/// Upper bounds of the time-to-first-token buckets (seconds).
pub const TTFT_BUCKETS_S: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds of the decode-speed buckets (tokens per second).
pub const DECODE_BUCKETS_TOK_S: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 100.0, 200.0];

/// A histogram with fixed bucket bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds of the buckets (the last, +Inf, is implied).
    pub bounds: &'static [f64],
    /// Observations per bucket, not cumulative (one more for +Inf).
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    /// Records one value.
    pub fn observe(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        let i = self.bounds.iter().position(|b| v <= *b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// Where a request came from, for the request counter's labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels {
    /// `unix`, `mqtt`, `openai`, `ollama`, …
    pub transport: &'static str,
    /// `chat`, `complete` or `intent`.
    pub op: &'static str,
    /// `done`, `intent`, or the error code.
    pub outcome: &'static str,
}

/// The counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// Answered requests.
    pub requests: BTreeMap<Labels, u64>,
    /// Prompt tokens of completed requests.
    pub prompt_tokens: u64,
    /// Of which restored from the prefix cache.
    pub cached_tokens: u64,
    /// Generated tokens of completed requests.
    pub completion_tokens: u64,
    /// Arrival to first token.
    pub ttft_s: Histogram,
    /// Decode speed.
    pub decode_tok_s: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: BTreeMap::new(),
            prompt_tokens: 0,
            cached_tokens: 0,
            completion_tokens: 0,
            ttft_s: Histogram::new(TTFT_BUCKETS_S),
            decode_tok_s: Histogram::new(DECODE_BUCKETS_TOK_S),
        }
    }
}

/// The operation label of a prompt.
pub fn op_of(prompt: &Prompt) -> &'static str {
    match prompt {
        Prompt::Chat { .. } => "chat",
        Prompt::Text(_) => "complete",
        Prompt::Intent { .. } => "intent",
    }
}

impl Metrics {
    /// Records a request of `transport` and `op` that ended with `body`.
    pub fn record(&mut self, transport: &'static str, op: &'static str, body: &EventBody) {
        let outcome = match body {
            EventBody::Done { .. } => "done",
            EventBody::Intent { source: IntentSource::Local, .. } => "local_intent",
            EventBody::Intent { .. } => "intent",
            EventBody::Error { code, .. } => code.as_str(),
            _ => "other",
        };
        *self.requests.entry(Labels { transport, op, outcome }).or_default() += 1;
        if let EventBody::Done { usage, timings, .. } | EventBody::Intent { usage, timings, source: IntentSource::Model, .. } = body {
            self.prompt_tokens += usage.prompt_tokens as u64;
            self.cached_tokens += usage.cached_tokens as u64;
            self.completion_tokens += usage.completion_tokens as u64;
            self.ttft_s.observe(timings.ttft_ms / 1e3);
            if usage.completion_tokens > 1 {
                self.decode_tok_s.observe(timings.decode_tok_s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwenedge_api::{ErrorCode, FinishReason, RequestTimings, Usage};

    #[test]
    fn requests_are_counted_by_labels_and_times_by_bucket() {
        let mut m = Metrics::default();
        let timings = RequestTimings { ttft_ms: 300.0, decode_tok_s: 25.0, ..Default::default() };
        let usage = Usage { prompt_tokens: 10, completion_tokens: 5, cached_tokens: 8 };
        let done = EventBody::Done { text: String::new(), finish_reason: FinishReason::Stop, usage, timings };
        m.record("openai", "chat", &done);
        m.record("openai", "chat", &done);
        m.record("unix", "complete", &EventBody::error(ErrorCode::Overloaded, "full"));
        assert_eq!(m.requests[&Labels { transport: "openai", op: "chat", outcome: "done" }], 2);
        assert_eq!(m.requests[&Labels { transport: "unix", op: "complete", outcome: "overloaded" }], 1);
        assert_eq!((m.prompt_tokens, m.cached_tokens, m.completion_tokens), (20, 16, 10));
        assert_eq!(m.ttft_s.counts[3], 2, "0.3 s falls in the 0.5 s bucket");
        assert_eq!(m.decode_tok_s.counts[5], 2, "25 tok/s falls in the 30 tok/s bucket");
        m.ttft_s.observe(100.0);
        assert_eq!(m.ttft_s.counts[TTFT_BUCKETS_S.len()], 1, "+Inf");
    }
}
