//! Plain LoRA (docs/METHODS.md §1): `y = s · (x A) B`, `A: [in, r]`, `B: [r, out]`.

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};

use crate::config::{Init, LoraConfig};
use crate::init::{kaiming_uniform, param};
use crate::ops::matmul_acc;

/// A LoRA pair. Parameters are stored in burn's layout (`A: [in, r]`, `B: [r, out]`); the PEFT
/// files hold their transposes and are converted at the file boundary.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// Down projection `[in, r]`.
    pub a: Param<Tensor<2>>,
    /// Up projection `[r, out]`.
    pub b: Param<Tensor<2>>,
    /// The scale `s` the branch is multiplied by.
    pub scale: f64,
}

impl LoraAdapter {
    /// A LoRA pair for a `[d_in, d_out]` layer with PEFT's initialisation.
    /// The configuration must have been validated.
    pub fn init(config: &LoraConfig, d_in: usize, d_out: usize, device: &Device) -> Self {
        Self::init_raw(d_in, d_out, config.r, config.scale(), config.init, device)
    }

    /// A rank-`r` pair with an explicit scale; used for LoRA and for Hybrid GraLoRA's general part.
    pub(crate) fn init_raw(
        d_in: usize,
        d_out: usize,
        r: usize,
        scale: f64,
        init: Init,
        device: &Device,
    ) -> Self {
        let a = match init {
            Init::Gaussian => {
                let std = 1.0 / r as f64;
                param(device, || {
                    Tensor::random([d_in, r], Distribution::Normal(0.0, std), device)
                })
            }
            Init::Kaiming | Init::Random => {
                param(device, || kaiming_uniform([d_in, r], d_in, device))
            }
        };
        let b = match init {
            // PyTorch stores B as [out, r]: its fan_in is r.
            Init::Random => param(device, || kaiming_uniform([r, d_out], r, device)),
            Init::Kaiming | Init::Gaussian => param(device, || Tensor::zeros([r, d_out], device)),
        };
        Self { a, b, scale }
    }

    /// A pair from explicit factors (`a: [in, r]`, `b: [r, out]`).
    pub fn from_tensors(a: Tensor<2>, b: Tensor<2>, scale: f64) -> Self {
        Self {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scale,
        }
    }

    /// The parameters LoRA+ trains at its higher learning rate: B.
    pub fn b_param_ids(&self) -> Vec<burn::module::ParamId> {
        vec![self.b.id]
    }

    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.a.shape().dims::<2>()[1]
    }

    /// The branch output `s · (x A) B`.
    ///
    /// # Shapes
    /// - x: `[T, in]`
    /// - output: `[T, out]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = matmul_acc(None, x, self.a.val(), 1.0);
        matmul_acc(None, h, self.b.val(), self.scale as f32)
    }

    /// `acc + s · (x A) B`, added into `acc` (`[T, out]`).
    pub fn forward_acc(&self, acc: Tensor<2>, x: Tensor<2>) -> Tensor<2> {
        let h = matmul_acc(None, x, self.a.val(), 1.0);
        matmul_acc(Some(acc), h, self.b.val(), self.scale as f32)
    }

    /// `ΔW = s · A B`, `[in, out]`.
    pub fn delta_weight(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scale)
    }
}
