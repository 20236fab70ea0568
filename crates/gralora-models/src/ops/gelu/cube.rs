use burn::backend::ops::ActivationOps;
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;

use super::GeluOps;

impl GeluOps for CubeBackend {
    fn erf_gelu(x: CubeTensor) -> CubeTensor {
        <CubeBackend as ActivationOps<CubeBackend>>::gelu(x)
    }
    fn erf_gelu_backward(x: CubeTensor, grad: CubeTensor) -> CubeTensor {
        <CubeBackend as ActivationOps<CubeBackend>>::gelu_backward(x, grad)
    }
}
