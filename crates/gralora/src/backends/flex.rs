//! Flex (CPU): the block matmul as a few strided `gemm` calls.
//!
//! Along every axis the operand maps are affine inside runs of `split` indices, so the index space
//! cuts into rectangles where all three operands are plain strided matrices; each rectangle is one
//! `gemm` call (GraLoRA's regrouped product is k such calls per block, not a copy). Where the runs
//! along K or N are short (under 16 on average: r/k = 4 or 8), a piece of rows instead copies its
//! operands contiguously, run by run, and makes one `gemm` over all of K and N (then copies its
//! result out through a split output map): fewer, larger calls.

use burn::backend::Flex;
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{DType, FloatDType, Shape};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::ops::{Axis, BlockMatmul, BlockMatmulOps, Operand};

impl BlockMatmulOps for Flex {
    fn block_matmul(lhs: FlexTensor, rhs: FlexTensor, spec: BlockMatmul) -> FlexTensor {
        if !all_f32(&[&lhs, &rhs]) {
            // Other float types (f16, bf16, f64) compute in f32 and come back in their own type.
            let dtype = lhs.dtype();
            let out = Self::block_matmul(to_f32(lhs), to_f32(rhs), spec);
            return Flex::float_cast(out, FloatDType::from(dtype));
        }
        let lhs = contiguous(lhs);
        let rhs = contiguous(rhs);
        let shape = Shape::from(spec.out_shape.clone());
        let len = shape.num_elements();
        if spec.k == 0 {
            return crate::ops::flex_f32(shape, vec![0.0; len]);
        }
        let mut out = Vec::<f32>::with_capacity(len);
        // SAFETY: the output map is one-to-one onto the `len` elements (`BlockMatmul::check`)
        // and the first k-run of every (m, n) rectangle writes without reading, so every element
        // is written before `set_len`.
        unsafe {
            run_f32(&spec, slice(&lhs), slice(&rhs), out.as_mut_ptr(), false);
            out.set_len(len);
        }
        crate::ops::flex_f32(shape, out)
    }

    fn block_matmul_acc(
        acc: FlexTensor,
        lhs: FlexTensor,
        rhs: FlexTensor,
        spec: BlockMatmul,
    ) -> FlexTensor {
        if !all_f32(&[&acc, &lhs, &rhs]) {
            let out = Self::block_matmul(lhs, rhs, spec);
            return Flex::float_add(acc, out);
        }
        let lhs = contiguous(lhs);
        let rhs = contiguous(rhs);
        let mut acc = owned_contiguous(acc);
        let out = acc.storage_mut::<f32>();
        // SAFETY: as in `block_matmul`; `out` holds the output's elements and is exclusively ours.
        unsafe { run_f32(&spec, slice(&lhs), slice(&rhs), out.as_mut_ptr(), true) };
        acc
    }

    fn matmul_scaled(lhs: FlexTensor, rhs: FlexTensor, alpha: f32) -> FlexTensor {
        if !all_f32(&[&lhs, &rhs]) {
            let out = Flex::float_matmul(lhs, rhs);
            return Flex::float_mul_scalar(out, alpha.into());
        }
        dense(None, lhs, rhs, alpha)
    }

    fn matmul_acc(acc: FlexTensor, lhs: FlexTensor, rhs: FlexTensor, alpha: f32) -> FlexTensor {
        if !all_f32(&[&acc, &lhs, &rhs]) {
            let out = Flex::float_mul_scalar(Flex::float_matmul(lhs, rhs), alpha.into());
            return Flex::float_add(acc, out);
        }
        dense(Some(acc), lhs, rhs, alpha)
    }
}

/// `t` in a contiguous layout (shares the buffer when it already is; `to_contiguous` borrows, so
/// the original handle is dropped here to keep the buffer unique).
fn contiguous(t: FlexTensor) -> FlexTensor {
    let c = t.to_contiguous();
    drop(t);
    c
}

fn all_f32(tensors: &[&FlexTensor]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32)
}

fn to_f32(t: FlexTensor) -> FlexTensor {
    Flex::float_cast(t, FloatDType::F32)
}

/// The elements of a contiguous f32 tensor.
fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

/// `t` as a contiguous tensor whose buffer nothing else holds (no copy when it already is one).
fn owned_contiguous(t: FlexTensor) -> FlexTensor {
    let t = contiguous(t);
    let whole = t.layout().start_offset() == 0
        && t.bytes().len() == t.layout().num_elements() * std::mem::size_of::<f32>();
    if t.is_unique() && whole {
        t
    } else {
        crate::ops::flex_f32(t.layout().shape().clone(), slice(&t).to_vec())
    }
}

