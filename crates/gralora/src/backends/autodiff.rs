//! Autodiff: the gradient of a block matmul is two block matmuls through the transposed maps
//! (`BlockMatmul::grad_lhs`, `grad_rhs`), so the backward runs the same kernels as the forward and,
//! like it, never materialises GraLoRA's regroup copy. The dense products' gradients are dense
//! products again; an accumulator's gradient is the output's (summed over rows for a `[1, n]` bias).
//! Each op keeps only what its tracked inputs' gradients need: a frozen base weight's product
//! keeps the weight, not the activation.

use burn::backend::Backend;
use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::{Autodiff, NodeId};

use crate::ops::{BlockMatmul, BlockMatmulOps};

#[derive(Debug)]
struct BlockMatmulBackward;

/// What a product's backward needs: rhs for ∂lhs, lhs for ∂rhs (each only if that gradient is
/// wanted), the spec or scale, and whether the accumulator was a `[1, n]` row.
type ProductState<B, S> = (Option<FloatTensor<B>>, Option<FloatTensor<B>>, S, bool);

impl<B: Backend + BlockMatmulOps> Backward<B, 2> for BlockMatmulBackward {
    type State = ProductState<B, BlockMatmul>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_lhs, node_rhs] = ops.parents.map(|p| p.map(|n| n.id));
        let grad = grads.consume::<B>(&ops.node);
        block_grads::<B>(ops.state, node_lhs, node_rhs, grad, grads);
    }
}

#[derive(Debug)]
struct BlockMatmulAccBackward;

impl<B: Backend + BlockMatmulOps> Backward<B, 3> for BlockMatmulAccBackward {
    type State = ProductState<B, BlockMatmul>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_acc, node_lhs, node_rhs] = ops.parents.map(|p| p.map(|n| n.id));
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_acc {
            grads.register::<B>(node, grad.clone());
        }
        block_grads::<B>(ops.state, node_lhs, node_rhs, grad, grads);
    }
}

fn block_grads<B: Backend + BlockMatmulOps>(
    (lhs, rhs, spec, _): ProductState<B, BlockMatmul>,
    node_lhs: Option<NodeId>,
    node_rhs: Option<NodeId>,
    grad: FloatTensor<B>,
    grads: &mut Gradients,
) {
    if let (Some(node), Some(rhs)) = (node_lhs, rhs) {
        let g = B::block_matmul(grad.clone(), rhs, spec.grad_lhs());
        grads.register::<B>(node, g);
    }
    if let (Some(node), Some(lhs)) = (node_rhs, lhs) {
        let g = B::block_matmul(lhs, grad, spec.grad_rhs());
        grads.register::<B>(node, g);
    }
}

#[derive(Debug)]
struct MatmulBackward;

impl<B: Backend + BlockMatmulOps> Backward<B, 2> for MatmulBackward {
    type State = ProductState<B, f32>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_lhs, node_rhs] = ops.parents.map(|p| p.map(|n| n.id));
        let grad = grads.consume::<B>(&ops.node);
        dense_grads::<B>(ops.state, node_lhs, node_rhs, grad, grads);
    }
}

#[derive(Debug)]
struct MatmulAccBackward;

impl<B: Backend + BlockMatmulOps> Backward<B, 3> for MatmulAccBackward {
    type State = ProductState<B, f32>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_acc, node_lhs, node_rhs] = ops.parents.map(|p| p.map(|n| n.id));
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_acc {
            let g = if ops.state.3 {
                B::float_sum_dim(grad.clone(), 0)
            } else {
                grad.clone()
            };
            grads.register::<B>(node, g);
        }
        dense_grads::<B>(ops.state, node_lhs, node_rhs, grad, grads);
    }
}

/// `∂lhs = alpha · g · rhsᵀ`, `∂rhs = alpha · lhsᵀ · g` (transposes are strided views).
fn dense_grads<B: Backend + BlockMatmulOps>(
    (lhs, rhs, alpha, _): ProductState<B, f32>,
    node_lhs: Option<NodeId>,
    node_rhs: Option<NodeId>,
    grad: FloatTensor<B>,
    grads: &mut Gradients,
) {
    if let (Some(node), Some(rhs)) = (node_lhs, rhs) {
        let g = B::matmul_scaled(grad.clone(), B::float_transpose(rhs), alpha);
        grads.register::<B>(node, g);
    }
    if let (Some(node), Some(lhs)) = (node_rhs, lhs) {
        let g = B::matmul_scaled(B::float_transpose(lhs), grad, alpha);
        grads.register::<B>(node, g);
    }
}

