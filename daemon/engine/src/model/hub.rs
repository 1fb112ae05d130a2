//! The layouts of the Hugging Face Hub's ONNX exports (transformers.js's): `onnx/` holding the
//! decoder `decoder_model_merged{suffix}.onnx` with its embedding graph
//! `embed_tokens{suffix}.onnx` (`onnx-community/Qwen3.5-*-ONNX-OPT` and `…-ONNX`), or one
//! `model{suffix}.onnx` taking `input_ids` (`…-Text-ONNX`), described by `config.json` (the text
//! model's sizes, possibly under `text_config`) and `generation_config.json` instead of
//! `genai_config.json`. The variant is the file suffix (`_q4`, none for fp32, `_fp16`, …);
//! names and shapes of every input and state come from the graphs.

use std::path::Path;

use serde_json::Value;

use super::graph::Names;
use super::{
    check_external_data, check_fed, decoder_io, embedding_graph, op_names, read, require, text_files, DecoderIo, GenaiDecoder, Layout,
    ModelError, ModelSpec, SearchDefaults,
};
use crate::onnx;

/// Variants in the order one is chosen when the directory holds several (`q4` where present).
pub const VARIANTS: &[(&str, &str)] = &[("q4", "_q4"), ("fp32", ""), ("q4f16", "_q4f16"), ("fp16", "_fp16"), ("quantized", "_quantized")];

/// Whether `dir` is in one of the Hub's layouts.
pub(super) fn is_hub_layout(dir: &Path) -> bool {
    !dir.join("genai_config.json").exists() && dir.join("onnx").is_dir() && dir.join("config.json").is_file()
}

fn number(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(Value::as_u64).map(|n| n as usize)
}

fn ids(v: Option<&Value>) -> Option<Vec<u32>> {
    match v? {
        Value::Number(n) => Some(vec![n.as_u64()? as u32]),
        Value::Array(list) => list.iter().map(|x| x.as_u64().map(|n| n as u32)).collect(),
        _ => None,
    }
}

