//! The built-in encoder tasks: which sources make their splits.
//!
//! | task   | train                                              | evaluation                 |
//! |--------|----------------------------------------------------|----------------------------|
//! | `sst2` | Rotten Tomatoes sentences, SST-2 dev sentences removed, label = sign of the mean rating (zeros dropped) | GLUE SST-2 dev (Arrow) |
//! | `snli` | SNLI train subset (100,000 pairs)                  | SNLI test (10,000)         |
//! | `boolq`| BoolQ train (9,427)                                | BoolQ validation (3,270)   |
//! | `mrpc`, `rte` | — (k-fold cross-validation on the dev set)  | GLUE dev (Arrow)           |

use std::path::Path;
use std::str::FromStr;

use crate::data::*;
use crate::error::{Result, TrainError};

/// A classification task for encoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Binary sentiment (SST-2 dev; Rotten Tomatoes train).
    Sst2,
    /// Three-way natural language inference.
    Snli,
    /// Yes/no questions about a passage.
    Boolq,
    /// Paraphrase pairs (GLUE MRPC; dev set only: k-fold cross-validation).
    Mrpc,
    /// Textual entailment (GLUE RTE; dev set only: k-fold cross-validation).
    Rte,
}

/// The task names `--task` accepts.
pub const TASKS: &[&str] = &["sst2", "snli", "boolq", "mrpc", "rte"];

impl FromStr for Task {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sst2" | "sst-2" => Ok(Self::Sst2),
            "snli" => Ok(Self::Snli),
            "boolq" => Ok(Self::Boolq),
            "mrpc" => Ok(Self::Mrpc),
            "rte" => Ok(Self::Rte),
            other => Err(TrainError::Usage(format!(
                "unknown task `{other}`; the encoder tasks are {}",
                TASKS.join(", ")
            ))),
        }
    }
}

impl Task {
    /// The name used on the command line and in metrics.json.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sst2 => "sst2",
            Self::Snli => "snli",
            Self::Boolq => "boolq",
            Self::Mrpc => "mrpc",
            Self::Rte => "rte",
        }
    }

    /// Number of classes.
    pub fn num_classes(self) -> usize {
        match self {
            Self::Snli => 3,
            Self::Sst2 | Self::Boolq | Self::Mrpc | Self::Rte => 2,
        }
    }

    /// The assets (`gralora fetch` names) the task reads.
    pub fn assets(self) -> &'static [&'static str] {
        match self {
            Self::Sst2 => &["rt", "glue"],
            Self::Snli => &["snli"],
            Self::Boolq => &["commonsense"],
            Self::Mrpc | Self::Rte => &["glue"],
        }
    }

    /// Whether only an evaluation set exists, so the task is scored by k-fold cross-validation.
    pub fn cross_validated(self) -> bool {
        matches!(self, Self::Mrpc | Self::Rte)
    }

    /// The files the task reads, relative to `$GRALORA_HOME`.
    pub fn files(self) -> &'static [&'static str] {
        match self {
            Self::Sst2 => &[SST2_DEV, RT_FILE],
            Self::Snli => &[SNLI_TRAIN, SNLI_TEST],
            Self::Boolq => &[BOOLQ_TRAIN, BOOLQ_VAL],
            Self::Mrpc => &[MRPC_DEV],
            Self::Rte => &[RTE_DEV],
        }
    }

    /// Names of the train and evaluation splits, for reports.
    pub fn split_names(self) -> (&'static str, &'static str) {
        match self {
            Self::Sst2 => ("rotten-tomatoes minus sst2-dev", "sst2 validation"),
            Self::Snli => ("snli train subset", "snli test"),
            Self::Boolq => ("boolq train", "boolq validation"),
            Self::Mrpc => (
                "mrpc validation, other folds",
                "mrpc validation, held-out fold",
            ),
            Self::Rte => (
                "rte validation, other folds",
                "rte validation, held-out fold",
            ),
        }
    }

    /// Load both splits from the asset cache `home` (`$GRALORA_HOME`).
    pub fn load(self, home: &Path) -> Result<TaskData> {
        crate::data::verify_assets(home, self.assets())?;
        let (train, eval) = match self {
            Self::Sst2 => {
                let eval = read_sst2_arrow(&home.join(SST2_DEV))?;
                let train = read_rotten_tomatoes(&home.join(RT_FILE))?;
                (remove_overlap(train, &eval), eval)
            }
            Self::Snli => (
                read_snli(&home.join(SNLI_TRAIN))?,
                read_snli(&home.join(SNLI_TEST))?,
            ),
            Self::Boolq => (
                read_boolq(&home.join(BOOLQ_TRAIN))?,
                read_boolq(&home.join(BOOLQ_VAL))?,
            ),
            Self::Mrpc | Self::Rte => {
                let file = self.files()[0];
                (Vec::new(), read_glue_pairs(&home.join(file))?)
            }
        };
        Ok(TaskData {
            task: self,
            train,
            eval,
        })
    }
}

/// A task's two splits.
#[derive(Debug, Clone)]
pub struct TaskData {
    /// The task.
    pub task: Task,
    /// Training examples.
    pub train: Vec<Example>,
    /// Evaluation examples.
    pub eval: Vec<Example>,
}

impl TaskData {
    /// Fold `fold` of `folds` of the evaluation set (a seeded shuffle, then contiguous folds):
    /// train on the others, evaluate on it.
    pub fn fold(&self, seed: u64, folds: usize, fold: usize) -> TaskData {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let mut all = self.eval.clone();
        all.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let n = all.len();
        let (lo, hi) = (fold * n / folds, (fold + 1) * n / folds);
        let eval = all[lo..hi].to_vec();
        let train = all[..lo].iter().chain(&all[hi..]).cloned().collect();
        TaskData {
            task: self.task,
            train,
            eval,
        }
    }
}
