//! A frozen base `Linear` with an optional adapter on the activation path.

use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Tensor};

use crate::adapter::Adapter;
use crate::config::AdapterConfig;
use crate::error::AdapterError;

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
    /// Records per-channel statistics of the inputs when set (like a forward hook); not a
    /// parameter, never saved.
    #[module(skip)]
    pub probe: Option<InputProbe>,
}

/// Per-input-channel statistics of what a layer has seen: attach one to
/// [`AdaptedLinear::probe`], run the model, read [`InputProbe::stats`]. Clones share the
/// statistics. Every forward then reads two `[in]` vectors back to the host, so probe only for
/// analysis (e.g. finding outlier input channels), not in training.
#[derive(Debug, Clone, Default)]
pub struct InputProbe(Arc<Mutex<InputStats>>);

/// What an [`InputProbe`] has accumulated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputStats {
    /// Rows (tokens) seen.
    pub tokens: usize,
    /// `Σ |x_c|` over the rows, per input channel `c`.
    pub sum_abs: Vec<f64>,
    /// `max |x_c|` over the rows, per input channel.
    pub max_abs: Vec<f32>,
    /// The first failed device read: [`InputProbe::stats`] reports it.
    read_error: Option<AdapterError>,
}

impl InputStats {
    /// Mean `|x_c|` per input channel.
    pub fn mean_abs(&self) -> Vec<f64> {
        let n = self.tokens.max(1) as f64;
        self.sum_abs.iter().map(|s| s / n).collect()
    }
}

impl InputProbe {
    /// An empty probe.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the statistics so far, or the error of a device read that failed while recording.
    pub fn stats(&self) -> Result<InputStats, AdapterError> {
        let s = self.0.lock().map(|s| s.clone()).unwrap_or_default();
        match s.read_error {
            Some(e) => Err(e),
            None => Ok(s),
        }
    }

    /// Add the rows of `x: [T, in]`.
    pub fn record(&self, x: &Tensor<2>) {
        let [rows, d_in] = x.dims();
        let abs = x.clone().detach().abs();
        let read = crate::io::read_f32(abs.clone().sum_dim(0))
            .and_then(|sums| Ok((sums, crate::io::read_f32(abs.max_dim(0))?)));
        let Ok(mut s) = self.0.lock() else { return };
        // A probe observes a forward pass and cannot fail it: a failed read is kept for `stats`.
        let (sums, maxes) = match read {
            Ok(v) => v,
            Err(e) => {
                s.read_error.get_or_insert(e);
                return;
            }
        };
        if s.sum_abs.len() != d_in {
            *s = InputStats {
                tokens: 0,
                sum_abs: vec![0.0; d_in],
                max_abs: vec![0.0; d_in],
                read_error: None,
            };
        }
        s.tokens += rows;
        for (acc, v) in s.sum_abs.iter_mut().zip(&sums) {
            *acc += f64::from(*v);
        }
        for (acc, v) in s.max_abs.iter_mut().zip(&maxes) {
            *acc = acc.max(*v);
        }
    }
}

impl AdaptedLinear {
    /// Wrap a linear layer (frozen from now on) without an adapter.
    pub fn new(base: Linear) -> Self {
        Self {
            base: base.no_grad(),
            adapter: None,
            dropout: None,
            merged: false,
            probe: None,
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
        if let Some(probe) = &self.probe {
            probe.record(&x2);
        }
        // `x W + b`, then the branch added into it (on the CPU both are gemm calls writing one
        // buffer: no separate bias or branch additions).
        let y = crate::ops::linear(x2.clone(), &self.base);
        let adapter = match (&self.adapter, self.merged) {
            (Some(adapter), false) => adapter,
            _ => return y.reshape(out_shape),
        };
        let x2 = match &self.dropout {
            Some(dropout) => dropout.forward(x2),
            None => x2,
        };
        adapter.forward_acc(y, x2).reshape(out_shape)
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::tensor::TensorData;

    #[test]
    fn probe_records_mean_and_max_abs_per_input_channel_over_all_rows() {
        let device = Device::flex();
        let mut layer = AdaptedLinear::new(LinearConfig::new(3, 2).init(&device));
        let probe = InputProbe::new();
        layer.probe = Some(probe.clone());
        // Two calls, [2, 2, 3] then [1, 3]: five rows in all.
        let a = [
            1.0f32, -2.0, 0.5, -3.0, 0.0, 1.0, 2.0, 2.0, -4.0, 0.0, 1.0, 0.0,
        ];
        let b = [-1.0f32, 5.0, 0.5];
        let _ = layer.forward(Tensor::<3>::from_data(
            TensorData::new(a.to_vec(), [2, 2, 3]),
            &device,
        ));
        let _ = layer.forward(Tensor::<2>::from_data(
            TensorData::new(b.to_vec(), [1, 3]),
            &device,
        ));
        let s = probe.stats().unwrap();
        assert_eq!(s.tokens, 5);
        let rows: Vec<&[f32]> = a.chunks(3).chain(b.chunks(3)).collect();
        for c in 0..3 {
            let sum: f64 = rows.iter().map(|r| f64::from(r[c].abs())).sum();
            let max = rows.iter().map(|r| r[c].abs()).fold(0.0f32, f32::max);
            assert!((s.mean_abs()[c] - sum / 5.0).abs() < 1e-6, "channel {c}");
            assert_eq!(s.max_abs[c], max, "channel {c}");
        }
        // The probe is no parameter: the module's parameter count is unchanged.
        assert_eq!(layer.num_params(), 3 * 2 + 2);
    }
}
