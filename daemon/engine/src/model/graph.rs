//! Resolving genai_config.json's tensor name patterns against the ONNX graph: which layers
//! carry a KV cache and which carry Gated DeltaNet state, and the shapes and types of each.

use std::path::Path;

use super::{GenaiDecoder, LayerKind, ModelError, StateTensor, StateType};
use crate::onnx::{Dim, ElemType, GraphSummary, ValueInfo};

pub(super) fn float_type(onnx: &Path, v: &ValueInfo) -> Result<StateType, ModelError> {
    match v.elem {
        ElemType::F32 => Ok(StateType::F32),
        ElemType::F16 => Ok(StateType::F16),
        other => Err(ModelError::invalid(onnx, format!("'{}' has element type {other:?}; expected float32 or float16", v.name))),
    }
}

/// Resolves genai_config name patterns against the graph.
pub(super) struct Names<'a> {
    pub(super) config: &'a Path,
    pub(super) onnx: &'a Path,
    pub(super) graph: &'a GraphSummary,
    pub(super) decoder: &'a GenaiDecoder,
}

impl Names<'_> {
    pub(super) fn graph_input(&self, key: &str, required: bool) -> Result<Option<String>, ModelError> {
        let name = self.decoder.inputs.get(key).cloned().unwrap_or_else(|| key.to_string());
        match self.graph.input(&name) {
            Some(_) => Ok(Some(name)),
            None if required || self.decoder.inputs.contains_key(key) => Err(ModelError::invalid(
                self.onnx,
                format!("the graph has no input '{name}' (named by genai_config.json decoder.inputs.{key})"),
            )),
            None => Ok(None),
        }
    }

    pub(super) fn graph_output(&self, key: &str) -> Result<String, ModelError> {
        let name = self.decoder.outputs.get(key).cloned().unwrap_or_else(|| key.to_string());
        if self.graph.output(&name).is_none() {
            return Err(ModelError::invalid(self.onnx, format!("the graph has no output '{name}'")));
        }
        Ok(name)
    }

    /// The input/output pair for `layer`: the pattern genai_config.json names, else the known
    /// default patterns of the builder's current and older versions.
    fn state(&self, layer: usize, in_key: &str, out_key: &str) -> Result<Option<(&ValueInfo, String)>, ModelError> {
        let configured = self.decoder.inputs.get(in_key).map(|p| (p.as_str(), self.decoder.outputs.get(out_key)));
        let candidates: Vec<(&str, Option<&str>)> = match configured {
            Some((pattern, out)) => vec![(pattern, out.map(String::as_str))],
            None => default_patterns(in_key).iter().map(|(i, o)| (*i, Some(*o))).collect(),
        };
        for (in_pattern, out_pattern) in candidates {
            let Some(input) = self.graph.input(&in_pattern.replace("%d", &layer.to_string())) else { continue };
            let out_pattern = out_pattern.ok_or_else(|| {
                ModelError::invalid(self.config, format!("decoder.inputs.{in_key} is set but decoder.outputs.{out_key} is not"))
            })?;
            let output = out_pattern.replace("%d", &layer.to_string());
            if self.graph.output(&output).is_none() {
                return Err(ModelError::invalid(self.onnx, format!("state input '{}' has no matching output '{output}'", input.name)));
            }
            return Ok(Some((input, output)));
        }
        Ok(None)
    }

    /// Sizes a state tensor from the graph; KV caches take head count and head size from
    /// genai_config.json where the graph leaves them symbolic.
    fn tensor(&self, (info, output): (&ValueInfo, String), kv: bool) -> Result<StateTensor, ModelError> {
        let dims = info.shape.get(1..).unwrap_or_default();
        let bad = |msg: &str| ModelError::invalid(self.onnx, format!("state input '{}' {msg}", info.name));
        let fixed = |d: &Dim| match d {
            Dim::Fixed(n) if *n > 0 => Some(*n as usize),
            _ => None,
        };
        let shape = if kv {
            let [heads, _, head_dim] = dims else { return Err(bad("is not [batch, heads, seq, head_dim]")) };
            let heads = fixed(heads).or(self.decoder.num_key_value_heads).ok_or_else(|| bad("has no fixed head count"))?;
            let head_dim = fixed(head_dim).or(self.decoder.head_size).ok_or_else(|| bad("has no fixed head size"))?;
            vec![heads, 0, head_dim]
        } else {
            let shape: Option<Vec<usize>> = dims.iter().map(fixed).collect();
            match shape {
                Some(s) if !s.is_empty() => s,
                _ => return Err(bad("has a non-fixed dimension; cannot size its state")),
            }
        };
        Ok(StateTensor { input: info.name.clone(), output, shape, dtype: float_type(self.onnx, info)? })
    }

    pub(super) fn layer(&self, i: usize) -> Result<LayerKind, ModelError> {
        if let Some(key) = self.state(i, "past_key_names", "present_key_names")? {
            let value = self
                .state(i, "past_value_names", "present_value_names")?
                .ok_or_else(|| ModelError::invalid(self.onnx, format!("layer {i} has a key cache input but no value cache input")))?;
            return Ok(LayerKind::FullAttention { key: self.tensor(key, true)?, value: self.tensor(value, true)? });
        }
        if let Some(conv) = self.state(i, "past_conv_names", "present_conv_names")? {
            let recurrent = self
                .state(i, "past_recurrent_names", "present_recurrent_names")?
                .ok_or_else(|| ModelError::invalid(self.onnx, format!("layer {i} has a conv state input but no recurrent state input")))?;
            return Ok(LayerKind::LinearAttention { conv: self.tensor(conv, false)?, recurrent: self.tensor(recurrent, false)? });
        }
        Err(ModelError::invalid(
            self.onnx,
            format!("layer {i} has neither a KV cache nor a linear-attention state input matching the names in {}", self.config.display()),
        ))
    }
}

/// Name patterns used by builder versions that did not write the pattern key.
fn default_patterns(in_key: &str) -> &'static [(&'static str, &'static str)] {
    match in_key {
        "past_key_names" => &[("past_key_values.%d.key", "present.%d.key")],
        "past_value_names" => &[("past_key_values.%d.value", "present.%d.value")],
        "past_conv_names" => &[
            ("past.%d.conv", "present.%d.conv"),
            ("past_key_values.%d.conv_state", "present.%d.conv_state"),
            ("past_conv.%d", "present_conv.%d"),
        ],
        "past_recurrent_names" => &[
            ("past.%d.recurrent", "present.%d.recurrent"),
            ("past_key_values.%d.recurrent_state", "present.%d.recurrent_state"),
            ("past_recurrent.%d", "present_recurrent.%d"),
        ],
        _ => &[],
    }
}
