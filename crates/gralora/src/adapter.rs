//! One type for "the adapter on a layer", whichever method it is.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::config::AdapterConfig;
use crate::error::AdapterError;
use crate::methods::gralora::GraLoraAdapter;
use crate::methods::lora::LoraAdapter;

/// The adapter attached to one linear layer.
#[derive(Module, Debug)]
pub enum Adapter {
    /// Plain LoRA.
    Lora(LoraAdapter),
    /// GraLoRA (with its optional hybrid LoRA pair).
    GraLora(GraLoraAdapter),
}

impl Adapter {
    /// A freshly initialised adapter for a `[d_in, d_out]` layer.
    /// The configuration must have been validated against these dimensions.
    pub fn init(config: &AdapterConfig, d_in: usize, d_out: usize, device: &Device) -> Self {
        match config {
            AdapterConfig::Lora(c) => Self::Lora(LoraAdapter::init(c, d_in, d_out, device)),
            AdapterConfig::Gralora(c) => {
                Self::GraLora(GraLoraAdapter::init(c, d_in, d_out, device))
            }
        }
    }

    /// The branch output (scale included).
    ///
    /// # Shapes
    /// - x: `[T, in]`
    /// - output: `[T, out]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Lora(a) => a.forward(x),
            Self::GraLora(a) => a.forward(x),
        }
    }

    /// `acc + branch(x)`: the branch output added into `acc` (`[T, out]`), in place on the CPU.
    ///
    /// # Shapes
    /// - acc: `[T, out]`, x: `[T, in]`
    /// - output: `[T, out]`
    pub fn forward_acc(&self, acc: Tensor<2>, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Lora(a) => a.forward_acc(acc, x),
            Self::GraLora(a) => a.forward_acc(acc, x),
        }
    }

    /// `ΔW` in burn's layout `[in, out]`, scale included.
    pub fn delta_weight(&self) -> Tensor<2> {
        match self {
            Self::Lora(a) => a.delta_weight(),
            Self::GraLora(a) => a.delta_weight(),
        }
    }

    /// The parameters LoRA+ trains at its higher learning rate (the B matrices).
    pub fn b_param_ids(&self) -> Vec<burn::module::ParamId> {
        match self {
            Self::Lora(a) => a.b_param_ids(),
            Self::GraLora(a) => a.b_param_ids(),
        }
    }

    /// The weight-space direction of one SGD step on this adapter: ΔW is bilinear in (A, B), so
    /// `D = ΔW(∂L/∂A, B) + ΔW(A, ∂L/∂B)` (for LoRA `s²(G BᵀB + A AᵀG)`, blockwise for GraLoRA).
    ///
    /// # Shapes
    /// - grad_a, grad_b: the shapes of A and B as `[k, …]` (`k = 1` for LoRA)
    /// - output: `[in, out]`
    ///
    /// Hybrid GraLoRA's extra pair is not supported (an error).
    pub fn update_direction(
        &self,
        grad_a: Tensor<3>,
        grad_b: Tensor<3>,
    ) -> Result<Tensor<2>, AdapterError> {
        match self {
            Self::Lora(l) => {
                let (a, b, s) = (l.a.val(), l.b.val(), l.scale);
                let ga: Tensor<2> = grad_a.squeeze_dim(0);
                let gb: Tensor<2> = grad_b.squeeze_dim(0);
                Ok(LoraAdapter::from_tensors(ga, b, s).delta_weight()
                    + LoraAdapter::from_tensors(a, gb, s).delta_weight())
            }
            Self::GraLora(g) => {
                if g.general.is_some() {
                    return Err(AdapterError::State(
                        "the update direction of hybrid GraLoRA (hybrid_r > 0) is not defined here"
                            .into(),
                    ));
                }
                let (a, b, s) = (g.a.val(), g.b.val(), g.scale);
                Ok(
                    GraLoraAdapter::from_tensors(grad_a, b, None, s).delta_weight()
                        + GraLoraAdapter::from_tensors(a, grad_b, None, s).delta_weight(),
                )
            }
        }
    }

    /// The scale `s`.
    pub fn scale(&self) -> f64 {
        match self {
            Self::Lora(a) => a.scale,
            Self::GraLora(a) => a.scale,
        }
    }
}
