//! Budgets of a GPU training step, as counts (deterministic, so asserted; times are measured by
//! `gralora bench step`, never here): MiniLM + classifier at batch 16 × 128, all linears adapted,
//! GraLoRA r 32 k 2 against LoRA r 32, on the wgpu device (lavapipe in CI).
//!
//! The steps run under cubecl's dry run: every launch is issued, counted, compiled and cached as
//! in a real step, then dropped instead of executed (lavapipe takes minutes per MiniLM step at
//! this size). That is exact for counts because a step branches on no computed value: it reads
//! nothing back, which is one of the budgets.
//!
//! One test binary of its own: the counters are process-wide. Needs the MiniLM asset and a wgpu
//! adapter; skips without them unless `GRALORA_REQUIRE_ASSETS=1` / `GRALORA_REQUIRE_WGPU=1`.

#[path = "common/mod.rs"]
mod common;

use burn::optim::AdamWConfig;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::tensor::Device;
use burn::train::TrainStep;
use gralora::kernels::{Counting, DryRun};
use gralora::{AdaptOptions, attach_adapters};
use gralora_models::{Bert, BertClassifier, Encoded};
use gralora_train::bench::{BenchPlan, StepBench, bench_steps};
use gralora_train::tasks::classification::{ClassBatch, Item, TextClassifier};
use gralora_train::trainer::{
    ENCODER_TARGETS, GPU_LEN_MULTIPLE, LossGuard, Method, TrainConfig, trainable,
};

/// PyTorch + PEFT issue ~2,240 ATen compute ops per GraLoRA r32 k2 step at 16 × 128 (LoRA
/// ~2,090; torch.profiler, views and allocations excluded): the budget is half of that.
const MAX_LAUNCHES: u64 = 1_100;
/// GraLoRA's launches against LoRA's at the same rank.
const MAX_GRALORA_OVER_LORA: f64 = 1.05;
/// Distinct kernels over 20 steps whose padded lengths vary (see the test).
const MAX_KERNELS_VARYING: usize = 300;
/// Examples per batch in that test (small: each new length is tuned, and tuning runs for real).
const BATCH_VARYING: usize = 4;

/// The counters and the dry run are process-wide: one test at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// cubecl's autotuner at its cheapest for this process (minimal level, one sample a candidate):
/// under the dry run its measurements are the only kernels that execute, and they are most of
/// the test's time. What it picks changes no budget here beyond its margin.
fn cheap_autotune() {
    use burn_cubecl::cubecl::config::autotune::AutotuneLevel;
    use burn_cubecl::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let mut config = CubeClRuntimeConfig::default();
    config.autotune.level = AutotuneLevel::Minimal;
    config.autotune.bench.min_samples = 1;
    config.autotune.bench.max_samples = 1;
    config.autotune.bench.adaptive = false;
    // Already read (the other test ran first): it was set then.
    let _ = CubeClRuntimeConfig::try_set(config);
}

fn minilm(device: &Device) -> Option<Bert> {
    let dir = gralora_models::assets::home().join("minilm");
    if !dir.join("model.safetensors").exists() {
        if std::env::var("GRALORA_REQUIRE_ASSETS").as_deref() == Ok("1") {
            panic!(
                "GRALORA_REQUIRE_ASSETS=1 but minilm is not fetched; run `gralora fetch minilm`"
            );
        }
        eprintln!("skipped: minilm not fetched (gralora fetch minilm)");
        return None;
    }
    Some(Bert::from_dir(&dir, device).unwrap().1)
}

fn config(method: Method, targets: &[&str]) -> TrainConfig {
    let mut c = TrainConfig::new("minilm", "sst2", method);
    c.rank = 32;
    c.k = 2;
    c.targets = targets.iter().map(|t| t.to_string()).collect();
    c
}

fn bench(bert: &Bert, configs: &[TrainConfig], device: &Device) -> Vec<StepBench> {
    let plan = BenchPlan {
        batch: 16,
        seq_len: 128,
        warmup: 1,
        iters: 1,
        kernel_names: true,
    };
    let _dry = DryRun::new();
    bench_steps(bert.clone(), configs, plan, device, &mut |l| {
        eprintln!("{l}")
    })
    .unwrap()
}

fn show(what: &str, r: &StepBench) {
    eprintln!(
        "{what}: {}; {} kernels compiled",
        r.per_step, r.kernels_compiled
    );
    for (k, n) in &r.per_step.by_kernel {
        eprintln!("    {n:>5} × {k}");
    }
}

/// The wgpu device and MiniLM on it, with this binary's one-at-a-time lock held and the cheap
/// autotuner set; `None` (skip) without an adapter or the asset.
fn setup() -> Option<(std::sync::MutexGuard<'static, ()>, Device, Bert)> {
    let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    cheap_autotune();
    let (_, device) = common::wgpu_devices().into_iter().next()?;
    let bert = minilm(&device)?;
    Some((one, device, bert))
}

