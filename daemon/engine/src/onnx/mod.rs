//! ONNX files without a runtime: a reader for what the engine checks before loading
//! (`read`) and in-memory rewrites applied before a graph is handed to a runtime (`edit`).

pub mod edit;
pub mod read;
pub mod weights;

pub use read::{parse_model, Dim, ElemType, GraphSummary, ValueInfo};
