use burn::backend::Flex;
use burn::backend::TensorMetadata;
use burn::backend::ops::ActivationOps;
use burn::tensor::DType;
use burn_flex::FlexTensor;

use super::GeluOps;

impl GeluOps for Flex {
    fn erf_gelu(x: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 {
            return <Flex as ActivationOps<Flex>>::gelu(x);
        }
        let x = x.to_contiguous();
        let mut out = vec![0f32; x.shape().num_elements()];
        super::gelu_slice(x.as_slice::<f32>().expect("contiguous"), &mut out);
        gralora::ops::flex_f32(x.shape(), out)
    }

    fn erf_gelu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return <Flex as ActivationOps<Flex>>::gelu_backward(x, grad);
        }
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let mut out = vec![0f32; x.shape().num_elements()];
        super::gelu_backward_slice(
            x.as_slice::<f32>().expect("contiguous"),
            grad.as_slice::<f32>().expect("contiguous"),
            &mut out,
        );
        gralora::ops::flex_f32(x.shape(), out)
    }
}
