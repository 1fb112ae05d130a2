//! The model's own chat template, rendered with minijinja the way transformers renders it
//! (`trim_blocks`, `lstrip_blocks`, Python string/dict methods, `tojson` with Python's
//! separators, `raise_exception`, `strftime_now`), so prompts match what the model was trained on.

use std::path::{Path, PathBuf};

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::Serialize;

use super::model::ModelSpec;

/// Why a template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The model ships no chat template.
    #[error("the model has no chat template (neither chat_template.jinja nor tokenizer_config.json chat_template)")]
    Absent,
    /// A template file could not be read.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The template does not compile.
    #[error("{path}: chat template does not compile: {msg}")]
    Syntax {
        /// Where the template came from.
        path: PathBuf,
        /// minijinja's message.
        msg: String,
    },
    /// Rendering failed (including `raise_exception` from the template itself).
    #[error("rendering the chat template failed: {0}")]
    Render(String),
}

/// What to render.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatInput {
    /// OpenAI-style messages (`role`, `content`, optional `tool_calls`, `reasoning_content`).
    pub messages: Vec<serde_json::Value>,
    /// Tool (function) definitions, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<serde_json::Value>>,
    /// Append the assistant turn opener.
    pub add_generation_prompt: bool,
    /// Thinking mode; `None` leaves the template's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_thinking: Option<bool>,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    specials: serde_json::Map<String, serde_json::Value>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The template of a model directory: `chat_template.jinja`, else `tokenizer_config.json`.
    pub fn load(spec: &ModelSpec) -> Result<Self, TemplateError> {
        let config = match &spec.tokenizer_config_path {
            Some(p) => Some((p.clone(), read_json(p)?)),
            None => None,
        };
        let (path, source) = if let Some(p) = &spec.chat_template_path {
            let source = std::fs::read_to_string(p).map_err(|e| TemplateError::File { path: p.clone(), msg: e.to_string() })?;
            (p.clone(), source)
        } else if let Some((p, json)) = &config {
            (p.clone(), template_from_config(json).ok_or(TemplateError::Absent)?)
        } else {
            return Err(TemplateError::Absent);
        };
        let mut specials = serde_json::Map::new();
        if let Some((_, json)) = &config {
            for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
                if let Some(v) = json.get(key).and_then(token_content) {
                    specials.insert(key.into(), v.into());
                }
            }
        }
        Self::from_source(&path, source, specials)
    }

    /// Compiles `source`; `origin` names it in errors.
    pub fn from_source(origin: &Path, source: String, specials: serde_json::Map<String, serde_json::Value>) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", |msg: String| -> Result<Value, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source).map_err(|e| TemplateError::Syntax { path: origin.to_path_buf(), msg: format!("{e:#}") })?;
        Ok(Self { env, specials })
    }

    /// Renders the prompt text.
    pub fn render(&self, input: &ChatInput) -> Result<String, TemplateError> {
        let tmpl = self.env.get_template("chat").map_err(|e| TemplateError::Render(e.to_string()))?;
        let mut ctx = serde_json::to_value(input).map_err(|e| TemplateError::Render(e.to_string()))?;
        if let serde_json::Value::Object(map) = &mut ctx {
            for (k, v) in &self.specials {
                map.insert(k.clone(), v.clone());
            }
        }
        tmpl.render(Value::from_serialize(&ctx)).map_err(|e| TemplateError::Render(render_message(&e)))
    }
}

fn render_message(e: &JinjaError) -> String {
    match e.kind() {
        ErrorKind::InvalidOperation => e.detail().unwrap_or("invalid operation").to_string(),
        _ => format!("{e:#}"),
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, TemplateError> {
    let bytes = std::fs::read(path).map_err(|e| TemplateError::File { path: path.into(), msg: e.to_string() })?;
    serde_json::from_slice(&bytes).map_err(|e| TemplateError::File { path: path.into(), msg: format!("invalid JSON: {e}") })
}

fn template_from_config(json: &serde_json::Value) -> Option<String> {
    match json.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(String::from)),
        _ => None,
    }
}

