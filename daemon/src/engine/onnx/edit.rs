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

use super::read::{Fields, ProtoError, Wire};

const INDEX: &str = "qwenedge/last_position_index";
const HIDDEN: &str = "qwenedge/last_position_hidden";

fn varint(mut v: u64, out: &mut Vec<u8>) {
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

fn bytes_field(num: u64, payload: &[u8], out: &mut Vec<u8>) {
    varint(num << 3 | 2, out);
    varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

fn varint_field(num: u64, v: u64, out: &mut Vec<u8>) {
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
pub fn last_position_logits(model: &[u8], logits: &str) -> Result<Option<Vec<u8>>, ProtoError> {
    let mut out = Vec::with_capacity(model.len() + 256);
    let mut done = false;
    let mut fields = Fields::new(model, 0);
    while let Some(field) = fields.next() {
        match field? {
            (7, Wire::Bytes(graph, _)) => match edit_graph(graph, logits)? {
                Some(g) => {
                    bytes_field(7, &g, &mut out);
                    done = true;
                }
                None => return Ok(None),
            },
            _ => out.extend_from_slice(fields.raw()),
        }
    }
    Ok(done.then_some(out))
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
            ((n, Wire::Bytes(inner, _)), [first, rest @ ..]) if n == *first => {
                bytes_field(n, &nested(inner, rest, dim)?, &mut out)
            }
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

/// An initializer as found in the graph: its encoding, dimensions and where its data is.
struct Initializer<'a> {
    raw: &'a [u8],
    dims: Vec<i64>,
    external: bool,
    int64s: Option<Vec<i64>>,
}

fn varints(b: &[u8]) -> Result<Vec<i64>, ProtoError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let Some(&byte) = b.get(i) else {
                return Err(ProtoError { offset: i, what: "truncated packed varint" });
            };
            i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
            if shift > 63 {
                return Err(ProtoError { offset: i, what: "varint too long" });
            }
        }
        out.push(v as i64);
    }
    Ok(out)
}

