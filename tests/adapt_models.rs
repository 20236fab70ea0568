//! Adapting whole models: foreign burn models through `adapt`, gralora models through
//! `attach_adapters`, with PEFT's target rules.

mod common;

use burn::module::{Module, ParamGroup};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use common::*;
use gralora::{
    AdaptOptions, AdaptedLinear, AdapterConfig, AdapterError, AdapterHost, DenseAdapter,
    GraLoraConfig, Init, LoraConfig, Targets, adapt, attach_adapters, linear_layers,
};

/// A user's model, written with plain burn layers and no knowledge of gralora.
#[derive(Module, Debug)]
struct Block {
    query: Linear,
    value: Linear,
    out: Linear,
}

#[derive(Module, Debug)]
struct UserModel {
    embed: Embedding,
    blocks: Vec<Block>,
    head: Linear,
}

impl UserModel {
    fn new(device: &Device) -> Self {
        let block = || Block {
            query: LinearConfig::new(16, 16).init(device),
            value: LinearConfig::new(16, 8).init(device),
            out: LinearConfig::new(8, 16).init(device),
        };
        Self {
            embed: EmbeddingConfig::new(10, 16).init(device),
            blocks: vec![block(), block()],
            head: LinearConfig::new(16, 4).init(device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut h = x;
        for b in &self.blocks {
            h = h.clone()
                + b.out.forward(
                    b.query
                        .forward(h.clone())
                        .tanh()
                        .slice([0..h.dims()[0], 0..8])
                        + b.value.forward(h),
                );
        }
        self.head.forward(h)
    }
}

#[test]
fn linear_layers_are_found_by_path_and_embeddings_are_not() {
    let model = UserModel::new(&Device::flex());
    let paths: Vec<String> = linear_layers(&model)
        .into_iter()
        .map(|l| format!("{} {}x{}", l.path, l.d_in, l.d_out))
        .collect();
    assert_eq!(
        paths,
        [
            "blocks.0.query 16x16",
            "blocks.0.value 16x8",
            "blocks.0.out 8x16",
            "blocks.1.query 16x16",
            "blocks.1.value 16x8",
            "blocks.1.out 8x16",
            "head 16x4"
        ]
    );
}

#[test]
fn targets_follow_peft_rules() {
    let model = UserModel::new(&Device::flex());
    let linears = linear_layers(&model);
    let chosen = |targets: Targets| -> Vec<String> {
        AdaptOptions::new(LoraConfig::new(2), targets)
            .plan(&linears)
            .map(|p| p.into_iter().map(|(l, _)| l.path).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        chosen(Targets::names(["query"])),
        ["blocks.0.query", "blocks.1.query"]
    );
    // A name matches whole path components only.
    assert_eq!(chosen(Targets::names(["uery"])), Vec::<String>::new());
    assert_eq!(
        chosen(Targets::names(["1.value", "head"])),
        ["blocks.1.value", "head"]
    );
    assert_eq!(
        chosen(Targets::pattern(r"blocks\.\d+\.(query|out)")).len(),
        4
    );
    // A regex must match the whole path.
    assert_eq!(chosen(Targets::pattern("query")), Vec::<String>::new());
    assert_eq!(chosen(Targets::AllLinear).len(), 7);

    let err = AdaptOptions::new(LoraConfig::new(2), Targets::names(["q_proj"]))
        .plan(&linears)
        .unwrap_err();
    assert!(matches!(err, AdapterError::NoTargetMatched { .. }));
    assert!(
        err.to_string().contains("q_proj") && err.to_string().contains("blocks.0.query"),
        "{err}"
    );
    let err = AdaptOptions::new(LoraConfig::new(2), Targets::pattern("("))
        .plan(&linears)
        .unwrap_err();
    assert!(matches!(err, AdapterError::InvalidPattern { .. }), "{err}");

    // Targets serialise as PEFT writes target_modules.
    assert_eq!(
        serde_json::to_string(&Targets::AllLinear).unwrap(),
        r#""all-linear""#
    );
    assert_eq!(
        serde_json::from_str::<Targets>(r#"["query","value"]"#).unwrap(),
        Targets::names(["query", "value"])
    );
    assert_eq!(
        serde_json::from_str::<Targets>(r#"".*query""#).unwrap(),
        Targets::pattern(".*query")
    );
}

#[test]
fn rank_and_alpha_patterns_override_per_layer() {
    let model = UserModel::new(&Device::flex());
    let options = AdaptOptions::new(GraLoraConfig::new(4, 2), Targets::AllLinear)
        .with_rank_for(r"blocks\.1\.query", 8)
        .with_alpha_for("head", 3.0);
    let plan = options.plan(&linear_layers(&model)).unwrap();
    let get = |p: &str| plan.iter().find(|(l, _)| l.path == p).unwrap().1.clone();
    assert_eq!(get("blocks.1.query").rank(), 8);
    assert_eq!(get("blocks.0.query").rank(), 4);
    assert_eq!(get("head"), GraLoraConfig::new(4, 2).with_alpha(3.0).into());
    // A per-layer rank that the layer's k cannot take is caught before anything is applied.
    let bad =
        AdaptOptions::new(GraLoraConfig::new(4, 2), Targets::AllLinear).with_rank_for("head", 3);
    let err = bad.plan(&linear_layers(&model)).unwrap_err();
    assert!(
        err.to_string().contains("`head`") && err.to_string().contains("r = 3"),
        "{err}"
    );
}

#[test]
fn adapt_a_foreign_model_in_one_call() {
    for (name, device) in devices() {
        let ad = device.clone().autodiff();
        let model = UserModel::new(&ad);
        let x = tensor(&Rng::new(3).vec(5 * 16), [5, 16], &ad);
        let before = host(model.forward(x.clone()));

        let options = AdaptOptions::new(
            GraLoraConfig::new(4, 2).with_init(Init::Random),
            Targets::names(["query", "value"]),
        );
        let (model, report) = adapt(model, &options).unwrap();
        assert_eq!(report.layers.len(), 4);
        assert_eq!(
            report.trainable_params(),
            2 * ((16 + 16) * 4 + (16 + 8) * 4)
        );
        assert!(report.to_string().contains("blocks.1.value"));

        // The effective weight is W + ΔW from the block formula.
        let q = &model.blocks[0].query.weight;
        let dense: &DenseAdapter = q.reparameterization().expect("query is adapted");
        let gralora::Adapter::GraLora(g) = &dense.adapter else {
            panic!("expected GraLoRA")
        };
        let dw = gralora_delta_ref(&host(g.a.val()), &host(g.b.val()), 2, 16, 16, 4, g.scale);
        let w = host(q.base());
        let want: Vec<f64> = w.iter().zip(&dw).map(|(w, d)| *w as f64 + d).collect();
        assert!(max_rel_err(&host(q.val()), &want) < 1e-5, "{name}");
        assert!(
            model.blocks[0]
                .out
                .weight
                .reparameterization::<DenseAdapter>()
                .is_none()
        );

        // Only adapter factors get gradients; everything else is frozen.
        let grads = model.forward(x.clone()).sum().backward();
        assert!(
            g.a.val().grad(&grads).is_some() && g.b.val().grad(&grads).is_some(),
            "{name}"
        );
        assert!(
            q.base().grad(&grads).is_none(),
            "{name}: base weight frozen"
        );
        assert!(
            model.head.weight.val().grad(&grads).is_none(),
            "{name}: head frozen"
        );

        // Materialising folds ΔW in; the output does not change.
        let adapted = host(model.forward(x.clone()));
        let diff: f64 = adapted
            .iter()
            .zip(&before)
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, f64::max);
        assert!(
            diff > 1e-4,
            "{name}: a random-init adapter must change the output"
        );
        let merged = model.materialize();
        assert!(
            merged.blocks[0]
                .query
                .weight
                .reparameterization::<DenseAdapter>()
                .is_none()
        );
        let after: Vec<f64> = host(merged.forward(x)).iter().map(|v| *v as f64).collect();
        assert!(max_rel_err(&adapted, &after) < 1e-5, "{name}");
    }
}

#[test]
fn adapt_refuses_dropout_and_bad_layers_without_touching_the_model() {
    let device = Device::flex();
    let model = UserModel::new(&device);
    let err = adapt(
        model.clone(),
        &AdaptOptions::new(LoraConfig::new(2).with_dropout(0.1), Targets::AllLinear),
    )
    .unwrap_err();
    assert!(err.to_string().contains("dropout"), "{err}");
    // k = 3 does not divide 16: the error names the first offending layer.
    let err = adapt(
        model,
        &AdaptOptions::new(GraLoraConfig::new(6, 3), Targets::AllLinear),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("blocks.0.query") && err.to_string().contains("k = 3"),
        "{err}"
    );
}

#[test]
fn head_can_be_trained_beside_the_adapters() {
    let device = Device::flex().autodiff();
    let (model, _) = adapt(
        UserModel::new(&device),
        &AdaptOptions::new(LoraConfig::new(2), Targets::names(["query"])),
    )
    .unwrap();
    let model = model.set_require_grad_group(
        ParamGroup::from_paths(vec!["head.weight", "head.bias"]),
        true,
    );
    assert!(model.head.weight.is_require_grad());
    assert!(!model.blocks[0].query.weight.is_require_grad());
}

/// A model written for gralora: its layers are AdaptedLinear and it lists them by path.
#[derive(Module, Debug)]
struct NativeModel {
    layers: Vec<AdaptedLinear>,
}

impl AdapterHost for NativeModel {
    fn for_each_linear_mut(&mut self, f: &mut dyn FnMut(&str, &mut AdaptedLinear)) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            f(&format!("layers.{i}.proj"), l);
        }
    }
}

#[test]
fn attach_adapters_to_a_gralora_model_all_or_nothing() {
    let device = Device::flex();
    let new = || NativeModel {
        layers: vec![
            AdaptedLinear::new(LinearConfig::new(16, 16).init(&device)),
            AdaptedLinear::new(LinearConfig::new(16, 12).init(&device)),
        ],
    };
    let mut model = new();
    let report = attach_adapters(
        &mut model,
        &AdaptOptions::new(GraLoraConfig::new(4, 2), Targets::AllLinear),
    )
    .unwrap();
    assert_eq!(report.layers.len(), 2);
    assert!(model.layers.iter().all(|l| l.adapter.is_some()));

    // 12 is not divisible by 8: nothing is attached anywhere.
    let mut model = new();
    let err = attach_adapters(
        &mut model,
        &AdaptOptions::new(GraLoraConfig::new(8, 8), Targets::AllLinear),
    )
    .unwrap_err();
    assert!(err.to_string().contains("layers.1.proj"), "{err}");
    assert!(
        model.layers.iter().all(|l| l.adapter.is_none()),
        "a failed attach must leave the model untouched"
    );

    let mut model = new();
    let options = AdaptOptions::new(
        AdapterConfig::from(LoraConfig::new(2)),
        Targets::names(["1.proj"]),
    );
    attach_adapters(&mut model, &options).unwrap();
    assert!(model.layers[0].adapter.is_none() && model.layers[1].adapter.is_some());
}
