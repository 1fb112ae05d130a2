//! Large float lookup tables read from the mapped data file: a `Gather` whose table is a large
//! external float32 initializer that nothing else reads (the untied embedding; 3.9 GiB for the
//! 9B width) becomes a `MappedGather` node that names where the table lies in the data file,
//! and the initializer is dropped, so a runtime that copies every initializer into memory
//! (tract) never loads the table and reads only the rows it is asked for.

use std::collections::HashMap;

use super::{bytes_field, strings, varint_field, with_graph};
use crate::onnx::read::{string_entry, Fields, ProtoError, Wire};

/// The op the tract backend registers for the rewritten lookups.
pub(super) const MAPPED_GATHER: &str = "MappedGather";
/// Tables smaller than this stay ordinary initializers.
pub(super) const MIN_MAPPED_BYTES: u64 = 16 << 20;

/// A float32 table stored in the data file.
struct Table {
    rows: i64,
    cols: i64,
    location: String,
    offset: u64,
}

fn table(tensor: &[u8]) -> Result<Option<(String, Table)>, ProtoError> {
    let (mut name, mut dims, mut data_type, mut external) = (String::new(), Vec::new(), 0, false);
    let mut entries = HashMap::new();
    for f in Fields::new(tensor, 0) {
        match f? {
            (1, Wire::Varint(v)) => dims.push(v as i64),
            (1, Wire::Bytes(b, _)) => dims.extend(super::alias::varints(b)?),
            (2, Wire::Varint(v)) => data_type = v,
            (8, Wire::Bytes(b, _)) => name = String::from_utf8_lossy(b).into_owned(),
            (14, Wire::Varint(v)) => external = v == 1,
            (13, Wire::Bytes(e, _)) => {
                let (k, v) = string_entry(e, 0)?;
                entries.insert(k, v);
            }
            _ => {}
        }
    }
    let [rows, cols] = dims[..] else { return Ok(None) };
    let (Some(location), Some(offset)) = (entries.get("location"), entries.get("offset").and_then(|o| o.parse().ok())) else {
        return Ok(None);
    };
    let bytes = u64::try_from(rows * cols * 4).unwrap_or(0);
    if !external || data_type != 1 || bytes < MIN_MAPPED_BYTES {
        return Ok(None);
    }
    Ok(Some((name, Table { rows, cols, location: location.clone(), offset })))
}

fn attr_int(name: &str, v: i64, out: &mut Vec<u8>) {
    let mut a = Vec::new();
    bytes_field(1, name.as_bytes(), &mut a);
    varint_field(3, v as u64, &mut a);
    varint_field(20, 2, &mut a);
    bytes_field(5, &a, out);
}

fn attr_string(name: &str, v: &str, out: &mut Vec<u8>) {
    let mut a = Vec::new();
    bytes_field(1, name.as_bytes(), &mut a);
    bytes_field(4, v.as_bytes(), &mut a);
    varint_field(20, 3, &mut a);
    bytes_field(5, &a, out);
}

/// The `MappedGather` node replacing `node` (a `Gather` of `t` by its second input).
fn mapped_node(node: &[u8], t: &Table) -> Result<Vec<u8>, ProtoError> {
    let inputs = strings(node, 1)?;
    let mut out = Vec::new();
    bytes_field(1, inputs[1].as_bytes(), &mut out);
    for o in strings(node, 2)? {
        bytes_field(2, o.as_bytes(), &mut out);
    }
    for n in strings(node, 3)? {
        bytes_field(3, n.as_bytes(), &mut out);
    }
    bytes_field(4, MAPPED_GATHER.as_bytes(), &mut out);
    attr_string("location", &t.location, &mut out);
    attr_int("offset", t.offset as i64, &mut out);
    attr_int("rows", t.rows, &mut out);
    attr_int("cols", t.cols, &mut out);
    Ok(out)
}

/// Whether a `Gather` node gathers along axis 0 (the default).
fn axis_zero(node: &[u8]) -> Result<bool, ProtoError> {
    for f in Fields::new(node, 0) {
        if let (5, Wire::Bytes(a, _)) = f? {
            if strings(a, 1)?.first().map(String::as_str) == Some("axis") {
                for g in Fields::new(a, 0) {
                    if let (3, Wire::Varint(v)) = g? {
                        return Ok(v == 0);
                    }
                }
            }
        }
    }
    Ok(true)
}

