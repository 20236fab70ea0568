//! Fine-tuning an encoder classifier with burn-train, evaluation, and the files a run leaves.
//!
//! A run directory (`--out`) holds, when complete:
//! - `adapter_config.json`, `adapter_model.safetensors` — the adapter in PEFT's format (LoRA and
//!   GraLoRA), or `model/` — a Hugging Face snapshot (full fine-tuning);
//! - `classifier.safetensors` — the classification head (`classifier.weight` `[classes, hidden]`,
//!   `classifier.bias`), which PEFT would keep in `modules_to_save`;
//! - `train_config.json` — every setting (written first; `--resume` reads it back);
//! - `metrics.json` — written last: a directory without it is not a finished run;
//! - `run/` — burn-train's logs, end-of-epoch checkpoints (`checkpoint/`) and mid-epoch ones (`steps/`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::module::{Module, ParamGroup, ParamId};
use burn::optim::AdamWConfig;
use burn::optim::lr_scheduler::LrSchedulerConfig;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::optim::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrSchedulerConfig;
use burn::optim::lr_scheduler::sequential::SequentialLrSchedulerConfig;
use burn::tensor::Device;
use burn::train::metric::store::{Aggregate, Direction, Split};
use burn::train::metric::{AccuracyMetric, LearningRateMetric, LossMetric};
use burn::train::{
    Interrupter, Learner, MetricEarlyStoppingStrategy, StoppingCondition, SupervisedTraining,
    TrainingStrategy,
};
use gralora::{
    AdaptOptions, Adapter, AdapterConfig, AdapterHost, GraLoraConfig, LoraConfig, Targets,
    attach_adapters,
};
use gralora_models::weights::{SafetensorsFile, TensorSource};
use gralora_models::{Bert, BertClassifier, LoadedModel, ModelSource, Pooling, TextTokenizer};
use serde::{Deserialize, Serialize};

use crate::classify::{ClassBatch, ClassBatching, EpochLoader, Item, LossGuard, TextClassifier};
use crate::data::{Example, Task, seeded_subset};
use crate::error::{Result, TrainError};
use crate::renderer::LineRenderer;
use crate::steps::{Batching, ResumePoint, StepStrategy, TokensPerSecond};

/// How the model is adapted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Plain LoRA.
    Lora,
    /// GraLoRA (k×k block adapters, optional hybrid LoRA pair).
    Gralora,
    /// Full fine-tuning: every weight trains.
    Full,
    /// GoRA: gradient-driven per-layer ranks and initialisation, LoRA-shaped.
    Gora,
    /// GoRA on GraLoRA: ranks in multiples of k, every sub-adapter initialised on its block.
    #[serde(rename = "gora-gralora")]
    GoraGralora,
}

impl Method {
    /// Whether GoRA measures gradients and allocates ranks first.
    pub fn is_gora(self) -> bool {
        matches!(self, Self::Gora | Self::GoraGralora)
    }
}

/// GoRA's settings besides `r_ref` (= `--rank`) and alpha.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoraSettings {
    /// Batches the gradients are averaged over.
    pub steps: usize,
    /// Smallest rank.
    pub r_min: usize,
    /// Largest rank.
    pub r_max: usize,
    /// Feature function of the budget.
    pub feature: gralora::gora::Feature,
    /// Importance measure.
    pub importance: gralora::gora::Importance,
    /// γ of the initial step.
    pub gamma: f64,
}

impl Default for GoraSettings {
    fn default() -> Self {
        Self {
            steps: 8,
            r_min: 4,
            r_max: 32,
            feature: gralora::gora::Feature::Sqrt,
            importance: gralora::gora::Importance::MeanAbs,
            gamma: 5e-2,
        }
    }
}

impl Method {
    /// The name on the command line and in files (`gora-gralora`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Lora => "lora",
            Self::Gralora => "gralora",
            Self::Full => "full",
            Self::Gora => "gora",
            Self::GoraGralora => "gora-gralora",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "lora" => Ok(Self::Lora),
            "gralora" => Ok(Self::Gralora),
            "full" => Ok(Self::Full),
            "gora" => Ok(Self::Gora),
            "gora-gralora" => Ok(Self::GoraGralora),
            other => Err(TrainError::Usage(format!(
                "unknown method `{other}`; use lora, gralora, full, gora or gora-gralora"
            ))),
        }
    }
}

