//! The part of every run that is the same: the optimiser, the schedule, checkpoints, early
//! stopping, progress, resume, and the outcome.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::module::{ParamGroup, ParamId};
use burn::optim::AdamWConfig;
use burn::optim::lr_scheduler::LrSchedulerConfig;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::optim::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrSchedulerConfig;
use burn::optim::lr_scheduler::sequential::SequentialLrSchedulerConfig;
use burn::tensor::Device;
use burn::train::metric::LearningRateMetric;
use burn::train::metric::LossMetric;
use burn::train::metric::store::{Aggregate, Direction, Split};
use burn::train::{
    Interrupter, Learner, MetricEarlyStoppingStrategy, StoppingCondition, SupervisedTraining,
    TrainingStrategy,
};

use super::checkpoint::{ResumePoint, StepStrategy};
use super::config::TrainConfig;
use super::guard::LossGuard;
use super::metric::TokensPerSecond;
use super::renderer::LineRenderer;
use super::renderer::Report;
use super::run_dir::RunDir;
use crate::error::{Result, TrainError};

/// Linear warmup over `warmup` steps to `lr`, then cosine decay to 0 at `total`.
pub fn schedule(lr: f64, warmup: usize, total: usize) -> LrSchedulerConfig {
    let cosine = CosineAnnealingLrSchedulerConfig::new(lr, (total - warmup).max(1));
    if warmup == 0 {
        return cosine.into();
    }
    SequentialLrSchedulerConfig::new(
        vec![
            LinearLrSchedulerConfig::new(lr / warmup as f64, lr, warmup).into(),
            cosine.into(),
        ],
        vec![warmup],
    )
    .into()
}

/// What [`fit`] needs besides the model and burn-train's loaders and metrics.
pub struct Fit<'a> {
    pub config: &'a TrainConfig,
    /// The autodiff device.
    pub device: Device,
    pub batches_per_epoch: usize,
    pub b_ids: Vec<ParamId>,
    pub interrupter: Interrupter,
    pub guard: &'a LossGuard,
    pub resumed_from: Option<ResumePoint>,
    pub dir: &'a RunDir,
    /// The training loader's token count.
    pub tokens: Arc<AtomicU64>,
}

/// What [`fit`] gives back.
pub struct Fitted<M> {
    pub result: burn::train::LearningResult<M>,
    /// Training wall time of this process, seconds.
    pub train_s: f64,
    /// Real tokens trained on by this process.
    pub tokens: u64,
    /// The process's peak resident memory at the end of each epoch trained, MiB.
    pub peak_rss_mb_by_epoch: Vec<f64>,
}

impl<M> Fitted<M> {
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.train_s.max(1e-9)
    }
}

/// The part of every run that is the same: AdamW, warmup + cosine over all optimiser steps (LoRA+'s
/// B group at lr × ratio), checkpoints at epoch ends and every `checkpoint_every` optimiser steps,
/// early stopping, accumulation, progress lines with live tokens/s, resume (at an epoch's end or
/// mid-epoch), and the outcome as an error or the trained model with the training wall time.
pub fn fit<M: burn::train::LearnerModel>(
    mut training: SupervisedTraining<M>,
    model: M,
    f: Fit<'_>,
    report: Report<'_>,
) -> Result<Fitted<M>> {
    let config = f.config;
    let total = f.batches_per_epoch.div_ceil(config.grad_accum) * config.epochs;
    let warmup = ((config.warmup * total as f64).round() as usize).min(total.saturating_sub(1));
    let mut lr = ModuleLrSchedulerConfig::new(schedule(config.lr, warmup, total));
    if config.b_lr_ratio != 1.0 && !f.b_ids.is_empty() {
        lr = lr.with_group(
            ParamGroup::from_ids(f.b_ids),
            schedule(config.lr * config.b_lr_ratio, warmup, total),
        );
    }
    let lr = lr.init().map_err(TrainError::Usage)?;
    let optim = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .init();
    let epoch_peaks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let step_resume = match f.resumed_from {
        Some(ResumePoint::Step { batches, .. }) => Some(batches),
        _ => None,
    };
    training = training
        .metric_train_numeric(LearningRateMetric::new())
        .metric_train_numeric(TokensPerSecond::new(f.tokens.clone()))
        .with_default_checkpointers()
        .with_interrupter(f.interrupter)
        .num_epochs(config.epochs)
        .with_application_logger(None)
        .with_training_strategy(TrainingStrategy::Custom(Arc::new(
            StepStrategy::new(
                f.device,
                config.checkpoint_every,
                config.grad_accum,
                f.batches_per_epoch,
                f.dir.steps(),
                step_resume,
            )
            .with_guard(f.guard.clone())
            .with_epoch_peaks(epoch_peaks.clone()),
        )));
    if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
        training = training.renderer(Box::new(LineRenderer::new(Duration::from_secs(15))));
    }
    if let Some(n) = config.patience {
        training = training.early_stopping(MetricEarlyStoppingStrategy::new(
            &LossMetric::new(),
            Aggregate::Mean,
            Direction::Lowest,
            Split::Valid,
            StoppingCondition::NoImprovementSince { n_epochs: n },
        ));
    }
    match f.resumed_from {
        Some(ResumePoint::Epoch(epoch)) => {
            report(&format!(
                "resuming after epoch {epoch} from {}",
                f.dir.run().display()
            ));
            training = training.checkpoint(epoch);
        }
        Some(ResumePoint::Step {
            batches,
            epoch,
            batch,
        }) => report(&format!(
            "resuming in epoch {epoch} after its batch {batch} ({batches} batches in all) from {}",
            f.dir.steps().display()
        )),
        None => {}
    }
    let tokens_before = f.tokens.load(Ordering::Relaxed);
    let start = Instant::now();
    let result = training.launch(Learner::new(model, optim, lr));
    let train_s = start.elapsed().as_secs_f64();
    if let Some((step, value)) = f.guard.non_finite() {
        return Err(TrainError::NonFinite {
            step,
            value,
            lr: config.lr,
        });
    }
    if let Some(e) = &result.error {
        let mut msg = e.to_string();
        if msg.contains("Checkpoint error") {
            // The newest complete checkpoint is untouched (a save writes a temporary file).
            msg.push_str(&format!(
                "; fix the cause (disk space, file-size limit, permissions) and continue from the newest complete checkpoint with `gralora train --out {} --resume`",
                f.dir.0.display()
            ));
        }
        return Err(TrainError::Training(msg));
    }
    if result.interrupted.is_none() {
        // Finished: the mid-epoch checkpoints are superseded by the epoch-end ones.
        let _ = std::fs::remove_dir_all(f.dir.steps());
    }
    Ok(Fitted {
        result,
        train_s,
        tokens: f.tokens.load(Ordering::Relaxed) - tokens_before,
        peak_rss_mb_by_epoch: epoch_peaks.lock().map(|v| v.clone()).unwrap_or_default(),
    })
}
