//! Finding and loading the ONNX Runtime shared library (`load-dynamic`: nothing is linked or
//! downloaded at build time, so vendor builds with NPU/GPU providers drop in as a file).
//!
//! Search order, first hit wins:
//! 1. the path given explicitly (`model.onnxruntime_library`, `--onnxruntime`);
//! 2. `ORT_DYLIB_PATH`;
//! 3. next to the executable: `libonnxruntime.so`, then `../lib/qwenedge/libonnxruntime.so`;
//! 4. `/usr/lib/qwenedge/`, `/usr/local/lib/qwenedge/`;
//! 5. `$QWENEDGE_CACHE/lib/` (default `~/.cache/qwenedge/lib/`, where
//!    `deploy/fetch-onnxruntime.sh` puts it);
//! 6. `libonnxruntime.so` through the system loader (`ld.so.conf`, `LD_LIBRARY_PATH`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::logging::LogLevel;
use ort::AsPointer;

/// The oldest ONNX Runtime this build accepts (the API level `ort` is built against; it is also
/// the first release with every contrib operator the Qwen3.5 exports use on CPU).
pub(crate) const MIN_VERSION: &str = "1.31";

const LIB_NAME: &str = "libonnxruntime.so";

/// Why the runtime could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// No candidate file exists.
    #[error(
        "ONNX Runtime library not found; looked in: {tried}. Run deploy/fetch-onnxruntime.sh, or point \
         model.onnxruntime_library / ORT_DYLIB_PATH at a libonnxruntime.so (>= {MIN_VERSION})"
    )]
    NotFound {
        /// Every place looked at, comma-separated.
        tried: String,
    },
    /// A file exists but is not a usable ONNX Runtime.
    #[error("ONNX Runtime library {path}: {msg}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong (too old, not ONNX Runtime, missing dependencies).
        msg: String,
    },
    /// A different library was already loaded into this process.
    #[error("ONNX Runtime is already loaded from {loaded}; cannot also load {wanted}")]
    AlreadyLoaded {
        /// Path loaded first.
        loaded: PathBuf,
        /// Path asked for now.
        wanted: PathBuf,
    },
}

/// A loaded runtime: the process-wide environment plus where it came from.
pub struct Runtime {
    /// The ONNX Runtime environment (one per process).
    pub env: ort::environment::Environment,
    /// Library file.
    pub path: PathBuf,
    /// Version string reported by the library.
    pub version: String,
}

static RUNTIME: OnceLock<Result<Runtime, RuntimeError>> = OnceLock::new();

/// The default cache root: `$QWENEDGE_CACHE`, else `~/.cache/qwenedge`.
pub(crate) fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("QWENEDGE_CACHE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/qwenedge"))
}

/// The candidates in search order; `explicit` first when given.
pub(crate) fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(p));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        out.push(exe_dir.join(LIB_NAME));
        out.push(exe_dir.join("../lib/qwenedge").join(LIB_NAME));
    }
    out.push(PathBuf::from("/usr/lib/qwenedge").join(LIB_NAME));
    out.push(PathBuf::from("/usr/local/lib/qwenedge").join(LIB_NAME));
    if let Some(cache) = cache_dir() {
        out.push(cache.join("lib").join(LIB_NAME));
    }
    out
}

/// Picks the library to load: an explicit path or `ORT_DYLIB_PATH` must exist; otherwise the
/// first existing candidate, else the bare name for the system loader.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let pinned =
        explicit.map(Path::to_path_buf).or_else(|| std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()).map(PathBuf::from));
    if let Some(p) = pinned {
        return if p.is_file() { Ok(p) } else { Err(RuntimeError::Unusable { path: p, msg: "no such file".into() }) };
    }
    let all = candidates(None);
    if let Some(found) = all.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    if system_loader_finds(LIB_NAME) {
        return Ok(PathBuf::from(LIB_NAME));
    }
    let mut tried: Vec<String> = all.iter().map(|p| p.display().to_string()).collect();
    tried.push(format!("{LIB_NAME} via the system loader"));
    Err(RuntimeError::NotFound { tried: tried.join(", ") })
}

fn system_loader_finds(name: &str) -> bool {
    // SAFETY: loading a shared library runs its initialisers; this is the library we would load
    // anyway, and it is closed again straight away.
    unsafe { libloading::Library::new(name) }.is_ok()
}

