//! One training session, the same for every task: the run directory, seeding, the adapters (or
//! GoRA's measured ones), the loaders, burn-train's fit, the files and `metrics.json`. A task
//! says only what differs, by implementing [`Workload`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::{Module, ParamId};
use burn::tensor::{Device, Tensor};
use burn::train::{Interrupter, LearnerModel, SupervisedTraining};
use gralora::{AdaptOptions, AdapterHost, attach_adapters};

use super::checkpoint::ResumePoint;
use super::config::{Method, TrainConfig};
use super::fit::{Fit, fit};
use super::guard::LossGuard;
use super::loader::{Batching, SeededLoader, seed_device};
use super::renderer::Report;
use super::run_dir::{EvalMetrics, RunDir, RunMetrics, peak_rss_mib, write_json};
use crate::data::Items;
use crate::error::{Result, TrainError};

/// The batches a workload's loaders hand out.
pub type BatchOf<W> = <<W as Workload>::Batching as Batching>::Batch;
/// The examples a workload trains on.
pub type ItemOf<W> = <<W as Workload>::Batching as Batching>::Item;

/// What a task adds to a [`Session`]: its model, its batches, its loss, its evaluation and the
/// files it keeps besides the adapter.
pub trait Workload {
    /// The model adapters attach to (a classifier over an encoder, a decoder).
    type Model: AdapterHost + Module + Clone;
    /// How examples become batches.
    type Batching: Batching;
    /// What burn-train trains: the model with its loss.
    type Learner: LearnerModel;

    /// The linear layers adapted when the configuration names none.
    fn default_targets(&self) -> &'static [&'static str];
    /// The task's name, the training split's and the evaluation split's, for `metrics.json`.
    fn names(&self) -> RunNames;
    /// The untrained model's evaluation, for tasks that report one (the session keeps it in the
    /// run directory as `baseline.json`, so a resumed run does not score it again).
    fn baseline(&mut self, session: &Session<'_>) -> Result<Option<EvalMetrics>>;
    /// The model to adapt, from the base made trainable for `method` (see [`trainable`]); the
    /// devices' generators are seeded, so anything initialised here is reproducible.
    fn model(&mut self, method: Method) -> Result<Self::Model>;
    /// How this model's examples are batched on `device`.
    fn batching(&self, model: &Self::Model, device: &Device) -> Self::Batching;
    /// The training examples (taken once), in memory or spilled, with their token counts
    /// as `Self::Batching` counts them.
    fn train_items(&mut self) -> Items<ItemOf<Self>>;
    /// The validation loader burn-train runs at each epoch's end, on `device` (the inner one).
    fn valid_loader(
        &self,
        batching: Self::Batching,
        device: &Device,
    ) -> SeededLoader<Self::Batching>;
    /// The training loss of one batch (GoRA's gradient estimate uses it).
    fn loss(&self, model: &Self::Model, batch: BatchOf<Self>) -> Tensor<1>;
    /// The model as burn-train trains it: its loss multiplied by `loss_scale`, watched by `guard`.
    fn learner(&self, model: Self::Model, loss_scale: f64, guard: LossGuard) -> Self::Learner;
    /// burn-train's training over these loaders, with the task's metrics.
    fn training(
        &self,
        dir: PathBuf,
        train: Arc<SeededLoader<Self::Batching>>,
        valid: Arc<SeededLoader<Self::Batching>>,
    ) -> SupervisedTraining<Self::Learner>;
    /// The trained model out of burn-train's result.
    fn trained(&self, learner: Self::Learner) -> Self::Model;
    /// The final evaluation of the trained model.
    fn evaluate(&mut self, model: &Self::Model, session: &Session<'_>) -> Result<EvalMetrics>;
    /// Write the trained weights into `out`: the adapter in PEFT's format, or (full fine-tuning)
    /// a model snapshot, and whatever else the task keeps (a classification head).
    fn save(&mut self, model: Self::Model, session: &Session<'_>) -> Result<()>;
}

/// How `metrics.json` names a run's task and splits.
pub struct RunNames {
    /// The task.
    pub task: String,
    /// The training split.
    pub train_split: String,
    /// The evaluation split.
    pub eval_split: String,
}

/// What a session needs besides its workload.
pub struct Session<'a> {
    /// Every setting.
    pub config: &'a TrainConfig,
    /// The output directory.
    pub out: &'a Path,
    /// Its files.
    pub dir: RunDir,
    /// Continue from the newest checkpoint in `out`.
    pub resume: bool,
    /// When the command started (for `wall_s`).
    pub started: Instant,
    /// The (non-autodiff) device.
    pub device: &'a Device,
    /// The asset cache.
    pub home: &'a Path,
    /// The caller holds the directory's lock ([`RunDir::lock`]) already.
    pub locked: bool,
}

/// The model in training mode: every weight trainable for full fine-tuning, all frozen
/// otherwise (adapters attached afterwards are then the only trainable weights).
pub fn trainable<M: Module>(model: M, method: Method) -> M {
    let model = model.train();
    match method {
        Method::Full => model.set_require_grad(true),
        _ => model.no_grad(),
    }
}

/// Number of parameters of `module` that receive gradients.
pub fn trainable_params<M: Module>(module: &M) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0 += param.shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    module.visit(&mut c);
    c.0
}