#[test]
fn a_gpu_training_step_stays_within_its_budgets() {
    let Some((_one, device, bert)) = setup() else {
        return;
    };
    // Empty: the encoder default, every linear of every layer (ENCODER_TARGETS).
    let all: [&str; 0] = [];
    let steps = bench(
        &bert,
        &[config(Method::Lora, &all), config(Method::Gralora, &all)],
        &device,
    );
    let (lora, gralora) = (&steps[0], &steps[1]);
    show("lora", lora);
    show("gralora", gralora);
    let (l, g) = (&lora.per_step, &gralora.per_step);
    assert!(
        g.launches <= MAX_LAUNCHES,
        "GraLoRA step: {} launches, budget {MAX_LAUNCHES}",
        g.launches
    );
    assert!(
        g.launches as f64 <= MAX_GRALORA_OVER_LORA * l.launches as f64,
        "GraLoRA step: {} launches, LoRA's {}: over {MAX_GRALORA_OVER_LORA}×",
        g.launches,
        l.launches
    );
    // The loss is read once per 32 steps on a GPU, never inside a step.
    assert_eq!(
        (l.host_reads, g.host_reads),
        (0, 0),
        "host reads inside a step"
    );
    // The batch's ids, segments, mask and labels; no upload per adapted layer.
    assert_eq!(
        (l.host_writes, g.host_writes),
        (4, 4),
        "host writes per step"
    );
    // GraLoRA's products are the only custom ops left in the step (forward and backward).
    assert_eq!(l.opaque_ops, 0, "LoRA step: custom (opaque) ops");
    assert!(g.launches > 0 && g.fusion_blocks > 0, "nothing was counted");

    // Adapting a third of the linears (the attention outputs and FFN outputs only) uploads no
    // more and no less per step than adapting all of them.
    let some = ["attention.output.dense", "output.dense"];
    let fewer = bench(&bert, &[config(Method::Gralora, &some)], &device);
    show("gralora, two linears a layer", &fewer[0]);
    assert_eq!(fewer[0].per_step.host_writes, g.host_writes);
    assert!(fewer[0].per_step.opaque_ops < g.opaque_ops);
}

#[test]
fn kernels_compiled_over_steps_of_varying_lengths_are_bounded() {
    let Some((_one, device, bert)) = setup() else {
        return;
    };
    let ad = device.clone().autodiff();
    let config = config(Method::Gralora, &[]);
    let mut clf = BertClassifier::new(
        trainable(bert, config.method),
        2,
        config.pooling().unwrap(),
        0.0,
    );
    attach_adapters(
        &mut clf,
        &AdaptOptions::new(
            config.adapter().unwrap().unwrap(),
            config.targets_or(ENCODER_TARGETS),
        ),
    )
    .unwrap();
    let mut model = Some(TextClassifier::new(
        clf,
        1.0,
        LossGuard::default().reading_for(&ad),
    ));
    let mut optim = AdamWConfig::new().init();
    // 20 batches whose longest example is anywhere in 1..=128 tokens: padded to a multiple
    // of GPU_LEN_MULTIPLE, at most 128 / 16 = 8 distinct shapes.
    let mut rng = common::Rng::new(7);
    let _dry = DryRun::new();
    let mut counting = Counting::start(false);
    let mut lengths = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let longest = 1 + ((rng.next_f64() + 1.0) / 2.0 * 127.0) as usize;
        let items: Vec<Item> = (0..BATCH_VARYING)
            .map(|i| {
                let len = if i == 0 { longest } else { 1 + i % longest };
                Item {
                    encoded: Encoded {
                        ids: (0..len as u32).map(|t| 1000 + t).collect(),
                        type_ids: vec![0; len],
                    },
                    label: i % 2,
                }
            })
            .collect();
        let refs: Vec<&Item> = items.iter().collect();
        let batch = ClassBatch::padded(&refs, 0, GPU_LEN_MULTIPLE, &ad);
        lengths.insert(batch.input.ids.dims()[1]);
        let m = model.take().unwrap();
        let out = TrainStep::step(&m, batch);
        model = Some(optim.step(ModuleLearningRate::from(1e-4), m, out.grads));
    }
    ad.sync().unwrap();
    let kernels = counting.new_kernels();
    eprintln!(
        "20 steps, padded lengths {lengths:?}: {kernels} kernels compiled, {:?}",
        counting.snapshot()
    );
    assert!(lengths.len() >= 4, "the lengths did not vary: {lengths:?}");
    assert!(
        kernels <= MAX_KERNELS_VARYING,
        "{kernels} kernels compiled over 20 steps of {} padded lengths, budget {MAX_KERNELS_VARYING}",
        lengths.len()
    );
}