/// Every setting of a training run (saved as `train_config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Model argument (alias, snapshot directory).
    pub model: String,
    /// Task name.
    pub task: String,
    /// Adaptation method.
    pub method: Method,
    /// Adapter rank r.
    pub rank: usize,
    /// GraLoRA's k.
    pub k: usize,
    /// Hybrid GraLoRA's plain LoRA rank.
    pub hybrid_r: usize,
    /// alpha (scale = alpha / r; GraLoRA: alpha / (r + hybrid_r)).
    pub alpha: f64,
    /// Dropout on the adapter input.
    pub dropout: f64,
    /// Target module names (PEFT's `target_modules`); empty: every linear layer of the blocks
    /// ([`ENCODER_TARGETS`] or [`DECODER_TARGETS`]).
    pub targets: Vec<String>,
    /// Epochs.
    pub epochs: usize,
    /// Peak learning rate (AdamW, linear warmup then cosine decay to 0).
    pub lr: f64,
    /// LoRA+: learning rate of the B matrices = lr × this.
    pub b_lr_ratio: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Fraction of optimiser steps spent warming up.
    pub warmup: f64,
    /// Examples per batch.
    pub batch_size: usize,
    /// Batches whose gradients are summed per optimiser step.
    pub grad_accum: usize,
    /// Longest tokenised input (longer ones are truncated).
    pub max_len: usize,
    /// Seed of initialisation, shuffling and dropout.
    pub seed: u64,
    /// Use at most this many training examples (a seeded subset).
    pub max_train: Option<usize>,
    /// Evaluate on at most this many examples (the first ones).
    pub max_eval: Option<usize>,
    /// Stop when the validation loss has not improved for this many epochs.
    pub patience: Option<usize>,
    /// Dropout before the classification head.
    pub head_dropout: f64,
    /// Pooling of the encoder's states for the head: `mean` or `cls`.
    pub pooling: String,
    /// Folds of the cross-validation of tasks that only have a dev set (mrpc, rte).
    #[serde(default = "default_folds")]
    pub folds: usize,
    /// The fold this run holds out (set by the cross-validation driver).
    #[serde(default)]
    pub fold: Option<usize>,
    /// GoRA's settings (methods `gora`, `gora-gralora`).
    #[serde(default)]
    pub gora: GoraSettings,
    /// Write a mid-epoch checkpoint every this many optimiser steps (0: only at epoch ends).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
}

/// Settings whose defaults depend on the method ([`TrainConfig::set_method`]); `None`: the default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MethodOptions {
    /// alpha.
    pub alpha: Option<f64>,
    /// Peak learning rate.
    pub lr: Option<f64>,
    /// LoRA+ ratio of the B matrices' learning rate.
    pub b_lr_ratio: Option<f64>,
}

fn default_folds() -> usize {
    5
}

fn default_checkpoint_every() -> usize {
    200
}

