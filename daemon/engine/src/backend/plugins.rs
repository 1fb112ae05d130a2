//! Execution providers shipped as plugin libraries (`[[model.ep_library]]`): Qualcomm's QNN
//! (`onnxruntime-qnn`), Intel's OpenVINO (`onnxruntime-ep-openvino`) and any other library that
//! exports ONNX Runtime's `CreateEpFactories`.
//!
//! A library is registered with the process's ONNX Runtime environment once (ONNX Runtime keeps
//! it until the process ends); the outcome, good or bad, is remembered so a reload reports the
//! same thing instead of registering twice. The devices that appear with a library are its own;
//! one of them is picked by `device` (CPU/GPU/NPU) and `vendor`, else the first it offers, and
//! appended to the session with its options (`<EpName>.<key>`). Every failure is one line that
//! names the file and says why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::device::Device;
use ort::memory::DeviceType;
use ort::session::builder::SessionBuilder;
use ort::AsPointer;
use serde::{Deserialize, Serialize};

use super::providers;
use super::runtime::Runtime;

/// A kind of device a plugin can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The host CPU (OpenVINO's CPU plugin; QNN's simulators on x86).
    Cpu,
    /// A GPU (Adreno, Intel iGPU).
    Gpu,
    /// An NPU (Hexagon HTP, Intel NPU).
    Npu,
}

impl DeviceKind {
    fn of(ty: DeviceType) -> Option<Self> {
        match ty {
            DeviceType::CPU => Some(Self::Cpu),
            DeviceType::GPU => Some(Self::Gpu),
            DeviceType::NPU => Some(Self::Npu),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Cpu => "CPU",
            Self::Gpu => "GPU",
            Self::Npu => "NPU",
        }
    }
}

/// One `[[model.ep_library]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpLibrary {
    /// The name `model.execution_providers` and `model.provider_options` use (`qnn`,
    /// `openvino`, or a name of the user's choosing for another vendor's plugin).
    pub ep: String,
    /// The plugin library (`libonnxruntime_providers_qnn.so`,
    /// `libonnxruntime_providers_openvino_plugin.so`).
    pub path: PathBuf,
    /// Which of the library's devices to use: `cpu`, `gpu` or `npu` (default: the first one it
    /// offers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceKind>,
    /// Only a device whose maker or EP vendor contains this (case-insensitive: `qualcomm`,
    /// `intel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
}

impl EpLibrary {
    /// The name the library is registered under: ONNX Runtime's name for a known provider (QNN's
    /// devices take it as their EP name), else the configured one.
    fn registration_name(&self) -> String {
        providers::ort_name(&self.ep).map_or_else(|| self.ep.clone(), str::to_string)
    }
}

/// A library registered (or refused) in this process.
struct Registration {
    name: String,
    path: PathBuf,
    /// The EP names of the devices that came with it, or why it was refused.
    outcome: Result<Vec<String>, String>,
}

static REGISTERED: Mutex<Vec<Registration>> = Mutex::new(Vec::new());

/// What ONNX Runtime's refusal means, in one line naming the file.
fn explain(path: &Path, msg: &str) -> String {
    let file = path.display();
    if msg.contains("CreateEpFactories") || msg.contains("ReleaseEpFactory") {
        format!("{file} is not an ONNX Runtime execution-provider plugin (it does not export CreateEpFactories)")
    } else if msg.contains("cannot open shared object") || msg.contains("wrong ELF class") || msg.contains("invalid ELF header") {
        let why = msg.rsplit(": ").next().unwrap_or(msg).trim();
        format!("{file} could not be loaded: {why}")
    } else {
        format!("{file} was refused by ONNX Runtime: {}", msg.trim())
    }
}

/// Registers `lib` once per process and returns the EP names of its devices. A library that
/// registered, or failed to, keeps that outcome until the process ends (ONNX Runtime cannot
/// load one again); naming another file under the same provider needs a restart.
pub fn register(rt: &Runtime, lib: &EpLibrary) -> Result<Vec<String>, String> {
    let name = lib.registration_name();
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = registered.iter().find(|r| r.name == name) {
        if r.path != lib.path {
            return Err(format!(
                "{} cannot be registered for '{}': {} already is, in this process (restart to change it)",
                lib.path.display(),
                lib.ep,
                r.path.display()
            ));
        }
        return r.outcome.clone();
    }
    let outcome = if !lib.path.is_file() {
        Err(format!("{} does not exist", lib.path.display()))
    } else {
        let before: Vec<*const ort::sys::OrtEpDevice> = rt.env.devices().map(|d| d.ptr()).collect();
        match rt.env.register_ep_library(&name, &lib.path) {
            Ok(()) => {
                let mut eps: Vec<String> =
                    rt.env.devices().filter(|d| !before.contains(&d.ptr())).filter_map(|d| d.ep().ok().map(str::to_string)).collect();
                eps.dedup();
                Ok(eps)
            }
            Err(e) => Err(explain(&lib.path, e.message())),
        }
    };
    match &outcome {
        Ok(eps) => tracing::info!(library = %lib.path.display(), ep = %lib.ep, devices_of = ?eps, "execution provider plugin registered"),
        Err(why) => tracing::warn!(library = %lib.path.display(), ep = %lib.ep, reason = %why, "execution provider plugin not registered"),
    }
    registered.push(Registration { name, path: lib.path.clone(), outcome: outcome.clone() });
    outcome
}

