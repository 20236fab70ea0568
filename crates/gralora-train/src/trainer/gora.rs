//! GoRA in the trainer: measure the mean gradient of every target base weight over a few
//! batches (on a clone of the model whose target weights require grad, so the model itself is
//! never touched), allocate ranks and attach gradient-initialised adapters
//! (`gralora::gora` holds the math).

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use gralora::gora::{self, GoraConfig};
use gralora::{
    AdaptOptions, Adapter, AdapterHost, GraLoraAdapter, LoraAdapter, LoraConfig, Targets,
};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// One row of the allocation table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GoraRow {
    /// Module path.
    pub layer: String,
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// Importance of the layer.
    pub importance: f64,
    /// Allocated rank.
    pub rank: usize,
}

/// What GoRA did before training.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GoraReport {
    /// The settings.
    pub config: GoraConfig,
    /// GraLoRA's k (1: LoRA).
    pub k: usize,
    /// Batches the gradients were averaged over.
    pub batches: usize,
    /// Per-layer allocation.
    pub layers: Vec<GoraRow>,
    /// Trainable adapter parameters.
    pub params: usize,
    /// Parameters LoRA would have at `r_ref` on the same layers.
    pub lora_params_at_r_ref: usize,
    /// Mean loss on the estimation batches before initialisation.
    pub loss_before: f64,
    /// The same after initialisation (lower: the initialisation is a descent step).
    pub loss_after: f64,
}

impl std::fmt::Display for GoraReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<50} {:>5} {:>5} {:>11} {:>5}",
            "layer", "in", "out", "importance", "rank"
        )?;
        for r in &self.layers {
            writeln!(
                f,
                "{:<50} {:>5} {:>5} {:>11.4e} {:>5}",
                r.layer, r.d_in, r.d_out, r.importance, r.rank
            )?;
        }
        write!(
            f,
            "GoRA: {} layers, {} parameters (LoRA at r_ref {}: {}); loss on the {} estimation batches {:.4} -> {:.4}",
            self.layers.len(),
            self.params,
            self.config.r_ref,
            self.lora_params_at_r_ref,
            self.batches,
            self.loss_before,
            self.loss_after
        )
    }
}

/// `t` on the host; a failed read is kept in `error` (the layer walk cannot return it).
fn host(t: Tensor<2>, error: &mut Option<gralora::AdapterError>) -> Vec<f32> {
    gralora::io::read_f32(t)
        .inspect_err(|e| {
            error.get_or_insert(e.clone());
        })
        .unwrap_or_default()
}

