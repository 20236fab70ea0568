//! The two-pass form: the operands copied out of their maps where they are not plain matrices
//! (the regroup), burn's autotuned matmul, the result copied through the output map.

use burn::backend::ops::FloatTensorOps;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;

use crate::kernels::{Counter, count};
use crate::ops::{Axis, BlockMatmul, Operand};

/// One axis of an operand map over `len` indices as strided dimensions `(len, stride)`: a plain
/// axis is one, a split axis two (blocks, then the index within a block), or one where every
/// index falls in the first block. `None` where the last block is partial: no strided view has
/// that shape.
pub(super) fn axis_dims(len: usize, axis: Axis) -> Option<Vec<(usize, usize)>> {
    if axis.split == 0 || len <= axis.split {
        Some(vec![(len, axis.lo)])
    } else if len.is_multiple_of(axis.split) {
        Some(vec![(len / axis.split, axis.hi), (axis.split, axis.lo)])
    } else {
        None
    }
}

/// `op` over `[g, rows, cols]` as strided dimensions of its buffer, in index order (batch, row,
/// column; each split axis as two), without the dimensions of length one.
pub(super) fn operand_dims(
    op: &Operand,
    g: usize,
    rows: usize,
    cols: usize,
) -> Option<Vec<(usize, usize)>> {
    let mut dims = axis_dims(g, op.batch)?;
    dims.extend(axis_dims(rows, op.row)?);
    dims.extend(axis_dims(cols, op.col)?);
    dims.retain(|&(len, _)| len != 1);
    if dims.is_empty() {
        dims.push((1, 1));
    }
    Some(dims)
}

/// `t`'s buffer seen through `dims` (lengths and strides).
pub(super) fn strided_view(t: &CubeTensor, dims: &[(usize, usize)]) -> CubeTensor {
    use burn_cubecl::cubecl::zspace::metadata::Metadata;
    let (shape, strides): (Vec<usize>, Vec<usize>) = dims.iter().copied().unzip();
    CubeTensor::new(
        t.client.clone(),
        t.handle.clone(),
        Metadata::new(shape, strides),
        t.device.clone(),
        t.dtype,
    )
}

/// `t`'s buffer as a contiguous tensor of `shape`.
pub(super) fn packed_view(t: &CubeTensor, shape: &[usize]) -> CubeTensor {
    let dims: Vec<(usize, usize)> = shape.iter().copied().zip(packed_strides(shape)).collect();
    strided_view(t, &dims)
}

/// The contiguous strides of `shape`.
pub(super) fn packed_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// An operand as the `[g, rows, cols]` tensor a batched matmul reads: a plain map of packed
/// row- or column-major matrices as it is, any other map copied out of its buffer.
pub(super) fn gather(
    t: &CubeTensor,
    op: &Operand,
    g: usize,
    rows: usize,
    cols: usize,
) -> Option<CubeTensor> {
    let plain = op.batch.split == 0 && op.row.split == 0 && op.col.split == 0;
    let packed = g == 1 || op.batch.lo == rows * cols;
    if plain && packed {
        if op.col.lo == 1 && op.row.lo == cols {
            return Some(strided_view(
                t,
                &[(g, rows * cols), (rows, cols), (cols, 1)],
            ));
        }
        if op.row.lo == 1 && op.col.lo == rows {
            return Some(strided_view(
                t,
                &[(g, rows * cols), (rows, 1), (cols, rows)],
            ));
        }
    }
    let copy = into_contiguous(strided_view(t, &operand_dims(op, g, rows, cols)?));
    Some(packed_view(&copy, &[g, rows, cols]))
}

/// The permutation that writes a contiguous `[g, m, n]` result through the output map `op`: the
/// map's dimensions ordered by stride, which must then be a packed layout (the map is one-to-one
/// onto the output, so any map of whole blocks is). `None` otherwise.
pub(super) fn scatter_order(
    op: &Operand,
    g: usize,
    m: usize,
    n: usize,
) -> Option<(Vec<usize>, Vec<usize>)> {
    let dims = operand_dims(op, g, m, n)?;
    let mut order: Vec<usize> = (0..dims.len()).collect();
    order.sort_by_key(|&d| std::cmp::Reverse(dims[d].1));
    let lens: Vec<usize> = dims.iter().map(|&(len, _)| len).collect();
    let ordered: Vec<usize> = order.iter().map(|&d| lens[d]).collect();
    let packed = packed_strides(&ordered);
    order
        .iter()
        .zip(&packed)
        .all(|(&d, &stride)| dims[d].1 == stride)
        .then_some((lens, order))
}

/// The op in two passes: each operand whose map is not a plain matrix layout copied into one
/// (GraLoRA's regroup, as the composite makes it), one batched matmul through burn's own
/// autotuned matmul, and the result copied through the output map: what the composite does,
/// product by product. More memory traffic than the WGSL kernel, but on a GPU where burn's
/// matmul kernels beat the tiled one by more than the copies cost, the tuner (which times this
/// as one more candidate) keeps the op from falling behind the composite. A first call for a new
/// shape tunes burn's matmul inside this candidate's warm-up, as the composite's first call
/// would. `Err` where a map has a partial last block or K is zero.
pub(super) fn two_pass(
    lhs: &CubeTensor,
    rhs: &CubeTensor,
    spec: &BlockMatmul,
) -> Result<CubeTensor, String> {
    use burn_cubecl::kernel::matmul::{MatmulStrategy, matmul};
    let BlockMatmul { g, m, n, k, .. } = *spec;
    let partial = || "two-pass: a map with a partial last block has no strided view".to_string();
    if k == 0 {
        return Err("two-pass: K is 0".into());
    }
    let (lens, order) = scatter_order(&spec.out, g, m, n).ok_or_else(partial)?;
    let mut l = gather(lhs, &spec.lhs, g, m, k).ok_or_else(partial)?;
    let mut r = gather(rhs, &spec.rhs, g, k, n).ok_or_else(partial)?;
    // alpha on the smallest of the three.
    let scale = |t: CubeTensor| CubeBackend::float_mul_scalar(t, spec.alpha.into());
    let scale_out = spec.alpha != 1.0 && m * n <= (m * k).min(k * n);
    if spec.alpha != 1.0 && !scale_out {
        if m * k <= k * n {
            l = scale(l);
        } else {
            r = scale(r);
        }
    }
    let mut out =
        matmul(l, r, None, MatmulStrategy::Autotune, lhs.dtype).map_err(|e| format!("{e:?}"))?;
    if scale_out {
        out = scale(out);
    }
    count(Counter::TwoPass);
    // The result as the map's dimensions (contiguous), permuted into the output's order.
    let strides = packed_strides(&lens);
    let dims: Vec<(usize, usize)> = order.iter().map(|&d| (lens[d], strides[d])).collect();
    let written = into_contiguous(strided_view(&out, &dims));
    Ok(packed_view(&written, &spec.out_shape))
}
