//! `gralora bench step`: whole training steps (forward, backward, AdamW) of several methods
//! timed round-robin in one run, on fixed random tokens.

use std::time::Instant;

use burn::optim::AdamWConfig;
use burn::tensor::Device;
use gralora::kernels::{Counting, Counts};
use gralora::{AdaptOptions, attach_adapters};
use gralora_models::{Bert, BertClassifier};
use serde::Serialize;

use crate::error::Result;
use crate::tasks::classification::{ClassBatch, Item, TextClassifier};
use crate::trainer::{
    ENCODER_TARGETS, LossGuard, Report, TrainConfig, peak_rss_mib, rss_mib, seed_device, trainable,
    trainable_params,
};

/// Time whole training steps (forward, backward, AdamW) on fixed random tokens, and count what
/// each step issues to the device.
#[derive(Debug, Clone, Serialize)]
pub struct StepBench {
    /// Median milliseconds per timed step (after the warm-up).
    pub ms_per_step: f64,
    /// The first step's milliseconds: on a GPU it compiles and tunes the step's kernels.
    pub first_step_ms: f64,
    /// Tokens per second at the median.
    pub tokens_per_s: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mb: Option<f64>,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Every timed step, ms.
    pub steps_ms: Vec<f64>,
    /// What the last timed step issued (the counts of a warm step do not change from step to
    /// step at a fixed shape).
    pub per_step: Counts,
    /// Distinct kernels this method's steps launched (warm-up included) that no earlier
    /// method's had: the kernels it compiled.
    pub kernels_compiled: usize,
    /// How fast the process's resident memory grew over the second half of the timed rounds,
    /// MiB per 100 rounds (least squares; the same for every method, whose steps share the
    /// rounds); `None` under 20 rounds or off Linux. Near 0 when nothing leaks.
    pub rss_slope_mb_per_100_rounds: Option<f64>,
}

/// The least-squares slope of `ys` against their index, per 100 indices, over the second half
/// of `ys` (the first half lets caches and pools fill); `None` under 20 values.
pub fn rss_slope_per_100(ys: &[f64]) -> Option<f64> {
    if ys.len() < 20 {
        return None;
    }
    let half = &ys[ys.len() / 2..];
    let n = half.len() as f64;
    let mx = (n - 1.0) / 2.0;
    let my = half.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in half.iter().enumerate() {
        let dx = i as f64 - mx;
        sxy += dx * (y - my);
        sxx += dx * dx;
    }
    Some(100.0 * sxy / sxx)
}

/// What [`bench_steps`] times: `batch` examples of `seq_len` random tokens per step, `warmup`
/// untimed steps per method, then `iters` timed rounds.
#[derive(Debug, Clone, Copy)]
pub struct BenchPlan {
    /// Examples per step.
    pub batch: usize,
    /// Tokens per example.
    pub seq_len: usize,
    /// Untimed steps per method.
    pub warmup: usize,
    /// Timed rounds (one step of each method per round).
    pub iters: usize,
    /// Count launches by kernel name too.
    pub kernel_names: bool,
}

/// One method's model, optimiser and training step, as the trainer runs it: the guarded
/// forward (the loss watched as in training, read once per
/// [`GPU_LOSS_CHECK_EVERY`](crate::trainer::GPU_LOSS_CHECK_EVERY) steps off
/// the CPU), backward and the AdamW step.
struct Runner {
    model: Option<TextClassifier>,
    optim: burn::optim::ModuleOptimizer,
    lr: f64,
}

impl Runner {
    /// One training step on `batch`'s items, ended by a device sync (no host read); its
    /// milliseconds.
    fn step(&mut self, refs: &[&Item], ad: &Device) -> Result<f64> {
        use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
        use burn::train::TrainStep;
        let b = ClassBatch::new(refs, 0, ad);
        let t = Instant::now();
        let model = self
            .model
            .take()
            .expect("a runner holds its model between steps");
        let out = TrainStep::step(&model, b);
        let model = self
            .optim
            .step(ModuleLearningRate::from(self.lr), model, out.grads);
        self.model = Some(model);
        // Wait for the device to finish the step.
        ad.sync()
            .map_err(|e| crate::error::TrainError::Training(format!("device sync: {e:?}")))?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }
}

