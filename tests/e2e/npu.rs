//! The pieces of the static graphs an NPU needs, checked against ONNX Runtime's own kernels:
//! `models/npu/chunked_delta.py` builds the gated delta rule over a chunk of tokens in standard
//! ONNX (what a static prefill graph needs in place of com.microsoft's LinearAttention) and
//! compares it with ONNX Runtime's LinearAttention token by token — the fixtures' and the 0.8B
//! model's head shapes, chunks of 16 and 64, full and padded, the state carried across chunks;
//! `models/npu/chunked_conv_rope.py` does the same for the causal convolution with its state and
//! the rotary embedding. `models/npu/static_graphs.py` assembles the static decode and prefill
//! graphs from an export, and `models/npu/check_static.py` checks them against it on the CPU
//! provider, every fixture: states after a chunked prefill against one token at a time, greedy
//! tokens. `models/npu/check_htp.py` runs both graphs on QNN's HTP simulator (the PyPI plugin):
//! every node but the 4-bit embedding lookup on the HTP, the second start loading the context
//! binaries the first wrote, the top tokens of fp16 against the CPU's.

use std::process::Command;
use std::time::Duration;

use crate::common::fixtures;
use crate::common::wait::{Bounded, COMMAND};
use crate::plugin_eps::plugin;

/// Runs `models/npu/SCRIPT ARGS` with the fixtures' Python (within `limit`, before scaling);
/// it must succeed and print `verdict`.
fn run(script: &str, args: &[String], limit: Duration, verdict: &str) {
    let python = std::env::var("QWENEDGE_FIXTURE_PYTHON").expect("QWENEDGE_FIXTURE_PYTHON (deploy/test.sh sets it: models/venv.sh)");
    let path = format!("{}/../models/npu/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python).arg(path).args(args).output_within(limit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(verdict), "{stdout}");
}

/// A check script that must find every difference within its tolerance.
fn check(script: &str, args: &[String]) {
    run(script, args, COMMAND, "within 1e-04");
}

#[test]
fn the_chunked_delta_rule_in_standard_onnx_equals_onnx_runtimes_kernel() {
    check("chunked_delta.py", &[]);
}

#[test]
fn the_chunked_convolution_and_rotary_embedding_in_standard_onnx_equal_onnx_runtimes_kernels() {
    check("chunked_conv_rope.py", &[]);
}

#[test]
fn the_static_graphs_of_every_fixture_give_the_exports_tokens_and_states_on_the_cpu() {
    let dirs = ["tiny-a/fp32", "tiny-a/fp32-oldnames", "tiny-a/int4", "tiny-a/int4-long", "tiny-b/fp32", "tiny-b/int4"];
    let args: Vec<String> = dirs.iter().map(|d| fixtures().join(d).display().to_string()).collect();
    check("check_static.py", &args);
}

#[test]
fn the_static_graphs_run_on_the_htp_simulator_and_the_second_start_loads_the_context_binaries() {
    let args = vec![fixtures().join("tiny-a/int4").display().to_string(), "--plugin".to_string(), plugin("qnn").display().to_string()];
    run("check_htp.py", &args, Duration::from_secs(300), "all checks hold");
}
