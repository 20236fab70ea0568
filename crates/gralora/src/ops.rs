//! `block_matmul`: the one custom op behind GraLoRA's forward and backward (docs/METHODS.md §2).
//!
//! `out[g, m, n] = alpha · Σ_kk L(g, m, kk) · R(g, kk, n)` where every operand is addressed through
//! `offset = batch(g) + row(i) + col(j)` and an axis is plain (`i · lo`) or split
//! (`(i / split) · hi + (i % split) · lo`). The split form reads GraLoRA's regrouped intermediate
//! in place, so neither the forward nor the backward ever materialises the regroup copy, and the
//! gradient of a block matmul is again a block matmul (the operand maps transposed).
//!
//! The op is declared once here; each backend's way lives under `backends/`: WGSL on wgpu
//! (`shaders/block_matmul.wgsl` on a GPU, `shaders/block_matmul_direct.wgsl` on a software
//! device) and a `#[cube]` twin on CubeCL runtimes without WGSL, strided
//! `gemm` calls on Flex, the same body lazily on Fusion, and a hand-written backward on Autodiff.

use burn::backend::{Backend, backend_extension, tensor::FloatTensor};
use burn::tensor::{Shape, Tensor};

/// How one index of an operand maps to a buffer offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Axis {
    /// Block length of a split axis; 0 for a plain axis.
    pub split: usize,
    /// Stride between blocks (split axes only).
    pub hi: usize,
    /// Stride within a block (or the plain stride).
    pub lo: usize,
}

impl Axis {
    /// A plain axis: `offset(i) = i · stride`.
    pub const fn plain(stride: usize) -> Self {
        Self {
            split: 0,
            hi: 0,
            lo: stride,
        }
    }

    /// A split axis: `offset(i) = (i / split) · hi + (i % split) · lo`.
    pub const fn split(split: usize, hi: usize, lo: usize) -> Self {
        Self { split, hi, lo }
    }

    /// The offset of index `i`.
    #[inline]
    pub fn offset(&self, i: usize) -> usize {
        match i.checked_div(self.split) {
            Some(block) => block * self.hi + (i % self.split) * self.lo,
            None => i * self.lo,
        }
    }

    /// The end of the contiguous run of indices starting at `i` (exclusive), capped at `len`.
    #[inline]
    pub(crate) fn run_end(&self, i: usize, len: usize) -> usize {
        match i.checked_div(self.split) {
            Some(block) => ((block + 1) * self.split).min(len),
            None => len,
        }
    }
}

/// How an operand's `(g, row, col)` maps to a buffer offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operand {
    /// The batch index g: plain (`g · stride`), or split in two levels, e.g. attention's
    /// `(sequence, head)` pairs read in place from a `[B, T, heads · d]` buffer.
    pub batch: Axis,
    /// The row axis.
    pub row: Axis,
    /// The column axis.
    pub col: Axis,
}

impl Operand {
    /// A contiguous batch of `[rows, cols]` matrices.
    pub const fn contiguous(rows: usize, cols: usize) -> Self {
        Self {
            batch: Axis::plain(rows * cols),
            row: Axis::plain(cols),
            col: Axis::plain(1),
        }
    }

    /// The same storage read as its transpose.
    pub const fn transposed(self) -> Self {
        Self {
            batch: self.batch,
            row: self.col,
            col: self.row,
        }
    }

    /// The offset of `(g, i, j)`.
    #[inline]
    pub fn offset(&self, g: usize, i: usize, j: usize) -> usize {
        self.batch.offset(g) + self.row.offset(i) + self.col.offset(j)
    }
}

/// A block matmul: sizes, scale and the three operand maps.
///
/// The maps must be one-to-one onto their tensors: `G·M·K` elements of the lhs tensor,
/// `G·K·N` of the rhs and `G·M·N` of the output, each reached exactly once. That makes the
/// gradient of each input the block matmul that writes through that input's own map.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockMatmul {
    /// Batch count G.
    pub g: usize,
    /// Output rows M.
    pub m: usize,
    /// Output columns N.
    pub n: usize,
    /// Reduction length K.
    pub k: usize,
    /// Factor applied to every output.
    pub alpha: f32,
    /// Map of the left operand, indexed `(g, m, kk)`.
    pub lhs: Operand,
    /// Map of the right operand, indexed `(g, kk, n)`.
    pub rhs: Operand,
    /// Map of the output, indexed `(g, m, n)`.
    pub out: Operand,
    /// Shape of the output tensor (its element count is `G·M·N`).
    pub out_shape: Vec<usize>,
    /// Shape of the left tensor (for its gradient).
    pub lhs_shape: Vec<usize>,
    /// Shape of the right tensor (for its gradient).
    pub rhs_shape: Vec<usize>,
}