/// Time whole training steps of several methods in one run: each method gets its model,
/// optimiser and `warmup` untimed steps first, then the timed steps go round-robin (one step
/// of each method per round), so a slow spell of a shared machine hits every method alike and
/// the ratios between them stay meaningful. One result per config, in order; `peak_rss_mb` is
/// the process's peak after that method's warm-up, or its first step without one (all models
/// stay resident). Every step is counted (launches, Fusion blocks, host transfers:
/// [`gralora::kernels::Counting`]).
pub fn bench_steps(
    bert: Bert,
    configs: &[TrainConfig],
    plan: BenchPlan,
    device: &Device,
    report: Report<'_>,
) -> Result<Vec<StepBench>> {
    let BenchPlan {
        batch,
        seq_len,
        warmup,
        iters,
        kernel_names,
    } = plan;
    use rand::{Rng, SeedableRng};
    struct Method {
        runner: Runner,
        trainable: usize,
        peak: Option<f64>,
        first_ms: Option<f64>,
        times: Vec<f64>,
        per_step: Counts,
        kernels: usize,
    }
    let ad = device.clone().autodiff();
    let vocab = bert.word_embeddings.weight.dims()[0];
    let seed = configs.first().map_or(42, |c| c.seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let items: Vec<Item> = (0..batch)
        .map(|i| Item {
            encoded: gralora_models::Encoded {
                ids: (0..seq_len)
                    .map(|_| rng.random_range(1000..vocab as u32))
                    .collect(),
                type_ids: vec![0; seq_len],
            },
            label: i % 2,
        })
        .collect();
    let refs: Vec<&Item> = items.iter().collect();
    // Everything before the first step (loading, attaching) is done: count from here.
    device
        .sync()
        .map_err(|e| crate::error::TrainError::Training(format!("device sync: {e:?}")))?;
    let mut counting = Counting::start(kernel_names);
    let counted_step = |m: &mut Method, counting: &mut Counting| -> Result<(f64, Counts)> {
        let before = counting.snapshot();
        let ms = m.runner.step(&refs, &ad)?;
        m.kernels += counting.new_kernels();
        m.first_ms.get_or_insert(ms);
        Ok((ms, counting.snapshot().since(&before)))
    };
    let mut methods = Vec::new();
    for config in configs {
        config.validate()?;
        seed_device(device, config.seed);
        seed_device(&ad, config.seed);
        let bert = trainable(bert.clone(), config.method);
        let mut clf = BertClassifier::new(bert, 2, config.pooling()?, 0.0);
        if let Some(a) = config.adapter()? {
            attach_adapters(
                &mut clf,
                &AdaptOptions::new(a, config.targets_or(ENCODER_TARGETS)),
            )?;
        }
        let guard = LossGuard::default().reading_for(device);
        let model = TextClassifier::new(clf, 1.0, guard);
        let trainable = trainable_params(&model);
        let optim = AdamWConfig::new()
            .with_weight_decay(config.weight_decay as f32)
            .init();
        let mut m = Method {
            runner: Runner {
                model: Some(model),
                optim,
                lr: config.lr,
            },
            trainable,
            peak: None,
            first_ms: None,
            times: Vec::new(),
            per_step: Counts::default(),
            kernels: 0,
        };
        // Setting up the model issues work too: not a step's.
        let _ = counting.new_kernels();
        for i in 0..warmup {
            // On a GPU the first steps compile and tune kernels: say how long they take.
            let (ms, _) = counted_step(&mut m, &mut counting)?;
            report(&format!(
                "{}: warm-up step {}/{warmup}: {ms:.0} ms",
                config.method.name(),
                i + 1
            ));
        }
        m.peak = peak_rss_mib();
        methods.push(m);
    }
    let mut rss = Vec::with_capacity(iters);
    for round in 0..iters {
        if let Some(r) = rss_mib() {
            rss.push(r);
        }
        for m in &mut methods {
            let (ms, counts) = counted_step(m, &mut counting)?;
            m.times.push(ms);
            m.per_step = counts;
            if warmup == 0 && round == 0 {
                // No warm-up: the peak after the method's first step.
                m.peak = peak_rss_mib();
            }
        }
    }
    let slope = rss_slope_per_100(&rss);
    Ok(methods
        .into_iter()
        .map(|m| {
            let mut sorted = m.times.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
            StepBench {
                ms_per_step: median,
                first_step_ms: m.first_ms.unwrap_or(f64::NAN),
                tokens_per_s: (batch * seq_len) as f64 / (median / 1e3),
                peak_rss_mb: m.peak,
                trainable_params: m.trainable,
                steps_ms: m.times,
                per_step: m.per_step,
                kernels_compiled: m.kernels,
                rss_slope_mb_per_100_rounds: slope,
            }
        })
        .collect())
}
