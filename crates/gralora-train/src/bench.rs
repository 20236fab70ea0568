//! `gralora bench step`: whole training steps (forward, backward, AdamW) of several methods
//! timed round-robin in one run, on fixed random tokens.

use std::time::Instant;

use burn::optim::AdamWConfig;
use burn::tensor::Device;
use gralora::{AdaptOptions, attach_adapters};
use gralora_models::{Bert, BertClassifier};
use serde::Serialize;

use crate::error::Result;
use crate::tasks::classification::{ClassBatch, Item, TextClassifier};
use crate::trainer::{
    ENCODER_TARGETS, LossGuard, Report, TrainConfig, peak_rss_mib, seed_device, trainable,
    trainable_params,
};

/// Time whole training steps (forward, backward, AdamW) on fixed random tokens.
#[derive(Debug, Clone, Serialize)]
pub struct StepBench {
    /// Median milliseconds per step.
    pub ms_per_step: f64,
    /// Tokens per second at the median.
    pub tokens_per_s: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mb: Option<f64>,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Every timed step, ms.
    pub steps_ms: Vec<f64>,
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
}

/// Time whole training steps of several methods in one run: each method gets its model,
/// optimiser and `warmup` untimed steps first, then the timed steps go round-robin (one step
/// of each method per round), so a slow spell of a shared machine hits every method alike and
/// the ratios between them stay meaningful. One result per config, in order; `peak_rss_mb` is
/// the process's peak after that method's warm-up, or its first step without one (all models
/// stay resident).
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
    } = plan;
    use burn::optim::GradientsParams;
    use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
    use rand::{Rng, SeedableRng};
    struct Runner {
        model: Option<TextClassifier>,
        optim: burn::optim::ModuleOptimizer,
        lr: f64,
        trainable: usize,
        peak: Option<f64>,
        times: Vec<f64>,
    }
    impl Runner {
        fn step(&mut self, refs: &[&Item], ad: &Device) -> Result<f64> {
            let b = ClassBatch::new(refs, 0, ad);
            let t = Instant::now();
            let model = self
                .model
                .take()
                .expect("a runner holds its model between steps");
            let out = model.forward_classification(b);
            let grads = GradientsParams::from_grads(out.loss.backward(), &model);
            let model = self
                .optim
                .step(ModuleLearningRate::from(self.lr), model, grads);
            // Wait for the device to finish the step.
            gralora::io::read_f32(model.model.classifier.weight.val())?;
            self.model = Some(model);
            Ok(t.elapsed().as_secs_f64() * 1e3)
        }
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
    let mut runners = Vec::new();
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
        let model = TextClassifier::new(clf, 1.0, LossGuard::default());
        let trainable = trainable_params(&model);
        let optim = AdamWConfig::new()
            .with_weight_decay(config.weight_decay as f32)
            .init();
        let mut runner = Runner {
            model: Some(model),
            optim,
            lr: config.lr,
            trainable,
            peak: None,
            times: Vec::new(),
        };
        for i in 0..warmup {
            // On a GPU the first steps compile and tune kernels: say how long they take.
            let ms = runner.step(&refs, &ad)?;
            report(&format!(
                "{}: warm-up step {}/{warmup}: {ms:.0} ms",
                config.method.name(),
                i + 1
            ));
        }
        runner.peak = peak_rss_mib();
        runners.push(runner);
    }
    for round in 0..iters {
        for runner in &mut runners {
            let ms = runner.step(&refs, &ad)?;
            runner.times.push(ms);
            if warmup == 0 && round == 0 {
                // No warm-up: the peak after the method's first step.
                runner.peak = peak_rss_mib();
            }
        }
    }
    Ok(runners
        .into_iter()
        .map(|r| {
            let mut sorted = r.times.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
            StepBench {
                ms_per_step: median,
                tokens_per_s: (batch * seq_len) as f64 / (median / 1e3),
                peak_rss_mb: r.peak,
                trainable_params: r.trainable,
                steps_ms: r.times,
            }
        })
        .collect())
}
