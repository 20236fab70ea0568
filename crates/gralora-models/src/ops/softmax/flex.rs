use burn::backend::TensorMetadata;
use burn::tensor::DType;
use burn_flex::FlexTensor;

use super::SoftmaxOps;

impl SoftmaxOps for burn::backend::Flex {
    fn scaled_softmax(scores: FlexTensor, bias: FlexTensor, scale: f32) -> FlexTensor {
        if scores.dtype() != DType::F32 || bias.dtype() != DType::F32 {
            return super::composite::<Self>(scores, bias, scale);
        }
        let scores = scores.to_contiguous();
        let bias = bias.to_contiguous();
        let shape = scores.shape();
        let rank = shape.num_dims();
        let s: Vec<usize> = (0..rank).map(|d| shape[d]).collect();
        let b: Vec<usize> = (0..rank).map(|d| bias.shape()[d]).collect();
        let n = s[rank - 1];
        // Row-major strides of the bias, 0 along its broadcast (size-1) dimensions.
        let mut bstride = vec![0usize; rank];
        let mut acc = 1;
        for d in (0..rank).rev() {
            bstride[d] = if b[d] == 1 { 0 } else { acc };
            acc *= b[d];
        }
        let bias_data = bias.as_slice::<f32>().expect("contiguous");
        let bias_row = |row: usize| {
            // Decompose the row index over the scores' leading dimensions.
            let mut rem = row;
            let mut off = 0;
            for d in (0..rank - 1).rev() {
                off += (rem % s[d]) * bstride[d];
                rem /= s[d];
            }
            &bias_data[off..off + n]
        };
        let mut out = vec![0f32; scores.shape().num_elements()];
        super::softmax_rows(
            scores.as_slice::<f32>().expect("contiguous"),
            &mut out,
            n,
            scale,
            bias_row,
        );
        gralora::ops::flex_f32(scores.shape(), out)
    }

    fn scaled_softmax_backward(y: FlexTensor, grad: FlexTensor, scale: f32) -> FlexTensor {
        if y.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return super::composite_backward::<Self>(y, grad, scale);
        }
        let (y, grad) = (y.to_contiguous(), grad.to_contiguous());
        let shape = y.shape();
        let n = shape[shape.num_dims() - 1];
        let mut out = vec![0f32; y.shape().num_elements()];
        super::softmax_backward_rows(
            y.as_slice::<f32>().expect("contiguous"),
            grad.as_slice::<f32>().expect("contiguous"),
            &mut out,
            n,
            scale,
        );
        gralora::ops::flex_f32(y.shape(), out)
    }
}