/// Default targets for BERT-family encoders: all six linear layers of every block.
pub const ENCODER_TARGETS: &[&str] = &[
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];
/// Default targets for Llama-family decoders: all seven linear layers of every block.
pub const DECODER_TARGETS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl TrainConfig {
    /// The configured targets, or `default` when none were given.
    pub(crate) fn targets_or(&self, default: &[&str]) -> Targets {
        if self.targets.is_empty() {
            Targets::names(default.iter().map(|s| s.to_string()))
        } else {
            Targets::names(self.targets.clone())
        }
    }

    /// Defaults for `method` on `task` (PEFT's r = 32, alpha = 64, k = 2).
    pub fn new(model: &str, task: &str, method: Method) -> Self {
        Self {
            model: model.into(),
            task: task.into(),
            method,
            rank: 32,
            k: 2,
            hybrid_r: 0,
            alpha: 64.0,
            dropout: 0.0,
            targets: [
                "query",
                "key",
                "value",
                "attention.output.dense",
                "intermediate.dense",
                "output.dense",
            ]
            .map(String::from)
            .to_vec(),
            epochs: 3,
            lr: if method == Method::Full { 5e-5 } else { 1e-3 },
            b_lr_ratio: 1.0,
            weight_decay: 0.01,
            warmup: 0.06,
            batch_size: 32,
            grad_accum: 1,
            max_len: 128,
            seed: 42,
            max_train: None,
            max_eval: None,
            patience: None,
            head_dropout: 0.1,
            pooling: "mean".into(),
            folds: 5,
            fold: None,
            gora: GoraSettings::default(),
            checkpoint_every: default_checkpoint_every(),
        }
    }

    /// Set the method and rank, with the defaults that depend on them where `options` leaves a
    /// value out: alpha 2·r (GoRA: 16, its scale being alpha/√r), learning rate 1e-3 (full
    /// fine-tuning: 5e-5), LoRA+ ratio 1 (GoRA: 16).
    pub fn set_method(&mut self, method: Method, rank: usize, options: MethodOptions) {
        let gora = method.is_gora();
        self.method = method;
        self.rank = rank;
        self.alpha = options
            .alpha
            .unwrap_or(if gora { 16.0 } else { 2.0 * rank as f64 });
        self.lr = options
            .lr
            .unwrap_or(if method == Method::Full { 5e-5 } else { 1e-3 });
        self.b_lr_ratio = options.b_lr_ratio.unwrap_or(if gora { 16.0 } else { 1.0 });
    }

    /// The task.
    pub fn task(&self) -> Result<Task> {
        self.task.parse()
    }

    fn pooling(&self) -> Result<Pooling> {
        match self.pooling.as_str() {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            other => Err(TrainError::Usage(format!(
                "unknown pooling `{other}`; use mean or cls"
            ))),
        }
    }

    /// The adapter configuration (`None` for full fine-tuning).
    pub fn adapter(&self) -> Result<Option<AdapterConfig>> {
        let config: AdapterConfig = match self.method {
            Method::Full => return Ok(None),
            Method::Gora | Method::GoraGralora => {
                self.gora_config().validate(self.gora_k())?;
                return Ok(None);
            }
            Method::Lora => LoraConfig::new(self.rank)
                .with_alpha(self.alpha)
                .with_dropout(self.dropout)
                .into(),
            Method::Gralora => GraLoraConfig::new(self.rank, self.k)
                .with_alpha(self.alpha)
                .with_dropout(self.dropout)
                .with_hybrid_r(self.hybrid_r)
                .into(),
        };
        config.validate()?;
        Ok(Some(config))
    }

    /// GoRA's configuration for this run (`r_ref` = rank).
    pub fn gora_config(&self) -> gralora::gora::GoraConfig {
        gralora::gora::GoraConfig {
            r_ref: self.rank,
            r_min: self.gora.r_min,
            r_max: self.gora.r_max,
            feature: self.gora.feature,
            importance: self.gora.importance,
            alpha: self.alpha,
            gamma: self.gora.gamma,
        }
    }

    /// k of GoRA's ranks (1 for the LoRA form).
    pub fn gora_k(&self) -> usize {
        if self.method == Method::GoraGralora {
            self.k
        } else {
            1
        }
    }

    /// Check everything that can be checked before loading anything.
    pub fn validate(&self) -> Result<()> {
        let name = self.task.to_ascii_lowercase();
        if name == "gsm8k" {
            return Err(TrainError::Usage(
                "gsm8k has no training split offline; score a model with `gralora eval --model smollm2 --task gsm8k`".into(),
            ));
        }
        if self.task().is_err() && crate::lm::mc_tasks(&name).is_err() {
            return Err(TrainError::Usage(format!(
                "unknown task `{}`; encoder tasks: {}; decoder tasks: {}",
                self.task,
                crate::data::TASKS.join(", "),
                crate::lm::MC_TASKS.join(", ")
            )));
        }
        self.pooling()?;
        self.adapter()?;
        let usage = |m: String| Err(TrainError::Usage(m));
        if self.epochs == 0 {
            return usage("--epochs must be at least 1".into());
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return usage("--batch-size and --grad-accum must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr * self.b_lr_ratio.max(1.0) <= 1.0) {
            return usage(format!(
                "--lr {} (× --b-lr-ratio {}) must be in (0, 1]",
                self.lr, self.b_lr_ratio
            ));
        }
        if self.b_lr_ratio <= 0.0 {
            return usage("--b-lr-ratio must be positive".into());
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return usage(format!("--warmup {} must be in [0, 1)", self.warmup));
        }
        if self.folds < 2 || self.fold.is_some_and(|f| f >= self.folds) {
            return usage(format!("--folds {} must be at least 2", self.folds));
        }
        if self.max_train == Some(0) {
            return usage("--max-train 0 leaves nothing to train on".into());
        }
        if self.max_len < 8 {
            return usage(format!(
                "--max-len {} is too short (at least 8)",
                self.max_len
            ));
        }
        Ok(())
    }
}

/// Metric values of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Examples evaluated.
    pub examples: usize,
    /// Accuracy.
    pub accuracy: f64,
    /// F1 of class 1 (binary tasks only).
    pub f1: Option<f64>,
    /// Mean cross-entropy.
    pub loss: f64,
}

/// What `metrics.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMetrics {
    /// Task name.
    pub task: String,
    /// Method.
    pub method: Method,
    /// Model argument.
    pub model: String,
    /// Device it ran on.
    pub device: String,
    /// Training split name and size.
    pub train_split: String,
    /// Training examples.
    pub train_examples: usize,
    /// Evaluation split name.
    pub eval_split: String,
    /// Final evaluation.
    pub eval: EvalMetrics,
    /// Epochs completed (early stopping may end sooner).
    pub epochs: usize,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Wall time of the whole command, seconds.
    pub wall_s: f64,
    /// Training wall time of this process (excluding loading and final evaluation), seconds.
    pub train_s: f64,
    /// Training tokens processed per second by this process (real tokens, padding excluded); 0 when
    /// it trained nothing (a resume after the last epoch's checkpoint).
    pub tokens_per_s: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mb: Option<f64>,
    /// GoRA's allocation and the loss before/after its initialisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gora: Option<crate::gora::GoraReport>,
    /// Cross-validated tasks: each fold's evaluation (`eval` holds their means).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folds: Option<Vec<EvalMetrics>>,
    /// Cross-validated tasks: standard deviation of the folds' accuracies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_std: Option<f64>,
    /// Accuracy of the untrained model on the same evaluation examples (decoder tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_accuracy: Option<f64>,
    /// The epochs a resumed run had completed when it was resumed.
    pub resumed_from_epoch: Option<usize>,
    /// The training batches a resumed run had done when it was resumed (mid-epoch or at an
    /// epoch's end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_batch: Option<usize>,
    /// The seed.
    pub seed: u64,
}

