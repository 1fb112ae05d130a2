//! Replacing `Reshape(external initializer, constant shape)` by an initializer that points at
//! the same bytes of the data file with the new dimensions (see the parent module).

use std::collections::HashMap;

use super::{bytes_field, strings, varint, with_graph};
use crate::onnx::read::{Fields, ProtoError, Wire};

/// An initializer as found in the graph: its encoding, dimensions and where its data is.
pub(super) struct Initializer<'a> {
    raw: &'a [u8],
    pub(super) dims: Vec<i64>,
    external: bool,
    int64s: Option<Vec<i64>>,
}

pub(super) fn varints(b: &[u8]) -> Result<Vec<i64>, ProtoError> {
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
        (7, Some(b)) if b.len() % 8 == 0 => Some(b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()),
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
pub(crate) fn alias_reshaped_initializers(model: &[u8]) -> Result<Option<Vec<u8>>, ProtoError> {
    with_graph(model, alias_in_graph)
}

/// A graph's initializers and the int64 values of its `Constant` nodes: where the operands of
/// a `Reshape` of an initializer come from.
pub(super) struct Known<'a> {
    inits: HashMap<String, Initializer<'a>>,
    constants: HashMap<String, Vec<i64>>,
}

/// `Reshape(initializer, known shape)`, resolved.
pub(super) struct ReshapeOf<'k, 'a> {
    /// The initializer's name.
    #[cfg_attr(not(feature = "tract"), allow(dead_code))]
    pub(super) data: &'k str,
    /// The initializer.
    pub(super) init: &'k Initializer<'a>,
    /// The dimensions after the Reshape.
    pub(super) dims: Vec<i64>,
    /// The Reshape's output.
    pub(super) out: String,
}

impl<'a> Known<'a> {
    /// Reads the initializers and `Constant` nodes of `graph`.
    pub(super) fn scan(graph: &'a [u8]) -> Result<Self, ProtoError> {
        let mut known = Known { inits: HashMap::new(), constants: HashMap::new() };
        for f in Fields::new(graph, 0) {
            match f? {
                (5, Wire::Bytes(t, _)) => {
                    let (name, init) = parse_initializer(t)?;
                    known.inits.insert(name, init);
                }
                (1, Wire::Bytes(node, _)) if strings(node, 4)?.first().map(String::as_str) == Some("Constant") => {
                    if let (Some(out), Some(values)) = (strings(node, 2)?.pop(), constant_values(node)?) {
                        known.constants.insert(out, values);
                    }
                }
                _ => {}
            }
        }
        Ok(known)
    }

    /// `node` as a Reshape (without `allowzero`) of an initializer by a shape this graph
    /// fixes, when it is one.
    pub(super) fn reshape_of_initializer(&self, node: &[u8]) -> Result<Option<ReshapeOf<'_, 'a>>, ProtoError> {
        if strings(node, 4)?.first().map(String::as_str) != Some("Reshape") || int_attr(node, b"allowzero")?.unwrap_or(0) != 0 {
            return Ok(None);
        }
        let (inputs, output) = (strings(node, 1)?, strings(node, 2)?);
        let Some((data, init)) = inputs.first().and_then(|n| self.inits.get_key_value(n)) else { return Ok(None) };
        let shape = inputs.get(1).and_then(|n| self.inits.get(n).and_then(|i| i.int64s.clone()).or_else(|| self.constants.get(n).cloned()));
        let (Some(shape), [out]) = (shape, output.as_slice()) else { return Ok(None) };
        Ok(reshaped(&init.dims, &shape).map(|dims| ReshapeOf { data, init, dims, out: out.clone() }))
    }
}

fn alias_in_graph(graph: &[u8]) -> Result<Option<Vec<u8>>, ProtoError> {
    let known = Known::scan(graph)?;
    let mut out = Vec::with_capacity(graph.len() + 1024);
    let mut added = Vec::new();
    let mut fields = Fields::new(graph, 0);
    while let Some(field) = fields.next() {
        if let (1, Wire::Bytes(node, _)) = field? {
            if let Some(r) = known.reshape_of_initializer(node)?.filter(|r| r.init.external) {
                added.push(retagged(r.init.raw, &r.out, &r.dims)?);
                continue;
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
    use super::super::varint_field;
    use super::*;
    use crate::onnx::read::{parse_model, ExternalRef};

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