impl BlockMatmul {
    /// `out[g] = L[g] · R[g]` over contiguous `[g, m, k]`, `[g, k, n]` and `[g, m, n]` tensors:
    /// a plain batched matmul, the simplest map of all.
    pub fn batched(g: usize, m: usize, n: usize, k: usize) -> Self {
        Self {
            g,
            m,
            n,
            k,
            alpha: 1.0,
            lhs: Operand::contiguous(m, k),
            rhs: Operand::contiguous(k, n),
            out: Operand::contiguous(m, n),
            out_shape: vec![g, m, n],
            lhs_shape: vec![g, m, k],
            rhs_shape: vec![g, k, n],
        }
    }

    /// [`check`](Self::check), and that the operands have the shapes recorded here (`op` names
    /// the caller in the panic message).
    fn check_operands(&self, op: &str, lhs: &[usize], rhs: &[usize]) {
        self.check();
        assert_eq!(lhs, self.lhs_shape.as_slice(), "{op}: lhs shape");
        assert_eq!(rhs, self.rhs_shape.as_slice(), "{op}: rhs shape");
    }

    /// The op computing `∂L/∂lhs` from `∂L/∂out`: `alpha · gO · Rᵀ`, written through lhs's map.
    pub fn grad_lhs(&self) -> Self {
        Self {
            g: self.g,
            m: self.m,
            n: self.k,
            k: self.n,
            alpha: self.alpha,
            lhs: self.out,
            rhs: self.rhs.transposed(),
            out: self.lhs,
            out_shape: self.lhs_shape.clone(),
            lhs_shape: self.out_shape.clone(),
            rhs_shape: self.rhs_shape.clone(),
        }
    }

    /// The op computing `∂L/∂rhs` from `∂L/∂out`: `alpha · Lᵀ · gO`, written through rhs's map.
    /// Its left operand is the original lhs and its right operand the output gradient.
    pub fn grad_rhs(&self) -> Self {
        Self {
            g: self.g,
            m: self.k,
            n: self.n,
            k: self.m,
            alpha: self.alpha,
            lhs: self.lhs.transposed(),
            rhs: self.out,
            out: self.rhs,
            out_shape: self.rhs_shape.clone(),
            lhs_shape: self.lhs_shape.clone(),
            rhs_shape: self.out_shape.clone(),
        }
    }

    pub(crate) fn check(&self) {
        let count = |s: &[usize]| s.iter().product::<usize>();
        assert_eq!(
            count(&self.out_shape),
            self.g * self.m * self.n,
            "block_matmul: output map must cover the output"
        );
        assert_eq!(
            count(&self.lhs_shape),
            self.g * self.m * self.k,
            "block_matmul: lhs map must cover lhs"
        );
        assert_eq!(
            count(&self.rhs_shape),
            self.g * self.k * self.n,
            "block_matmul: rhs map must cover rhs"
        );
    }

    /// The definition as straight f64-accumulating loops over host slices (row-major,
    /// contiguous): what every backend's kernel is checked against.
    pub fn reference(&self, lhs: &[f32], rhs: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; self.g * self.m * self.n];
        for g in 0..self.g {
            for i in 0..self.m {
                for j in 0..self.n {
                    let mut acc = 0.0f64;
                    for kk in 0..self.k {
                        acc += lhs[self.lhs.offset(g, i, kk)] as f64
                            * rhs[self.rhs.offset(g, kk, j)] as f64;
                    }
                    out[self.out.offset(g, i, j)] = (self.alpha as f64 * acc) as f32;
                }
            }
        }
        out
    }
}

/// The backend extension. Block-matmul inputs are read as contiguous row-major buffers.
///
/// Besides the block matmul, two dense products with an accumulator, so that a layer's
/// `x W + b + s · branch` is written once: the CPU backend runs each as one `gemm` into the
/// accumulator's own buffer (or, without one, into an uninitialised buffer), instead of a zeroed
/// output plus separate bias and branch additions. Elsewhere their default bodies are burn's own
/// matmul and add, so GPUs keep their vendor-tuned matmul.
#[backend_extension(Flex, Cube, Fusion, Autodiff)]
pub trait BlockMatmulOps: Backend {
    /// `out = alpha · L · R` through the operand maps of `spec`.
    #[fusion(dtype = lhs, shape = Shape::from(spec.out_shape.clone()))]
    fn block_matmul(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        spec: BlockMatmul,
    ) -> FloatTensor<Self>;