/// Peak resident memory of this process in MiB (Linux), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Tokenise examples (truncated to `max_len`).
pub fn tokenize(
    tokenizer: &mut TextTokenizer,
    examples: &[Example],
    max_len: usize,
) -> Result<Vec<Item>> {
    tokenizer.set_max_len(Some(max_len))?;
    examples
        .iter()
        .map(|e| {
            let encoded = match &e.b {
                Some(b) => tokenizer.encode_pair(&e.a, b)?,
                None => tokenizer.encode(&e.a, true)?,
            };
            Ok(Item {
                encoded,
                label: e.label,
            })
        })
        .collect()
}

/// The token id used for padding (`[PAD]`, else 0).
pub fn pad_id(tokenizer: &TextTokenizer) -> u32 {
    tokenizer
        .token_to_id("[PAD]")
        .or_else(|| tokenizer.token_to_id("<pad>"))
        .unwrap_or(0)
}

/// Accuracy, F1 (binary) and loss of `model` on `items`, in batches sorted by length.
pub fn evaluate(
    model: &BertClassifier,
    items: &[Item],
    pad: u32,
    batch_size: usize,
) -> EvalMetrics {
    let device = model.classifier.weight.val().device();
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].encoded.ids.len());
    let (mut correct, mut tp, mut fp, mut fneg, mut loss_sum) =
        (0usize, 0usize, 0usize, 0usize, 0f64);
    let mut classes = 0;
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<&Item> = chunk.iter().map(|&i| &items[i]).collect();
        let b = ClassBatch::new(&batch, pad, &device);
        let logits = model.forward(&b.input);
        let [n, c] = logits.dims();
        classes = c;
        let logp = burn::tensor::activation::log_softmax(logits, 1);
        let values: Vec<f32> = logp
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap_or_default();
        for (row, item) in batch.iter().enumerate().take(n) {
            let r = &values[row * c..(row + 1) * c];
            let pred = (0..c).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap_or(0);
            loss_sum -= r[item.label.min(c - 1)] as f64;
            correct += usize::from(pred == item.label);
            match (pred == 1, item.label == 1) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fneg += 1,
                _ => {}
            }
        }
    }
    let n = items.len().max(1) as f64;
    let f1 = (classes == 2).then(|| {
        let d = (2 * tp + fp + fneg) as f64;
        if d == 0.0 { 0.0 } else { 2.0 * tp as f64 / d }
    });
    EvalMetrics {
        examples: items.len(),
        accuracy: correct as f64 / n,
        f1,
        loss: loss_sum / n,
    }
}

/// The parameter ids of every adapter's B matrix (LoRA+ gives them their own learning rate).
pub fn b_param_ids<M: AdapterHost>(model: &mut M) -> Vec<ParamId> {
    let mut ids = Vec::new();
    model.for_each_linear_mut(&mut |_, layer| match &layer.adapter {
        Some(Adapter::Lora(a)) => ids.push(a.b.id),
        Some(Adapter::GraLora(a)) => {
            ids.push(a.b.id);
            if let Some(g) = &a.general {
                ids.push(g.b.id);
            }
        }
        None => {}
    });
    ids
}

/// The encoder in training mode (autodiff on): every weight trainable for full fine-tuning,
/// all frozen otherwise (adapters attached afterwards are the only trainable encoder weights).
pub(crate) fn trainable<M: Module>(model: M, method: Method) -> M {
    let bert = model.train();
    match method {
        Method::Full => bert.set_require_grad(true),
        _ => bert.no_grad(),
    }
}

pub(crate) fn schedule(lr: f64, warmup: usize, total: usize) -> LrSchedulerConfig {
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

/// Progress lines for the caller to print (the library prints nothing).
pub type Report<'a> = &'a mut dyn FnMut(&str);

/// A finished run: its metrics and, for encoders, the trained classifier.
pub struct Finished {
    /// What was written to `metrics.json`.
    pub metrics: RunMetrics,
    /// The trained classifier (inference mode); `None` for decoders.
    pub model: Option<BertClassifier>,
}

/// What a training function needs besides the model.
pub(crate) struct Run<'a> {
    pub config: &'a TrainConfig,
    pub out: &'a Path,
    pub dir: RunDir,
    pub resume: bool,
    pub started: Instant,
    pub device: &'a Device,
    pub home: &'a Path,
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("serialisable");
    gralora::io::write_atomic(path, text.as_bytes()).map_err(|e| TrainError::io(path, e))
}

/// The run's files.
pub struct RunDir(pub PathBuf);

