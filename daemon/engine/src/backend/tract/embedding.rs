//! A split layout's embedding graph (`embed_tokens*.onnx`, genai's `embedding.onnx`) as a tract
//! plan of its own: `input_ids` [1, S] → `inputs_embeds` [1, S, hidden], run before each decoder
//! step. Its lookups get the same edits as the decoder's (stored rows read as they are, mapped
//! tables), so the table is read a row at a time.

use std::sync::Arc;

use tract_onnx::prelude::*;

use super::{load_err, parse_graph, read_graph, run_err};
use crate::backend::BackendError;
use crate::model::Embedding;

/// The embedding plan and the slot of its output.
pub(super) struct TractEmbedding {
    plan: Arc<TypedRunnableModel>,
    output_slot: usize,
}

impl TractEmbedding {
    /// Parses and optimizes the graph of `e`.
    pub(super) fn load(e: &Embedding) -> Result<Self, BackendError> {
        let path = &e.onnx_path;
        let mut model = parse_graph(path, read_graph(path)?)?;
        let inputs = model.input_outlets().map_err(|x| load_err(path, x))?.to_vec();
        if inputs.len() != 1 || model.node(inputs[0].node).name != e.input {
            return Err(load_err(path, format!("the embedding graph must take '{}' alone", e.input)));
        }
        let s = model.symbols.sym("S").to_dim();
        model.set_input_fact(0, i64::fact([1.to_dim(), s]).into()).map_err(|x| load_err(path, x))?;
        let typed = model.into_optimized().map_err(|x| load_err(path, format!("{x:#}")))?;
        let outputs = typed.output_outlets().map_err(|x| load_err(path, x))?.to_vec();
        let output_slot = outputs
            .iter()
            .position(|o| typed.outlet_label(*o).unwrap_or(&typed.node(o.node).name) == e.output)
            .ok_or_else(|| load_err(path, format!("the optimized graph has no output '{}'", e.output)))?;
        let plan = typed.into_runnable().map_err(|x| load_err(path, format!("{x:#}")))?;
        Ok(Self { plan, output_slot })
    }

    /// The embeddings of `tokens`: [1, n, hidden].
    pub(super) fn run(&self, tokens: &[u32]) -> Result<Tensor, BackendError> {
        let ids = Tensor::from_shape(&[1, tokens.len()], &tokens.iter().map(|&t| i64::from(t)).collect::<Vec<_>>()).map_err(run_err)?;
        let mut outputs = self.plan.run(tvec![ids.into_tvalue()]).map_err(run_err)?;
        Ok(std::mem::replace(&mut outputs[self.output_slot], Tensor::default().into_tvalue()).into_tensor())
    }
}
