//! The pieces of the static graphs an NPU needs, checked against ONNX Runtime's own kernels:
//! `models/npu/chunked_delta.py` builds the gated delta rule over a chunk of tokens in standard
//! ONNX (what a static prefill graph needs in place of com.microsoft's LinearAttention) and
//! compares it with ONNX Runtime's LinearAttention token by token — the fixtures' and the 0.8B
//! model's head shapes, chunks of 16 and 64, full and padded, the state carried across chunks;
//! `models/npu/chunked_conv_rope.py` does the same for the causal convolution with its state and
//! the rotary embedding.

use std::process::Command;

use crate::common::wait::Bounded;

/// Runs `models/npu/SCRIPT` with the fixtures' Python; it must find every difference within
/// its tolerance.
fn check(script: &str) {
    let python = std::env::var("QWENEDGE_FIXTURE_PYTHON").expect("QWENEDGE_FIXTURE_PYTHON (deploy/test.sh sets it: models/venv.sh)");
    let path = format!("{}/../models/npu/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python).arg(path).output_in_time();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", stdout.lines().last().unwrap_or_default());
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("within 1e-04"), "{stdout}");
}

#[test]
fn the_chunked_delta_rule_in_standard_onnx_equals_onnx_runtimes_kernel() {
    check("chunked_delta.py");
}

#[test]
fn the_chunked_convolution_and_rotary_embedding_in_standard_onnx_equal_onnx_runtimes_kernels() {
    check("chunked_conv_rope.py");
}
