//! The commonsense suite (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC, OpenBookQA) from OLMo's
//! eval requests, as multiple-choice questions.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use super::files::{data_err, json_lines};
use crate::error::Result;

/// One multiple-choice question: choice i is `contexts[i] + continuations[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct McExample {
    /// The prompt of each choice (the same for all but WinoGrande's).
    pub contexts: Vec<String>,
    /// The scored text of each choice (leading space included).
    pub continuations: Vec<String>,
    /// The right choice.
    pub gold: usize,
}

#[derive(Deserialize)]
struct Doc {
    query: Option<String>,
    choices: Option<Vec<String>>,
    gold: Option<usize>,
    sentence: Option<String>,
    option1: Option<String>,
    option2: Option<String>,
    answer: Option<String>,
}

/// Read one task's requests file (one example per document).
pub fn read_mc(path: &Path) -> Result<Vec<McExample>> {
    let reader = json_lines(path)?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| data_err(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| data_err(path, format!("line {}: {e}", n + 1)))?;
        // One line per choice, and (in several files) every document twice under two doc_ids:
        // one example per distinct document.
        let doc = row.get("doc").cloned().unwrap_or_default();
        if !seen.insert(doc.to_string()) {
            continue;
        }
        let d: Doc = serde_json::from_value(doc)
            .map_err(|e| data_err(path, format!("line {}: {e}", n + 1)))?;
        let bad = || data_err(path, format!("line {}: unexpected document fields", n + 1));
        let example = if let (Some(s), Some(o1), Some(o2), Some(a)) =
            (&d.sentence, &d.option1, &d.option2, &d.answer)
        {
            let (before, after) = s.split_once('_').ok_or_else(bad)?;
            let gold = match a.trim() {
                "1" => 0,
                "2" => 1,
                _ => return Err(bad()),
            };
            let cont = format!(" {}", after.trim());
            McExample {
                contexts: vec![format!("{before}{o1}"), format!("{before}{o2}")],
                continuations: vec![cont.clone(), cont],
                gold,
            }
        } else {
            let (q, choices, gold) = match (&d.query, &d.choices, d.gold) {
                (Some(q), Some(c), Some(g)) if g < c.len() => (q, c, g),
                _ => return Err(bad()),
            };
            McExample {
                contexts: vec![q.clone(); choices.len()],
                continuations: choices.iter().map(|c| format!(" {}", c.trim())).collect(),
                gold,
            }
        };
        out.push(example);
    }
    if out.is_empty() {
        return Err(data_err(path, "holds no usable examples"));
    }
    Ok(out)
}