fn parse_initializer(raw_msg: &[u8]) -> Result<(String, Initializer<'_>), ProtoError> {
    let mut name = String::new();
    let mut dims = Vec::new();
    let mut external = false;
    let mut data_type = 0;
    let mut raw_data = None;
    let mut int64_data = Vec::new();
    for f in Fields::new(raw_msg, 0) {
        match f? {
            (1, Wire::Varint(v)) => dims.push(v as i64),
            (1, Wire::Bytes(b, _)) => dims.extend(varints(b)?),
            (2, Wire::Varint(v)) => data_type = v,
            (7, Wire::Varint(v)) => int64_data.push(v as i64),
            (7, Wire::Bytes(b, _)) => int64_data.extend(varints(b)?),
            (8, Wire::Bytes(b, _)) => name = String::from_utf8_lossy(b).into_owned(),
            (9, Wire::Bytes(b, _)) => raw_data = Some(b),
            (14, Wire::Varint(v)) => external = v == 1,
            _ => {}
        }
    }
    let int64s = match (data_type, raw_data) {
        (7, Some(b)) if b.len() % 8 == 0 => {
            Some(b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
        }
        (7, None) => Some(int64_data),
        _ => None,
    };
    Ok((name, Initializer { raw: raw_msg, dims, external, int64s }))
}

/// The int64 values of a `Constant` node's `value` tensor.
fn constant_values(node: &[u8]) -> Result<Option<Vec<i64>>, ProtoError> {
    for f in Fields::new(node, 0) {
        if let (5, Wire::Bytes(attr, _)) = f? {
            let mut tensor = None;
            let mut is_value = false;
            for g in Fields::new(attr, 0) {
                match g? {
                    (1, Wire::Bytes(n, _)) => is_value = n == b"value",
                    (5, Wire::Bytes(t, _)) => tensor = Some(t),
                    _ => {}
                }
            }
            if let (true, Some(t)) = (is_value, tensor) {
                return Ok(parse_initializer(t)?.1.int64s);
            }
        }
    }
    Ok(None)
}

fn int_attr(node: &[u8], name: &[u8]) -> Result<Option<i64>, ProtoError> {
    for f in Fields::new(node, 0) {
        if let (5, Wire::Bytes(attr, _)) = f? {
            let (mut matches, mut value) = (false, None);
            for g in Fields::new(attr, 0) {
                match g? {
                    (1, Wire::Bytes(n, _)) => matches = n == name,
                    (3, Wire::Varint(v)) => value = Some(v as i64),
                    _ => {}
                }
            }
            if matches {
                return Ok(value);
            }
        }
    }
    Ok(None)
}

/// Reshape's target dimensions: `0` copies the input dimension, `-1` takes what is left.
fn reshaped(input: &[i64], shape: &[i64]) -> Option<Vec<i64>> {
    let total: i64 = input.iter().product();
    let mut dims: Vec<i64> = shape.iter().enumerate().map(|(i, &d)| if d == 0 { *input.get(i).unwrap_or(&0) } else { d }).collect();
    let known: i64 = dims.iter().filter(|&&d| d != -1).product();
    match dims.iter().filter(|&&d| d == -1).count() {
        0 => {}
        1 if known > 0 && total % known == 0 => {
            let at = dims.iter().position(|&d| d == -1)?;
            dims[at] = total / known;
        }
        _ => return None,
    }
    (dims.iter().all(|&d| d > 0) && dims.iter().product::<i64>() == total).then_some(dims)
}

/// Replaces each `Reshape(external initializer, constant shape)` by an initializer with the
/// reshaped dimensions that points at the same external bytes. Returns `None` when there is
/// nothing to replace.
pub fn alias_reshaped_initializers(model: &[u8]) -> Result<Option<Vec<u8>>, ProtoError> {
    let mut out = Vec::with_capacity(model.len() + 1024);
    let mut changed = false;
    let mut fields = Fields::new(model, 0);
    while let Some(field) = fields.next() {
        match field? {
            (7, Wire::Bytes(graph, _)) => match alias_in_graph(graph)? {
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

fn alias_in_graph(graph: &[u8]) -> Result<Option<Vec<u8>>, ProtoError> {
    let mut inits = std::collections::HashMap::new();
    let mut constants = std::collections::HashMap::new();
    for f in Fields::new(graph, 0) {
        match f? {
            (5, Wire::Bytes(t, _)) => {
                let (name, init) = parse_initializer(t)?;
                inits.insert(name, init);
            }
            (1, Wire::Bytes(node, _)) if strings(node, 4)?.first().map(String::as_str) == Some("Constant") => {
                if let (Some(out), Some(values)) = (strings(node, 2)?.pop(), constant_values(node)?) {
                    constants.insert(out, values);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(graph.len() + 1024);
    let mut added = Vec::new();
    let mut fields = Fields::new(graph, 0);
    while let Some(field) = fields.next() {
        if let (1, Wire::Bytes(node, _)) = field? {
            if strings(node, 4)?.first().map(String::as_str) == Some("Reshape") && int_attr(node, b"allowzero")?.unwrap_or(0) == 0 {
                let inputs = strings(node, 1)?;
                let output = strings(node, 2)?;
                let data = inputs.first().and_then(|n| inits.get(n)).filter(|i| i.external);
                let shape = inputs.get(1).and_then(|n| inits.get(n).and_then(|i| i.int64s.clone()).or_else(|| constants.get(n).cloned()));
                if let (Some(data), Some(shape), [out_name]) = (data, shape, output.as_slice()) {
                    if let Some(dims) = reshaped(&data.dims, &shape) {
                        added.push(retagged(data.raw, out_name, &dims)?);
                        continue;
                    }
                }
            }
        }
        out.extend_from_slice(fields.raw());
    }
    if added.is_empty() {
        return Ok(None);
    }
    for t in added {
        bytes_field(5, &t, &mut out);
    }
    Ok(Some(out))
}

/// A copy of an initializer's encoding under another name and dimensions.
fn retagged(raw: &[u8], name: &str, dims: &[i64]) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(raw.len() + 32);
    let mut packed = Vec::new();
    for &d in dims {
        varint(d as u64, &mut packed);
    }
    bytes_field(1, &packed, &mut out);
    bytes_field(8, name.as_bytes(), &mut out);
    let mut fields = Fields::new(raw, 0);
    while let Some(field) = fields.next() {
        match field? {
            (1, _) | (8, _) => {}
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

#[cfg(test)]
mod alias_tests {
    use super::super::read::{parse_model, ExternalRef};
    use super::*;

    fn external_tensor(name: &str, dims: &[u64]) -> Vec<u8> {
        let mut t = Vec::new();
        for &d in dims {
            varint_field(1, d, &mut t);
        }
        varint_field(2, 2, &mut t);
        bytes_field(8, name.as_bytes(), &mut t);
        for (k, v) in [("location", "model.onnx.data"), ("offset", "4096"), ("length", "96")] {
            let mut e = Vec::new();
            bytes_field(1, k.as_bytes(), &mut e);
            bytes_field(2, v.as_bytes(), &mut e);
            bytes_field(13, &e, &mut t);
        }
        varint_field(14, 1, &mut t);
        t
    }

    fn shape_tensor(name: &str, values: &[i64]) -> Vec<u8> {
        let mut t = Vec::new();
        varint_field(1, values.len() as u64, &mut t);
        varint_field(2, 7, &mut t);
        bytes_field(8, name.as_bytes(), &mut t);
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes_field(9, &raw, &mut t);
        t
    }

    #[test]
    fn reshape_of_an_external_initializer_becomes_an_alias() {
        let mut node = Vec::new();
        bytes_field(1, b"w", &mut node);
        bytes_field(1, b"shape", &mut node);
        bytes_field(2, b"w2d", &mut node);
        bytes_field(4, b"Reshape", &mut node);
        let mut graph = Vec::new();
        bytes_field(1, &node, &mut graph);
        bytes_field(5, &external_tensor("w", &[4, 2, 12]), &mut graph);
        bytes_field(5, &shape_tensor("shape", &[4, -1]), &mut graph);
        let mut model = Vec::new();
        bytes_field(7, &graph, &mut model);

        let edited = alias_reshaped_initializers(&model).unwrap().unwrap();
        let s = parse_model(&edited).unwrap();
        assert!(!s.ops.iter().any(|(_, op)| op == "Reshape"), "{:?}", s.ops);
        let alias: Vec<&ExternalRef> = s.external.iter().filter(|e| e.tensor == "w2d").collect();
        assert_eq!(alias.len(), 1);
        assert_eq!((alias[0].offset, alias[0].length), (4096, Some(96)));
        let mut g = Fields::new(&edited, 0);
        let Some(Ok((7, Wire::Bytes(graph, _)))) = g.next() else { panic!() };
        let dims = Fields::new(graph, 0)
            .filter_map(|f| match f.unwrap() {
                (5, Wire::Bytes(t, _)) => Some(parse_initializer(t).unwrap()),
                _ => None,
            })
            .find(|(n, _)| n == "w2d")
            .map(|(_, i)| i.dims)
            .unwrap();
        assert_eq!(dims, vec![4, 24]);
    }

    #[test]
    fn reshape_target_dimensions() {
        assert_eq!(reshaped(&[248320, 32, 16], &[248320, 512]), Some(vec![248320, 512]));
        assert_eq!(reshaped(&[4, 2, 12], &[0, -1]), Some(vec![4, 24]));
        assert_eq!(reshaped(&[4, 6], &[5, -1]), None);
        assert_eq!(reshaped(&[4, 6], &[-1, -1]), None);
    }
}