    /// `out = acc + alpha · L · R` through the maps of `spec`; `acc` has the output's shape.
    #[fusion(default)]
    fn block_matmul_acc(
        acc: FloatTensor<Self>,
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        spec: BlockMatmul,
    ) -> FloatTensor<Self> {
        Self::float_add(acc, Self::block_matmul(lhs, rhs, spec))
    }

    /// `alpha · lhs · rhs` for 2-D `lhs: [m, k]`, `rhs: [k, n]` (any strides).
    #[fusion(default)]
    fn matmul_scaled(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        alpha: f32,
    ) -> FloatTensor<Self> {
        let out = Self::float_matmul(lhs, rhs);
        if alpha == 1.0 {
            out
        } else {
            Self::float_mul_scalar(out, alpha.into())
        }
    }

    /// `acc + alpha · lhs · rhs` for 2-D `lhs: [m, k]`, `rhs: [k, n]`, and `acc` either `[m, n]` or
    /// `[1, n]` (a bias, added to every row).
    #[fusion(default)]
    fn matmul_acc(
        acc: FloatTensor<Self>,
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        alpha: f32,
    ) -> FloatTensor<Self> {
        Self::float_add(acc, Self::matmul_scaled(lhs, rhs, alpha))
    }
}

/// Run a block matmul on tensors of any device. `lhs`, `rhs` and the result have the shapes
/// recorded in `spec`.
pub fn block_matmul<const DL: usize, const DR: usize, const DO: usize>(
    lhs: Tensor<DL>,
    rhs: Tensor<DR>,
    spec: BlockMatmul,
) -> Tensor<DO> {
    spec.check_operands("block_matmul", &lhs.dims(), &rhs.dims());
    assert_eq!(spec.out_shape.len(), DO, "block_matmul: output rank");
    use burn::backend::Dispatch;
    Tensor::from_dispatch(Dispatch::block_matmul(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
        spec,
    ))
}

/// `acc + L · R` through the maps of `spec` (`acc` has the output's shape), written into `acc`'s
/// buffer where the backend can (the CPU backend, when nothing else holds `acc`).
pub fn block_matmul_acc<const DL: usize, const DR: usize, const DO: usize>(
    acc: Tensor<DO>,
    lhs: Tensor<DL>,
    rhs: Tensor<DR>,
    spec: BlockMatmul,
) -> Tensor<DO> {
    spec.check_operands("block_matmul_acc", &lhs.dims(), &rhs.dims());
    assert_eq!(
        acc.dims().as_slice(),
        spec.out_shape.as_slice(),
        "block_matmul_acc: accumulator shape"
    );
    use burn::backend::Dispatch;
    Tensor::from_dispatch(Dispatch::block_matmul_acc(
        acc.into_dispatch(),
        lhs.into_dispatch(),
        rhs.into_dispatch(),
        spec,
    ))
}

/// `acc + alpha · lhs · rhs` for `lhs: [m, k]`, `rhs: [k, n]`; `acc` is `[m, n]`, `[1, n]` (added to
/// every row) or absent. On the CPU one `gemm` writes the result (into `acc`'s buffer when nothing
/// else holds it); elsewhere burn's matmul and add.
pub fn matmul_acc(acc: Option<Tensor<2>>, lhs: Tensor<2>, rhs: Tensor<2>, alpha: f32) -> Tensor<2> {
    let [m, k] = lhs.dims();
    let [k2, n] = rhs.dims();
    assert_eq!(
        k, k2,
        "matmul_acc: lhs is [{m}, {k}] but rhs is [{k2}, {n}]"
    );
    use burn::backend::Dispatch;
    match acc {
        None => Tensor::from_dispatch(Dispatch::matmul_scaled(
            lhs.into_dispatch(),
            rhs.into_dispatch(),
            alpha,
        )),
        Some(acc) => {
            let [am, an] = acc.dims();
            assert!(
                an == n && (am == m || am == 1),
                "matmul_acc: accumulator is [{am}, {an}], expected [{m}, {n}] or [1, {n}]"
            );
            Tensor::from_dispatch(Dispatch::matmul_acc(
                acc.into_dispatch(),
                lhs.into_dispatch(),
                rhs.into_dispatch(),
                alpha,
            ))
        }
    }
}

/// A linear layer's `x W + b` through [`matmul_acc`] (the bias as the accumulator).
///
/// # Shapes
/// - x: `[T, in]`
/// - output: `[T, out]`
pub fn linear(x: Tensor<2>, layer: &burn::nn::Linear) -> Tensor<2> {
    let w = layer.weight.val();
    let d_out = w.dims()[1];
    let bias = layer.bias.as_ref().map(|b| b.val().reshape([1, d_out]));
    matmul_acc(bias, x, w, 1.0)
}

