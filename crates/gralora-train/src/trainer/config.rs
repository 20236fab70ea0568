//! Every setting of a training run, its method-dependent defaults and its checks.

use gralora::{AdapterConfig, GraLoraConfig, LoraConfig, Targets};
use gralora_models::Pooling;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// How the model is adapted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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

/// The default peak learning rate of `method`: 1e-3 for LoRA and GraLoRA, 1e-4 for GoRA (its
/// paper's, with LoRA+ ×16), 5e-5 for full fine-tuning.
pub fn default_lr(method: Method) -> f64 {
    match method {
        Method::Full => 5e-5,
        Method::Gora | Method::GoraGralora => 1e-4,
        Method::Lora | Method::Gralora => 1e-3,
    }
}

impl Default for GoraSettings {
    /// GoRA's paper: gradients averaged over 64 batches.
    fn default() -> Self {
        Self {
            steps: 64,
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
    /// The user's own data files (`--data`); `None`: the built-in `task`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataSettings>,
}

/// A run on the user's own files (`--data`): where they are and how to read them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSettings {
    /// The training file (absolute, so `--resume` finds it from anywhere).
    pub train: std::path::PathBuf,
    /// The evaluation file; `None`: a seeded `eval_split` of the training file is held out.
    pub eval: Option<std::path::PathBuf>,
    /// Fraction of the training file held out when there is no evaluation file.
    pub eval_split: f64,
    /// Classification: the text column (default `text`).
    pub text_column: Option<String>,
    /// Classification: the second text of a pair (default `text_pair` when present).
    pub pair_column: Option<String>,
    /// Classification: the label column (default `label`).
    pub label_column: Option<String>,
    /// Classification: the labels are scores, trained as a regression (automatic when a
    /// label is not an integer).
    #[serde(default)]
    pub regression: bool,
    /// SFT: the prompt's field, when not `prompt` (dotted names reach into nested objects).
    #[serde(default)]
    pub prompt_column: Option<String>,
    /// SFT: the completion's field, when not `completion`.
    #[serde(default)]
    pub completion_column: Option<String>,
    /// SFT: a Jinja chat template (or `tokenizer_config.json`) replacing the model's own.
    pub chat_template: Option<std::path::PathBuf>,
    /// SFT: the loss covers every token, prompts included (default: completions and the
    /// assistant's turns only).
    pub train_on_prompt: bool,
    /// SFT: pack several training examples into each sequence of up to `max_len` tokens
    /// (each attends only to itself; see `tasks::sft::pack`).
    #[serde(default)]
    pub packing: bool,
    /// SFT: generations printed from this many held-out prompts at the end.
    pub sample_prompts: usize,
}

impl DataSettings {
    /// Files `train` (and `eval`), everything else default.
    pub fn new(train: impl Into<std::path::PathBuf>) -> Self {
        Self {
            train: train.into(),
            eval: None,
            eval_split: 0.1,
            text_column: None,
            pair_column: None,
            label_column: None,
            regression: false,
            prompt_column: None,
            completion_column: None,
            chat_template: None,
            train_on_prompt: false,
            packing: false,
            sample_prompts: 0,
        }
    }

    /// The classification columns.
    pub fn columns(&self) -> crate::data::Columns {
        let d = crate::data::Columns::default();
        crate::data::Columns {
            text: self.text_column.clone().unwrap_or(d.text),
            pair: self.pair_column.clone(),
            label: self.label_column.clone().unwrap_or(d.label),
        }
    }

    /// The SFT columns.
    pub fn sft_columns(&self) -> crate::data::SftColumns {
        crate::data::SftColumns {
            prompt: self.prompt_column.clone(),
            completion: self.completion_column.clone(),
        }
    }

    /// The evaluation split's name in `metrics.json`: the file, or the held-out share.
    pub fn eval_name(&self) -> String {
        match &self.eval {
            Some(p) => p.display().to_string(),
            None => format!("held-out {:.0}%", self.eval_split * 100.0),
        }
    }

    /// The task name a run on these files reports: the training file's name.
    pub fn task_name(&self) -> String {
        self.train
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into())
    }

