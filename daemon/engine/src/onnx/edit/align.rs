//! Aligning a saved model's external data: every region of the data file the graph points at
//! (an initializer's `offset`/`length`, and the `prepacked_*` blobs ONNX Runtime records beside
//! it as `kernel+hash|offset;length;flag`) is given a new offset that is a multiple of
//! [`ALIGN`] (of [`PAGE`] for large regions), and the graph is rewritten to match.
//!
//! ONNX Runtime 1.31 writes pre-packed blobs back to back at whatever offset the previous one
//! ended, but maps them on load as the kernels' packed buffers, whose layout assumes an aligned
//! start: a 4-bit weight whose blob lands two bytes off gives NaN. Aligning the file fixes that
//! without changing a byte of any blob.

use super::{bytes_field, with_graph};
use crate::onnx::read::{string_entry, Fields, ProtoError, Wire};

/// Alignment of every region (MLAS's buffer alignment).
pub(super) const ALIGN: u64 = 64;
/// Alignment of regions of at least this many bytes, so that their pages are their own.
pub(super) const PAGE: u64 = 4096;

/// One copy from the old data file to the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Move {
    /// Offset in the old file.
    pub from: u64,
    /// Bytes.
    pub len: u64,
    /// Offset in the new file.
    pub to: u64,
}

/// A rewritten graph and the copies that make its new data file.
#[derive(Debug)]
pub(crate) struct Aligned {
    /// The model with every external offset replaced.
    pub model: Vec<u8>,
    /// Copies, in order of `to`; the new file is `last.to + last.len` bytes long.
    pub moves: Vec<Move>,
}

const BAD: &str = "malformed external data entry";

/// A pre-packed blob: offset, length and ONNX Runtime's flag, as recorded.
type Blob<'a> = (u64, u64, &'a str);

/// A `prepacked_*` entry's value: the kernel's key and its blobs.
fn blobs(value: &str) -> Result<(&str, Vec<Blob<'_>>), ProtoError> {
    let bad = || ProtoError { offset: 0, what: BAD };
    let (head, list) = value.split_once('|').ok_or_else(bad)?;
    let f: Vec<&str> = list.split(';').collect();
    if !f.len().is_multiple_of(3) {
        return Err(bad());
    }
    let blobs: Result<Vec<Blob<'_>>, ProtoError> =
        f.chunks(3).map(|c| Ok((c[0].parse().map_err(|_| bad())?, c[1].parse().map_err(|_| bad())?, c[2]))).collect();
    Ok((head, blobs?))
}

/// Every region one tensor's external data entries name.
fn tensor_regions(tensor: &[u8]) -> Result<Vec<(u64, u64)>, ProtoError> {
    let mut out = Vec::new();
    let (mut offset, mut length) = (None, None);
    for f in Fields::new(tensor, 0) {
        if let (13, Wire::Bytes(e, _)) = f? {
            let (k, v) = string_entry(e, 0)?;
            match k.as_str() {
                "offset" => offset = Some(v.parse().map_err(|_| ProtoError { offset: 0, what: BAD })?),
                "length" => length = Some(v.parse().map_err(|_| ProtoError { offset: 0, what: BAD })?),
                k if k.starts_with("prepacked") => out.extend(blobs(&v)?.1.into_iter().map(|(o, l, _)| (o, l))),
                _ => {}
            }
        }
    }
    if let (Some(o), Some(l)) = (offset, length) {
        out.push((o, l));
    }
    Ok(out)
}

/// Plans the new file: overlapping regions stay together (an alias of a tensor keeps pointing
/// into it), each span at the next aligned offset.
fn plan(mut all: Vec<(u64, u64)>) -> Vec<Move> {
    all.sort_unstable();
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for (o, l) in all {
        match spans.last_mut() {
            Some((so, sl)) if o < *so + *sl || (l == 0 && o == *so + *sl) => *sl = (*sl).max(o + l - *so),
            _ => spans.push((o, l)),
        }
    }
    let mut to = 0u64;
    spans
        .into_iter()
        .map(|(from, len)| {
            let a = if len >= PAGE { PAGE } else { ALIGN };
            to = to.div_ceil(a) * a;
            let m = Move { from, len, to };
            to += len;
            m
        })
        .collect()
}

fn relocate(moves: &[Move], offset: u64) -> u64 {
    let i = moves.partition_point(|m| m.from <= offset).saturating_sub(1);
    let m = moves[i];
    m.to + (offset - m.from)
}

