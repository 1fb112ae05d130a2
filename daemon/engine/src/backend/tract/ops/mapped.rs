//! `MappedGather` (this project's, see `engine::onnx::edit::lookups_read_mapped_tables`): a
//! float32 `Gather` along axis 0 whose table stays in the memory-mapped data file, so only the
//! rows asked for are read (and become resident).

use std::sync::Arc;

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::linear::{eval_op, kernel_op, typed_op};
use super::{built, tensor, Built, Kernel};

/// See the module documentation.
#[derive(Clone)]
pub struct MappedGather {
    map: Arc<memmap2::Mmap>,
    /// Byte offset of the table in the mapped file.
    offset: usize,
    rows: usize,
    cols: usize,
    /// The file, for messages and equality.
    path: String,
}

impl std::fmt::Debug for MappedGather {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedGather({} @ {}, {}x{})", self.path, self.offset, self.rows, self.cols)
    }
}

impl Eq for MappedGather {}

impl PartialEq for MappedGather {
    fn eq(&self, other: &Self) -> bool {
        (&self.path, self.offset, self.rows, self.cols) == (&other.path, other.offset, other.rows, other.cols)
    }
}

/// Maps the table `node` names (relative to the model's directory).
pub(super) fn mapped_gather(ctx: &tract_onnx::model::ParsingContext, node: &NodeProto) -> Built {
    let name = &node.name;
    let location: String = node.get_attr("location")?;
    let int = |k: &str| -> TractResult<usize> {
        let v: i64 = node.get_attr(k)?;
        usize::try_from(v).map_err(|_| format_err!("MappedGather node '{name}': {k} {v} is negative"))
    };
    let (offset, rows, cols) = (int("offset")?, int("rows")?, int("cols")?);
    if location.contains("..") || location.starts_with('/') {
        bail!("MappedGather node '{name}': location {location:?} is not a file beside the model");
    }
    let path = std::path::Path::new(ctx.model_dir.unwrap_or(".")).join(&location);
    let file = std::fs::File::open(&path).with_context(|| format!("MappedGather node '{name}': {}", path.display()))?;
    // SAFETY: the model's data file is mapped read-only and never written by this process; a
    // file replaced on disk keeps its old pages mapped (the README says to replace, not
    // overwrite, model files).
    let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
    let end = rows.checked_mul(cols).and_then(|n| n.checked_mul(4)).and_then(|n| n.checked_add(offset));
    if end.is_none_or(|e| e > map.len()) {
        bail!("MappedGather node '{name}': {} has {} bytes, the {rows}x{cols} table at {offset} does not fit", path.display(), map.len());
    }
    // Rows are read at random: no read-ahead around each.
    let _ = map.advise(memmap2::Advice::Random);
    built(MappedGather { map: Arc::new(map), offset, rows, cols, path: path.display().to_string() })
}

impl MappedGather {
    fn run(&self, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
        let idx_t = inputs[0].cast_to::<i64>()?;
        let idx = idx_t.try_as_plain_ram()?.as_slice::<i64>()?.to_vec();
        let row_bytes = self.cols * 4;
        let mut y = Vec::with_capacity(idx.len() * self.cols);
        for &i in &idx {
            let r = usize::try_from(i)
                .ok()
                .filter(|&r| r < self.rows)
                .with_context(|| format!("MappedGather: index {i} is outside the {}-row table", self.rows))?;
            let row = &self.map[self.offset + r * row_bytes..][..row_bytes];
            y.extend(row.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        }
        let mut shape = inputs[0].shape().to_vec();
        shape.push(self.cols);
        Ok(tvec![tensor(&shape, y)?])
    }
}

kernel_op!(MappedGather, "MappedGather");
eval_op!(MappedGather);
typed_op!(MappedGather, |op, inputs| {
    let mut shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
    shape.push(op.cols.to_dim());
    Ok(tvec![f32::fact(shape)])
});

impl Kernel for MappedGather {
    const OUTPUTS: usize = 1;
    fn relate<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        let cols = self.cols.to_dim();
        s.given(&inputs[0].shape, move |s, idx| {
            let mut shape: TVec<TDim> = idx.iter().cloned().collect();
            shape.push(cols.clone());
            s.equals(&outputs[0].shape, shape)
        })
    }
}