impl RunDir {
    /// `train_config.json`.
    pub fn config(&self) -> PathBuf {
        self.0.join("train_config.json")
    }
    /// `metrics.json`.
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.json")
    }
    /// burn-train's directory.
    pub fn run(&self) -> PathBuf {
        self.0.join("run")
    }
    /// The classification head.
    pub fn head(&self) -> PathBuf {
        self.0.join("classifier.safetensors")
    }
    /// burn-train's end-of-epoch checkpoints.
    pub fn epoch_checkpoints(&self) -> PathBuf {
        self.run().join("checkpoint")
    }
    /// The mid-epoch checkpoints (named by training batches done).
    pub fn steps(&self) -> PathBuf {
        self.run().join("steps")
    }
    /// The last epoch with a complete checkpoint (model, optimiser and scheduler), if any.
    pub fn last_checkpoint(&self) -> Option<usize> {
        crate::steps::complete_checkpoints(&self.epoch_checkpoints())
            .last()
            .copied()
    }
    /// Where a resumed run continues (`resume` false: nowhere, a new run).
    pub fn resume_point(&self, resume: bool, batches_per_epoch: usize) -> Option<ResumePoint> {
        if !resume {
            return None;
        }
        ResumePoint::newest(&self.epoch_checkpoints(), &self.steps(), batches_per_epoch)
    }
    /// Read a saved configuration.
    pub fn read_config(&self) -> Result<TrainConfig> {
        let path = self.config();
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Data {
            path,
            msg: format!("not a gralora training config: {e}"),
        })
    }
}

/// Save the classification head as `classifier.safetensors` (PyTorch layout).
pub fn save_head(model: &BertClassifier, path: &Path) -> Result<()> {
    let w = model.classifier.weight.val();
    let [hidden, classes] = w.dims();
    let w: Vec<f32> = w
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap_or_default();
    let wt = gralora::io::transpose(&w, hidden, classes);
    let mut tensors = vec![("classifier.weight".to_string(), vec![classes, hidden], wt)];
    if let Some(b) = &model.classifier.bias {
        let b: Vec<f32> = b
            .val()
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap_or_default();
        tensors.push(("classifier.bias".to_string(), vec![classes], b));
    }
    Ok(gralora_models::weights::write_safetensors(path, &tensors)?)
}

/// Load a head saved by [`save_head`] onto a fresh classifier over `bert`.
pub fn load_head(bert: Bert, path: &Path, pooling: Pooling) -> Result<BertClassifier> {
    let file = SafetensorsFile::open(path)?;
    let shape = file
        .shape("classifier.weight")
        .ok_or_else(|| TrainError::Data {
            path: path.to_path_buf(),
            msg: "no tensor `classifier.weight`".into(),
        })?;
    let [classes, hidden] = shape[..] else {
        return Err(TrainError::Data {
            path: path.to_path_buf(),
            msg: format!("`classifier.weight` has shape {shape:?}, expected [classes, hidden]"),
        });
    };
    if hidden != bert.hidden_size() {
        return Err(TrainError::Data {
            path: path.to_path_buf(),
            msg: format!(
                "head expects hidden size {hidden}, the model has {}; was it trained on another model?",
                bert.hidden_size()
            ),
        });
    }
    let mut model = BertClassifier::new(bert, classes, pooling, 0.0);
    let device = model.classifier.weight.val().device();
    let loader = gralora_models::weights::Loader::new(&file, &device);
    model.classifier = loader.linear(
        "classifier",
        hidden,
        classes,
        file.shape("classifier.bias").is_some(),
    )?;
    Ok(model)
}

struct Prepared {
    tokenizer_pad: u32,
    train: Vec<Item>,
    eval: Vec<Item>,
}

fn prepare(config: &TrainConfig, home: &Path, tokenizer: &mut TextTokenizer) -> Result<Prepared> {
    let task = config.task()?;
    let mut data = task.load(home)?;
    if let Some(fold) = config.fold {
        data = data.fold(config.seed, config.folds, fold);
    }
    data.train = seeded_subset(data.train, config.max_train, config.seed, true);
    data.eval = seeded_subset(data.eval, config.max_eval, config.seed, false);
    let train = tokenize(tokenizer, &data.train, config.max_len)?;
    let eval = tokenize(tokenizer, &data.eval, config.max_len)?;
    Ok(Prepared {
        tokenizer_pad: pad_id(tokenizer),
        train,
        eval,
    })
}

