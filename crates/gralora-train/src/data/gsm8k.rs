//! GSM8K's test set from OLMo's eval requests (no train split exists offline).

use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, TrainError};

/// The test set inside `$GRALORA_HOME`.
pub const GSM8K_TEST: &str = "gsm8k/gold_bpb_5shot/requests.jsonl.gz";

/// One problem: the few-shot prompt ending in `Answer:`, and the reference number.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The prompt.
    pub prompt: String,
    /// The reference answer (`short_answer`).
    pub answer: String,
}

#[derive(Deserialize)]
struct Line {
    doc: Doc,
    request: Request,
}
#[derive(Deserialize)]
struct Doc {
    short_answer: String,
}
#[derive(Deserialize)]
struct Request {
    context: String,
}

/// Read OLMo's GSM8K requests.
pub fn read(path: &Path) -> Result<Vec<Problem>> {
    let err = |msg: String| TrainError::Data {
        path: path.to_path_buf(),
        msg,
    };
    let reader = super::files::json_lines(path)?;
    let mut out = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| err(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line =
            serde_json::from_str(&line).map_err(|e| err(format!("line {}: {e}", n + 1)))?;
        out.push(Problem {
            prompt: l.request.context,
            answer: l.doc.short_answer,
        });
    }
    if out.is_empty() {
        return Err(err("holds no problems".into()));
    }
    Ok(out)
}
