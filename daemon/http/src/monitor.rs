//! `GET /health` (200 while serving — also when the model was unloaded after being idle, which
//! the answer says; 503 while loading, shutting down or critically hot) and `GET /metrics`
//! (the Prometheus text format: requests by transport, operation and outcome, tokens, the
//! queue, time-to-first-token and decode-speed histograms, the prefix cache, the thermal level,
//! SoC temperature, memory available, whether a model is loaded).

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::state::AppState;
use qwenedge_api::{Phase, ThermalLevel};
use qwenedge_scheduler::Histogram;

/// `GET /health`.
pub async fn health(State(state): State<AppState>) -> Response {
    let s = state.scheduler.status();
    let (status, body) = match s.state {
        Phase::Loading => (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "loading", "detail": "the model is loading"})),
        Phase::Draining | Phase::Stopped => (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "shutting_down"})),
        Phase::Ready if s.budget.level == ThermalLevel::Critical => {
            (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "thermal", "detail": "the device is critically hot; requests are refused"}))
        }
        Phase::Ready if !s.model_loaded => (
            StatusCode::OK,
            json!({"status": "ok", "model_loaded": false,
                   "detail": "the model was unloaded after being idle (or failed to load); the next request loads it"}),
        ),
        Phase::Ready => (StatusCode::OK, json!({"status": "ok", "model_loaded": true})),
    };
    (status, Json(body)).into_response()
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    family(out, name, "histogram", help);
    let mut cumulative = 0;
    for (bound, count) in h.bounds.iter().zip(&h.counts) {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    cumulative += h.counts.last().copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum {}", h.sum);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = state.scheduler.metrics();
    let s = state.scheduler.status();
    let mut out = String::new();
    family(&mut out, "qwenedge_requests_total", "counter", "Requests answered, by transport, operation and outcome.");
    for (l, n) in &m.requests {
        let _ = writeln!(
            out,
            "qwenedge_requests_total{{transport=\"{}\",op=\"{}\",outcome=\"{}\"}} {n}",
            label(l.transport),
            label(l.op),
            label(l.outcome)
        );
    }
    for (name, help, v) in [
        ("qwenedge_prompt_tokens_total", "Prompt tokens of completed requests.", m.prompt_tokens),
        ("qwenedge_cached_prompt_tokens_total", "Prompt tokens restored from the prefix cache.", m.cached_tokens),
        ("qwenedge_completion_tokens_total", "Generated tokens of completed requests.", m.completion_tokens),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {v}");
    }
    family(&mut out, "qwenedge_queue_length", "gauge", "Requests waiting for the engine.");
    let _ = writeln!(out, "qwenedge_queue_length{{priority=\"interactive\"}} {}", s.queue.interactive);
    let _ = writeln!(out, "qwenedge_queue_length{{priority=\"background\"}} {}", s.queue.background);
    family(&mut out, "qwenedge_running_requests", "gauge", "Requests the engine is working on.");
    let _ = writeln!(out, "qwenedge_running_requests {}", s.running.len());
    family(
        &mut out,
        "qwenedge_sequences",
        "gauge",
        "Requests in progress, each holding its own model state: on the engine now, or paused for another's turn.",
    );
    let q = &s.sequences;
    let _ = writeln!(out, "qwenedge_sequences{{state=\"running\"}} {}", q.in_progress - q.paused);
    let _ = writeln!(out, "qwenedge_sequences{{state=\"paused\"}} {}", q.paused);
    family(&mut out, "qwenedge_sequence_state_bytes", "gauge", "Memory the states of the requests in progress hold (estimate).");
    let _ = writeln!(out, "qwenedge_sequence_state_bytes {}", (q.held_mb * 1024.0 * 1024.0) as u64);
    histogram(&mut out, "qwenedge_time_to_first_token_seconds", "Arrival to first token.", &m.ttft_s);
    histogram(&mut out, "qwenedge_decode_tokens_per_second", "Decode speed of completed requests.", &m.decode_tok_s);
    let cache = s.cache.unwrap_or_default();
    for (name, help, v) in [
        ("qwenedge_prefix_cache_hits_total", "Prompts that found a cached prefix (since the model loaded).", cache.hits),
        ("qwenedge_prefix_cache_misses_total", "Prompts that found none (since the model loaded).", cache.misses),
        ("qwenedge_prefix_cache_reused_tokens_total", "Prompt tokens not prefilled thanks to the cache.", cache.reused_tokens),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {v}");
    }
    family(&mut out, "qwenedge_prefix_cache_bytes", "gauge", "Bytes the prefix cache holds.");
    let _ = writeln!(out, "qwenedge_prefix_cache_bytes {}", cache.bytes);
    family(&mut out, "qwenedge_thermal_level", "gauge", "Thermal level: 0 normal, 1 warm, 2 hot, 3 critical.");
    let _ = writeln!(out, "qwenedge_thermal_level {}", s.budget.level as u8);
    if let Some(t) = s.budget.temperature_c {
        family(&mut out, "qwenedge_soc_temperature_celsius", "gauge", "Temperature of the watched thermal zone.");
        let _ = writeln!(out, "qwenedge_soc_temperature_celsius {t}");
    }
    if let Some(mb) = s.budget.memory_available_mb {
        family(&mut out, "qwenedge_memory_available_bytes", "gauge", "MemAvailable of the device.");
        let _ = writeln!(out, "qwenedge_memory_available_bytes {}", (mb * 1024.0 * 1024.0) as u64);
    }
    family(&mut out, "qwenedge_model_loaded", "gauge", "1 while a model is loaded.");
    let _ = writeln!(out, "qwenedge_model_loaded {}", u8::from(s.model_loaded));
    family(&mut out, "qwenedge_uptime_seconds", "gauge", "Seconds since the daemon started.");
    let _ = writeln!(out, "qwenedge_uptime_seconds {}", s.uptime_s.unwrap_or(0));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}