/// The parameter ids of every adapter's B matrix (LoRA+ gives them their own learning rate).
pub fn b_param_ids<M: AdapterHost>(model: &mut M) -> Vec<ParamId> {
    let mut ids = Vec::new();
    model.for_each_linear_mut(&mut |_, layer| {
        if let Some(adapter) = &layer.adapter {
            ids.extend(adapter.b_param_ids());
        }
    });
    ids
}

impl Session<'_> {
    /// Train `workload` as the configuration says; the metrics (also written to `metrics.json`)
    /// and the trained model.
    pub fn run<W: Workload>(
        &self,
        mut workload: W,
        report: Report<'_>,
    ) -> Result<(RunMetrics, W::Model)> {
        let config = self.config;
        let baseline_path = self.dir.baseline();
        let saved: Option<EvalMetrics> = self
            .resume
            .then(|| std::fs::read_to_string(&baseline_path).ok())
            .flatten()
            .and_then(|t| serde_json::from_str(&t).ok());
        let baseline = match saved {
            Some(m) => Some(m),
            None => {
                let m = workload.baseline(self)?;
                if let Some(m) = &m {
                    report(&format!(
                        "untrained accuracy {:.4} on {} examples",
                        m.accuracy, m.examples
                    ));
                }
                m
            }
        };

        // The model: seeded, then adapters (or GoRA's), on the autodiff device.
        let ad = self.device.clone().autodiff();
        seed_device(self.device, config.seed);
        seed_device(&ad, config.seed);
        let mut model = workload.model(config.method)?;
        let targets = config.targets_or(workload.default_targets());
        let mut b_ids = Vec::new();
        if let Some(adapter) = config.adapter()? {
            let r = attach_adapters(&mut model, &AdaptOptions::new(adapter, targets.clone()))?;
            report(format!("{r}").lines().last().unwrap_or_default());
            b_ids = b_param_ids(&mut model);
        }
        let batching = workload.batching(&model, &ad);
        let loader = SeededLoader::over(
            workload.train_items(),
            config.batch_size,
            Some(config.seed),
            batching.clone(),
            &ad,
        );
        let batches_per_epoch = loader.num_batches();
        let resumed_from = self.dir.resume_point(self.resume, batches_per_epoch);
        let done = resumed_from.map_or(0, ResumePoint::epochs_done);
        let loader = loader.resume_from(resumed_from);
        let mut gora = None;
        if config.method.is_gora() {
            // Estimation batches: the first of an epoch under a seed of their own.
            let batches: Vec<Vec<usize>> = loader
                .reseeded(config.seed ^ 0x6f72)
                .batches(0)
                .into_iter()
                .take(config.gora.steps)
                .collect();
            let batches: Vec<Vec<ItemOf<W>>> = batches
                .iter()
                .map(|b| loader.items().fetch(b))
                .collect::<crate::data::SpillResult<_>>()?;
            let loss = |m: &W::Model, b: usize| {
                let refs: Vec<&ItemOf<W>> = batches[b % batches.len()].iter().collect();
                seed_device(&ad, config.seed.wrapping_add(b as u64));
                workload.loss(m, batching.batch(&refs, &ad))
            };
            let r = super::gora::attach(
                &mut model,
                targets,
                &config.gora_config(),
                config.gora_k(),
                config.gora.steps,
                config.seed,
                &loss,
            )?;
            report(&r.to_string());
            b_ids = b_param_ids(&mut model);
            gora = Some(r);
        }

        // The settings hold (targets matched, ranks allocated): only now does the run directory
        // exist, so a refused run leaves nothing behind.
        std::fs::create_dir_all(self.out).map_err(|e| TrainError::io(self.out, e))?;
        // One process trains a directory at a time (the lock goes with the process, even on
        // SIGKILL). A resumed run took it before loading anything.
        let _lock = if self.locked {
            None
        } else {
            Some(self.dir.lock()?)
        };
        if !self.resume {
            write_json(&self.dir.config(), config)?;
        }
        if let Some(m) = &baseline {
            write_json(&baseline_path, m)?;
        }

        let interrupter = Interrupter::new();
        let guard = LossGuard::new(interrupter.clone())
            .reading_for(self.device)
            .starting_at(resumed_from.map_or(0, |p| p.batches_done(batches_per_epoch)));
        let learner = workload.learner(model, 1.0 / config.grad_accum as f64, guard.clone());
        let trainable = trainable_params(&learner);
        report(&format!("trainable parameters: {trainable}"));
        let train_examples = loader.items().len();
        let tokens = loader.token_count();
        let valid = workload.valid_loader(batching, self.device);
        let training = workload.training(self.dir.run(), Arc::new(loader), Arc::new(valid));
        let fitted = fit(
            training,
            learner,
            Fit {
                config,
                device: ad.clone(),
                batches_per_epoch,
                b_ids,
                interrupter,
                guard: &guard,
                resumed_from,
                dir: &self.dir,
                tokens,
            },
            report,
        )?;
        let epochs = self
            .dir
            .last_checkpoint()
            .unwrap_or(config.epochs)
            .max(done);
        let (train_s, tokens_per_s) = (fitted.train_s, fitted.tokens_per_s());
        let peak_rss_mb_by_epoch = fitted.peak_rss_mb_by_epoch.clone();
        let trained = workload.trained(fitted.result.model);

        // Final evaluation on the inner device, then the files; metrics.json last.
        let eval = workload.evaluate(&trained, self)?;
        workload.save(trained.clone(), self)?;
        let RunNames {
            task,
            train_split,
            eval_split,
        } = workload.names();
        let metrics = RunMetrics {
            task,
            method: config.method,
            model: config.model.clone(),
            device: format!("{:?}", self.device),
            train_split,
            train_examples,
            eval_split,
            eval,
            epochs,
            trainable_params: trainable,
            wall_s: self.started.elapsed().as_secs_f64(),
            train_s,
            tokens_per_s,
            peak_rss_mb: peak_rss_mib(),
            peak_rss_mb_by_epoch,
            gora,
            folds: None,
            accuracy_std: None,
            baseline_accuracy: baseline.map(|m| m.accuracy),
            baseline_loss: baseline.map(|m| m.loss),
            resumed_from_epoch: resumed_from.map(ResumePoint::epochs_done),
            resumed_from_batch: resumed_from.map(|p| p.batches_done(batches_per_epoch)),
            seed: config.seed,
        };
        // A decoder's workloads adapt the decoder's linears by default.
        let decoder = workload.default_targets() == super::config::DECODER_TARGETS;
        let card = super::card::model_card(
            super::card::CardKind::Trained,
            &config.model,
            Some(config),
            Some(&metrics),
            decoder,
        );
        super::card::write_card(&self.dir.0, &card)?;
        write_json(&self.dir.metrics(), &metrics)?;
        Ok((metrics, trained))
    }
}
