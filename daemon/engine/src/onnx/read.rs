//! A minimal reader for the parts of an ONNX `ModelProto` the daemon needs before it hands the
//! file to a runtime: graph inputs/outputs with their element types and shapes, the operators
//! used, the opset imports and where every initializer's external data lives.
//!
//! Owning this (instead of asking ONNX Runtime) lets `engine::model` validate a model directory —
//! truncated `model.onnx.data`, missing state inputs, unsupported exports — with errors that
//! name the file, and lets tools like `doctor` inspect a model without loading a runtime.
//! Only the protobuf wire format is implemented; unknown fields are skipped.

use std::collections::BTreeSet;

use super::weights::{self, Initializer, NodeUse, WeightUse};

/// A protobuf decoding failure, with the byte offset where it happened.
#[derive(Debug, thiserror::Error)]
#[error("malformed ONNX protobuf at byte {offset}: {what}")]
pub(crate) struct ProtoError {
    /// Offset into the message being decoded.
    pub offset: usize,
    /// What was wrong.
    pub what: &'static str,
}

/// ONNX `TensorProto.DataType` values the daemon cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElemType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
    /// Any other type, by its ONNX enum value.
    Other(i64),
}

impl ElemType {
    fn from_onnx(v: i64) -> Self {
        match v {
            1 => Self::F32,
            10 => Self::F16,
            16 => Self::Bf16,
            7 => Self::I64,
            6 => Self::I32,
            other => Self::Other(other),
        }
    }
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic size such as `batch_size`.
    Symbolic(String),
    /// Neither given.
    Unknown,
}

/// A graph input or output as declared in the model.
#[derive(Debug, Clone)]
pub(crate) struct ValueInfo {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub elem: ElemType,
    /// Declared shape.
    pub shape: Vec<Dim>,
}

/// Where an initializer's bytes live outside `model.onnx`.
#[derive(Debug, Clone)]
pub(crate) struct ExternalRef {
    /// Initializer name.
    pub tensor: String,
    /// File name relative to the model directory.
    pub location: String,
    /// Byte offset into that file.
    pub offset: u64,
    /// Byte length (None if the export omitted it).
    pub length: Option<u64>,
}

/// What `engine::model` needs to know about an ONNX graph.
#[derive(Debug, Clone, Default)]
pub(crate) struct GraphSummary {
    /// Graph inputs (initializers excluded).
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs.
    pub outputs: Vec<ValueInfo>,
    /// `(domain, op_type)` of every node, deduplicated.
    pub ops: BTreeSet<(String, String)>,
    /// `(domain, version)` opset imports.
    pub opsets: Vec<(String, i64)>,
    /// Initializers stored in external files.
    pub external: Vec<ExternalRef>,
    /// Total bytes of initializers stored inline in the model file.
    pub inline_bytes: u64,
    /// Each node's operator and inputs, for [`weight_use`](Self::weight_use).
    nodes: Vec<NodeUse>,
    /// Each initializer's name and size.
    initializers: Vec<Initializer>,
}

impl GraphSummary {
    /// The input named `name`, if the graph has one.
    pub(crate) fn input(&self, name: &str) -> Option<&ValueInfo> {
        self.inputs.iter().find(|v| v.name == name)
    }

    /// The output named `name`, if the graph has one.
    pub(crate) fn output(&self, name: &str) -> Option<&ValueInfo> {
        self.outputs.iter().find(|v| v.name == name)
    }

    /// The initializers' bytes by how the graph reads them; `vocab` tells the LM head apart.
    pub(crate) fn weight_use(&self, vocab: usize) -> WeightUse {
        weights::classify(&self.nodes, &self.initializers, Some(vocab))
    }
}

/// Parses a serialized `ModelProto`.
pub(crate) fn parse_model(bytes: &[u8]) -> Result<GraphSummary, ProtoError> {
    let mut summary = GraphSummary::default();
    let mut saw_graph = false;
    for field in Fields::new(bytes, 0) {
        let (num, value) = field?;
        match (num, value) {
            (7, Wire::Bytes(b, off)) => {
                parse_graph(b, off, &mut summary)?;
                saw_graph = true;
            }
            (8, Wire::Bytes(b, off)) => {
                let mut domain = String::new();
                let mut version = 0;
                for f in Fields::new(b, off) {
                    match f? {
                        (1, Wire::Bytes(s, _)) => domain = lossy(s),
                        (2, Wire::Varint(v)) => version = v as i64,
                        _ => {}
                    }
                }
                summary.opsets.push((domain, version));
            }
            _ => {}
        }
    }
    if !saw_graph {
        return Err(ProtoError { offset: 0, what: "no graph in model" });
    }
    Ok(summary)
}