/// Reads a directory in a Hub layout; `variant` names one of [`VARIANTS`] (`None`: the first
/// present).
pub(super) fn load(dir: &Path, variant: Option<&str>) -> Result<ModelSpec, ModelError> {
    let config_path = require(dir, "config.json", "the model's configuration")?;
    let config: Value =
        serde_json::from_slice(&read(&config_path)?).map_err(|e| ModelError::invalid(&config_path, format!("not JSON: {e}")))?;
    let model_type = config["model_type"].as_str().unwrap_or_default().to_string();
    if !super::SUPPORTED_TYPES.contains(&model_type.as_str()) {
        return Err(ModelError::invalid(
            &config_path,
            format!("model type '{model_type}' is not supported (this engine runs {})", super::SUPPORTED_TYPES.join(", ")),
        ));
    }
    let text = config.get("text_config").unwrap_or(&config);
    let onnx_dir = dir.join("onnx");
    let found = |stem: &str, suffix: &str| Some(onnx_dir.join(format!("{stem}{suffix}.onnx"))).filter(|p| p.is_file());
    let candidates: Vec<&(&str, &str)> = match variant {
        Some(v) => VARIANTS.iter().filter(|(name, _)| *name == v).collect(),
        None => VARIANTS.iter().collect(),
    };
    if candidates.is_empty() {
        let known: Vec<&str> = VARIANTS.iter().map(|(n, _)| *n).collect();
        return Err(ModelError::invalid(&onnx_dir, format!("no variant '{}' (known: {})", variant.unwrap_or(""), known.join(", "))));
    }
    let (name, suffix, decoder_path, embedding_path) = candidates
        .iter()
        .find_map(|(name, suffix)| match found("decoder_model_merged", suffix) {
            Some(d) => Some((*name, *suffix, d, found("embed_tokens", suffix))),
            None => found("model", suffix).map(|m| (*name, *suffix, m, None)),
        })
        .ok_or_else(|| ModelError::Missing {
            path: onnx_dir.join(format!("decoder_model_merged{}.onnx", candidates[0].1)),
            why: "the decoder graph of the requested variant (onnx/decoder_model_merged*.onnx or onnx/model*.onnx)",
        })?;
    let graph = onnx::parse_model(&read(&decoder_path)?)
        .map_err(|e| ModelError::invalid(&decoder_path, format!("not a readable ONNX model: {e}")))?;
    let data_files = check_external_data(&onnx_dir, &decoder_path, &graph)?;
    let embedding = match (graph.input("inputs_embeds"), embedding_path) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(ModelError::Missing {
                path: onnx_dir.join(format!("embed_tokens{suffix}.onnx")),
                why: "the embedding graph the decoder's inputs_embeds needs",
            })
        }
        (Some(_), Some(path)) => Some(embedding_graph(&onnx_dir, path, None, "inputs_embeds")?),
    };
    let layer_count = number(text, "num_hidden_layers").ok_or_else(|| ModelError::invalid(&config_path, "no num_hidden_layers"))?;
    let decoder = GenaiDecoder {
        filename: String::new(),
        hidden_size: number(text, "hidden_size").unwrap_or(0),
        num_hidden_layers: layer_count,
        num_attention_heads: number(text, "num_attention_heads"),
        num_key_value_heads: number(text, "num_key_value_heads"),
        head_size: number(text, "head_dim"),
        inputs: Default::default(),
        outputs: Default::default(),
    };
    let names = Names { config: &config_path, onnx: &decoder_path, graph: &graph, decoder: &decoder };
    let token_input = if embedding.is_some() { "inputs_embeds" } else { "input_ids" };
    let input_ids = names.graph_input(token_input, true)?.expect("required");
    let DecoderIo { attention_mask, position_ids_name, position_ids, logits, logits_dtype, logits_width } = decoder_io(&names)?;
    let vocab_size = match logits_width {
        Some(v) => v,
        None => number(text, "vocab_size").ok_or_else(|| ModelError::invalid(&config_path, "no vocab_size"))?,
    };
    let layers = (0..layer_count).map(|i| names.layer(i)).collect::<Result<Vec<_>, _>>()?;
    let logits_to_keep = names.graph_input("num_logits_to_keep", false)?;
    let use_cache_branch = names.graph_input("use_cache_branch", false)?;
    let fed = [
        Some(input_ids.as_str()),
        attention_mask.as_deref(),
        position_ids_name.as_deref(),
        logits_to_keep.as_deref(),
        use_cache_branch.as_deref(),
    ];
    check_fed(&graph, &decoder_path, &fed, &layers, "is not one this engine feeds")?;
    let generation_path = dir.join("generation_config.json");
    let generation: Value = match std::fs::read(&generation_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ModelError::invalid(&generation_path, format!("not JSON: {e}")))?,
        Err(_) => Value::Null,
    };
    let eos_token_ids = ids(generation.get("eos_token_id"))
        .or_else(|| ids(text.get("eos_token_id")))
        .or_else(|| ids(config.get("eos_token_id")))
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ModelError::invalid(&config_path, "no eos_token_id (here or in generation_config.json)"))?;
    let context_length =
        number(text, "max_position_embeddings").ok_or_else(|| ModelError::invalid(&config_path, "no max_position_embeddings"))?;
    let f = |key: &str, default: f64| generation.get(key).and_then(Value::as_f64).unwrap_or(default);
    let search = SearchDefaults {
        do_sample: generation.get("do_sample").and_then(Value::as_bool).unwrap_or(false),
        temperature: f("temperature", 1.0) as f32,
        top_k: f("top_k", 50.0) as usize,
        top_p: f("top_p", 1.0) as f32,
        repetition_penalty: f("repetition_penalty", 1.0) as f32,
        max_length: context_length,
    };
    let (tokenizer_path, tokenizer_config_path, chat_template_path) = text_files(dir)?;
    Ok(ModelSpec {
        dir: dir.to_path_buf(),
        model_type,
        layout: Layout::Hub { variant: name.to_string(), split: embedding.is_some() },
        onnx_path: decoder_path,
        data_files,
        inline_weight_bytes: graph.inline_bytes,
        embedding,
        vocab_size,
        hidden_size: decoder.hidden_size,
        context_length,
        eos_token_ids,
        input_ids,
        attention_mask,
        position_ids_name,
        position_ids,
        logits,
        logits_to_keep,
        use_cache_branch,
        logits_dtype,
        layers,
        search,
        tokenizer_path,
        tokenizer_config_path,
        chat_template_path,
        ops: op_names(&graph),
        attention_heads: decoder.num_attention_heads.unwrap_or(0),
        weights: graph.weight_use(vocab_size),
    })
}
