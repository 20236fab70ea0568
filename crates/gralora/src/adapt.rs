//! Adapting a whole model in one call.
//!
//! Two routes:
//! - [`attach_adapters`]: models written for gralora hold [`AdaptedLinear`](crate::AdaptedLinear)
//!   layers and implement [`AdapterHost`]; the adapter runs on the activation path, ΔW is never built.
//! - [`adapt`]: any burn model made of `burn::nn::Linear` layers, unchanged, through burn's
//!   `Reparameterizer` hook. burn composes the effective weight `W + ΔW` on every forward, so this
//!   route pays a dense `[in, out]` weight gradient per step (as burn's own LoRA does); it is the
//!   way to adapt a model you cannot edit. `model.materialize()` merges.

use std::collections::HashMap;
use std::fmt;

use burn::module::{Module, ModuleVisitor, Param, Reparameterization, Reparameterizer};
use burn::tensor::Tensor;

use crate::adapted_linear::AdapterHost;
use crate::adapter::Adapter;
use crate::config::AdapterConfig;
use crate::error::AdapterError;
use crate::targets::{AdaptOptions, LinearInfo};

/// One adapted layer, for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptedLayer {
    /// Module path.
    pub path: String,
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// The configuration it received.
    pub config: AdapterConfig,
}

/// What an adaptation did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdaptReport {
    /// The adapted layers, in model order.
    pub layers: Vec<AdaptedLayer>,
}

impl AdaptReport {
    /// Trainable parameters added, `Σ (in + out) · (r + hybrid_r)`.
    pub fn trainable_params(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.config.num_params(l.d_in, l.d_out))
            .sum()
    }
}

impl fmt::Display for AdaptReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<48} {:>6} {:>6} {:>8} {:>5} {:>10}",
            "layer", "in", "out", "method", "r", "params"
        )?;
        for l in &self.layers {
            let method = match &l.config {
                AdapterConfig::Lora(_) => "lora".to_string(),
                AdapterConfig::Gralora(g) if g.hybrid_r > 0 => format!("gra{}+{}", g.k, g.hybrid_r),
                AdapterConfig::Gralora(g) => format!("gra{}", g.k),
            };
            writeln!(
                f,
                "{:<48} {:>6} {:>6} {:>8} {:>5} {:>10}",
                l.path,
                l.d_in,
                l.d_out,
                method,
                l.config.rank(),
                l.config.num_params(l.d_in, l.d_out)
            )?;
        }
        write!(
            f,
            "{} layers adapted, {} trainable parameters",
            self.layers.len(),
            self.trainable_params()
        )
    }
}

/// Attach adapters to the [`AdaptedLinear`](crate::AdaptedLinear) layers of a gralora model.
/// All chosen layers are validated first: on error nothing is attached.
pub fn attach_adapters<M: AdapterHost>(
    model: &mut M,
    options: &AdaptOptions,
) -> Result<AdaptReport, AdapterError> {
    let mut linears = Vec::new();
    model.for_each_linear_mut(&mut |path, layer| {
        let (d_in, d_out) = layer.dims();
        linears.push(LinearInfo {
            path: path.to_string(),
            d_in,
            d_out,
        });
    });
    let plan: HashMap<String, AdapterConfig> = options
        .plan(&linears)?
        .into_iter()
        .map(|(info, config)| (info.path, config))
        .collect();
    let mut result = Ok(());
    model.for_each_linear_mut(&mut |path, layer| {
        if let (Some(config), Ok(())) = (plan.get(path), &result) {
            result = layer.attach(config, path);
        }
    });
    result?;
    Ok(report(&linears, &plan))
}

/// Replace every GraLoRA adapter of a model by the plain LoRA pair of rank `k·r + hybrid_r` that
/// computes the same update ([`GraLoraAdapter::to_lora`](crate::GraLoraAdapter::to_lora)), so
/// that [`save_peft`](crate::save_peft) writes a `LORA` directory any LoRA runtime reads. LoRA
/// adapters stay as they are. Returns the number of layers converted; on error none is.
pub fn convert_to_lora<M: AdapterHost>(model: &mut M) -> Result<usize, AdapterError> {
    let mut converted = HashMap::new();
    let mut result = Ok(());
    model.for_each_linear_mut(&mut |path, layer| {
        if let (Some(Adapter::GraLora(g)), Ok(())) = (&layer.adapter, &result) {
            match g.to_lora() {
                Ok(lora) => {
                    converted.insert(path.to_string(), lora);
                }
                Err(e) => result = Err(e),
            }
        }
    });
    result?;
    let n = converted.len();
    model.for_each_linear_mut(&mut |path, layer| {
        if let Some(lora) = converted.remove(path) {
            layer.adapter = Some(Adapter::Lora(lora));
        }
    });
    Ok(n)
}