/// Attention scores per head: `scores[b, h, i, j] = Σ_c q[b, i, h·dh + c] · k[b, j, h·dh + c]`
/// (`dh = D / heads`), read from the projections' `[B, T, D]` layout in place.
///
/// On the CPU backend this is one block matmul whose batch index is the two-level
/// `(sequence, head)` pair: no `[B, heads, T, dh]` copies in the forward or the backward, and the
/// products run on the same GEMM as the layers (OpenBLAS when loaded). Elsewhere it is burn's
/// reshape, swap and batched matmul (GPUs keep their tuned matmul).
///
/// # Shapes
/// - q: `[B, Tq, D]`, k: `[B, Tk, D]`
/// - output: `[B, heads, Tq, Tk]`
pub fn head_scores(q: Tensor<3>, k: Tensor<3>, heads: usize) -> Tensor<4> {
    let ([b, tq, d], [b2, tk, d2]) = (q.dims(), k.dims());
    assert!(
        b == b2 && d == d2 && heads > 0 && d % heads == 0,
        "head_scores: q {:?} and k {:?} must be [B, T, D] with D divisible by {heads} heads",
        q.dims(),
        k.dims()
    );
    let dh = d / heads;
    if !crate::device::is_flex(&q.device()) {
        let split = |y: Tensor<3>, t| y.reshape([b, t, heads, dh]).swap_dims(1, 2);
        return split(q, tq).matmul(split(k, tk).swap_dims(2, 3));
    }
    block_matmul(q, k, head_scores_spec(b, tq, tk, d, heads))
}

/// The spec of [`head_scores`] for `B` sequences, `Tq` queries, `Tk` keys, width `D`.
pub(crate) fn head_scores_spec(
    b: usize,
    tq: usize,
    tk: usize,
    d: usize,
    heads: usize,
) -> BlockMatmul {
    let dh = d / heads;
    BlockMatmul {
        g: b * heads,
        m: tq,
        n: tk,
        k: dh,
        alpha: 1.0,
        lhs: head_major(heads, tq, d, dh),
        rhs: head_major(heads, tk, d, dh).transposed(),
        out: Operand::contiguous(tq, tk),
        out_shape: vec![b, heads, tq, tk],
        lhs_shape: vec![b, tq, d],
        rhs_shape: vec![b, tk, d],
    }
}

/// Attention's context per head, written back in the `[B, T, D]` layout:
/// `ctx[b, i, h·dh + c] = Σ_j probs[b, h, i, j] · v[b, j, h·dh + c]`. Like [`head_scores`], one
/// block matmul on the CPU backend (no head-split copies of `v` or of the context), burn's ops
/// elsewhere.
///
/// # Shapes
/// - probs: `[B, heads, Tq, Tk]`, v: `[B, Tk, D]`
/// - output: `[B, Tq, D]`
pub fn head_context(probs: Tensor<4>, v: Tensor<3>) -> Tensor<3> {
    let ([b, heads, tq, tk], [b2, tk2, d]) = (probs.dims(), v.dims());
    assert!(
        b == b2 && tk == tk2 && heads > 0 && d % heads == 0,
        "head_context: probs {:?} must be [B, heads, Tq, Tk] and v {:?} [B, Tk, D] with D divisible by heads",
        probs.dims(),
        v.dims()
    );
    let dh = d / heads;
    if !crate::device::is_flex(&v.device()) {
        let vh = v.reshape([b, tk, heads, dh]).swap_dims(1, 2);
        return probs.matmul(vh).swap_dims(1, 2).reshape([b, tq, d]);
    }
    block_matmul(probs, v, head_context_spec(b, heads, tq, tk, d))
}

/// The spec of [`head_context`] for `B` sequences of `heads` heads, `Tq` queries, `Tk` keys,
/// width `D`.
pub(crate) fn head_context_spec(
    b: usize,
    heads: usize,
    tq: usize,
    tk: usize,
    d: usize,
) -> BlockMatmul {
    let dh = d / heads;
    BlockMatmul {
        g: b * heads,
        m: tq,
        n: dh,
        k: tk,
        alpha: 1.0,
        lhs: Operand::contiguous(tq, tk),
        rhs: head_major(heads, tk, d, dh),
        out: head_major(heads, tq, d, dh),
        out_shape: vec![b, tq, d],
        lhs_shape: vec![b, heads, tq, tk],
        rhs_shape: vec![b, tk, d],
    }
}

