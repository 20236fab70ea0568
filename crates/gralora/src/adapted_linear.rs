//! A frozen base `Linear` with an optional adapter on the activation path.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Tensor};

use crate::AdapterError;
use crate::adapter::Adapter;
use crate::config::AdapterConfig;

/// `y = x W + b + s · adapter(dropout(x))`.
///
/// The base weight never receives gradients; ΔW is never materialised in training (only by
/// [`delta_weight`](Self::delta_weight) and [`merge`](Self::merge)).
#[derive(Module, Debug)]
pub struct AdaptedLinear {
    /// The pretrained layer, frozen.
    pub base: Linear,
    /// The trainable adapter, if one is attached.
    pub adapter: Option<Adapter>,
    /// Dropout on the adapter's input only.
    pub dropout: Option<Dropout>,
    /// Whether ΔW has been folded into `base`.
    pub merged: bool,
}

impl AdaptedLinear {
    /// Wrap a linear layer (frozen from now on) without an adapter.
    pub fn new(base: Linear) -> Self {
        Self {
            base: base.no_grad(),
            adapter: None,
            dropout: None,
            merged: false,
        }
    }

    /// Wrap a linear layer and attach an adapter. `layer` names it in errors.
    pub fn with_adapter(
        base: Linear,
        config: &AdapterConfig,
        layer: &str,
    ) -> Result<Self, AdapterError> {
        let mut this = Self::new(base);
        this.attach(config, layer)?;
        Ok(this)
    }

    /// `(in, out)` of the base layer.
    pub fn dims(&self) -> (usize, usize) {
        let [d_in, d_out] = self.base.weight.shape().dims::<2>();
        (d_in, d_out)
    }

    /// The device the base weight lives on.
    pub fn device(&self) -> Device {
        self.base.weight.val().device()
    }

    /// Attach a freshly initialised adapter, replacing any previous one.
    pub fn attach(&mut self, config: &AdapterConfig, layer: &str) -> Result<(), AdapterError> {
        if self.merged {
            return Err(AdapterError::State(format!(
                "layer `{layer}`: cannot attach a new adapter to a merged layer; unmerge it first"
            )));
        }
        let (d_in, d_out) = self.dims();
        config.validate_for(layer, d_in, d_out)?;
        let device = self.device();
        self.adapter = Some(Adapter::init(config, d_in, d_out, &device));
        let p = config.dropout();
        self.dropout = (p > 0.0).then(|| DropoutConfig::new(p).init());
        Ok(())
    }

    /// Applies the layer.
    ///
    /// # Shapes
    /// - input: `[..., in]`
    /// - output: `[..., out]`
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        let (d_in, d_out) = self.dims();
        let mut out_shape = input.dims();
        out_shape[D - 1] = d_out;
        // One `[tokens, in] x [in, out]` matmul: the CPU backend runs a broadcast batched matmul
        // as many small ones.
        let x2: Tensor<2> = input.reshape([-1, d_in as i32]);
        let y = self.base.forward(x2.clone());
        let adapter = match (&self.adapter, self.merged) {
            (Some(adapter), false) => adapter,
            _ => return y.reshape(out_shape),
        };
        let x2 = match &self.dropout {
            Some(dropout) => dropout.forward(x2),
            None => x2,
        };
        (y + adapter.forward(x2)).reshape(out_shape)
    }

    /// `ΔW` `[in, out]` (scale included), or `None` without an adapter.
    pub fn delta_weight(&self) -> Option<Tensor<2>> {
        self.adapter.as_ref().map(Adapter::delta_weight)
    }

    /// Fold ΔW into the base weight: `W ← W + ΔW`. The forward then runs the base alone.
    pub fn merge(mut self) -> Result<Self, AdapterError> {
        let delta = self.require_adapter_delta("merge", false)?;
        self.base.weight = self.base.weight.map(|w| (w + delta).detach());
        self.merged = true;
        Ok(self)
    }

    /// Undo [`merge`](Self::merge): `W ← W - ΔW` (restores W to float rounding).
    pub fn unmerge(mut self) -> Result<Self, AdapterError> {
        let delta = self.require_adapter_delta("unmerge", true)?;
        self.base.weight = self.base.weight.map(|w| (w - delta).detach());
        self.merged = false;
        Ok(self)
    }

    fn require_adapter_delta(&self, op: &str, merged: bool) -> Result<Tensor<2>, AdapterError> {
        if self.merged != merged {
            let state = if merged {
                "not merged"
            } else {
                "already merged"
            };
            return Err(AdapterError::State(format!(
                "cannot {op}: the layer is {state}"
            )));
        }
        let delta = self.delta_weight().ok_or_else(|| {
            AdapterError::State(format!("cannot {op}: the layer has no adapter attached"))
        })?;
        Ok(delta.detach())
    }

    /// The number of trainable (adapter) parameters.
    pub fn num_trainable_params(&self) -> usize {
        self.adapter.as_ref().map_or(0, Module::num_params)
    }

    /// Drop the adapter and return the base layer (holding `W + ΔW` if the layer was merged).
    pub fn into_base(self) -> Linear {
        self.base
    }
}

/// Models that hold [`AdaptedLinear`] layers expose them by module path, so adapters can be
/// attached by target name (see [`crate::attach_adapters`]).
pub trait AdapterHost {
    /// Call `f` once for every adaptable linear layer with its module path
    /// (e.g. `encoder.layer.0.attention.self.query`).
    fn for_each_linear_mut(&mut self, f: &mut dyn FnMut(&str, &mut AdaptedLinear));
}
