use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};

use super::SoftmaxOps;

#[derive(Debug)]
struct SoftmaxBackward;

impl<B: Backend + SoftmaxOps> Backward<B, 1> for SoftmaxBackward {
    /// The op's output and scale.
    type State = (FloatTensor<B>, f32);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (y, scale) = ops.state;
        let [scores] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = scores {
            grads.register::<B>(node.id, B::scaled_softmax_backward(y, grad, scale));
        }
    }
}

impl<B: Backend + SoftmaxOps, C: CheckpointStrategy> SoftmaxOps for Autodiff<B, C> {
    fn scaled_softmax(
        scores: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        // Only the scores are a parent: the bias is a constant.
        let nodes = [scores.node()];
        let out = B::scaled_softmax(scores.into_primitive(), bias.into_primitive(), scale);
        match SoftmaxBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((out.clone(), scale), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn scaled_softmax_backward(
        y: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        // Second derivatives are not needed by any trainer here.
        let out = B::scaled_softmax_backward(y.into_primitive(), grad.into_primitive(), scale);
        Self::from_inner(out)
    }
}