fn parse_graph(bytes: &[u8], base: usize, s: &mut GraphSummary) -> Result<(), ProtoError> {
    let mut initializer_names = BTreeSet::new();
    let mut inputs = Vec::new();
    for field in Fields::new(bytes, base) {
        match field? {
            (1, Wire::Bytes(b, off)) => {
                let mut node = NodeUse::default();
                let mut domain = String::new();
                for f in Fields::new(b, off) {
                    match f? {
                        (1, Wire::Bytes(v, _)) => node.inputs.push(lossy(v)),
                        (4, Wire::Bytes(v, _)) => node.op = lossy(v),
                        (5, Wire::Bytes(a, off)) => match int_attribute(a, off)? {
                            (name, v) if name == "K" => node.k = v,
                            (name, v) if name == "N" => node.n = v,
                            _ => {}
                        },
                        (7, Wire::Bytes(v, _)) => domain = lossy(v),
                        _ => {}
                    }
                }
                s.ops.insert((domain, node.op.clone()));
                s.nodes.push(node);
            }
            (5, Wire::Bytes(b, off)) => {
                let name = parse_initializer(b, off, s)?;
                initializer_names.insert(name);
            }
            (11, Wire::Bytes(b, off)) => inputs.push(parse_value_info(b, off)?),
            (12, Wire::Bytes(b, off)) => s.outputs.push(parse_value_info(b, off)?),
            _ => {}
        }
    }
    s.inputs = inputs.into_iter().filter(|v| !initializer_names.contains(&v.name)).collect();
    Ok(())
}

/// The name and integer value (0 for other kinds) of an `AttributeProto`.
fn int_attribute(bytes: &[u8], base: usize) -> Result<(String, usize), ProtoError> {
    let (mut name, mut value) = (String::new(), 0);
    for f in Fields::new(bytes, base) {
        match f? {
            (1, Wire::Bytes(v, _)) => name = lossy(v),
            (3, Wire::Varint(v)) => value = usize::try_from(v).unwrap_or(0),
            _ => {}
        }
    }
    Ok((name, value))
}

