//! In-memory rewrites of the decoder graph before it is handed to a runtime. The file on disk
//! is never modified.
//!
//! - [`last_position_logits`]: the builder's graph computes logits for every position of a
//!   chunk, but generation only needs the last one — for a 128-token prefill of a 248k
//!   vocabulary that is 127 MB of output and the matching share of the largest matrix product.
//!   A `Gather` of the last position in front of the LM head removes both.
//! - [`alias_reshaped_initializers`]: with tied embeddings the builder feeds the embedding
//!   lookup through `Reshape(lm_head weights)`. ONNX Runtime folds that into a private copy of
//!   the whole quantized matrix (121 MB for 0.8B). A second initializer that points at the same
//!   bytes of the data file with the reshaped dimensions makes the copy unnecessary: the lookup
//!   then reads only the rows it needs, straight from the memory-mapped file.
//! - [`align_external_data`]: a saved optimized model's data file laid out again so that every
//!   tensor and pre-packed blob starts at an aligned offset.
//! - [`lookups_read_mapped_tables`]: for runtimes that copy every initializer into memory
//!   (tract), a large float lookup table (the untied embedding) is read from the mapped file.
//! - [`lookup_reads_stored_rows`]: for runtimes that keep that Reshape as a step (tract), the
//!   lookup reads the stored tensor directly instead.

mod alias;
mod align;
#[cfg(feature = "tract")]
mod lookup;
#[cfg(feature = "tract")]
mod mapped;

pub(crate) use alias::alias_reshaped_initializers;
pub(crate) use align::align_external_data;
#[cfg(feature = "tract")]
pub(crate) use lookup::lookup_reads_stored_rows;
#[cfg(feature = "tract")]
pub(crate) use mapped::lookups_read_mapped_tables;

use super::read::{Fields, ProtoError, Wire};

const INDEX: &str = "qwenedge/last_position_index";
const HIDDEN: &str = "qwenedge/last_position_hidden";

/// Appends `v` as a protobuf varint.
pub(in crate::onnx) fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Appends a length-delimited field.
pub(in crate::onnx) fn bytes_field(num: u64, payload: &[u8], out: &mut Vec<u8>) {
    varint(num << 3 | 2, out);
    varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Appends a varint field.
pub(in crate::onnx) fn varint_field(num: u64, v: u64, out: &mut Vec<u8>) {
    varint(num << 3, out);
    varint(v, out);
}

fn strings(msg: &[u8], field: u64) -> Result<Vec<String>, ProtoError> {
    let mut out = Vec::new();
    for f in Fields::new(msg, 0) {
        if let (n, Wire::Bytes(b, _)) = f? {
            if n == field {
                out.push(String::from_utf8_lossy(b).into_owned());
            }
        }
    }
    Ok(out)
}

/// Rewrites `model` so that `logits` holds only the last position (`[batch, 1, vocab]`).
/// Returns `None` when the node producing the logits is not a plain (quantized) MatMul, in
/// which case the graph is used as it is.
pub(crate) fn last_position_logits(model: &[u8], logits: &str) -> Result<Option<Vec<u8>>, ProtoError> {
    with_graph(model, |graph| edit_graph(graph, logits))
}

/// Applies `edit` to the model's graph; `None` when it changed nothing.
pub(super) fn with_graph(model: &[u8], edit: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, ProtoError>) -> Result<Option<Vec<u8>>, ProtoError> {
    let mut out = Vec::with_capacity(model.len() + 1024);
    let mut changed = false;
    let mut fields = Fields::new(model, 0);
    while let Some(field) = fields.next() {
        match field? {
            (7, Wire::Bytes(graph, _)) => match edit(graph)? {
                Some(g) => {
                    bytes_field(7, &g, &mut out);
                    changed = true;
                }
                None => out.extend_from_slice(fields.raw()),
            },
            _ => out.extend_from_slice(fields.raw()),
        }
    }
    Ok(changed.then_some(out))
}

fn edit_graph(graph: &[u8], logits: &str) -> Result<Option<Vec<u8>>, ProtoError> {
    let mut out = Vec::with_capacity(graph.len() + 256);
    let mut edited = false;
    let mut fields = Fields::new(graph, 0);
    while let Some(field) = fields.next() {
        match field? {
            (1, Wire::Bytes(node, _)) if !edited && strings(node, 2)?.iter().any(|o| o == logits) => {
                let op = strings(node, 4)?.pop().unwrap_or_default();
                let inputs = strings(node, 1)?;
                if !matches!(op.as_str(), "MatMul" | "MatMulNBits") || inputs.is_empty() {
                    return Ok(None);
                }
                bytes_field(1, &gather_node(&inputs[0]), &mut out);
                bytes_field(1, &replace_first_input(node)?, &mut out);
                edited = true;
            }
            (12, Wire::Bytes(info, _)) if strings(info, 1)?.first().map(String::as_str) == Some(logits) => {
                bytes_field(12, &one_position(info)?, &mut out);
            }
            _ => out.extend_from_slice(fields.raw()),
        }
    }
    if !edited {
        return Ok(None);
    }
    bytes_field(5, &index_initializer(), &mut out);
    Ok(Some(out))
}

/// `Gather(hidden, [-1], axis=1)` → `[batch, 1, hidden]`.
fn gather_node(hidden: &str) -> Vec<u8> {
    let mut attr = Vec::new();
    bytes_field(1, b"axis", &mut attr);
    varint_field(3, 1, &mut attr);
    varint_field(20, 2, &mut attr);
    let mut node = Vec::new();
    bytes_field(1, hidden.as_bytes(), &mut node);
    bytes_field(1, INDEX.as_bytes(), &mut node);
    bytes_field(2, HIDDEN.as_bytes(), &mut node);
    bytes_field(3, b"qwenedge/last_position", &mut node);
    bytes_field(4, b"Gather", &mut node);
    bytes_field(5, &attr, &mut node);
    node
}

fn index_initializer() -> Vec<u8> {
    let mut t = Vec::new();
    varint_field(1, 1, &mut t);
    varint_field(2, 7, &mut t);
    bytes_field(8, INDEX.as_bytes(), &mut t);
    bytes_field(9, &(-1i64).to_le_bytes(), &mut t);
    t
}

fn replace_first_input(node: &[u8]) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(node.len() + 32);
    let mut replaced = false;
    let mut fields = Fields::new(node, 0);
    while let Some(field) = fields.next() {
        match field? {
            (1, Wire::Bytes(..)) if !replaced => {
                bytes_field(1, HIDDEN.as_bytes(), &mut out);
                replaced = true;
            }
            _ => out.extend_from_slice(fields.raw()),
        }
    }
    Ok(out)
}

