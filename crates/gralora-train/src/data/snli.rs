//! SNLI pairs as JSON lines.

use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use super::files::{Example, data_err, json_lines, non_empty};
use crate::error::Result;

#[derive(Deserialize)]
struct SnliLine {
    gold_label: String,
    sentence1: String,
    sentence2: String,
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
