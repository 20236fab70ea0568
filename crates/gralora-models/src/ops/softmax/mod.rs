//! Attention's `softmax(scale · scores + bias)` over the last axis as one backend-extension op.
//!
//! burn composes it from a scalar multiply, a broadcast add, max, subtract, exp (libm, one
//! element per call), sum and divide, each a pass over the `[batch, heads, queries, keys]` scores,
//! and its autodiff backward replays most of them: a tenth of a MiniLM training step on the CPU
//! (perf). On Flex this op does the forward in one pass per row (vectorised `exp`, all cores) and
//! the backward `∂scores = scale · y ⊙ (g − Σ g ⊙ y)` in another. Other backends run the same
//! formula from their own tensor ops. `bias` (an additive mask) is a constant: no gradient flows
//! into it, as if it were detached.

use burn::backend::{Backend, backend_extension, tensor::FloatTensor};
use burn::tensor::Tensor;

/// Scaled, biased softmax over the last axis, and its backward.
#[backend_extension(Flex, Cube, Fusion, Autodiff)]
pub trait SoftmaxOps: Backend {
    /// `softmax(scale · scores + bias)` over the last axis. `bias` broadcasts to `scores`
    /// (each of its dimensions equals the scores' or is 1; the last equals the scores').
    #[fusion(dtype = scores, shape = scores)]
    fn scaled_softmax(
        scores: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;
    /// Gradient of the scores given the op's output `y` and the output's gradient `grad`.
    #[fusion(dtype = y, shape = y)]
    fn scaled_softmax_backward(
        y: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;
}

/// `softmax(scale · scores + bias, dim = D - 1)` on any device, differentiable in `scores`;
/// `bias` is taken as a constant (no gradient flows into it). The extension op runs on Flex;
/// elsewhere the same formula is built from burn's tensor ops, so Fusion can fuse it.
///
/// # Panics
/// If `bias` does not broadcast to `scores` with an equal last dimension.
pub fn scaled_softmax<const D: usize>(scores: Tensor<D>, bias: Tensor<D>, scale: f32) -> Tensor<D> {
    let (s, b) = (scores.dims(), bias.dims());
    assert!(
        s[D - 1] == b[D - 1] && s.iter().zip(&b).all(|(s, b)| b == s || *b == 1),
        "scaled_softmax: bias {b:?} does not broadcast to scores {s:?} along the rows"
    );
    if !gralora::device::is_flex(&scores.device()) {
        // burn's own tensor ops, which Fusion fuses and Autodiff differentiates: the
        // extension op would be an opaque barrier whose body runs the same ops unfused.
        let v = scores * scale + bias.detach();
        let max = v.clone().detach().max_dim(D - 1);
        let e = (v - max).exp();
        return e.clone() / e.sum_dim(D - 1);
    }
    use burn::backend::Dispatch;
    Tensor::from_dispatch(Dispatch::scaled_softmax(
        scores.into_dispatch(),
        bias.into_dispatch(),
        scale,
    ))
}

/// The same op from a backend's own tensor ops (the CubeCL backends, and Flex off f32).
fn composite<B: Backend>(
    scores: FloatTensor<B>,
    bias: FloatTensor<B>,
    scale: f32,
) -> FloatTensor<B> {
    use burn::backend::TensorMetadata;
    let last = scores.shape().num_dims() - 1;
    let v = B::float_add(B::float_mul_scalar(scores, scale.into()), bias);
    let max = B::float_max_dim(v.clone(), last);
    let e = B::float_exp(B::float_sub(v, max));
    let sum = B::float_sum_dim(e.clone(), last);
    B::float_div(e, sum)
}

fn composite_backward<B: Backend>(
    y: FloatTensor<B>,
    grad: FloatTensor<B>,
    scale: f32,
) -> FloatTensor<B> {
    use burn::backend::TensorMetadata;
    let last = y.shape().num_dims() - 1;
    let dot = B::float_sum_dim(B::float_mul(grad.clone(), y.clone()), last);
    B::float_mul_scalar(B::float_mul(y, B::float_sub(grad, dot)), scale.into())
}

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;
/// Lanes of the explicit accumulators (one AVX register of f32), so reductions vectorise.
const LANES: usize = 8;

/// One row of the forward: `o = softmax(scale · x + bias)`.
#[multiversion::multiversion(targets("x86_64+avx2+fma", "aarch64+neon"))]
fn softmax_row(x: &[f32], bias: &[f32], o: &mut [f32], scale: f32) {
    for ((o, &x), &b) in o.iter_mut().zip(x).zip(bias) {
        *o = x * scale + b;
    }
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = o.chunks_exact(LANES);
    let mut max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    max = acc.into_iter().fold(max, f32::max);
    // A row of -inf (every key masked with -inf) has no softmax: NaN, as burn's.
    for o in o.iter_mut() {
        *o = crate::fastmath::exp_f32(*o - max);
    }
    let inv = 1.0 / sum(o);
    for o in o.iter_mut() {
        *o *= inv;
    }
}

/// One row of the backward: `o = scale · y ⊙ (g − Σ g ⊙ y)`.
#[multiversion::multiversion(targets("x86_64+avx2+fma", "aarch64+neon"))]
fn softmax_backward_row(y: &[f32], g: &[f32], o: &mut [f32], scale: f32) {
    let mut acc = [0f32; LANES];
    let (cy, cg) = (y.chunks_exact(LANES), g.chunks_exact(LANES));
    let tail: f32 = cy
        .remainder()
        .iter()
        .zip(cg.remainder())
        .map(|(y, g)| y * g)
        .sum();
    for (y, g) in cy.zip(cg) {
        for l in 0..LANES {
            acc[l] += y[l] * g[l];
        }
    }
    let dot = acc.iter().sum::<f32>() + tail;
    for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
        *o = scale * y * (g - dot);
    }
}

#[inline(always)]
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Forward of contiguous `[rows, n]` scores on all cores. `bias_row(r)` is row `r`'s bias.
pub fn softmax_rows<'a>(
    scores: &[f32],
    out: &mut [f32],
    n: usize,
    scale: f32,
    bias_row: impl Fn(usize) -> &'a [f32] + Sync,
) {
    use rayon::prelude::*;
    out.par_chunks_mut(n * ROWS_PER_TASK)
        .zip(scores.par_chunks(n * ROWS_PER_TASK))
        .enumerate()
        .for_each(|(task, (out, scores))| {
            for (i, (o, x)) in out.chunks_mut(n).zip(scores.chunks(n)).enumerate() {
                softmax_row(x, bias_row(task * ROWS_PER_TASK + i), o, scale);
            }
        });
}