/// The logits `ValueInfo` with its sequence dimension fixed to 1.
fn one_position(info: &[u8]) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::new();
    let mut fields = Fields::new(info, 0);
    while let Some(field) = fields.next() {
        match field? {
            (2, Wire::Bytes(ty, _)) => bytes_field(2, &nested(ty, &[1, 2], 1)?, &mut out),
            _ => out.extend_from_slice(fields.raw()),
        }
    }
    Ok(out)
}

/// Walks `path` (TypeProto.tensor_type → TypeProto.Tensor.shape) and replaces dimension
/// `dim` of the shape with the fixed size 1.
fn nested(msg: &[u8], path: &[u64], dim: usize) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::new();
    let mut index = 0;
    let mut fields = Fields::new(msg, 0);
    while let Some(field) = fields.next() {
        match (field?, path) {
            ((n, Wire::Bytes(inner, _)), [first, rest @ ..]) if n == *first => bytes_field(n, &nested(inner, rest, dim)?, &mut out),
            ((1, Wire::Bytes(..)), []) => {
                if index == dim {
                    let mut d = Vec::new();
                    varint_field(1, 1, &mut d);
                    bytes_field(1, &d, &mut out);
                } else {
                    out.extend_from_slice(fields.raw());
                }
                index += 1;
            }
            _ => out.extend_from_slice(fields.raw()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::read::{parse_model, Dim};
    use super::*;

    fn value_info(name: &str) -> Vec<u8> {
        let mut shape = Vec::new();
        for d in [&b"batch"[..], b"seq"] {
            let mut dim = Vec::new();
            bytes_field(2, d, &mut dim);
            bytes_field(1, &dim, &mut shape);
        }
        let mut dim = Vec::new();
        varint_field(1, 10, &mut dim);
        bytes_field(1, &dim, &mut shape);
        let mut tensor = Vec::new();
        varint_field(1, 1, &mut tensor);
        bytes_field(2, &shape, &mut tensor);
        let mut ty = Vec::new();
        bytes_field(1, &tensor, &mut ty);
        let mut vi = Vec::new();
        bytes_field(1, name.as_bytes(), &mut vi);
        bytes_field(2, &ty, &mut vi);
        vi
    }

    fn model(op: &str) -> Vec<u8> {
        let mut node = Vec::new();
        bytes_field(1, b"h", &mut node);
        bytes_field(1, b"w", &mut node);
        bytes_field(2, b"logits", &mut node);
        bytes_field(4, op.as_bytes(), &mut node);
        let mut graph = Vec::new();
        bytes_field(1, &node, &mut graph);
        bytes_field(12, &value_info("logits"), &mut graph);
        let mut m = Vec::new();
        varint_field(1, 8, &mut m);
        bytes_field(7, &graph, &mut m);
        m
    }

    #[test]
    fn inserts_gather_and_fixes_output_shape() {
        let edited = last_position_logits(&model("MatMulNBits"), "logits").unwrap().unwrap();
        let s = parse_model(&edited).unwrap();
        assert!(s.ops.contains(&(String::new(), "Gather".into())));
        let out = s.output("logits").unwrap();
        assert_eq!(out.shape, vec![Dim::Symbolic("batch".into()), Dim::Fixed(1), Dim::Fixed(10)]);
    }

    #[test]
    fn leaves_other_lm_heads_alone() {
        assert!(last_position_logits(&model("Gemm"), "logits").unwrap().is_none());
        assert!(last_position_logits(&model("MatMul"), "other").unwrap().is_none());
    }
}
