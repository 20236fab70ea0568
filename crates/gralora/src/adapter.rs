//! One type for "the adapter on a layer", whichever method it is.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::config::AdapterConfig;
use crate::gralora::GraLoraAdapter;
use crate::lora::LoraAdapter;

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

    /// The scale `s`.
    pub fn scale(&self) -> f64 {
        match self {
            Self::Lora(a) => a.scale,
            Self::GraLora(a) => a.scale,
        }
    }
}