/// Backward of contiguous `[rows, n]` blocks on all cores: `out = scale · y ⊙ (g − Σ g ⊙ y)`
/// per row.
pub fn softmax_backward_rows(y: &[f32], grad: &[f32], out: &mut [f32], n: usize, scale: f32) {
    use rayon::prelude::*;
    out.par_chunks_mut(n * ROWS_PER_TASK)
        .zip(
            y.par_chunks(n * ROWS_PER_TASK)
                .zip(grad.par_chunks(n * ROWS_PER_TASK)),
        )
        .for_each(|(out, (y, grad))| {
            for ((o, y), g) in out.chunks_mut(n).zip(y.chunks(n)).zip(grad.chunks(n)) {
                softmax_backward_row(y, g, o, scale);
            }
        });
}

mod flex;

mod cube;

mod autodiff;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// Deterministic values in [-r, r].
    fn values(n: usize, seed: u64, r: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * r
            })
            .collect()
    }

    #[test]
    fn forward_and_gradient_match_the_f64_formula_on_flex() {
        // 37 keys: rows longer than a lane multiple, with a tail; the bias masks keys per batch.
        let [b, h, q, k] = [2, 3, 5, 37];
        let scale = 0.3f32;
        let xs = values(b * h * q * k, 1, 8.0);
        let ws = values(b * h * q * k, 2, 1.0);
        let mut bias = values(b * k, 3, 1.0);
        // batch 0: the last 7 keys are padding
        bias[30..k].iter_mut().for_each(|b| *b = -1e9);
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::from_data(TensorData::new(xs.clone(), [b, h, q, k]), &device)
            .require_grad();
        // Even a bias that asks for a gradient is a constant here (documented).
        let bt = Tensor::<4>::from_data(TensorData::new(bias.clone(), [b, 1, 1, k]), &device)
            .require_grad();
        let w = Tensor::<4>::from_data(TensorData::new(ws.clone(), [b, h, q, k]), &device);
        let y = scaled_softmax(x.clone(), bt.clone(), scale);
        let grads = (y.clone() * w).sum().backward();
        assert!(bt.grad(&grads).is_none(), "no gradient flows into the bias");
        let y: Vec<f32> = y.into_data().try_to_vec().unwrap();
        let g: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
        for row in 0..b * h * q {
            let bi = row / (h * q);
            let r = row * k..(row + 1) * k;
            let v: Vec<f64> = (0..k)
                .map(|j| scale as f64 * xs[r.start + j] as f64 + bias[bi * k + j] as f64)
                .collect();
            let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = v.iter().map(|v| (v - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            let want: Vec<f64> = e.iter().map(|e| e / sum).collect();
            let dot: f64 = (0..k).map(|j| want[j] * ws[r.start + j] as f64).sum();
            for j in 0..k {
                let (got, got_g) = (y[r.start + j] as f64, g[r.start + j] as f64);
                assert!(
                    (got - want[j]).abs() < 1e-6,
                    "y[{row},{j}] {got} vs {}",
                    want[j]
                );
                let want_g = scale as f64 * want[j] * (ws[r.start + j] as f64 - dot);
                assert!(
                    (got_g - want_g).abs() < 1e-6,
                    "g[{row},{j}] {got_g} vs {want_g}"
                );
                if bi == 0 && j >= 30 {
                    assert_eq!(got, 0.0, "a masked key gets no weight");
                }
            }
        }
    }

    #[test]
    fn bias_must_broadcast_along_the_rows() {
        let device = Device::flex();
        let x = Tensor::<4>::zeros([2, 3, 4, 5], &device);
        let bad = Tensor::<4>::zeros([2, 1, 1, 4], &device);
        let err = std::panic::catch_unwind(|| scaled_softmax(x, bad, 1.0)).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("does not broadcast"), "{msg}");
    }
}