fn parse_initializer(bytes: &[u8], base: usize, s: &mut GraphSummary) -> Result<String, ProtoError> {
    let mut name = String::new();
    let mut external = false;
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    let mut inline = 0u64;
    let mut f32 = false;
    for field in Fields::new(bytes, base) {
        match field? {
            (2, Wire::Varint(v)) => f32 = v == 1,
            (8, Wire::Bytes(v, _)) => name = lossy(v),
            (4 | 9, Wire::Bytes(v, _)) => inline += v.len() as u64,
            (14, Wire::Varint(v)) => external = v == 1,
            (13, Wire::Bytes(b, off)) => {
                let (key, value) = string_entry(b, off)?;
                match key.as_str() {
                    "location" => location = Some(value),
                    "offset" => offset = value.parse().unwrap_or(0),
                    "length" => length = value.parse().ok(),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    s.inline_bytes += inline;
    let bytes = if external { length.unwrap_or(0) } else { inline };
    s.initializers.push(Initializer { name: name.clone(), bytes, f32 });
    if external {
        let location = location.ok_or(ProtoError { offset: base, what: "external initializer without location" })?;
        s.external.push(ExternalRef { tensor: name.clone(), location, offset, length });
    }
    Ok(name)
}

/// The key and value of a `StringStringEntryProto` (a tensor's `external_data` entry).
pub(crate) fn string_entry(bytes: &[u8], base: usize) -> Result<(String, String), ProtoError> {
    let (mut key, mut value) = (String::new(), String::new());
    for f in Fields::new(bytes, base) {
        match f? {
            (1, Wire::Bytes(v, _)) => key = lossy(v),
            (2, Wire::Bytes(v, _)) => value = lossy(v),
            _ => {}
        }
    }
    Ok((key, value))
}

fn parse_value_info(bytes: &[u8], base: usize) -> Result<ValueInfo, ProtoError> {
    let mut info = ValueInfo { name: String::new(), elem: ElemType::Other(0), shape: Vec::new() };
    for field in Fields::new(bytes, base) {
        match field? {
            (1, Wire::Bytes(v, _)) => info.name = lossy(v),
            (2, Wire::Bytes(ty, off)) => {
                for f in Fields::new(ty, off) {
                    if let (1, Wire::Bytes(tensor, off)) = f? {
                        parse_tensor_type(tensor, off, &mut info)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

fn parse_tensor_type(bytes: &[u8], base: usize, info: &mut ValueInfo) -> Result<(), ProtoError> {
    for field in Fields::new(bytes, base) {
        match field? {
            (1, Wire::Varint(v)) => info.elem = ElemType::from_onnx(v as i64),
            (2, Wire::Bytes(shape, off)) => {
                for f in Fields::new(shape, off) {
                    if let (1, Wire::Bytes(dim, off)) = f? {
                        let mut d = Dim::Unknown;
                        for g in Fields::new(dim, off) {
                            match g? {
                                (1, Wire::Varint(v)) => d = Dim::Fixed(v as i64),
                                (2, Wire::Bytes(p, _)) => d = Dim::Symbolic(lossy(p)),
                                _ => {}
                            }
                        }
                        info.shape.push(d);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One decoded field value; `Bytes` carries its absolute offset for error messages.
pub(crate) enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8], usize),
    Fixed,
}

/// Iterator over the fields of one protobuf message.
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
    failed: bool,
    start: usize,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base, failed: false, start: 0 }
    }

    /// The complete encoding (key, length, payload) of the field returned last.
    pub(crate) fn raw(&self) -> &'a [u8] {
        &self.buf[self.start..self.pos]
    }

    fn err(&mut self, what: &'static str) -> ProtoError {
        self.failed = true;
        ProtoError { offset: self.base + self.pos, what }
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.err("varint too long"))
    }

    fn skip(&mut self, n: usize) -> Result<(), ProtoError> {
        if self.buf.len() - self.pos < n {
            return Err(self.err("field runs past the end"));
        }
        self.pos += n;
        Ok(())
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Wire<'a>), ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        self.start = self.pos;
        let item = (|| {
            let key = self.varint()?;
            let (num, wire) = (key >> 3, key & 7);
            let value = match wire {
                0 => Wire::Varint(self.varint()?),
                1 => {
                    self.skip(8)?;
                    Wire::Fixed
                }
                2 => {
                    let len = usize::try_from(self.varint()?).map_err(|_| self.err("length overflow"))?;
                    let start = self.pos;
                    self.skip(len)?;
                    Wire::Bytes(&self.buf[start..start + len], self.base + start)
                }
                5 => {
                    self.skip(4)?;
                    Wire::Fixed
                }
                _ => return Err(self.err("unsupported wire type")),
            };
            Ok((num, value))
        })();
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::edit::{bytes_field, varint_field};

    fn value_info(name: &str, elem: u64, dims: &[Result<u64, &str>]) -> Vec<u8> {
        let mut shape = Vec::new();
        for d in dims {
            let mut dim = Vec::new();
            match d {
                Ok(v) => varint_field(1, *v, &mut dim),
                Err(p) => bytes_field(2, p.as_bytes(), &mut dim),
            }
            bytes_field(1, &dim, &mut shape);
        }
        let mut tensor = Vec::new();
        varint_field(1, elem, &mut tensor);
        bytes_field(2, &shape, &mut tensor);
        let mut ty = Vec::new();
        bytes_field(1, &tensor, &mut ty);
        let mut vi = Vec::new();
        bytes_field(1, name.as_bytes(), &mut vi);
        bytes_field(2, &ty, &mut vi);
        vi
    }

    #[test]
    fn parses_inputs_outputs_ops_and_external_data() {
        let mut graph = Vec::new();
        let mut node = Vec::new();
        bytes_field(4, b"LinearAttention", &mut node);
        bytes_field(7, b"com.microsoft", &mut node);
        bytes_field(1, &node, &mut graph);
        let mut init = Vec::new();
        bytes_field(8, b"w", &mut init);
        varint_field(14, 1, &mut init);
        for (k, v) in [("location", "model.onnx.data"), ("offset", "4096"), ("length", "128")] {
            let mut entry = Vec::new();
            bytes_field(1, k.as_bytes(), &mut entry);
            bytes_field(2, v.as_bytes(), &mut entry);
            bytes_field(13, &entry, &mut init);
        }
        bytes_field(5, &init, &mut graph);
        bytes_field(11, &value_info("input_ids", 7, &[Err("batch_size"), Err("sequence_length")]), &mut graph);
        bytes_field(11, &value_info("w", 1, &[Ok(4)]), &mut graph);
        bytes_field(12, &value_info("logits", 1, &[Err("b"), Err("s"), Ok(248320)]), &mut graph);
        let mut model = Vec::new();
        varint_field(1, 10, &mut model);
        bytes_field(7, &graph, &mut model);
        let mut opset = Vec::new();
        bytes_field(1, b"com.microsoft", &mut opset);
        varint_field(2, 1, &mut opset);
        bytes_field(8, &opset, &mut model);

        let s = parse_model(&model).unwrap();
        assert_eq!(s.inputs.len(), 1, "initializer-backed inputs are not graph inputs");
        assert_eq!(s.inputs[0].elem, ElemType::I64);
        assert_eq!(s.inputs[0].shape[1], Dim::Symbolic("sequence_length".into()));
        assert_eq!(s.output("logits").unwrap().shape[2], Dim::Fixed(248320));
        assert!(s.ops.contains(&("com.microsoft".into(), "LinearAttention".into())));
        assert_eq!(s.opsets, vec![("com.microsoft".to_string(), 1)]);
        assert_eq!(s.external[0].offset, 4096);
        assert_eq!(s.external[0].length, Some(128));
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut graph = Vec::new();
        bytes_field(11, &value_info("x", 1, &[Ok(3)]), &mut graph);
        let mut model = Vec::new();
        bytes_field(7, &graph, &mut model);
        for cut in 1..model.len() {
            assert!(parse_model(&model[..cut]).is_err(), "cut at {cut} should fail");
        }
        assert!(parse_model(b"").is_err());
    }
}
