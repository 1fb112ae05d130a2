//! The pieces of the static graphs an NPU needs, checked against ONNX Runtime's own kernels:
//! `models/npu/chunked_delta.py` builds the gated delta rule over a chunk of tokens in standard
//! ONNX (what a static prefill graph needs in place of com.microsoft's LinearAttention) and
//! compares it with ONNX Runtime's LinearAttention token by token — the fixtures' and the 0.8B
//! model's head shapes, chunks of 16 and 64, full and padded, the state carried across chunks.

use std::process::Command;

use crate::common::wait::Bounded;

#[test]
fn the_chunked_delta_rule_in_standard_onnx_equals_onnx_runtimes_kernel() {
    let python = std::env::var("QWENEDGE_FIXTURE_PYTHON").expect("QWENEDGE_FIXTURE_PYTHON (deploy/test.sh sets it: models/venv.sh)");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/npu/chunked_delta.py");
    let out = Command::new(python).arg(script).output_in_time();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", stdout.lines().last().unwrap_or_default());
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("within 1e-04"), "{stdout}");
}