/// Loads the runtime once per process and returns it. Later calls return the same runtime, or
/// an error if they ask for a different file.
pub fn load(explicit: Option<&Path>) -> Result<&'static Runtime, RuntimeError> {
    let wanted = locate(explicit)?;
    let result = RUNTIME.get_or_init(|| init(&wanted));
    match result {
        Ok(rt) if explicit.is_some() && rt.path != wanted => Err(RuntimeError::AlreadyLoaded { loaded: rt.path.clone(), wanted }),
        Ok(rt) => Ok(rt),
        Err(e) => Err(e.clone()),
    }
}

fn init(path: &Path) -> Result<Runtime, RuntimeError> {
    let unusable = |msg: String| RuntimeError::Unusable { path: path.to_path_buf(), msg };
    let builder = ort::init_from(path).map_err(|e| {
        unusable(match e {
            ort::LoadDynamicError::BadVersion { version_str, .. } => {
                format!("version {version_str} is too old; qwenedge needs ONNX Runtime >= {MIN_VERSION}")
            }
            ort::LoadDynamicError::MissingApi { .. } => "not an ONNX Runtime library (no OrtGetApiBase)".into(),
            other => other.to_string(),
        })
    })?;
    let env = builder
        .with_name("qwenedge")
        .with_telemetry(false)
        .with_logger(Arc::new(log))
        .build()
        .map_err(|e| unusable(format!("creating the environment failed: {e}")))?;
    set_level(&env, LogLevel::Warning);
    let version = version_of(path).unwrap_or_else(|| "unknown".into());
    Ok(Runtime { env, path: path.to_path_buf(), version })
}

/// The version string a library reports, without creating an environment.
pub(crate) fn version_of(path: &Path) -> Option<String> {
    // SAFETY: as in `system_loader_finds`; `OrtGetApiBase` takes no arguments and returns a
    // pointer to a static table whose `GetVersionString` returns a static C string.
    unsafe {
        let lib = libloading::Library::new(path).ok()?;
        let get: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> = lib.get(b"OrtGetApiBase").ok()?;
        let base = get();
        if base.is_null() {
            return None;
        }
        let s = ((*base).GetVersionString)();
        Some(std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned())
    }
}

/// While set, what execution providers say about nodes they do not take (see
/// [`Runtime::node_reasons`]).
static CAPTURE: Mutex<Option<Vec<String>>> = Mutex::new(None);

/// ONNX Runtime's log messages, into this process's log (warnings and errors; the rest at
/// trace level).
fn log(level: LogLevel, _category: &str, _id: &str, location: &str, message: &str) {
    if message.contains("REASON") {
        if let Some(v) = CAPTURE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            v.push(message.to_string());
        }
    }
    let message = message.trim();
    match level {
        LogLevel::Error | LogLevel::Fatal => tracing::error!(target: "onnxruntime", location, "{message}"),
        LogLevel::Warning => tracing::warn!(target: "onnxruntime", location, "{message}"),
        LogLevel::Info => tracing::debug!(target: "onnxruntime", location, "{message}"),
        LogLevel::Verbose => tracing::trace!(target: "onnxruntime", location, "{message}"),
    }
}

/// Sets the level below which ONNX Runtime drops its messages before formatting them.
fn set_level(env: &ort::environment::Environment, level: LogLevel) {
    // SAFETY: the environment pointer is valid while `env` lives; a returned status is released.
    unsafe {
        let status = (ort::api().UpdateEnvWithCustomLogLevel)(env.ptr().cast_mut(), level.into());
        if !status.0.is_null() {
            (ort::api().ReleaseStatus)(status.0);
        }
    }
}

impl Runtime {
    /// Runs `f` (creating a session) with ONNX Runtime's verbose messages on, and returns what
    /// the execution providers said about each node they did not take (QNN: "Validation FAILED
    /// … REASON : Cannot get shape"), one message per node.
    pub fn node_reasons<T>(&self, f: impl FnOnce() -> T) -> (T, Vec<String>) {
        *CAPTURE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
        set_level(&self.env, LogLevel::Verbose);
        let out = f();
        set_level(&self.env, LogLevel::Warning);
        let reasons = CAPTURE.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
        (out, reasons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_that_does_not_exist_is_named() {
        let err = locate(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/libonnxruntime.so"), "{err}");
        assert!(err.to_string().contains("no such file"), "{err}");
    }

    #[test]
    fn explicit_path_comes_first() {
        let c = candidates(Some(Path::new("/opt/vendor/libonnxruntime.so")));
        assert_eq!(c[0], PathBuf::from("/opt/vendor/libonnxruntime.so"));
        assert!(c.iter().any(|p| p.ends_with("qwenedge/libonnxruntime.so")));
    }
}