/// Head `h` of sequence `s` (batch index `g = s · heads + h`) of a `[B, T, D]` buffer as a
/// `[T, dh]` matrix.
fn head_major(heads: usize, t: usize, d: usize, dh: usize) -> Operand {
    Operand {
        batch: Axis::split(heads, t * d, dh),
        row: Axis::plain(d),
        col: Axis::plain(1),
    }
}

/// GraLoRA's block branch `s · regroup(x_blocks · A) · B` as two block matmuls, no regroup copy.
///
/// # Shapes
/// - x: `[T, in]`, a: `[k, in/k, r]`, b: `[k, r, out/k]`
/// - output: `[T, out]`
pub fn gralora_blocks(x: Tensor<2>, a: Tensor<3>, b: Tensor<3>, scale: f64) -> Tensor<2> {
    let ob = b.dims()[2];
    let (h, spec) = gralora_first(x, a);
    block_matmul(h, b, gralora_second_spec(&spec, ob, scale))
}

/// `acc + s · regroup(x_blocks · A) · B`: [`gralora_blocks`] added into `acc` (`[T, out]`).
pub fn gralora_blocks_acc(
    acc: Tensor<2>,
    x: Tensor<2>,
    a: Tensor<3>,
    b: Tensor<3>,
    scale: f64,
) -> Tensor<2> {
    let ob = b.dims()[2];
    let (h, spec) = gralora_first(x, a);
    block_matmul_acc(acc, h, b, gralora_second_spec(&spec, ob, scale))
}

/// GraLoRA's first product `h[n] = x_n · A[n]` (`[k, T, r]`) and its spec.
fn gralora_first(x: Tensor<2>, a: Tensor<3>) -> (Tensor<3>, BlockMatmul) {
    let [t, d_in] = x.dims();
    let [k, _, r] = a.dims();
    let spec = gralora_first_spec(t, d_in, k, r);
    (block_matmul(x, a, spec.clone()), spec)
}

/// The spec of GraLoRA's first product for `T` tokens, `in` inputs, `k` blocks and rank `r`.
pub(crate) fn gralora_first_spec(t: usize, d_in: usize, k: usize, r: usize) -> BlockMatmul {
    let ib = d_in / k;
    // h[n] = x_n · A[n]: x read as [k(n), T, ib] in place.
    BlockMatmul {
        g: k,
        m: t,
        n: r,
        k: ib,
        alpha: 1.0,
        lhs: Operand {
            batch: Axis::plain(ib),
            row: Axis::plain(d_in),
            col: Axis::plain(1),
        },
        rhs: Operand::contiguous(ib, r),
        out: Operand::contiguous(t, r),
        out_shape: vec![k, t, r],
        lhs_shape: vec![t, d_in],
        rhs_shape: vec![k, ib, r],
    }
}

/// The spec of GraLoRA's second product (`ob = out/k` columns per output block), given the first's.
pub(crate) fn gralora_second_spec(first: &BlockMatmul, ob: usize, scale: f64) -> BlockMatmul {
    let (k, t, r) = (first.g, first.m, first.n);
    let rb = r / k;
    // y_j = Σ_n h[n][:, j-block] · B[j][n-block]: h read regrouped in place
    // (column c = n·rb + u of batch j is h[n][t, j·rb + u]); y written as [T, out] directly.
    BlockMatmul {
        g: k,
        m: t,
        n: ob,
        k: r,
        alpha: scale as f32,
        lhs: Operand {
            batch: Axis::plain(rb),
            row: Axis::plain(r),
            col: Axis::split(rb, t * r, 1),
        },
        rhs: Operand::contiguous(r, ob),
        out: Operand {
            batch: Axis::plain(ob),
            row: Axis::plain(k * ob),
            col: Axis::plain(1),
        },
        out_shape: vec![t, k * ob],
        lhs_shape: vec![k, t, r],
        rhs_shape: vec![k, r, ob],
    }
}

/// A contiguous f32 Flex tensor that owns `values` as its buffer, for the CPU kernels of this
/// crate and its users. (`FlexTensor::zeros` zeroes a byte buffer and then copies it into an
/// aligned one: two extra passes on one thread, a tenth of a CPU training step when every
/// output went through it.)
pub fn flex_f32(shape: Shape, values: Vec<f32>) -> burn_flex::FlexTensor {
    assert_eq!(
        shape.num_elements(),
        values.len(),
        "flex_f32: shape and buffer differ"
    );
    burn_flex::FlexTensor::new(
        burn::tensor::Bytes::from_elems(values),
        burn_flex::Layout::contiguous(shape),
        burn::tensor::DType::F32,
    )
}