/// A tensor with its offsets relocated.
fn rewrite_tensor(tensor: &[u8], moves: &[Move]) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(tensor.len() + 16);
    let mut fields = Fields::new(tensor, 0);
    while let Some(f) = fields.next() {
        match f? {
            (13, Wire::Bytes(e, _)) => {
                let (k, v) = string_entry(e, 0)?;
                let new = if k == "offset" {
                    relocate(moves, v.parse().map_err(|_| ProtoError { offset: 0, what: BAD })?).to_string()
                } else if k.starts_with("prepacked") {
                    let (head, list) = blobs(&v)?;
                    let list: Vec<String> = list.iter().map(|&(o, l, flag)| format!("{};{l};{flag}", relocate(moves, o))).collect();
                    format!("{head}|{}", list.join(";"))
                } else {
                    out.extend_from_slice(fields.raw());
                    continue;
                };
                let mut e = Vec::new();
                bytes_field(1, k.as_bytes(), &mut e);
                bytes_field(2, new.as_bytes(), &mut e);
                bytes_field(13, &e, &mut out);
            }
            _ => out.extend_from_slice(fields.raw()),
        }
    }
    Ok(out)
}

/// Plans aligned offsets for every external region of `model` and rewrites it to use them.
pub(crate) fn align_external_data(model: &[u8]) -> Result<Aligned, ProtoError> {
    let all = std::cell::RefCell::new(Vec::new());
    with_graph(model, |graph| {
        for f in Fields::new(graph, 0) {
            if let (5, Wire::Bytes(t, _)) = f? {
                all.borrow_mut().extend(tensor_regions(t)?);
            }
        }
        Ok(None)
    })?;
    let all = all.into_inner();
    let moves = plan(all);
    let rewritten = with_graph(model, |graph| {
        let mut out = Vec::with_capacity(graph.len() + 4096);
        let mut fields = Fields::new(graph, 0);
        while let Some(f) = fields.next() {
            match f? {
                (5, Wire::Bytes(t, _)) => bytes_field(5, &rewrite_tensor(t, &moves)?, &mut out),
                _ => out.extend_from_slice(fields.raw()),
            }
        }
        Ok(Some(out))
    })?;
    Ok(Aligned { model: rewritten.unwrap_or_else(|| model.to_vec()), moves })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> Vec<u8> {
        let mut e = Vec::new();
        bytes_field(1, k.as_bytes(), &mut e);
        bytes_field(2, v.as_bytes(), &mut e);
        let mut out = Vec::new();
        bytes_field(13, &e, &mut out);
        out
    }

    fn model(tensors: &[Vec<(&str, String)>]) -> Vec<u8> {
        let mut graph = Vec::new();
        for (i, entries) in tensors.iter().enumerate() {
            let mut t = Vec::new();
            bytes_field(8, format!("t{i}").as_bytes(), &mut t);
            for (k, v) in entries {
                t.extend(kv(k, v));
            }
            bytes_field(5, &t, &mut graph);
        }
        let mut m = Vec::new();
        bytes_field(7, &graph, &mut m);
        m
    }

    fn entries_of(model: &[u8]) -> Vec<Vec<(String, String)>> {
        let out = std::cell::RefCell::new(Vec::new());
        with_graph(model, |g| {
            for f in Fields::new(g, 0) {
                if let (5, Wire::Bytes(t, _)) = f? {
                    let mut es = Vec::new();
                    for f in Fields::new(t, 0) {
                        if let (13, Wire::Bytes(e, _)) = f? {
                            es.push(string_entry(e, 0)?);
                        }
                    }
                    out.borrow_mut().push(es);
                }
            }
            Ok(None)
        })
        .unwrap();
        out.into_inner()
    }

    #[test]
    fn regions_move_to_aligned_offsets_and_aliases_stay_inside() {
        let m = model(&[
            vec![("location", "d".into()), ("offset", "0".into()), ("length", "10".into())],
            // An alias of the first tensor's bytes.
            vec![("location", "d".into()), ("offset", "0".into()), ("length", "10".into())],
            vec![
                ("location", "d".into()),
                ("offset", "10".into()),
                ("length", "6".into()),
                ("prepacked_0", "MatMulNBits+7|16;4098;0;4114;3;1".into()),
            ],
        ]);
        let a = align_external_data(&m).unwrap();
        assert_eq!(
            a.moves,
            vec![
                Move { from: 0, len: 10, to: 0 },
                Move { from: 10, len: 6, to: 64 },
                Move { from: 16, len: 4098, to: 4096 },
                Move { from: 4114, len: 3, to: 8256 },
            ]
        );
        let e = entries_of(&a.model);
        assert_eq!(e[0][1], ("offset".into(), "0".into()));
        assert_eq!(e[1][1], ("offset".into(), "0".into()));
        assert_eq!(e[2][1], ("offset".into(), "64".into()));
        assert_eq!(e[2][3], ("prepacked_0".into(), "MatMulNBits+7|4096;4098;0;8256;3;1".into()));
        assert_eq!(e[2][0], ("location".into(), "d".into()));
    }

    #[test]
    fn malformed_blob_lists_are_errors() {
        let m = model(&[vec![("prepacked_0", "MatMulNBits+7|16;4098".into())]]);
        assert!(align_external_data(&m).is_err());
        let m = model(&[vec![("offset", "x".into()), ("length", "1".into())]]);
        assert!(align_external_data(&m).is_err());
    }
}