/// Measure, allocate and attach. `loss(model, b)` is the loss of estimation batch `b` (it must
/// be deterministic for a given `b`, dropout included: seed the device inside). `k = 1` gives
/// LoRA adapters, `k > 1` GraLoRA blocks.
pub fn attach<M: AdapterHost + Module + Clone>(
    model: &mut M,
    targets: Targets,
    config: &GoraConfig,
    k: usize,
    batches: usize,
    seed: u64,
    loss: &dyn Fn(&M, usize) -> Tensor<1>,
) -> Result<GoraReport> {
    config.validate(k)?;
    if batches == 0 {
        return Err(TrainError::setting("gora_steps", "must be at least 1"));
    }
    // The target layers.
    let mut linears = Vec::new();
    model.for_each_linear_mut(&mut |path, l| {
        let (d_in, d_out) = l.dims();
        linears.push(gralora::LinearInfo {
            path: path.to_string(),
            d_in,
            d_out,
        });
    });
    let plan = AdaptOptions::new(LoraConfig::new(1), targets).plan(&linears)?;
    if plan.is_empty() {
        return Err(TrainError::setting(
            "targets",
            "select no linear layer for GoRA",
        ));
    }
    for (info, _) in &plan {
        if info.d_in % k != 0 || info.d_out % k != 0 {
            return Err(gralora::AdapterError::NotDivisible {
                layer: info.path.clone(),
                dim: if info.d_in % k != 0 {
                    "in_features"
                } else {
                    "out_features"
                },
                value: if info.d_in % k != 0 {
                    info.d_in
                } else {
                    info.d_out
                },
                k,
            }
            .into());
        }
    }
    let selected: HashMap<String, (usize, usize)> = plan
        .iter()
        .map(|(i, _)| (i.path.clone(), (i.d_in, i.d_out)))
        .collect();

    // 1. Mean gradients, on a clone whose target weights require grad.
    let mut est = model.clone();
    est.for_each_linear_mut(&mut |path, l| {
        if selected.contains_key(path) {
            l.base.weight = l.base.weight.clone().set_require_grad(true);
        }
    });
    let mut sums: HashMap<String, Vec<f32>> = HashMap::new();
    let mut loss_before = 0f64;
    for b in 0..batches {
        let l = loss(&est, b);
        loss_before += f64::from(l.clone().into_scalar::<f32>());
        let grads = l.backward();
        let mut missing = None;
        let mut read_error = None;
        est.for_each_linear_mut(&mut |path, layer| {
            if !selected.contains_key(path) {
                return;
            }
            match layer.base.weight.val().grad(&grads) {
                Some(g) => {
                    let g = host(g, &mut read_error);
                    let acc = sums
                        .entry(path.to_string())
                        .or_insert_with(|| vec![0.0; g.len()]);
                    for (a, v) in acc.iter_mut().zip(&g) {
                        *a += v;
                    }
                }
                None => missing = Some(path.to_string()),
            }
        });
        if let Some(e) = read_error {
            return Err(e.into());
        }
        if let Some(path) = missing {
            return Err(TrainError::Training(format!(
                "GoRA: no gradient reached `{path}`; is it used by the forward pass?"
            )));
        }
    }
    drop(est);
    let loss_before = loss_before / batches as f64;

    // 2–3. Importance and ranks.
    let mut rows = Vec::new();
    let mut weights: HashMap<String, Vec<f32>> = HashMap::new();
    let mut read_error = None;
    model.for_each_linear_mut(&mut |path, layer| {
        if let Some(&(d_in, d_out)) = selected.get(path) {
            let w = host(layer.base.weight.val(), &mut read_error);
            let g: Vec<f32> = sums[path].iter().map(|v| v / batches as f32).collect();
            rows.push(GoraRow {
                layer: path.to_string(),
                d_in,
                d_out,
                importance: gora::importance(&w, &g, config.importance),
                rank: 0,
            });
            weights.insert(path.to_string(), g);
        }
    });
    if let Some(e) = read_error {
        return Err(e.into());
    }
    let ranks = gora::allocate(
        &rows
            .iter()
            .map(|r| (r.d_in, r.d_out, r.importance))
            .collect::<Vec<_>>(),
        config,
        k,
    );
    for (row, r) in rows.iter_mut().zip(&ranks) {
        row.rank = (*r).min(row.d_in.min(row.d_out));
        if k > 1 {
            row.rank -= row.rank % k;
        }
    }

    // 4–5. Gradient-informed adapters, W unchanged.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x6f72_6147);
    let rank_of: HashMap<&str, usize> = rows.iter().map(|r| (r.layer.as_str(), r.rank)).collect();
    let mut result = Ok(());
    model.for_each_linear_mut(&mut |path, layer| {
        let (Some(&r), Ok(())) = (rank_of.get(path), &result) else {
            return;
        };
        let (d_in, d_out) = layer.dims();
        let g = &weights[path];
        let device = layer.device();
        let made = if k == 1 {
            gora::init_lora(g, d_in, d_out, r, config, &mut rng).map(|(a, b, s)| {
                Adapter::Lora(LoraAdapter::from_tensors(
                    Tensor::from_data(TensorData::new(a, [d_in, r]), &device),
                    Tensor::from_data(TensorData::new(b, [r, d_out]), &device),
                    s,
                ))
            })
        } else {
            gora::init_gralora(g, d_in, d_out, r, k, config, &mut rng).map(|(a, b, s)| {
                Adapter::GraLora(GraLoraAdapter::from_tensors(
                    Tensor::from_data(TensorData::new(a, [k, d_in / k, r]), &device),
                    Tensor::from_data(TensorData::new(b, [k, r, d_out / k]), &device),
                    None,
                    s,
                ))
            })
        };
        match made {
            Ok(adapter) => layer.adapter = Some(adapter),
            Err(e) => result = Err(e),
        }
    });
    result?;
    // Scored without gradients: a forward on tracked parameters that is never backpropagated
    // keeps its graph (and its activations) alive in burn's autodiff, ~290 MiB a MiniLM batch.
    let frozen = model.clone().no_grad();
    let loss_after = (0..batches)
        .map(|b| f64::from(loss(&frozen, b).into_scalar::<f32>()))
        .sum::<f64>()
        / batches as f64;
    Ok(GoraReport {
        config: config.clone(),
        k,
        batches,
        params: rows.iter().map(|r| (r.d_in + r.d_out) * r.rank).sum(),
        lora_params_at_r_ref: rows.iter().map(|r| (r.d_in + r.d_out) * config.r_ref).sum(),
        layers: rows,
        loss_before,
        loss_after,
    })
}
