//! The `#[cube]` twin of `shaders/block_matmul.wgsl`, for CubeCL runtimes that do not compile
//! hand-written WGSL (CUDA, ROCm, SPIR-V Vulkan, Metal). One unit per output element, the same
//! two-level addressing and the same `info` layout; correct everywhere, untiled.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

// `checked_div` has no `#[cube]` expansion.
#[allow(clippy::manual_checked_ops)]
#[cube]
fn axis_offset(i: usize, split: usize, hi: usize, lo: usize) -> usize {
    let mut offset = i * lo;
    if split != 0 {
        offset = (i / split) * hi + (i % split) * lo;
    }
    offset
}

/// The batch offset of `g` (a plain batch has split `u32::MAX`).
#[cube]
fn batch_offset(g: usize, split: usize, hi: usize, lo: usize) -> usize {
    (g / split) * hi + (g % split) * lo
}

/// `info` as in the WGSL kernel: `[M, N, K, alpha bits, lhs(batch_split, batch_hi, batch_lo,
/// row_hi, row_lo, col_hi, col_lo), rhs(..), out(..)]`; `splits` is `[lhs_row, lhs_col, rhs_row, rhs_col, out_row, out_col]`.
#[cube(launch_unchecked)]
pub(crate) fn block_matmul_twin<F: Float>(
    lhs: &[F],
    rhs: &[F],
    out: &mut [F],
    info: &[u32],
    splits: &[u32],
    alpha: &[F],
    total: u32,
) {
    let pos = ABSOLUTE_POS;
    if pos < total as usize {
        let m_len = info[0] as usize;
        let n_len = info[1] as usize;
        let k_len = info[2] as usize;
        let g = pos / (m_len * n_len);
        let rem = pos % (m_len * n_len);
        let i = rem / n_len;
        let j = rem % n_len;

        let lhs_base = batch_offset(g, info[4] as usize, info[5] as usize, info[6] as usize)
            + axis_offset(i, splits[0] as usize, info[7] as usize, info[8] as usize);
        let rhs_base = batch_offset(g, info[11] as usize, info[12] as usize, info[13] as usize)
            + axis_offset(j, splits[3] as usize, info[16] as usize, info[17] as usize);
        let mut acc = F::new(0.0);
        for kk in 0..k_len {
            let l =
                lhs_base + axis_offset(kk, splits[1] as usize, info[9] as usize, info[10] as usize);
            let r = rhs_base
                + axis_offset(kk, splits[2] as usize, info[14] as usize, info[15] as usize);
            acc += lhs[l] * rhs[r];
        }
        let o = batch_offset(g, info[18] as usize, info[19] as usize, info[20] as usize)
            + axis_offset(i, splits[4] as usize, info[21] as usize, info[22] as usize)
            + axis_offset(j, splits[5] as usize, info[23] as usize, info[24] as usize);
        out[o] = alpha[0] * acc;
    }
}
