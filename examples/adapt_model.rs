//! Adapt a small burn model you wrote yourself, train the adapters a few steps on the CPU (Flex)
//! and on wgpu, then merge.
//!
//! `cargo run --example adapt_model` (add `-- flex` or `-- wgpu` to run one device only).
//!
//! Two routes are shown:
//! 1. a model built from plain `burn::nn::Linear`, adapted unchanged with `gralora::adapt`
//!    (burn's Reparameterizer hook; ΔW is composed densely each step), merged with `materialize()`;
//! 2. the same model written with `gralora::AdaptedLinear`, adapted with `attach_adapters`
//!    (the adapter runs on the activation path), merged layer by layer.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Distribution, Tensor};
use gralora::{
    AdaptOptions, AdaptedLinear, AdapterHost, GraLoraConfig, Targets, adapt, attach_adapters,
};

/// Route 1: an ordinary burn model.
#[derive(Module, Debug)]
struct Mlp {
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            up: LinearConfig::new(32, 64).init(device),
            down: LinearConfig::new(64, 32).init(device),
        }
    }
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.down.forward(gelu(self.up.forward(x)))
    }
}

/// Route 2: the same model written for gralora.
#[derive(Module, Debug)]
struct AdaptedMlp {
    up: AdaptedLinear,
    down: AdaptedLinear,
}

impl AdapterHost for AdaptedMlp {
    fn for_each_linear_mut(&mut self, f: &mut dyn FnMut(&str, &mut AdaptedLinear)) {
        f("up", &mut self.up);
        f("down", &mut self.down);
    }
}

impl AdaptedMlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.down.forward(gelu(self.up.forward(x)))
    }
}

/// A fixed regression task: map x to a fixed random rotation of x.
fn batch(device: &Device) -> (Tensor<2>, Tensor<2>) {
    device.seed(7);
    let x = Tensor::<2>::random([64, 32], Distribution::Normal(0.0, 1.0), device);
    let m = Tensor::<2>::random([32, 32], Distribution::Normal(0.0, 0.2), device);
    let y = x.clone().matmul(m);
    (x, y)
}

fn mse(pred: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    (pred - target).powi_scalar(2).mean()
}

fn scalar(t: Tensor<1>) -> f32 {
    t.into_scalar::<f32>()
}

/// 30 AdamW steps on the regression batch, printing the loss before and after.
fn fit<M: Module>(
    name: &str,
    mut model: M,
    forward: fn(&M, Tensor<2>) -> Tensor<2>,
    x: &Tensor<2>,
    y: &Tensor<2>,
) -> M {
    let loss = |model: &M| mse(forward(model, x.clone()), y.clone());
    let mut optim = AdamWConfig::new().init();
    let first = scalar(loss(&model));
    for _ in 0..30 {
        let grads = GradientsParams::from_grads(loss(&model).backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    println!(
        "[{name}] loss {first:.4} -> {:.4} after 30 AdamW steps",
        scalar(loss(&model))
    );
    model
}

fn run(name: &str, device: Device) -> Result<(), Box<dyn std::error::Error>> {
    let device = device.autodiff();
    let (x, y) = batch(&device);
    let options = AdaptOptions::new(
        GraLoraConfig::new(8, 2).with_alpha(16.0),
        Targets::AllLinear,
    );

    // Route 1: adapt a foreign model in one call.
    device.seed(1);
    let (model, report) = adapt(Mlp::new(&device), &options)?;
    println!("[{name}] route 1, adapt():\n{report}");
    let model = fit(name, model, Mlp::forward, &x, &y);
    let before_merge = model.forward(x.clone());
    let merged = model.materialize();
    let gap = scalar(
        (merged.forward(x.clone()) - before_merge)
            .abs()
            .max()
            .reshape([1]),
    );
    println!("[{name}] merged with materialize(): max |Δoutput| = {gap:.2e}");

    // Route 2: a model written with AdaptedLinear.
    device.seed(1);
    let mut model = AdaptedMlp {
        up: AdaptedLinear::new(LinearConfig::new(32, 64).init(&device)),
        down: AdaptedLinear::new(LinearConfig::new(64, 32).init(&device)),
    };
    let report = attach_adapters(&mut model, &options)?;
    println!(
        "[{name}] route 2, attach_adapters(): {} trainable parameters",
        report.trainable_params()
    );
    let model = fit(name, model, AdaptedMlp::forward, &x, &y);
    let before_merge = model.forward(x.clone());
    let merged = AdaptedMlp {
        up: model.up.merge()?,
        down: model.down.merge()?,
    };
    let gap = scalar((merged.forward(x) - before_merge).abs().max().reshape([1]));
    println!("[{name}] merged layer by layer: max |Δoutput| = {gap:.2e}");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let only = std::env::args().nth(1);
    let wanted = |d: &str| only.as_deref().is_none_or(|o| o == d);
    if wanted("flex") {
        run("flex", gralora::device::select("flex")?)?;
    }
    if wanted("wgpu") {
        match gralora::device::select("wgpu") {
            Ok(device) => run("wgpu", device)?,
            Err(e) => println!("[wgpu] skipped: {e}"),
        }
    }
    Ok(())
}