/// A 2-D f32 operand read in place: (storage from its first element, row stride, column stride).
fn strided_2d(t: &FlexTensor) -> Option<(&[f32], isize, isize)> {
    let (_, _, rs, cs) = t.layout().as_2d_strides()?;
    if rs < 0 || cs < 0 {
        return None;
    }
    Some((&t.storage::<f32>()[t.layout().start_offset()..], rs, cs))
}

/// Below this many multiply-adds a product runs on one thread (burn-flex's threshold).
const PARALLEL_MACS: usize = 192 * 192 * 192;

/// `acc + alpha · lhs · rhs` (2-D, any non-negative strides) as one `gemm` call, written into the
/// accumulator's buffer when it is `[m, n]`, into a buffer pre-filled with it when it is `[1, n]`,
/// or, without one, into an uninitialised buffer.
fn dense(acc: Option<FlexTensor>, lhs: FlexTensor, rhs: FlexTensor, alpha: f32) -> FlexTensor {
    let readable = |t: FlexTensor| {
        if strided_2d(&t).is_some() {
            t
        } else {
            contiguous(t)
        }
    };
    let (lhs, rhs) = (readable(lhs), readable(rhs));
    let (l, l_rs, l_cs) = strided_2d(&lhs).expect("2-D lhs");
    let (r, r_rs, r_cs) = strided_2d(&rhs).expect("2-D rhs");
    let [m, k] = lhs.layout().shape().dims::<2>();
    let [k2, n] = rhs.layout().shape().dims::<2>();
    assert_eq!(k, k2, "matmul: inner sizes differ");
    let shape = Shape::from(vec![m, n]);
    // The product as a one-batch block matmul over the operands' own strides.
    let spec = BlockMatmul {
        g: 1,
        m,
        n,
        k,
        alpha,
        lhs: Operand {
            batch: Axis::plain(0),
            row: Axis::plain(l_rs as usize),
            col: Axis::plain(l_cs as usize),
        },
        rhs: Operand {
            batch: Axis::plain(0),
            row: Axis::plain(r_rs as usize),
            col: Axis::plain(r_cs as usize),
        },
        out: Operand::contiguous(m, n),
        out_shape: vec![m, n],
        lhs_shape: vec![m, k],
        rhs_shape: vec![k, n],
    };
    // SAFETY: `dst` holds the `m · n` outputs (initialised when `read_dst`); `l` and `r` start at
    // the operands' first elements and reach their last through these strides.
    let run = |dst: *mut f32, read_dst: bool| unsafe { run_f32(&spec, l, r, dst, read_dst) };
    match acc {
        Some(acc) if acc.layout().shape().dims::<2>() == [m, n] => {
            let mut acc = owned_contiguous(acc);
            run(acc.storage_mut::<f32>().as_mut_ptr(), true);
            acc
        }
        Some(bias) => {
            let bias = contiguous(bias);
            let bias = slice(&bias);
            assert_eq!(
                bias.len(),
                n,
                "matmul_acc: accumulator must be [m, n] or [1, n]"
            );
            let mut out = Vec::<f32>::with_capacity(m * n);
            out.spare_capacity_mut()
                .par_chunks_mut(n.max(1))
                .for_each(|row| {
                    for (d, b) in row.iter_mut().zip(bias) {
                        d.write(*b);
                    }
                });
            // SAFETY: every one of the m · n elements was just written.
            unsafe { out.set_len(m * n) };
            run(out.as_mut_ptr(), true);
            crate::ops::flex_f32(shape, out)
        }
        None => {
            if k == 0 {
                return crate::ops::flex_f32(shape, vec![0.0; m * n]);
            }
            let mut out = Vec::<f32>::with_capacity(m * n);
            run(out.as_mut_ptr(), false);
            // SAFETY: gemm wrote all m · n elements (k > 0, no read of the destination).
            unsafe { out.set_len(m * n) };
            crate::ops::flex_f32(shape, out)
        }
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

/// # Safety
/// `out` must hold the output's elements (writable); with `accumulate` they must be initialised.
unsafe fn run_f32(spec: &BlockMatmul, lhs: &[f32], rhs: &[f32], out: *mut f32, accumulate: bool) {
    if spec.k == 0 {
        return; // nothing to add (callers zero an output they own)
    }
    let m_runs = runs(spec.lhs.row, spec.out.row, spec.m);
    let n_runs = runs(spec.rhs.col, spec.out.col, spec.n);
    let k_runs = runs(spec.lhs.col, spec.rhs.row, spec.k);
    // Output rectangles (g, rows, columns): each is written by its own k-runs in turn, and no two
    // overlap (the output map is one-to-one), so they run in parallel. GraLoRA's products are
    // several thin GEMMs (N or K = r/k), which the gemm crate's own threading splits poorly;
    // rows cut into pieces give every core whole single-threaded GEMMs instead.
    // Runs that short along K or N would make many small GEMMs (GraLoRA's regrouped products
    // at k = 4: runs of r/k): each rectangle then packs its operands (and, with N cut into runs,
    // its output) contiguously and makes one GEMM over all of K and N.
    let short =
        |runs: &[(usize, usize)], len: usize| runs.len() > 1 && len < PACK_BELOW * runs.len();
    let pack = short(&k_runs, spec.k) || short(&n_runs, spec.n);
    let full_n = [(0, spec.n)];
    let n_rects: &[(usize, usize)] = if pack { &full_n } else { &n_runs };
    let mut rects = Vec::new();
    for g in 0..spec.g {
        for &(m0, m1) in &m_runs {
            for &(n0, n1) in n_rects {
                rects.push((g, m0, m1, n0, n1));
            }
        }
    }
    let macs = spec.g * spec.m * spec.n * spec.k;
    let threads = rayon::current_num_threads();
    let parallel = macs >= PARALLEL_MACS && threads > 1;
    let blas = crate::blas::active();
    // One wide product (a dense layer) is left to the gemm crate's own threading, which splits
    // it at least as well (measured: equal to 2 % on MiniLM's shapes). OpenBLAS runs
    // single-threaded (its own threads spin and starve rayon's: measured 20 % slower steps),
    // so with it every product is cut into row blocks here.
    let gemm_threads = blas.is_none() && parallel && rects.len() == 1 && spec.n.min(spec.k) >= 64;
    let parallel = parallel && !gemm_threads;
    if parallel {
        // Whole-core pieces for one wide product (each piece packs the right operand again, so
        // fewer is better there); several per core for many thin ones (load balance).
        let per_core = if rects.len() == 1 { 1 } else { 4 };
        let pieces = (per_core * threads).div_ceil(rects.len()).max(1);
        rects = rects
            .into_iter()
            .flat_map(|(g, m0, m1, n0, n1)| {
                let rows = (m1 - m0).div_ceil(pieces).max(MIN_ROWS);
                (m0..m1)
                    .step_by(rows)
                    .map(move |r0| (g, r0, (r0 + rows).min(m1), n0, n1))
            })
            .collect();
    }
    let out = SendPtr(out);
    // One GEMM `dst (+)= alpha · l · r` over (rows, columns, K), each operand a pointer with its
    // row and column strides.
    // SAFETY (callers): every element the sizes and strides reach lies inside its buffer, and
    // `dst` is written by this call alone.
    let sgemm = |(m, n, k): (usize, usize, usize),
                 l: Strided<*const f32>,
                 r: Strided<*const f32>,
                 dst: Strided<*mut f32>,
                 read_dst: bool| unsafe {
        if blas.is_some_and(|blas| blas.sgemm((m, n, k), spec.alpha, l, r, dst, read_dst)) {
            return;
        }
        let threads = if gemm_threads {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        gemm::gemm(
            m, n, k, dst.0, dst.2, dst.1, read_dst, l.0, l.2, l.1, r.0, r.2, r.1, 1.0f32,
            spec.alpha, false, false, false, threads,
        );
    };
    let rect = |&(g, m0, m1, n0, n1): &(usize, usize, usize, usize, usize)| {
        if pack {
            return packed_rect(
                spec,
                lhs,
                rhs,
                out,
                accumulate,
                (g, m0, m1),
                &k_runs,
                &n_runs,
                &sgemm,
            );
        }
        let dst = spec.out.offset(g, m0, n0);
        for (ki, &(k0, k1)) in k_runs.iter().enumerate() {
            let l = spec.lhs.offset(g, m0, k0);
            let r = spec.rhs.offset(g, k0, n0);
            // SAFETY: every offset reached by (m, n, k) in these runs lies inside its buffer
            // (the maps cover their tensors, checked by `BlockMatmul::check`); rectangles are
            // disjoint in the output, and the caller gives `out` exclusively.
            unsafe {
                sgemm(
                    (m1 - m0, n1 - n0, k1 - k0),
                    (
                        lhs.as_ptr().add(l),
                        spec.lhs.row.lo as isize,
                        spec.lhs.col.lo as isize,
                    ),
                    (
                        rhs.as_ptr().add(r),
                        spec.rhs.row.lo as isize,
                        spec.rhs.col.lo as isize,
                    ),
                    (
                        out.get().add(dst),
                        spec.out.row.lo as isize,
                        spec.out.col.lo as isize,
                    ),
                    accumulate || ki > 0,
                );
            }
        }
    };
    if parallel {
        rects.par_iter().for_each(rect);
    } else {
        rects.iter().for_each(rect);
    }
}

/// A matrix operand: its first element and its row and column strides.
type Strided<P> = (P, isize, isize);

/// One GEMM `dst (+)= alpha · l · r`: (rows, columns, K), l, r, dst, whether dst is read.
type Sgemm<'a> = dyn Fn((usize, usize, usize), Strided<*const f32>, Strided<*const f32>, Strided<*mut f32>, bool)
    + Sync
    + 'a;

/// Runs shorter than this on average along K or N make a rectangle pack its operands.
const PACK_BELOW: usize = 16;

/// Rows `m0..m1` of batch `g` over all of K and N as one GEMM: the lhs rows and the rhs copied
/// contiguously run by run, the product written straight through the output map when it is
/// one run along N, else into a scratch block then copied (or added) run by run.
#[allow(clippy::too_many_arguments)]
fn packed_rect(
    spec: &BlockMatmul,
    lhs: &[f32],
    rhs: &[f32],
    out: SendPtr,
    accumulate: bool,
    (g, m0, m1): (usize, usize, usize),
    k_runs: &[(usize, usize)],
    n_runs: &[(usize, usize)],
    sgemm: &Sgemm<'_>,
) {
    let (rows, n, k) = (m1 - m0, spec.n, spec.k);
    // An operand that is one run along K (and, the rhs, along N) is read in place.
    let l_packed;
    let packed_l = if k_runs.len() == 1 {
        // SAFETY: the rows lie in one run of the lhs' row axis, K in one run of its columns.
        let base = unsafe { lhs.as_ptr().add(spec.lhs.offset(g, m0, 0)) };
        (base, spec.lhs.row.lo as isize, spec.lhs.col.lo as isize)
    } else {
        let mut l = vec![0f32; rows * k];
        for (i, row) in l.chunks_exact_mut(k).enumerate() {
            for &(k0, k1) in k_runs {
                let base = spec.lhs.offset(g, m0 + i, k0);
                let lo = spec.lhs.col.lo;
                for (j, v) in row[k0..k1].iter_mut().enumerate() {
                    *v = lhs[base + j * lo];
                }
            }
        }
        l_packed = l;
        (l_packed.as_ptr(), k as isize, 1)
    };
    let r_packed;
    let packed_r = if k_runs.len() == 1 && spec.rhs.col.run_end(0, n) == n {
        // SAFETY: K in one run of the rhs' row axis, N in one run of its columns.
        let base = unsafe { rhs.as_ptr().add(spec.rhs.offset(g, 0, 0)) };
        (base, spec.rhs.row.lo as isize, spec.rhs.col.lo as isize)
    } else {
        let mut r = vec![0f32; k * n];
        for (kk, row) in r.chunks_exact_mut(n).enumerate() {
            for &(n0, n1) in n_runs {
                let base = spec.rhs.offset(g, kk, n0);
                let lo = spec.rhs.col.lo;
                for (j, v) in row[n0..n1].iter_mut().enumerate() {
                    *v = rhs[base + j * lo];
                }
            }
        }
        r_packed = r;
        (r_packed.as_ptr(), n as isize, 1)
    };
    let (o_row, o_col) = (spec.out.row.lo as isize, spec.out.col.lo as isize);
    if n_runs.len() == 1 {
        // SAFETY: the rectangle's rows lie in one run of the output's row axis and N in one run
        // of its column axis, so these strides reach exactly its elements, which no other
        // rectangle writes.
        unsafe {
            let dst = out.get().add(spec.out.offset(g, m0, 0));
            sgemm(
                (rows, n, k),
                packed_l,
                packed_r,
                (dst, o_row, o_col),
                accumulate,
            );
        }
        return;
    }
    let mut o = vec![0f32; rows * n];
    sgemm(
        (rows, n, k),
        packed_l,
        packed_r,
        (o.as_mut_ptr(), n as isize, 1),
        false,
    );
    for (i, row) in o.chunks_exact(n).enumerate() {
        for &(n0, n1) in n_runs {
            let base = spec.out.offset(g, m0 + i, n0);
            for (j, v) in row[n0..n1].iter().enumerate() {
                // SAFETY: an element of this rectangle's rows (the map is one-to-one, so no other
                // rectangle writes it).
                unsafe {
                    let d = out.get().add(base + j * spec.out.col.lo);
                    *d = if accumulate { *d + v } else { *v };
                }
            }
        }
    }
}

/// Rows below which a block product's rectangle is not cut further.
const MIN_ROWS: usize = 16;

/// The output pointer, shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks holding it write disjoint elements (see `run_f32`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}