fn token_content(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=…,
/// separators=…, sort_keys=…)` — Python's default separators, no HTML escaping.
fn tojson(value: Value, kwargs: minijinja::value::Kwargs) -> Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value).map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        _ if indent.is_some() => (",".into(), ": ".into()),
        _ => (", ".into(), ": ".into()),
    };
    let mut out = String::new();
    PyJson { indent, sort_keys: sort_keys.unwrap_or(false), item, key }.write(&json, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

struct PyJson {
    indent: Option<usize>,
    sort_keys: bool,
    item: String,
    key: String,
}

impl PyJson {
    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(n) = self.indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    }

    fn write(&self, v: &serde_json::Value, depth: usize, out: &mut String) {
        use serde_json::Value as J;
        match v {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Number(n) => out.push_str(&py_number(n)),
            J::String(s) => py_string(s, out),
            J::Array(items) if items.is_empty() => out.push_str("[]"),
            J::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item);
                    }
                    self.newline(depth + 1, out);
                    self.write(item, depth + 1, out);
                }
                self.newline(depth, out);
                out.push(']');
            }
            J::Object(map) if map.is_empty() => out.push_str("{}"),
            J::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, val)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item);
                    }
                    self.newline(depth + 1, out);
                    py_string(k, out);
                    out.push_str(&self.key);
                    self.write(val, depth + 1, out);
                }
                self.newline(depth, out);
                out.push('}');
            }
        }
    }
}

fn py_number(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if n.is_f64() && f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 => format!("{f:.1}"),
        _ => n.to_string(),
    }
}

fn py_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn strftime_now(format: String) -> Result<Value, JinjaError> {
    let fmt = std::ffi::CString::new(format).map_err(|_| JinjaError::new(ErrorKind::InvalidOperation, "NUL in format"))?;
    let mut buf = vec![0u8; 256];
    // SAFETY: `time` and `localtime_r` write into the locals given; `strftime` writes at most
    // `buf.len()` bytes into `buf` and returns how many it wrote.
    let n = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        libc::strftime(buf.as_mut_ptr().cast(), buf.len(), fmt.as_ptr(), &tm)
    };
    buf.truncate(n);
    Ok(Value::from(String::from_utf8_lossy(&buf).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, input: &ChatInput) -> Result<String, TemplateError> {
        ChatTemplate::from_source(Path::new("test.jinja"), src.into(), Default::default())?.render(input)
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let input = ChatInput {
            tools: Some(vec![serde_json::json!({"name": "f", "n": 1.0, "s": "é\n\"<", "l": [1, true, null], "e": {}})]),
            ..Default::default()
        };
        let out = render("{{ tools[0] | tojson }}", &input).unwrap();
        assert_eq!(out, r#"{"name": "f", "n": 1.0, "s": "é\n\"<", "l": [1, true, null], "e": {}}"#);
        let out = render("{{ tools[0].l | tojson(indent=2) }}", &input).unwrap();
        assert_eq!(out, "[\n  1,\n  true,\n  null\n]");
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let input = ChatInput { messages: vec![serde_json::json!({"role": "user", "content": "  hi</think>x "})], ..Default::default() };
        let out = render("{{ messages[0].content.split('</think>')[-1].strip() }}|{{ messages[0].role.startswith('us') }}", &input);
        assert_eq!(out.unwrap(), "x|True", "booleans print as in Python");
        let err = render("{{ raise_exception('bad role') }}", &input).unwrap_err();
        assert!(err.to_string().contains("bad role"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_origin() {
        let err = ChatTemplate::from_source(Path::new("x/chat_template.jinja"), "{% if %}".into(), Default::default()).unwrap_err();
        assert!(err.to_string().contains("x/chat_template.jinja"), "{err}");
    }
}