/// Train as `config` says, writing into `out`. `resume`: continue from the last checkpoint in
/// `out` (the configuration saved there is used). `device`: the (non-autodiff) device.
pub fn train(
    config: &TrainConfig,
    out: &Path,
    resume: bool,
    device: &Device,
    home: &Path,
    report: Report<'_>,
) -> Result<Finished> {
    let started = Instant::now();
    let dir = RunDir(out.to_path_buf());
    config.validate()?;
    if config.fold.is_none() && config.task().is_ok_and(Task::cross_validated) {
        return train_folds(config, out, resume, device, home, report);
    }
    if resume {
        let saved = dir.read_config()?;
        if &saved != config {
            return Err(TrainError::Usage(format!(
                "{} holds a run with other settings; resume it with only --out and --resume, or pick another --out",
                out.display()
            )));
        }
        if dir.metrics().is_file() {
            return Err(TrainError::Usage(format!(
                "{} is a finished run (metrics.json exists); nothing to resume",
                out.display()
            )));
        }
    } else {
        check_out_dir(out, &dir)?;
    }
    // Model, tokenizer and data.
    let source = ModelSource::resolve(&config.model, home)?;
    let loaded = LoadedModel::load(&source, device)?;
    let (bert, mut tokenizer) = match loaded.model {
        LoadedModel::Encoder {
            model, tokenizer, ..
        } => (model, tokenizer),
        LoadedModel::Decoder {
            model, tokenizer, ..
        } => {
            let run = Run {
                config,
                out,
                dir,
                resume,
                started,
                device,
                home,
            };
            return crate::lm::train_decoder(run, model, tokenizer, report);
        }
    };
    let task = config.task().map_err(|_| {
        TrainError::Usage(format!(
            "{} is an encoder; the task `{}` is for decoders (e.g. --model smollm2); encoder tasks: {}",
            config.model,
            config.task,
            crate::data::TASKS.join(", ")
        ))
    })?;
    let prepared = prepare(config, home, &mut tokenizer)?;
    let (train_name, eval_name) = task.split_names();
    report(&format!(
        "{}: {} train examples ({train_name}), {} eval examples ({eval_name})",
        task.name(),
        prepared.train.len(),
        prepared.eval.len()
    ));

    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    if !resume {
        write_json(&dir.config(), config)?;
    }

    // The model: seeded head and adapters, on the autodiff device.
    let ad = device.clone().autodiff();
    crate::steps::seed_device(device, config.seed);
    crate::steps::seed_device(&ad, config.seed);
    let bert = trainable(bert, config.method);
    let mut clf = BertClassifier::new(
        bert,
        task.num_classes(),
        config.pooling()?,
        config.head_dropout,
    );
    let mut b_ids = Vec::new();
    if let Some(adapter) = config.adapter()? {
        let options = AdaptOptions::new(adapter, config.targets_or(ENCODER_TARGETS));
        let r = attach_adapters(&mut clf, &options)?;
        report(format!("{r}").lines().last().unwrap_or_default());
        b_ids = b_param_ids(&mut clf);
    }
    let train_examples = prepared.train.len();
    let batching = ClassBatching::for_device(prepared.tokenizer_pad, clf.bert.max_len, device);
    let train_loader = EpochLoader::new(
        prepared.train,
        config.batch_size,
        Some(config.seed),
        batching,
        &ad,
    );
    let resumed_from = dir.resume_point(resume, train_loader.num_batches());
    let done = resumed_from.map_or(0, ResumePoint::epochs_done);
    let train_loader = train_loader.resume_from(resumed_from);
    let mut gora_report = None;
    if config.method.is_gora() {
        let batches: Vec<Vec<usize>> = train_loader
            .reseeded(config.seed ^ 0x6f72)
            .batches(0)
            .into_iter()
            .take(config.gora.steps)
            .collect();
        let items = train_loader.items();
        let adev = ad.clone();
        let loss = move |m: &BertClassifier, b: usize| {
            let refs: Vec<&Item> = batches[b % batches.len()]
                .iter()
                .map(|&i| &items[i])
                .collect();
            crate::steps::seed_device(&adev, config.seed.wrapping_add(b as u64));
            let batch = batching.batch(&refs, &adev);
            let logits = m.forward(&batch.input);
            burn::nn::loss::CrossEntropyLossConfig::new()
                .init(&adev)
                .forward(logits, batch.labels)
        };
        let r = crate::gora::attach(
            &mut clf,
            config.targets_or(ENCODER_TARGETS),
            &config.gora_config(),
            config.gora_k(),
            config.gora.steps,
            config.seed,
            &loss,
        )?;
        report(&r.to_string());
        b_ids = b_param_ids(&mut clf);
        gora_report = Some(r);
    }

    let interrupter = Interrupter::new();
    let guard = LossGuard::new(interrupter.clone())
        .starting_at(resumed_from.map_or(0, |p| p.batches_done(train_loader.num_batches())));
    let model = TextClassifier::new(clf, 1.0 / config.grad_accum as f64, guard.clone());
    let trainable = model.num_params_trainable();
    report(&format!("trainable parameters: {trainable}"));

    let batches_per_epoch = train_loader.num_batches();
    // Validation order does not matter: by length, for less padding.
    let mut by_len = prepared.eval.clone(); // the originals are scored after training
    by_len.sort_by_key(|i| i.encoded.ids.len());
    let valid_loader = EpochLoader::new(by_len, config.batch_size * 2, None, batching, device);
    let tokens = train_loader.token_count();
    let training = SupervisedTraining::new(
        dir.run(),
        std::sync::Arc::new(train_loader),
        std::sync::Arc::new(valid_loader),
    )
    .metrics((AccuracyMetric::new(), LossMetric::new()));
    let fitted = fit(
        training,
        model,
        Fit {
            config,
            device: ad.clone(),
            batches_per_epoch,
            b_ids,
            interrupter,
            guard: &guard,
            resumed_from,
            dir: &dir,
            tokens,
        },
        report,
    )?;
    let epochs_done = dir.last_checkpoint().unwrap_or(config.epochs).max(done);
    let (train_s, tokens_per_s) = (fitted.train_s, fitted.tokens_per_s());
    let trained = fitted.result.model.model;

    // Final evaluation on the inner device, then the files.
    let metrics_eval = evaluate(
        &trained,
        &prepared.eval,
        prepared.tokenizer_pad,
        config.batch_size * 2,
    );
    let mut trained = trained;
    match config.method {
        Method::Full => {
            let snapshot = LoadedModel::Encoder {
                config: gralora_models::BertConfig::from_file(source_config(&source)?)?,
                model: trained.bert.clone(),
                tokenizer,
            };
            snapshot.write_snapshot(&source, &out.join("model"))?;
        }
        _ => gralora::save_peft(&mut trained.bert, out, Some(&config.model))?,
    }
    save_head(&trained, &dir.head())?;
    let metrics = RunMetrics {
        task: task.name().into(),
        method: config.method,
        model: config.model.clone(),
        device: format!("{device:?}"),
        train_split: train_name.into(),
        train_examples,
        eval_split: eval_name.into(),
        eval: metrics_eval,
        epochs: epochs_done,
        trainable_params: trainable,
        wall_s: started.elapsed().as_secs_f64(),
        train_s,
        tokens_per_s,
        peak_rss_mb: peak_rss_mib(),
        gora: gora_report,
        folds: None,
        accuracy_std: None,
        baseline_accuracy: None,
        resumed_from_epoch: resumed_from.map(ResumePoint::epochs_done),
        resumed_from_batch: resumed_from.map(|p| p.batches_done(batches_per_epoch)),
        seed: config.seed,
    };
    write_json(&dir.metrics(), &metrics)?;
    Ok(Finished {
        metrics,
        model: Some(trained),
    })
}

