use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;

use super::SoftmaxOps;

impl SoftmaxOps for CubeBackend {
    fn scaled_softmax(scores: CubeTensor, bias: CubeTensor, scale: f32) -> CubeTensor {
        super::composite::<Self>(scores, bias, scale)
    }
    fn scaled_softmax_backward(y: CubeTensor, grad: CubeTensor, scale: f32) -> CubeTensor {
        super::composite_backward::<Self>(y, grad, scale)
    }
}