/// Keep `rhs` if lhs's gradient is wanted and `lhs` if rhs's is.
fn keep<B: Backend>(
    lhs: &FloatTensor<B>,
    rhs: &FloatTensor<B>,
    lhs_tracked: bool,
    rhs_tracked: bool,
) -> (Option<FloatTensor<B>>, Option<FloatTensor<B>>) {
    (
        rhs_tracked.then(|| lhs.clone()),
        lhs_tracked.then(|| rhs.clone()),
    )
}

impl<B: Backend + BlockMatmulOps, C: CheckpointStrategy> BlockMatmulOps for Autodiff<B, C> {
    fn block_matmul(
        lhs: FloatTensor<Autodiff<B, C>>,
        rhs: FloatTensor<Autodiff<B, C>>,
        spec: BlockMatmul,
    ) -> FloatTensor<Autodiff<B, C>> {
        let (lhs_node, rhs_node) = (lhs.node(), rhs.node());
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        let lhs = lhs.into_primitive();
        let rhs = rhs.into_primitive();
        let (keep_lhs, keep_rhs) = keep::<B>(&lhs, &rhs, lhs_tracked, rhs_tracked);
        let out = B::block_matmul(lhs, rhs, spec.clone());
        match BlockMatmulBackward
            .prepare::<C>([lhs_node, rhs_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((keep_lhs, keep_rhs, spec, false), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn block_matmul_acc(
        acc: FloatTensor<Autodiff<B, C>>,
        lhs: FloatTensor<Autodiff<B, C>>,
        rhs: FloatTensor<Autodiff<B, C>>,
        spec: BlockMatmul,
    ) -> FloatTensor<Autodiff<B, C>> {
        let nodes = [acc.node(), lhs.node(), rhs.node()];
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        let (acc, lhs, rhs) = (
            acc.into_primitive(),
            lhs.into_primitive(),
            rhs.into_primitive(),
        );
        let (keep_lhs, keep_rhs) = keep::<B>(&lhs, &rhs, lhs_tracked, rhs_tracked);
        let out = B::block_matmul_acc(acc, lhs, rhs, spec.clone());
        match BlockMatmulAccBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((keep_lhs, keep_rhs, spec, false), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn matmul_scaled(
        lhs: FloatTensor<Autodiff<B, C>>,
        rhs: FloatTensor<Autodiff<B, C>>,
        alpha: f32,
    ) -> FloatTensor<Autodiff<B, C>> {
        let nodes = [lhs.node(), rhs.node()];
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        let (lhs, rhs) = (lhs.into_primitive(), rhs.into_primitive());
        let (keep_lhs, keep_rhs) = keep::<B>(&lhs, &rhs, lhs_tracked, rhs_tracked);
        let out = B::matmul_scaled(lhs, rhs, alpha);
        match MatmulBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((keep_lhs, keep_rhs, alpha, false), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn matmul_acc(
        acc: FloatTensor<Autodiff<B, C>>,
        lhs: FloatTensor<Autodiff<B, C>>,
        rhs: FloatTensor<Autodiff<B, C>>,
        alpha: f32,
    ) -> FloatTensor<Autodiff<B, C>> {
        let nodes = [acc.node(), lhs.node(), rhs.node()];
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        let (acc, lhs, rhs) = (
            acc.into_primitive(),
            lhs.into_primitive(),
            rhs.into_primitive(),
        );
        let row = acc.shape()[0] == 1 && lhs.shape()[0] != 1;
        let (keep_lhs, keep_rhs) = keep::<B>(&lhs, &rhs, lhs_tracked, rhs_tracked);
        let out = B::matmul_acc(acc, lhs, rhs, alpha);
        match MatmulAccBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((keep_lhs, keep_rhs, alpha, row), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}
