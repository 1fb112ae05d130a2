//! Letting the embedding lookup read the packed weights as they are stored: with tied
//! embeddings the builder feeds `GatherBlockQuantized` through `Reshape(lm_head weights
//! [rows, blocks, block/2], [rows, cols/2])`. A runtime that does not fold that Reshape (tract
//! keeps it, because folding would duplicate a constant the LM head also reads) copies the whole
//! table on every step — 121 MB for 0.8B. The lookup only needs whole rows, so it can take the
//! stored tensor directly; the tract backend's `GatherBlockQuantized` reads data of any rank as
//! rows of the first axis.

use std::collections::HashMap;

use super::alias::Known;
use super::{bytes_field, strings, with_graph};
use crate::onnx::read::{Fields, ProtoError, Wire};

const LOOKUP: &str = "GatherBlockQuantized";

/// Makes each `GatherBlockQuantized` whose data is `Reshape(initializer, constant shape)` read
/// the initializer itself, when the Reshape only merges trailing axes (rows stay rows) and
/// nothing else reads its output; the Reshape is dropped. Returns `None` when there is nothing
/// to change.
pub(crate) fn lookup_reads_stored_rows(model: &[u8]) -> Result<Option<Vec<u8>>, ProtoError> {
    with_graph(model, in_graph)
}

/// Reshape outputs that can be skipped, mapped to the initializer they reshape.
fn skippable(graph: &[u8]) -> Result<HashMap<String, String>, ProtoError> {
    let known = Known::scan(graph)?;
    let mut graph_outputs = Vec::new();
    let mut readers: HashMap<String, Vec<(String, usize)>> = HashMap::new();
    let mut rows_kept = Vec::new();
    for f in Fields::new(graph, 0) {
        match f? {
            (12, Wire::Bytes(info, _)) => graph_outputs.extend(strings(info, 1)?),
            (1, Wire::Bytes(node, _)) => {
                let op = strings(node, 4)?.pop().unwrap_or_default();
                for (i, name) in strings(node, 1)?.into_iter().enumerate() {
                    readers.entry(name).or_default().push((op.clone(), i));
                }
                if let Some(r) = known.reshape_of_initializer(node)? {
                    let from = &r.init.dims;
                    if r.dims.len() == 2 && from.len() >= 2 && r.dims[0] == from[0] {
                        rows_kept.push((r.out, r.data.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    let only_lookups = |out: &String| readers.get(out).is_some_and(|r| r.iter().all(|(op, i)| op == LOOKUP && *i == 0));
    Ok(rows_kept.into_iter().filter(|(out, _)| only_lookups(out) && !graph_outputs.contains(out)).collect())
}

fn in_graph(graph: &[u8]) -> Result<Option<Vec<u8>>, ProtoError> {
    let skip = skippable(graph)?;
    if skip.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(graph.len());
    let mut fields = Fields::new(graph, 0);
    while let Some(field) = fields.next() {
        match field? {
            (1, Wire::Bytes(node, _)) => {
                if strings(node, 2)?.iter().any(|o| skip.contains_key(o)) {
                    continue;
                }
                if strings(node, 1)?.iter().any(|i| skip.contains_key(i)) {
                    bytes_field(1, &renamed_inputs(node, &skip)?, &mut out);
                } else {
                    out.extend_from_slice(fields.raw());
                }
            }
            _ => out.extend_from_slice(fields.raw()),
        }
    }
    Ok(Some(out))
}

/// `node` with each input named in `map` renamed.
fn renamed_inputs(node: &[u8], map: &HashMap<String, String>) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(node.len() + 64);
    let mut fields = Fields::new(node, 0);
    while let Some(field) = fields.next() {
        match field? {
            (1, Wire::Bytes(name, _)) if map.contains_key(String::from_utf8_lossy(name).as_ref()) => {
                bytes_field(1, map[String::from_utf8_lossy(name).as_ref()].as_bytes(), &mut out);
            }
            _ => out.extend_from_slice(fields.raw()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::varint_field;
    use super::*;
    use crate::onnx::read::parse_model;

    fn node(op: &str, inputs: &[&str], output: &str) -> Vec<u8> {
        let mut n = Vec::new();
        for i in inputs {
            bytes_field(1, i.as_bytes(), &mut n);
        }
        bytes_field(2, output.as_bytes(), &mut n);
        bytes_field(4, op.as_bytes(), &mut n);
        n
    }

    fn tensor(name: &str, dims: &[u64], int64s: Option<&[i64]>) -> Vec<u8> {
        let mut t = Vec::new();
        for &d in dims {
            varint_field(1, d, &mut t);
        }
        varint_field(2, if int64s.is_some() { 7 } else { 2 }, &mut t);
        bytes_field(8, name.as_bytes(), &mut t);
        if let Some(v) = int64s {
            bytes_field(9, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>(), &mut t);
        }
        t
    }

    /// A tied-embedding graph: `w [6, 2, 4]` read by the LM head and, reshaped to `shape`, by
    /// the lookup (and by `extra`, when given).
    fn model(shape: &[i64], extra: Option<&str>) -> Vec<u8> {
        let mut graph = Vec::new();
        bytes_field(1, &node("Reshape", &["w", "shape"], "w2d"), &mut graph);
        bytes_field(1, &node(LOOKUP, &["w2d", "ids", "scales"], "embeds"), &mut graph);
        bytes_field(1, &node("MatMulNBits", &["h", "w", "scales"], "logits"), &mut graph);
        if let Some(op) = extra {
            bytes_field(1, &node(op, &["w2d"], "other"), &mut graph);
        }
        bytes_field(5, &tensor("w", &[6, 2, 4], None), &mut graph);
        bytes_field(5, &tensor("shape", &[shape.len() as u64], Some(shape)), &mut graph);
        let mut m = Vec::new();
        bytes_field(7, &graph, &mut m);
        m
    }

    fn lookup_inputs(model: &[u8]) -> Vec<String> {
        let mut g = Fields::new(model, 0);
        let Some(Ok((7, Wire::Bytes(graph, _)))) = g.next() else { panic!("no graph") };
        Fields::new(graph, 0)
            .filter_map(|f| match f.unwrap() {
                (1, Wire::Bytes(n, _)) if strings(n, 4).unwrap() == [LOOKUP] => Some(strings(n, 1).unwrap()),
                _ => None,
            })
            .next()
            .unwrap()
    }

    #[test]
    fn the_lookup_reads_the_stored_tensor_and_the_reshape_goes() {
        let edited = lookup_reads_stored_rows(&model(&[6, 8], None)).unwrap().unwrap();
        let s = parse_model(&edited).unwrap();
        assert!(!s.ops.iter().any(|(_, op)| op == "Reshape"), "{:?}", s.ops);
        assert_eq!(lookup_inputs(&edited), ["w", "ids", "scales"]);
        assert_eq!(lookup_reads_stored_rows(&model(&[0, -1], None)).unwrap().map(|m| lookup_inputs(&m)[0].clone()).as_deref(), Some("w"));
    }

    #[test]
    fn other_reshapes_are_left_alone() {
        assert!(lookup_reads_stored_rows(&model(&[3, 16], None)).unwrap().is_none(), "rows change");
        assert!(lookup_reads_stored_rows(&model(&[48], None)).unwrap().is_none(), "not two axes");
        assert!(lookup_reads_stored_rows(&model(&[6, 8], Some("Identity"))).unwrap().is_none(), "another reader");
    }
}