/// How a device is described in reports: `NPU (Qualcomm)`.
fn describe(d: &Device<'_>) -> String {
    let hw = d.hardware_device();
    let vendor = hw.vendor().ok().filter(|v| !v.is_empty()).unwrap_or("unknown maker");
    format!("{} ({vendor})", DeviceKind::of(hw.ty()).map_or("other device", DeviceKind::label))
}

/// Registers `lib` (once) and picks the device to use among those it offers; returns it with
/// the descriptions of every device offered, or why there is none.
fn pick<'e>(rt: &'e Runtime, lib: &EpLibrary) -> Result<(Device<'e>, Vec<String>), String> {
    let eps = register(rt, lib)?;
    let offered: Vec<Device<'e>> = rt.env.devices().filter(|d| d.ep().is_ok_and(|ep| eps.iter().any(|e| e == ep))).collect();
    if offered.is_empty() {
        return Err(format!("{} offers no device on this machine", lib.path.display()));
    }
    let fits = |d: &Device<'_>| {
        let hw = d.hardware_device();
        let kind_ok = lib.device.is_none_or(|k| DeviceKind::of(hw.ty()) == Some(k));
        let vendor_ok = lib.vendor.as_deref().is_none_or(|want| {
            let want = want.to_lowercase();
            [hw.vendor().unwrap_or(""), d.ep_vendor().unwrap_or("")].iter().any(|v| v.to_lowercase().contains(&want))
        });
        kind_ok && vendor_ok
    };
    let described: Vec<String> = offered.iter().map(describe).collect();
    match offered.into_iter().find(fits) {
        Some(device) => Ok((device, described)),
        None => {
            let mut wanted = Vec::new();
            if let Some(k) = lib.device {
                wanted.push(k.label().to_string());
            }
            if let Some(v) = &lib.vendor {
                wanted.push(format!("made by '{v}'"));
            }
            Err(format!("{} offers {} here, none of them {}", lib.path.display(), described.join(", "), wanted.join(" ")))
        }
    }
}

/// A plugin provider added to a session.
pub struct Appended {
    /// The chosen device, as reports show it (`NPU (Qualcomm)`).
    pub device: String,
    /// ONNX Runtime's name for the provider (what the placement report lists).
    pub ort_name: String,
}

/// Registers `lib` (once) and appends its chosen device to `builder` with `options`. The
/// builder comes back either way, with the provider or without it and the reason.
pub fn append(
    builder: SessionBuilder,
    rt: &Runtime,
    lib: &EpLibrary,
    options: &BTreeMap<String, String>,
) -> (SessionBuilder, Result<Appended, String>) {
    let device = match pick(rt, lib) {
        Ok((d, _)) => d,
        Err(why) => return (builder, Err(why)),
    };
    let ort_name = device.ep().map(str::to_string).unwrap_or_else(|_| lib.registration_name());
    let described = describe(&device);
    let prefixed: Vec<(String, String)> = options.iter().map(|(k, v)| (format!("{ort_name}.{k}"), v.clone())).collect();
    match builder.with_devices([device], Some(&prefixed)) {
        Ok(builder) => (builder, Ok(Appended { device: described, ort_name })),
        Err(e) => {
            let why = format!("{} ({described}) rejected its options: {}", lib.path.display(), e.message());
            (e.recover(), Err(why))
        }
    }
}

/// Registers `lib` (once) and says which devices it offers and which one a session would use
/// (`doctor`), or why it cannot be used.
pub fn inspect(rt: &Runtime, lib: &EpLibrary) -> Result<String, String> {
    let (chosen, offered) = pick(rt, lib)?;
    Ok(format!("offers {}; uses {}", offered.join(", "), describe(&chosen)))
}