fn report(linears: &[LinearInfo], plan: &HashMap<String, AdapterConfig>) -> AdaptReport {
    AdaptReport {
        layers: linears
            .iter()
            .filter_map(|l| {
                plan.get(&l.path).map(|config| AdaptedLayer {
                    path: l.path.clone(),
                    d_in: l.d_in,
                    d_out: l.d_out,
                    config: config.clone(),
                })
            })
            .collect(),
    }
}

/// The `burn::nn::Linear` layers of any burn module, by module path.
pub fn linear_layers<M: Module>(model: &M) -> Vec<LinearInfo> {
    let mut finder = LinearFinder::default();
    model.visit(&mut finder);
    finder.found
}

#[derive(Default)]
struct LinearFinder {
    path: Vec<String>,
    in_linear_weight: Vec<bool>,
    found: Vec<LinearInfo>,
}

impl ModuleVisitor for LinearFinder {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.in_linear_weight
            .push(name == "weight" && container_type == "Struct:Linear");
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.in_linear_weight.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if D == 2 && self.in_linear_weight.last() == Some(&true) {
            let dims = param.lazy_shape().dims::<2>();
            self.found.push(LinearInfo {
                path: self.path[..self.path.len() - 1].join("."),
                d_in: dims[0],
                d_out: dims[1],
            });
        }
    }
}

/// Adapt any burn model built from `burn::nn::Linear` through burn's `Reparameterizer` hook:
/// matching linear weights get a trainable adapter, every other float parameter is frozen
/// (unfreeze a head yourself with `set_require_grad_group`). All chosen layers are validated
/// before anything changes.
///
/// Dropout is refused on this route (it needs the activation path): use
/// [`AdaptedLinear`](crate::AdaptedLinear) for that.
pub fn adapt<M: Module>(
    model: M,
    options: &AdaptOptions,
) -> Result<(M, AdaptReport), AdapterError> {
    let linears = linear_layers(&model);
    let plan = options.plan(&linears)?;
    if let Some((info, config)) = plan.iter().find(|(_, c)| c.dropout() > 0.0) {
        return Err(AdapterError::invalid(
            &info.path,
            format!(
                "dropout = {} needs the activation path; set it to 0 for `adapt`, or build the model with AdaptedLinear",
                config.dropout()
            ),
        ));
    }
    let plan: HashMap<String, AdapterConfig> =
        plan.into_iter().map(|(info, c)| (info.path, c)).collect();
    let report = report(&linears, &plan);
    let model = model.apply_reparameterization(DenseAdapterizer { plan });
    Ok((model, report))
}

struct DenseAdapterizer {
    plan: HashMap<String, AdapterConfig>,
}

impl Reparameterizer for DenseAdapterizer {
    type Reparam = DenseAdapter;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<DenseAdapter>) {
        let base = param.set_require_grad(false);
        let module_path = path.strip_suffix(".weight").unwrap_or(path);
        match self.plan.get(module_path) {
            Some(config) if D == 2 => {
                let dims = base.lazy_shape().dims::<2>();
                let device = base.val().device();
                let adapter = Adapter::init(config, dims[0], dims[1], &device);
                (base, Some(DenseAdapter { adapter }))
            }
            _ => (base, None),
        }
    }
}

/// The reparameterisation [`adapt`] attaches: effective weight `W + ΔW`, composed densely.
#[derive(Module, Debug)]
pub struct DenseAdapter {
    /// The adapter whose ΔW is added.
    pub adapter: Adapter,
}

impl Reparameterization for DenseAdapter {
    const NAME: &'static str = "gralora";

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        let shape = base.shape();
        base + self.adapter.delta_weight().reshape(shape)
    }
}