fn in_graph(graph: &[u8]) -> Result<Option<Vec<u8>>, ProtoError> {
    let mut tables = HashMap::new();
    let mut readers: HashMap<String, usize> = HashMap::new();
    let mut lookups = Vec::new();
    for f in Fields::new(graph, 0) {
        match f? {
            (5, Wire::Bytes(t, _)) => {
                if let Some((name, t)) = table(t)? {
                    tables.insert(name, t);
                }
            }
            (1, Wire::Bytes(node, _)) => {
                let inputs = strings(node, 1)?;
                for i in &inputs {
                    *readers.entry(i.clone()).or_default() += 1;
                }
                let op = strings(node, 4)?.pop().unwrap_or_default();
                if op == "Gather" && inputs.len() == 2 && axis_zero(node)? {
                    lookups.push(inputs[0].clone());
                }
            }
            _ => {}
        }
    }
    tables.retain(|name, _| lookups.contains(name) && readers.get(name) == Some(&1));
    if tables.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(graph.len());
    let mut fields = Fields::new(graph, 0);
    while let Some(f) = fields.next() {
        match f? {
            (5, Wire::Bytes(t, _)) if strings(t, 8)?.first().is_some_and(|n| tables.contains_key(n)) => {}
            (1, Wire::Bytes(node, _)) => match strings(node, 1)?.first().and_then(|i| tables.get(i)) {
                Some(t) if strings(node, 4)?.first().map(String::as_str) == Some("Gather") => {
                    bytes_field(1, &mapped_node(node, t)?, &mut out);
                }
                _ => out.extend_from_slice(fields.raw()),
            },
            _ => out.extend_from_slice(fields.raw()),
        }
    }
    Ok(Some(out))
}

/// Rewrites every `Gather` of a large external float32 table that only it reads into a
/// `MappedGather` (see the module documentation); `None` when there is none.
pub(crate) fn lookups_read_mapped_tables(model: &[u8]) -> Result<Option<Vec<u8>>, ProtoError> {
    with_graph(model, in_graph)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str, out: &mut Vec<u8>) {
        let mut e = Vec::new();
        bytes_field(1, k.as_bytes(), &mut e);
        bytes_field(2, v.as_bytes(), &mut e);
        bytes_field(13, &e, out);
    }

    fn external(name: &str, rows: u64, cols: u64) -> Vec<u8> {
        let mut t = Vec::new();
        varint_field(1, rows, &mut t);
        varint_field(1, cols, &mut t);
        varint_field(2, 1, &mut t);
        bytes_field(8, name.as_bytes(), &mut t);
        kv("location", "model.onnx.data", &mut t);
        kv("offset", "4096", &mut t);
        kv("length", &(rows * cols * 4).to_string(), &mut t);
        varint_field(14, 1, &mut t);
        t
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> Vec<u8> {
        let mut n = Vec::new();
        for i in inputs {
            bytes_field(1, i.as_bytes(), &mut n);
        }
        bytes_field(2, output.as_bytes(), &mut n);
        bytes_field(4, op.as_bytes(), &mut n);
        n
    }

    fn model(parts: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut g = Vec::new();
        for (f, p) in parts {
            bytes_field(*f, p, &mut g);
        }
        let mut m = Vec::new();
        bytes_field(7, &g, &mut m);
        m
    }

    fn ops_and_initializers(m: &[u8]) -> (Vec<String>, Vec<String>) {
        let (ops, inits) = (std::cell::RefCell::new(Vec::new()), std::cell::RefCell::new(Vec::new()));
        with_graph(m, |g| {
            for f in Fields::new(g, 0) {
                match f? {
                    (1, Wire::Bytes(n, _)) => ops.borrow_mut().extend(strings(n, 4)?),
                    (5, Wire::Bytes(t, _)) => inits.borrow_mut().extend(strings(t, 8)?),
                    _ => {}
                }
            }
            Ok(None)
        })
        .unwrap();
        (ops.into_inner(), inits.into_inner())
    }

    #[test]
    fn a_large_table_read_only_by_its_gather_is_mapped() {
        let m = model(&[(5, external("embed", 248_320, 64)), (1, node("Gather", &["embed", "ids"], "x"))]);
        let out = lookups_read_mapped_tables(&m).unwrap().expect("rewritten");
        let (ops, inits) = ops_and_initializers(&out);
        assert_eq!(ops, vec![MAPPED_GATHER]);
        assert!(inits.is_empty());
    }

    #[test]
    fn shared_small_or_other_tables_are_left_alone() {
        let shared = model(&[
            (5, external("embed", 248_320, 64)),
            (1, node("Gather", &["embed", "ids"], "x")),
            (1, node("MatMul", &["h", "embed"], "y")),
        ]);
        assert!(lookups_read_mapped_tables(&shared).unwrap().is_none());
        let small = model(&[(5, external("embed", 1000, 64)), (1, node("Gather", &["embed", "ids"], "x"))]);
        assert!(lookups_read_mapped_tables(&small).unwrap().is_none());
    }
}
