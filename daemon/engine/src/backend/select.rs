//! Which runtime runs a model: `model.backend = "ort" | "tract" | "static" | "auto"`. `auto` takes ONNX
//! Runtime when its library loads — over the directory's static graphs when it has them and the
//! first provider compiles fixed shapes only (QNN's HTP) — and the pure-Rust tract backend otherwise, provided this build
//! has it, no library was named explicitly (a named library that fails is an error to report),
//! and `model.strict_providers` does not forbid leaving the configured accelerator providers.
//! It says why it chose what it chose.

use std::collections::BTreeMap;
use std::path::Path;

use super::ort::{OrtBackend, OrtOptions, StaticBackend, STATIC_JSON};
use super::{runtime, Backend, BackendError};
use crate::model::ModelSpec;

/// The configured choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// ONNX Runtime when its library loads (over the directory's static graphs when it has them
    /// and the first provider is QNN's HTP), else tract.
    #[default]
    Auto,
    /// ONNX Runtime only.
    Ort,
    /// tract only (needs a build with the `tract` feature).
    Tract,
    /// ONNX Runtime over the directory's static graphs (`static.json`, made by
    /// `models/npu/static_graphs.py`): for providers that compile fixed shapes only (QNN's HTP).
    Static,
}

/// Whether this build contains the tract backend.
pub const TRACT_BUILT: bool = cfg!(feature = "tract");

/// A loaded backend and the reason it was chosen.
pub struct Chosen {
    /// The backend.
    pub backend: Box<dyn Backend>,
    /// One line for logs, `status` and `doctor`.
    pub why: String,
}

fn tract(spec: &ModelSpec, ort: &OrtOptions) -> Result<Box<dyn Backend>, BackendError> {
    #[cfg(feature = "tract")]
    {
        let opts = super::tract::TractOptions { threads: ort.threads, ..Default::default() };
        Ok(Box::new(super::tract::TractBackend::load(spec, &opts)?))
    }
    #[cfg(not(feature = "tract"))]
    {
        let _ = ort;
        Err(BackendError::Load {
            path: spec.onnx_path.clone(),
            msg: "this build has no tract backend (rebuild with the `tract` cargo feature)".into(),
        })
    }
}

/// Whether an ONNX Runtime library was named explicitly (`explicit`, else `ORT_DYLIB_PATH`)
/// rather than searched for.
pub fn named_library(explicit: Option<&std::path::Path>) -> bool {
    explicit.is_some() || std::env::var_os("ORT_DYLIB_PATH").is_some_and(|v| !v.is_empty())
}

/// Whether the provider `name` with `options` compiles fixed shapes only (QNN's HTP backend).
pub fn fixed_shapes_only(name: &str, options: &BTreeMap<String, String>) -> bool {
    name.eq_ignore_ascii_case("qnn") && options.get("backend_type").is_some_and(|b| b.eq_ignore_ascii_case("htp"))
}

/// Whether `auto` runs `dir` through its static graphs: it has them (`static.json`) and the
/// first provider (`first`: its name and options) compiles fixed shapes only.
pub fn auto_static(dir: &Path, first: Option<(&str, &BTreeMap<String, String>)>) -> bool {
    first.is_some_and(|(name, options)| fixed_shapes_only(name, options)) && dir.join(STATIC_JSON).is_file()
}

/// Loads the backend `kind` names for `spec`.
pub fn load(spec: &ModelSpec, kind: BackendKind, ort: &OrtOptions) -> Result<Chosen, BackendError> {
    match kind {
        BackendKind::Ort => Ok(Chosen { backend: Box::new(OrtBackend::load(spec, ort)?), why: "model.backend = \"ort\"".into() }),
        BackendKind::Tract => Ok(Chosen { backend: tract(spec, ort)?, why: "model.backend = \"tract\"".into() }),
        BackendKind::Static => Ok(Chosen { backend: Box::new(StaticBackend::load(spec, ort)?), why: "model.backend = \"static\"".into() }),
        BackendKind::Auto => match runtime::load(ort.library.as_deref()) {
            Ok(rt) if auto_static(&spec.dir, ort.providers.first().map(|p| (p.name.as_str(), &p.options))) => Ok(Chosen {
                backend: Box::new(StaticBackend::load(spec, ort)?),
                why: format!("auto: ONNX Runtime {}, the directory's static graphs for {}'s HTP (fixed shapes only)", rt.version, ort.providers[0].name),
            }),
            Ok(rt) => Ok(Chosen {
                backend: Box::new(OrtBackend::load(spec, ort)?),
                why: format!("auto: ONNX Runtime {} loaded from {}", rt.version, rt.path.display()),
            }),
            // A library the user named (configuration, --onnxruntime, ORT_DYLIB_PATH) that does
            // not load is a mistake to report, not a reason to switch runtimes.
            Err(e) if named_library(ort.library.as_deref()) => Err(e.into()),
            Err(e) if TRACT_BUILT && ort.strict_providers && ort.providers.iter().any(|p| !p.name.eq_ignore_ascii_case("cpu")) => Err(BackendError::Load {
                path: spec.onnx_path.clone(),
                msg: format!(
                    "ONNX Runtime unavailable ({e}), and model.strict_providers forbids falling back from the configured execution providers to tract on the CPU"
                ),
            }),
            Err(e) if TRACT_BUILT => Ok(Chosen { backend: tract(spec, ort)?, why: format!("auto: ONNX Runtime unavailable ({e}); using tract") }),
            Err(e) => Err(e.into()),
        },
    }
}