/// What [`fit`] needs besides the model and burn-train's loaders and metrics.
pub(crate) struct Fit<'a> {
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
pub(crate) struct Fitted<M> {
    pub result: burn::train::LearningResult<M>,
    /// Training wall time of this process, seconds.
    pub train_s: f64,
    /// Real tokens trained on by this process.
    pub tokens: u64,
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
pub(crate) fn fit<M: burn::train::LearnerModel>(
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
        .with_training_strategy(TrainingStrategy::Custom(Arc::new(StepStrategy::new(
            f.device,
            config.checkpoint_every,
            config.grad_accum,
            f.batches_per_epoch,
            f.dir.steps(),
            step_resume,
        ))));
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
        return Err(TrainError::Training(e.to_string()));
    }
    if result.interrupted.is_none() {
        // Finished: the mid-epoch checkpoints are superseded by the epoch-end ones.
        let _ = std::fs::remove_dir_all(f.dir.steps());
    }
    Ok(Fitted {
        result,
        train_s,
        tokens: f.tokens.load(Ordering::Relaxed) - tokens_before,
    })
}

/// Refuse a non-empty `out` unless resuming.
pub(crate) fn check_out_dir(out: &Path, dir: &RunDir) -> Result<()> {
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        let hint = if dir.config().is_file() && !dir.metrics().is_file() {
            "an unfinished run is there: add --resume to continue it, or pick another --out"
        } else {
            "pick another --out (nothing is overwritten)"
        };
        return Err(TrainError::Usage(format!(
            "{} is not empty; {hint}",
            out.display()
        )));
    }
    Ok(())
}

