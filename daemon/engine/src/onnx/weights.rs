//! How a graph reads its initializers, for memory estimates: the 4-bit matrix weights every
//! token reads whole, the tables read a row at a time (embedding lookups, rotary caches), which
//! a runtime that maps the weights file keeps only in part, and the rest.

/// Initializer bytes by how the graph reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeightUse {
    /// Read whole by `MatMulNBits` (the quantized weights, their scales and zero points).
    pub matmul: u64,
    /// Of `matmul`, the vocabulary projection's (the LM head, which every layer count shares).
    pub head: u64,
    /// Read a row at a time as the data of a `Gather` or `GatherBlockQuantized` and nothing
    /// else (an untied embedding).
    pub gathered: u64,
    /// Of `gathered`, the float32 tables of at least [`LARGE_TABLE`] bytes (which the tract
    /// backend reads from the mapped file instead of copying).
    pub gathered_large_f32: u64,
    /// Rotary position caches (`cos_cache`, `sin_cache`), read a row per position.
    pub positional: u64,
    /// Everything else (norms, convolution weights, small float matrices).
    pub other: u64,
    /// The widest dimension (K or N) of a `MatMulNBits` that is not the vocabulary projection:
    /// the widest activation a layer makes.
    pub widest: usize,
}

/// A float32 lookup table at least this large is read from the mapped file by the tract
/// backend (see `engine::onnx::edit::lookups_read_mapped_tables`).
pub(crate) const LARGE_TABLE: u64 = 16 << 20;

/// One node as far as weights go: its operator, inputs and (for `MatMulNBits`) its `K` and `N`.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeUse {
    pub(crate) op: String,
    pub(crate) inputs: Vec<String>,
    pub(crate) k: usize,
    pub(crate) n: usize,
}

/// One initializer: its name, size in bytes and whether it holds float32.
#[derive(Debug, Clone)]
pub(crate) struct Initializer {
    pub(crate) name: String,
    pub(crate) bytes: u64,
    pub(crate) f32: bool,
}

/// Classifies `initializers` by how `nodes` read them; `vocab` tells the LM head apart.
pub(crate) fn classify(nodes: &[NodeUse], initializers: &[Initializer], vocab: Option<usize>) -> WeightUse {
    let mut uses: std::collections::HashMap<&str, Vec<(&str, usize)>> = std::collections::HashMap::new();
    let mut head: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut widest = 0;
    for node in nodes {
        for (i, input) in node.inputs.iter().enumerate() {
            uses.entry(input.as_str()).or_default().push((node.op.as_str(), i));
        }
        if node.op == "MatMulNBits" && Some(node.n) == vocab {
            head.extend(node.inputs.iter().skip(1).map(String::as_str));
        } else if node.op == "MatMulNBits" {
            widest = widest.max(node.k).max(node.n);
        }
    }
    let mut w = WeightUse { widest, ..Default::default() };
    for init in initializers {
        let read = uses.get(init.name.as_str()).map(Vec::as_slice).unwrap_or_default();
        if read.iter().any(|(op, _)| *op == "MatMulNBits") {
            w.matmul += init.bytes;
            if head.contains(init.name.as_str()) {
                w.head += init.bytes;
            }
        } else if !read.is_empty() && read.iter().all(|(op, i)| matches!(*op, "Gather" | "GatherBlockQuantized") && *i == 0) {
            w.gathered += init.bytes;
            if init.f32 && init.bytes >= LARGE_TABLE {
                w.gathered_large_f32 += init.bytes;
            }
        } else if !read.is_empty() && read.iter().all(|(op, i)| op.ends_with("RotaryEmbedding") && matches!(i, 2 | 3)) {
            w.positional += init.bytes;
        } else {
            w.other += init.bytes;
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], k: usize, n: usize) -> NodeUse {
        NodeUse { op: op.into(), inputs: inputs.iter().map(|s| s.to_string()).collect(), k, n }
    }

    fn init(name: &str, bytes: u64, f32: bool) -> Initializer {
        Initializer { name: name.into(), bytes, f32 }
    }

    #[test]
    fn initializers_are_classed_by_their_readers() {
        let nodes = [
            node("Gather", &["embed", "ids"], 0, 0),
            node("MatMulNBits", &["x", "w", "scales"], 1024, 3584),
            node("MatMulNBits", &["x", "head", "head_scales"], 1024, 248_320),
            node("MRotaryEmbedding", &["q", "pos", "cos", "sin"], 0, 0),
            node("SimplifiedLayerNormalization", &["x", "norm"], 0, 0),
            node("Gather", &["shared", "ids"], 0, 0),
            node("Mul", &["shared", "x"], 0, 0),
        ];
        let inits = [
            init("embed", 32 << 20, true),
            init("w", 100, false),
            init("scales", 20, true),
            init("head", 1000, false),
            init("head_scales", 200, true),
            init("cos", 7, true),
            init("sin", 7, true),
            init("norm", 3, true),
            init("shared", 5, true),
            init("unused", 11, true),
        ];
        let w = classify(&nodes, &inits, Some(248_320));
        assert_eq!((w.matmul, w.head), (1320, 1200));
        assert_eq!((w.gathered, w.gathered_large_f32), (32 << 20, 32 << 20));
        assert_eq!(w.positional, 14);
        assert_eq!(w.other, 3 + 5 + 11, "read by another op too, or by nothing");
        assert_eq!(w.widest, 3584, "the vocabulary projection is not a layer");
    }
}
