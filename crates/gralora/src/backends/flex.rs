//! Flex (CPU): the block matmul as a few strided `gemm` calls.
//!
//! Along every axis the operand maps are affine inside runs of `split` indices, so the index space
//! cuts into rectangles where all three operands are plain strided matrices; each rectangle is one
//! `gemm` call (GraLoRA's regrouped product is k such calls per block, not a copy).

use burn::backend::Flex;
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{DType, FloatDType, Shape};
use burn_flex::FlexTensor;

use crate::ops::{Axis, BlockMatmul, BlockMatmulOps};

impl BlockMatmulOps for Flex {
    fn block_matmul(lhs: FlexTensor, rhs: FlexTensor, spec: BlockMatmul) -> FlexTensor {
        let dtype = lhs.dtype();
        if dtype != DType::F32 || rhs.dtype() != DType::F32 {
            // Other float types (f16, bf16, f64) compute in f32 and come back in their own type.
            let to_f32 = |t: FlexTensor| Flex::float_cast(t, FloatDType::F32);
            let out = Self::block_matmul(to_f32(lhs), to_f32(rhs), spec);
            return Flex::float_cast(out, FloatDType::from(dtype));
        }
        let lhs = lhs.to_contiguous();
        let rhs = rhs.to_contiguous();
        let shape = Shape::from(spec.out_shape.clone());
        let mut out = vec![0f32; shape.num_elements()];
        run_f32(
            &spec,
            lhs.as_slice::<f32>().expect("contiguous lhs"),
            rhs.as_slice::<f32>().expect("contiguous rhs"),
            &mut out,
        );
        crate::ops::flex_f32(shape, out)
    }
}

/// Boundaries of the runs where both axes stay affine.
fn runs(a: Axis, b: Axis, len: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < len {
        let end = a.run_end(i, len).min(b.run_end(i, len));
        out.push((i, end));
        i = end;
    }
    out
}

fn run_f32(spec: &BlockMatmul, lhs: &[f32], rhs: &[f32], out: &mut [f32]) {
    if spec.k == 0 {
        return; // the output is already zero
    }
    let m_runs = runs(spec.lhs.row, spec.out.row, spec.m);
    let n_runs = runs(spec.rhs.col, spec.out.col, spec.n);
    let k_runs = runs(spec.lhs.col, spec.rhs.row, spec.k);
    for g in 0..spec.g {
        for &(m0, m1) in &m_runs {
            for &(n0, n1) in &n_runs {
                let dst = spec.out.offset(g, m0, n0);
                for (ki, &(k0, k1)) in k_runs.iter().enumerate() {
                    let l = spec.lhs.offset(g, m0, k0);
                    let r = spec.rhs.offset(g, k0, n0);
                    // SAFETY: every offset reached by (m, n, k) in these runs lies inside its
                    // buffer (the maps cover their tensors, checked by `BlockMatmul::check`),
                    // and `out` is exclusively borrowed.
                    unsafe {
                        gemm::gemm(
                            m1 - m0,
                            n1 - n0,
                            k1 - k0,
                            out.as_mut_ptr().add(dst),
                            spec.out.col.lo as isize,
                            spec.out.row.lo as isize,
                            ki > 0,
                            lhs.as_ptr().add(l),
                            spec.lhs.col.lo as isize,
                            spec.lhs.row.lo as isize,
                            rhs.as_ptr().add(r),
                            spec.rhs.col.lo as isize,
                            spec.rhs.row.lo as isize,
                            1.0f32,
                            spec.alpha,
                            false,
                            false,
                            false,
                            gemm::Parallelism::Rayon(0),
                        );
                    }
                }
            }
        }
    }
}