/// k-fold cross-validation on a task's dev set: fold `i` trains on the others into `out/fold-i`;
/// `out/metrics.json` holds the means and every fold. Finished folds are kept on `--resume`.
fn train_folds(
    config: &TrainConfig,
    out: &Path,
    resume: bool,
    device: &Device,
    home: &Path,
    report: Report<'_>,
) -> Result<Finished> {
    let started = Instant::now();
    let dir = RunDir(out.to_path_buf());
    if resume {
        if &dir.read_config()? != config {
            return Err(TrainError::Usage(format!(
                "{} holds a run with other settings; resume it with only --out and --resume",
                out.display()
            )));
        }
    } else {
        check_out_dir(out, &dir)?;
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    if !resume {
        write_json(&dir.config(), config)?;
    }
    let mut runs = Vec::new();
    for fold in 0..config.folds {
        let sub_out = out.join(format!("fold-{fold}"));
        let sub_dir = RunDir(sub_out.clone());
        let sub = TrainConfig {
            fold: Some(fold),
            ..config.clone()
        };
        report(&format!("fold {}/{}", fold + 1, config.folds));
        let metrics = if sub_dir.metrics().is_file() {
            let text = std::fs::read_to_string(sub_dir.metrics())
                .map_err(|e| TrainError::io(sub_dir.metrics(), e))?;
            serde_json::from_str(&text).map_err(|e| TrainError::Data {
                path: sub_dir.metrics(),
                msg: e.to_string(),
            })?
        } else {
            let again = sub_dir.config().is_file();
            train(&sub, &sub_out, again, device, home, report)?.metrics
        };
        runs.push(metrics);
    }
    let k = runs.len() as f64;
    let mean = |f: &dyn Fn(&RunMetrics) -> f64| runs.iter().map(f).sum::<f64>() / k;
    let acc = mean(&|m| m.eval.accuracy);
    let std = (runs
        .iter()
        .map(|m| (m.eval.accuracy - acc).powi(2))
        .sum::<f64>()
        / k)
        .sqrt();
    let task = config.task()?;
    let first = &runs[0];
    let metrics = RunMetrics {
        task: task.name().into(),
        method: config.method,
        model: config.model.clone(),
        device: first.device.clone(),
        train_split: format!(
            "{} validation, {}-fold cross-validation",
            task.name(),
            config.folds
        ),
        train_examples: runs.iter().map(|m| m.train_examples).sum::<usize>() / runs.len(),
        eval_split: format!("{} validation, held-out folds", task.name()),
        eval: EvalMetrics {
            examples: runs.iter().map(|m| m.eval.examples).sum(),
            accuracy: acc,
            f1: runs
                .iter()
                .map(|m| m.eval.f1)
                .sum::<Option<f64>>()
                .map(|s| s / k),
            loss: mean(&|m| m.eval.loss),
        },
        epochs: first.epochs,
        trainable_params: first.trainable_params,
        wall_s: started.elapsed().as_secs_f64(),
        train_s: runs.iter().map(|m| m.train_s).sum(),
        tokens_per_s: mean(&|m| m.tokens_per_s),
        peak_rss_mb: peak_rss_mib(),
        gora: None,
        folds: Some(runs.iter().map(|m| m.eval).collect()),
        accuracy_std: Some(std),
        baseline_accuracy: None,
        resumed_from_epoch: None,
        resumed_from_batch: None,
        seed: config.seed,
    };
    write_json(&dir.metrics(), &metrics)?;
    Ok(Finished {
        metrics,
        model: None,
    })
}

fn source_config(source: &ModelSource) -> Result<PathBuf> {
    match source {
        ModelSource::HfDir(d) => Ok(d.join("config.json")),
        ModelSource::Gguf(p) => Err(TrainError::Usage(format!(
            "{}: GGUF decoders cannot be fine-tuned on encoder tasks",
            p.display()
        ))),
    }
}

/// Evaluate a model (with a `gralora train` output directory: adapter + head) on a task.
#[allow(clippy::too_many_arguments)]
pub fn eval(
    model_arg: &str,
    run: Option<&Path>,
    task_name: &str,
    max_len: Option<usize>,
    max_eval: Option<usize>,
    batch_size: usize,
    device: &Device,
    home: &Path,
) -> Result<EvalMetrics> {
    let saved = run.and_then(|r| RunDir(r.to_path_buf()).read_config().ok());
    let source = ModelSource::resolve(model_arg, home)?;
    let mut loaded = LoadedModel::load(&source, device)?;
    if let Some(run) = run
        && gralora::is_peft_dir(run)
    {
        loaded.model.load_adapter(run)?;
    }
    let max_len = max_len.or(saved.as_ref().map(|c| c.max_len));
    let (bert, mut tokenizer) = match loaded.model {
        LoadedModel::Encoder {
            model, tokenizer, ..
        } => (model, tokenizer),
        LoadedModel::Decoder {
            model, tokenizer, ..
        } => {
            let tasks = crate::lm::mc_tasks(task_name)?;
            let (_, val) = crate::lm::load(&tasks, home)?;
            let seed = saved.as_ref().map_or(42, |c| c.seed);
            let val = seeded_subset(val, max_eval, seed, tasks.len() > 1);
            return crate::lm::evaluate_mc(
                &model,
                &tokenizer,
                &val,
                max_len.unwrap_or(256),
                device,
            );
        }
    };
    let task: Task = task_name.parse()?;
    let Some(run) = run else {
        return Err(TrainError::Usage(format!(
            "the {} task scores a trained classification head: pass --adapter DIR (a `gralora train` output)",
            task.name()
        )));
    };
    let dir = RunDir(run.to_path_buf());
    let pooling = match saved.as_ref().map(|c| c.pooling.as_str()) {
        Some("cls") => Pooling::Cls,
        _ => Pooling::Mean,
    };
    if !dir.head().is_file() {
        return Err(TrainError::Data {
            path: dir.head(),
            msg: "no classification head here; pass the --out directory of a finished `gralora train`".into(),
        });
    }
    let model = load_head(bert, &dir.head(), pooling)?;
    let eval = seeded_subset(task.load(home)?.eval, max_eval, 0, false);
    let items = tokenize(&mut tokenizer, &eval, max_len.unwrap_or(128))?;
    Ok(evaluate(&model, &items, pad_id(&tokenizer), batch_size))
}

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
        fn step(&mut self, refs: &[&Item], ad: &Device) -> f64 {
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
            let _ = model.model.classifier.weight.val().into_data();
            self.model = Some(model);
            t.elapsed().as_secs_f64() * 1e3
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
        crate::steps::seed_device(device, config.seed);
        crate::steps::seed_device(&ad, config.seed);
        let bert = trainable(bert.clone(), config.method);
        let mut clf = BertClassifier::new(bert, 2, config.pooling()?, 0.0);
        if let Some(a) = config.adapter()? {
            attach_adapters(
                &mut clf,
                &AdaptOptions::new(a, config.targets_or(ENCODER_TARGETS)),
            )?;
        }
        let model = TextClassifier::new(clf, 1.0, LossGuard::default());
        let trainable = model.num_params_trainable();
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
            let ms = runner.step(&refs, &ad);
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
            let ms = runner.step(&refs, &ad);
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
