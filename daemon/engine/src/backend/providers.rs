//! Execution providers (NPU/GPU/accelerated CPU kernels) in the configured priority order.
//!
//! At load each requested provider is checked against what the loaded `libonnxruntime` was
//! compiled with, then registered with its options. A provider that is missing or fails to
//! register is skipped with the reason recorded; with `strict` that is a start-up error
//! instead. ONNX Runtime's CPU provider always comes last and runs whatever the others do not.
//! A provider with a plugin library (`[[model.ep_library]]`) is added through
//! [`plugins`](super::plugins) instead of the compiled-in list.

use std::collections::BTreeMap;
use std::ffi::CStr;

use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ExecutionProviderDispatch};
use ort::session::builder::SessionBuilder;
use serde::Serialize;

use super::plugins::{self, EpLibrary};
use super::runtime::Runtime;

/// Provider names accepted in `model.execution_providers`, with ONNX Runtime's names.
pub const PROVIDERS: &[(&str, &str)] = &[
    ("qnn", "QNNExecutionProvider"),
    ("xnnpack", "XnnpackExecutionProvider"),
    ("cuda", "CUDAExecutionProvider"),
    ("tensorrt", "TensorrtExecutionProvider"),
    ("openvino", "OpenVINOExecutionProvider"),
    ("acl", "ACLExecutionProvider"),
    ("rknpu", "RknpuExecutionProvider"),
    ("nnapi", "NnapiExecutionProvider"),
    ("coreml", "CoreMLExecutionProvider"),
    ("cpu", "CPUExecutionProvider"),
];

/// ONNX Runtime's name for a configured provider name.
pub fn ort_name(name: &str) -> Option<&'static str> {
    PROVIDERS.iter().find(|(n, _)| *n == name).map(|(_, o)| *o)
}

/// One requested provider and its options (passed to ONNX Runtime as given, e.g. QNN
/// `backend_path`, `htp_performance_mode`; TensorRT `trt_fp16_enable`,
/// `trt_engine_cache_enable`, `trt_engine_cache_path`; CUDA `device_id`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderRequest {
    /// Configured name (`qnn`, `cuda`, …).
    pub name: String,
    /// Provider options.
    pub options: BTreeMap<String, String>,
    /// The plugin library that provides it (else it must be compiled into the runtime).
    pub plugin: Option<EpLibrary>,
}

/// What happened to one requested provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderReport {
    /// Configured name.
    pub name: String,
    /// Whether the session uses it.
    pub active: bool,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The plugin library it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    /// The plugin device it runs on (`NPU (Qualcomm)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// ONNX Runtime's name for it (how the placement report lists it).
    #[serde(skip)]
    pub ort_name: String,
    /// What it said, while the session was created, about each node it did not take.
    #[serde(skip)]
    pub rejections: Vec<String>,
}

impl ProviderReport {
    fn new(req: &ProviderRequest, active: bool, reason: Option<String>) -> Self {
        Self {
            name: req.name.clone(),
            active,
            reason,
            library: req.plugin.as_ref().map(|p| p.path.display().to_string()),
            device: None,
            ort_name: ort_name(&req.name).unwrap_or("unknown").to_string(),
            rejections: Vec::new(),
        }
    }
}

/// Providers compiled into the loaded library (ONNX Runtime's names).
pub fn available() -> Vec<String> {
    let api = ort::api();
    let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut n: std::ffi::c_int = 0;
    // SAFETY: GetAvailableProviders writes an array of `n` C strings that stays valid until
    // ReleaseAvailableProviders; statuses are checked and released.
    unsafe {
        let status = (api.GetAvailableProviders)(&mut list, &mut n);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return Vec::new();
        }
        if list.is_null() {
            return Vec::new();
        }
        let names = (0..n as usize).map(|i| CStr::from_ptr(*list.add(i)).to_string_lossy().into_owned()).collect();
        let status = (api.ReleaseAvailableProviders)(list, n);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
        }
        names
    }
}

fn dispatch(name: &str, options: &BTreeMap<String, String>) -> Option<ExecutionProviderDispatch> {
    fn with<E: ArbitrarilyConfigurableExecutionProvider>(mut e: E, options: &BTreeMap<String, String>) -> E {
        for (k, v) in options {
            e = e.with_arbitrary_config(k, v);
        }
        e
    }
    Some(match name {
        "qnn" => with(ep::QNN::default(), options).build(),
        "xnnpack" => with(ep::XNNPACK::default(), options).build(),
        "cuda" => with(ep::CUDA::default(), options).build(),
        "tensorrt" => with(ep::TensorRT::default(), options).build(),
        "openvino" => with(ep::OpenVINO::default(), options).build(),
        "acl" => ep::ACL::default().build(),
        "rknpu" => ep::RKNPU::default().build(),
        "nnapi" => ep::NNAPI::default().build(),
        "coreml" => ep::CoreML::default().build(),
        _ => return None,
    })
}

/// Registers `requests` in order. Returns the builder, one report per request, and the name of
/// the provider that runs first (`cpu` when no other one is active). With `strict`, the first
/// skipped provider is returned as an error message instead.
pub fn register(
    mut builder: SessionBuilder,
    requests: &[ProviderRequest],
    strict: bool,
    rt: &Runtime,
) -> Result<(SessionBuilder, Vec<ProviderReport>, String), (String, String)> {
    let compiled = available();
    let mut reports = Vec::new();
    let mut primary = None;
    for req in requests {
        if req.name == "cpu" {
            reports.push(ProviderReport::new(req, true, None));
            primary.get_or_insert_with(|| "cpu".to_string());
            continue;
        }
        let outcome = match &req.plugin {
            Some(lib) => {
                let (b, appended) = plugins::append(builder, rt, lib, &req.options);
                builder = b;
                appended.map(|a| ProviderReport { device: Some(a.device), ort_name: a.ort_name, ..ProviderReport::new(req, true, None) })
            }
            None => {
                let ort = ort_name(&req.name).unwrap_or("unknown");
                match dispatch(&req.name, &req.options) {
                    _ if !compiled.iter().any(|c| c == ort) => {
                        Err(format!("not compiled into {} (it has: {})", rt.path.display(), compiled.join(", ")))
                    }
                    None => continue,
                    Some(d) => match builder.with_execution_providers([d.error_on_failure()]) {
                        Ok(b) => {
                            builder = b;
                            Ok(ProviderReport::new(req, true, None))
                        }
                        Err(e) => {
                            let why = format!("registration failed: {}", e.message());
                            builder = e.recover();
                            Err(why)
                        }
                    },
                }
            }
        };
        match outcome {
            Ok(report) => {
                primary.get_or_insert_with(|| req.name.clone());
                reports.push(report);
            }
            Err(why) if strict => return Err((req.name.clone(), why)),
            Err(why) => reports.push(ProviderReport::new(req, false, Some(why))),
        }
    }
    Ok((builder, reports, primary.unwrap_or_else(|| "cpu".into())))
}
