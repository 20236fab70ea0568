//! BoolQ from OLMo's eval requests.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use super::files::{Example, data_err, json_lines, non_empty};
use crate::error::Result;

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
