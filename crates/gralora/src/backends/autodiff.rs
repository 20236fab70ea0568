//! Autodiff: the gradient of a block matmul is two block matmuls through the transposed maps
//! (`BlockMatmul::grad_lhs`, `grad_rhs`), so the backward runs the same kernels as the forward and,
//! like it, never materialises GraLoRA's regroup copy.

use burn::backend::Backend;
use burn::backend::tensor::FloatTensor;
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};

use crate::ops::{BlockMatmul, BlockMatmulOps};

#[derive(Debug)]
struct BlockMatmulBackward;

impl<B: Backend + BlockMatmulOps> Backward<B, 2> for BlockMatmulBackward {
    /// (lhs, rhs, spec): ∂lhs needs rhs and ∂rhs needs lhs.
    type State = (FloatTensor<B>, FloatTensor<B>, BlockMatmul);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (lhs, rhs, spec) = ops.state;
        let [node_lhs, node_rhs] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_lhs {
            let g = B::block_matmul(grad.clone(), rhs, spec.grad_lhs());
            grads.register::<B>(node.id, g);
        }
        if let Some(node) = node_rhs {
            let g = B::block_matmul(lhs, grad, spec.grad_rhs());
            grads.register::<B>(node.id, g);
        }
    }
}

impl<B: Backend + BlockMatmulOps, C: CheckpointStrategy> BlockMatmulOps for Autodiff<B, C> {
    fn block_matmul(
        lhs: FloatTensor<Autodiff<B, C>>,
        rhs: FloatTensor<Autodiff<B, C>>,
        spec: BlockMatmul,
    ) -> FloatTensor<Autodiff<B, C>> {
        let (lhs_node, rhs_node) = (lhs.node(), rhs.node());
        let lhs = lhs.into_primitive();
        let rhs = rhs.into_primitive();
        let out = B::block_matmul(lhs.clone(), rhs.clone(), spec.clone());
        match BlockMatmulBackward
            .prepare::<C>([lhs_node, rhs_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((lhs, rhs, spec), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}
