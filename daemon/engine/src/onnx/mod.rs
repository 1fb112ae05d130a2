//! ONNX files without a runtime: a reader for what the engine checks before loading
//! (`read`) and in-memory rewrites applied before a graph is handed to a runtime (`edit`).

pub(crate) mod edit;
pub(crate) mod read;
pub(crate) mod weights;

pub(crate) use read::{parse_model, Dim, ElemType, GraphSummary, ValueInfo};
