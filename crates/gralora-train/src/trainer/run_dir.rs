//! A run directory and the metrics it ends with.
//!
//! A run directory (`--out`) holds, when complete:
//! - `adapter_config.json`, `adapter_model.safetensors` — the adapter in PEFT's format (LoRA and
//!   GraLoRA), or `model/` — a Hugging Face snapshot (full fine-tuning);
//! - `classifier.safetensors` — an encoder's classification head (`classifier.weight`
//!   `[classes, hidden]`, `classifier.bias`), which PEFT would keep in `modules_to_save`;
//! - `labels.json` — the class names of a classifier trained on the user's own data;
//! - `train_config.json` — every setting (written first; `--resume` reads it back);
//! - `metrics.json` — written last: a directory without it is not a finished run;
//! - `.lock` — locked by the process training the directory;
//! - `run/` — burn-train's logs, end-of-epoch checkpoints (`checkpoint/`) and mid-epoch ones (`steps/`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checkpoint::{ResumePoint, complete_checkpoints};
use super::config::{Method, TrainConfig};
use crate::error::{Result, TrainError};

/// Metric values of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Examples evaluated.
    pub examples: usize,
    /// Accuracy.
    pub accuracy: f64,
    /// F1 of class 1 (binary tasks only).
    pub f1: Option<f64>,
    /// Mean cross-entropy (SFT: per target token).
    pub loss: f64,
    /// SFT: the perplexity, exp(loss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// Regression: Pearson's correlation of predictions and targets (`loss` is the MSE and
    /// `accuracy` 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pearson: Option<f64>,
    /// Regression: Spearman's rank correlation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spearman: Option<f64>,
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
    /// The process's peak resident memory at the end of each epoch this process trained, MiB:
    /// flat from the first epoch on when nothing leaks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peak_rss_mb_by_epoch: Vec<f64>,
    /// GoRA's allocation and the loss before/after its initialisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gora: Option<super::gora::GoraReport>,
    /// Cross-validated tasks: each fold's evaluation (`eval` holds their means).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folds: Option<Vec<EvalMetrics>>,
    /// Cross-validated tasks: standard deviation of the folds' accuracies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_std: Option<f64>,
    /// Accuracy of the untrained model on the same evaluation examples (decoder tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_accuracy: Option<f64>,
    /// Loss of the untrained model on the same evaluation examples (decoder tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_loss: Option<f64>,
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
    proc_status_mib("VmHWM:")
}

/// Resident memory of the process now, MiB (Linux; `None` elsewhere).
pub fn rss_mib() -> Option<f64> {
    proc_status_mib("VmRSS:")
}

fn proc_status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Write `value` as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
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
    /// The untrained model's evaluation (decoder tasks).
    pub fn baseline(&self) -> PathBuf {
        self.0.join("baseline.json")
    }
    /// burn-train's directory.
    pub fn run(&self) -> PathBuf {
        self.0.join("run")
    }
    /// The class names of a run on the user's own data (`{"labels": [...]}`).
    pub fn labels(&self) -> PathBuf {
        self.0.join("labels.json")
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
        complete_checkpoints(&self.epoch_checkpoints())
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
    /// Check that a run of `config` may start here (`resume` false: the directory is absent or
    /// empty) or continue here (`resume`: it holds an unfinished run of the same settings).
    pub fn check_for(&self, config: &TrainConfig, resume: bool) -> Result<()> {
        if !resume {
            return check_out_dir(&self.0, self);
        }
        if &self.read_config()? != config {
            return Err(TrainError::Usage(format!(
                "{} holds a run with other settings; resume it with only --out and --resume, or pick another --out",
                self.0.display()
            )));
        }
        if self.metrics().is_file() {
            return Err(TrainError::Usage(format!(
                "{} is a finished run (metrics.json exists); nothing to resume",
                self.0.display()
            )));
        }
        Ok(())
    }

    /// `.lock`: held by the process training this directory.
    pub fn lock_file(&self) -> PathBuf {
        self.0.join(".lock")
    }

    /// Take the directory's lock (an OS file lock on `.lock`, released when the process ends,
    /// however it ends); another process holding it is a usage error.
    pub fn lock(&self) -> Result<RunLock> {
        let path = self.lock_file();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(TrainError::Usage(format!(
                "{} is being trained by another gralora process; wait for it to end (or stop it and --resume), or pick another --out",
                self.0.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(TrainError::io(&path, e)),
        }
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

/// A held run-directory lock (released on drop).
#[derive(Debug)]
pub struct RunLock(#[allow(dead_code)] std::fs::File);

/// Refuse a non-empty `out` unless resuming.
pub fn check_out_dir(out: &Path, dir: &RunDir) -> Result<()> {
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
