//! Autodiff: the gradient of a block matmul is two block matmuls through the transposed maps
//! (`BlockMatmul::grad_lhs`, `grad_rhs`), so the backward runs the same kernels as the forward and,
//! like it, never materialises GraLoRA's regroup copy. The dense products' gradients are dense
//! products again; an accumulator's gradient is the output's (summed over rows for a `[1, n]` bias).
//! Each op keeps only what its tracked inputs' gradients need: a frozen base weight's product
//! keeps the weight, not the activation.
//!
//! All four ops share one backward, [`ProductBackward`], with `N = 2` parents (lhs, rhs) or
//! `N = 3` (accumulator, lhs, rhs).

use std::marker::PhantomData;

use burn::backend::Backend;
use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};

use crate::ops::{BlockMatmul, BlockMatmulOps};

/// What a product's gradients are, given its spec (a block map, or a dense product's scale).
trait Product: Clone + Send + std::fmt::Debug + 'static {
    /// `∂lhs` from the output gradient and rhs.
    fn grad_lhs<B: BlockMatmulOps>(
        &self,
        grad: FloatTensor<B>,
        rhs: FloatTensor<B>,
    ) -> FloatTensor<B>;
    /// `∂rhs` from lhs and the output gradient.
    fn grad_rhs<B: BlockMatmulOps>(
        &self,
        lhs: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> FloatTensor<B>;
}

impl Product for BlockMatmul {
    fn grad_lhs<B: BlockMatmulOps>(
        &self,
        grad: FloatTensor<B>,
        rhs: FloatTensor<B>,
    ) -> FloatTensor<B> {
        B::block_matmul(grad, rhs, BlockMatmul::grad_lhs(self))
    }
    fn grad_rhs<B: BlockMatmulOps>(
        &self,
        lhs: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> FloatTensor<B> {
        B::block_matmul(lhs, grad, BlockMatmul::grad_rhs(self))
    }
}

/// A dense product `alpha · L · R`: `∂L = alpha · g · Rᵀ`, `∂R = alpha · Lᵀ · g` (transposes are
/// strided views).
#[derive(Debug, Clone, Copy)]
struct Dense(f32);

impl Product for Dense {
    fn grad_lhs<B: BlockMatmulOps>(
        &self,
        grad: FloatTensor<B>,
        rhs: FloatTensor<B>,
    ) -> FloatTensor<B> {
        B::matmul_scaled(grad, B::float_transpose(rhs), self.0)
    }
    fn grad_rhs<B: BlockMatmulOps>(
        &self,
        lhs: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> FloatTensor<B> {
        B::matmul_scaled(B::float_transpose(lhs), grad, self.0)
    }
}

/// What the backward keeps: lhs (only if rhs's gradient is wanted), rhs (only if lhs's is), the
/// spec, and whether the accumulator was a `[1, n]` row added to every row.
type State<B, S> = (Option<FloatTensor<B>>, Option<FloatTensor<B>>, S, bool);

#[derive(Debug)]
struct ProductBackward<S>(PhantomData<S>);

impl<B: Backend + BlockMatmulOps, S: Product, const N: usize> Backward<B, N>
    for ProductBackward<S>
{
    type State = State<B, S>;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let parents = ops.parents.map(|p| p.map(|n| n.id));
        let node_acc = if N == 3 { parents[0] } else { None };
        let (node_lhs, node_rhs) = (parents[N - 2], parents[N - 1]);
        let (lhs, rhs, spec, row) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_acc {
            let g = if row {
                B::float_sum_dim(grad.clone(), 0)
            } else {
                grad.clone()
            };
            grads.register::<B>(node, g);
        }
        if let (Some(node), Some(rhs)) = (node_lhs, rhs) {
            grads.register::<B>(node, spec.grad_lhs::<B>(grad.clone(), rhs));
        }
        if let (Some(node), Some(lhs)) = (node_rhs, lhs) {
            grads.register::<B>(node, spec.grad_rhs::<B>(lhs, grad));
        }
    }
}

/// Run `forward` on the inner backend and record the product in the graph (`row`: the accumulator
/// is a `[1, n]` row added to every output row).
fn record<B, C, S, const N: usize>(
    nodes: [NodeGuard; N],
    acc: Option<FloatTensor<Autodiff<B, C>>>,
    lhs: FloatTensor<Autodiff<B, C>>,
    rhs: FloatTensor<Autodiff<B, C>>,
    spec: S,
    row: bool,
    forward: impl FnOnce(Option<FloatTensor<B>>, FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend + BlockMatmulOps,
    C: CheckpointStrategy,
    S: Product,
{
    let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
    let (acc, lhs, rhs) = (
        acc.map(|a| a.into_primitive()),
        lhs.into_primitive(),
        rhs.into_primitive(),
    );
    let keep_lhs = rhs_tracked.then(|| lhs.clone());
    let keep_rhs = lhs_tracked.then(|| rhs.clone());
    let out = forward(acc, lhs, rhs);
    match ProductBackward::<S>(PhantomData)
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((keep_lhs, keep_rhs, spec, row), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

impl<B: Backend + BlockMatmulOps, C: CheckpointStrategy> BlockMatmulOps for Autodiff<B, C> {
    fn block_matmul(
        lhs: FloatTensor<Autodiff<B, C>>,
        rhs: FloatTensor<Autodiff<B, C>>,
        spec: BlockMatmul,
    ) -> FloatTensor<Autodiff<B, C>> {
        let nodes = [lhs.node(), rhs.node()];
        let s = spec.clone();
        record::<B, C, _, 2>(nodes, None, lhs, rhs, spec, false, |_, l, r| {
            B::block_matmul(l, r, s)
        })
    }

    fn block_matmul_acc(
        acc: FloatTensor<Autodiff<B, C>>,
        lhs: FloatTensor<Autodiff<B, C>>,
        rhs: FloatTensor<Autodiff<B, C>>,
        spec: BlockMatmul,
    ) -> FloatTensor<Autodiff<B, C>> {
        let nodes = [acc.node(), lhs.node(), rhs.node()];
        let s = spec.clone();
        record::<B, C, _, 3>(nodes, Some(acc), lhs, rhs, spec, false, |a, l, r| {
            B::block_matmul_acc(a.expect("accumulator"), l, r, s)
        })
    }

    fn matmul_scaled(
        lhs: FloatTensor<Autodiff<B, C>>,
        rhs: FloatTensor<Autodiff<B, C>>,
        alpha: f32,
    ) -> FloatTensor<Autodiff<B, C>> {
        let nodes = [lhs.node(), rhs.node()];
        record::<B, C, _, 2>(nodes, None, lhs, rhs, Dense(alpha), false, |_, l, r| {
            B::matmul_scaled(l, r, alpha)
        })
    }

    fn matmul_acc(
        acc: FloatTensor<Autodiff<B, C>>,
        lhs: FloatTensor<Autodiff<B, C>>,
        rhs: FloatTensor<Autodiff<B, C>>,
        alpha: f32,
    ) -> FloatTensor<Autodiff<B, C>> {
        let nodes = [acc.node(), lhs.node(), rhs.node()];
        let row = acc.shape()[0] == 1 && lhs.shape()[0] != 1;
        record::<B, C, _, 3>(nodes, Some(acc), lhs, rhs, Dense(alpha), row, |a, l, r| {
            B::matmul_acc(a.expect("accumulator"), l, r, alpha)
        })
    }
}