    /// Check the settings and that the files exist in a known format.
    pub fn validate(&self) -> Result<()> {
        for path in std::iter::once(&self.train).chain(&self.eval) {
            crate::data::table::Format::of(path)?;
            if !path.is_file() {
                return Err(TrainError::Data {
                    path: path.clone(),
                    msg: "file not found".into(),
                });
            }
        }
        if self.eval.is_none() && !(self.eval_split > 0.0 && self.eval_split < 1.0) {
            return Err(TrainError::setting(
                "eval_split",
                format!("{} must be in (0, 1)", self.eval_split),
            ));
        }
        if let Some(t) = &self.chat_template
            && !t.is_file()
        {
            return Err(TrainError::Data {
                path: t.clone(),
                msg: "chat template file not found".into(),
            });
        }
        Ok(())
    }
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
    pub fn targets_or(&self, default: &[&str]) -> Targets {
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
            targets: ENCODER_TARGETS.iter().map(|s| s.to_string()).collect(),
            epochs: 3,
            lr: default_lr(method),
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
            data: None,
        }
    }

    /// Set the method and rank, with the defaults that depend on them where `options` leaves a
    /// value out: alpha 2·r (GoRA: 16, its scale being alpha/√r), learning rate 1e-3 (GoRA:
    /// 1e-4; full fine-tuning: 5e-5), LoRA+ ratio 1 (GoRA: 16). GoRA's three are its paper's
    /// regime (lr 1e-4 with B learning 16× faster): at 1e-3, B learns at 1.6e-2 and training
    /// diverges.
    pub fn set_method(&mut self, method: Method, rank: usize, options: MethodOptions) {
        let gora = method.is_gora();
        self.method = method;
        self.rank = rank;
        self.alpha = options
            .alpha
            .unwrap_or(if gora { 16.0 } else { 2.0 * rank as f64 });
        self.lr = options.lr.unwrap_or(default_lr(method));
        self.b_lr_ratio = options.b_lr_ratio.unwrap_or(if gora { 16.0 } else { 1.0 });
    }

    /// The pooling of the encoder's states for the head.
    pub fn pooling(&self) -> Result<Pooling> {
        match self.pooling.as_str() {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            other => Err(TrainError::setting(
                "pooling",
                format!("`{other}` is not a pooling; use mean or cls"),
            )),
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

    /// Check every setting that does not depend on the task or the model (the task layer checks
    /// the task name).
    pub fn validate(&self) -> Result<()> {
        self.pooling()?;
        self.adapter()?;
        if let Some(d) = &self.data {
            d.validate()?;
        }
        let bad = |setting, msg: String| Err(TrainError::setting(setting, msg));
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be at least 1".into());
        }
        if self.b_lr_ratio <= 0.0 {
            return bad(
                "b_lr_ratio",
                format!("{} must be positive", self.b_lr_ratio),
            );
        }
        if !(self.lr > 0.0 && self.lr * self.b_lr_ratio.max(1.0) <= 1.0) {
            return bad(
                "lr",
                format!(
                    "{} (× the B matrices' ratio {}) must be in (0, 1]",
                    self.lr, self.b_lr_ratio
                ),
            );
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return bad("warmup", format!("{} must be in [0, 1)", self.warmup));
        }
        if self.folds < 2 || self.fold.is_some_and(|f| f >= self.folds) {
            return bad("folds", format!("{} must be at least 2", self.folds));
        }
        if self.max_train == Some(0) {
            return bad("max_train", "0 leaves nothing to train on".into());
        }
        if self.max_len < 8 {
            return bad(
                "max_len",
                format!("{} is too short (at least 8)", self.max_len),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GoRA trains in its paper's regime unless told otherwise: lr 1e-4 with LoRA+ ×16, alpha
    /// 16, gradients over 64 batches; the others keep theirs, and a given value wins.
    #[test]
    fn method_defaults_follow_each_methods_regime() {
        let set = |method, options| {
            let mut c = TrainConfig::new("minilm", "sst2", method);
            c.set_method(method, 8, options);
            (c.lr, c.b_lr_ratio, c.alpha)
        };
        let none = MethodOptions::default();
        assert_eq!(set(Method::Gora, none), (1e-4, 16.0, 16.0));
        assert_eq!(set(Method::GoraGralora, none), (1e-4, 16.0, 16.0));
        assert_eq!(set(Method::Lora, none), (1e-3, 1.0, 16.0));
        assert_eq!(set(Method::Gralora, none), (1e-3, 1.0, 16.0));
        assert_eq!(set(Method::Full, none).0, 5e-5);
        let given = MethodOptions {
            alpha: Some(4.0),
            lr: Some(3e-4),
            b_lr_ratio: Some(2.0),
        };
        assert_eq!(set(Method::Gora, given), (3e-4, 2.0, 4.0));
        assert_eq!(GoraSettings::default().steps, 64);
        assert_eq!(TrainConfig::new("minilm", "sst2", Method::Gora).lr, 1e-4);
    }
}
