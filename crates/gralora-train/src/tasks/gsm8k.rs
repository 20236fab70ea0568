//! GSM8K, evaluation only (no train split exists offline): greedy generation after OLMo's 8-shot
//! chain-of-thought prompt, stopped at `Question:` or a blank line, scored by exact match of the
//! final number.

use std::path::Path;

use burn::tensor::Device;
use gralora_models::{Llama, Sampler, TextTokenizer};
use serde::Serialize;

pub use crate::data::gsm8k::{GSM8K_TEST, Problem, read};
use crate::error::{Result, TrainError};

/// Text that ends a generated answer.
pub const STOP: &[&str] = &["Question:", "\n\n", "</s>", "<|im_end|>"];

/// A number in the normal form used for comparison: no `,` or `$`, no trailing `.`, and
/// integral values without a fractional part (`18.00` -> `18`).
pub fn normalise_number(s: &str) -> String {
    let t: String = s.chars().filter(|c| *c != ',' && *c != '$').collect();
    let t = t.trim().trim_end_matches('.');
    match t.parse::<f64>() {
        Ok(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{}", v as i64),
        Ok(v) => format!("{v}"),
        Err(_) => t.to_string(),
    }
}

/// The final answer of a generated solution: the number after the last "answer is", else the
/// last number in the text.
pub fn extract_answer(text: &str) -> Option<String> {
    let number = regex::Regex::new(r"-?[$]?[0-9][0-9,]*(?:\.[0-9]+)?").expect("valid regex");
    let lower = text.to_lowercase();
    let tail = match lower.rfind("answer is") {
        Some(i) => &text[i..],
        None => text,
    };
    let found = if tail.len() < text.len() {
        number.find(tail).map(|m| m.as_str())
    } else {
        number.find_iter(text).last().map(|m| m.as_str())
    };
    found.map(normalise_number)
}

/// Cut generated text at the first stop sequence.
pub fn cut_at_stop(text: &str) -> &str {
    let end = STOP
        .iter()
        .filter_map(|s| text.find(s))
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

/// Exact-match score.
#[derive(Debug, Clone, Serialize)]
pub struct GsmMetrics {
    /// Problems scored.
    pub examples: usize,
    /// Fraction whose final number equals the reference.
    pub exact_match: f64,
    /// Mean generated tokens per problem.
    pub mean_new_tokens: f64,
}

/// Greedy-decode each problem and score it. `progress(done, correct)` after each problem.
pub fn evaluate(
    model: &Llama,
    tok: &TextTokenizer,
    problems: &[Problem],
    max_new: usize,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<GsmMetrics> {
    let (mut correct, mut tokens) = (0usize, 0usize);
    for (i, p) in problems.iter().enumerate() {
        let ids = tok.encode(&p.prompt, true)?.ids;
        let mut new = Vec::new();
        let generation = model.generate_while(
            &ids,
            max_new,
            &mut Sampler::greedy(),
            &tok.eos,
            device,
            |t| {
                new.push(t);
                let text = tok.decode(&new).unwrap_or_default();
                cut_at_stop(&text).len() == text.len()
            },
        )?;
        tokens += generation.tokens.len();
        let text = tok.decode(&generation.tokens)?;
        let answer = extract_answer(cut_at_stop(&text));
        correct += usize::from(answer.as_deref() == Some(normalise_number(&p.answer).as_str()));
        progress(i + 1, correct);
    }
    let n = problems.len().max(1) as f64;
    Ok(GsmMetrics {
        examples: problems.len(),
        exact_match: correct as f64 / n,
        mean_new_tokens: tokens as f64 / n,
    })
}

/// Load a decoder (and a PEFT adapter directory, if given) and score it on the first
/// `max_eval` problems.
pub fn eval_model(
    model_arg: &str,
    adapter: Option<&Path>,
    max_eval: Option<usize>,
    max_new: usize,
    device: &Device,
    home: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<GsmMetrics> {
    let source = gralora_models::ModelSource::resolve(model_arg, home)?;
    let mut loaded = gralora_models::LoadedModel::load(&source, device)?;
    if let Some(dir) = adapter {
        loaded.model.load_adapter(dir)?;
    }
    let gralora_models::LoadedModel::Decoder {
        model, tokenizer, ..
    } = loaded.model
    else {
        return Err(TrainError::Usage(format!(
            "{model_arg} is an encoder; gsm8k needs a decoder (e.g. --model smollm2)"
        )));
    };
    crate::data::verify_assets(home, &["gsm8k"])?;
    let mut problems = read(&home.join(GSM8K_TEST))?;
    if let Some(n) = max_eval {
        problems.truncate(n.max(1));
    }
    evaluate(&model, &tokenizer, &problems, max_new, device, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_numbers_are_extracted_as_the_metric_normalises_them() {
        let text = "She makes 9 * 2 = $18 every day. So the answer is 18.";
        assert_eq!(extract_answer(text).as_deref(), Some("18"));
        assert_eq!(
            extract_answer("So the answer is $1,250.").as_deref(),
            Some("1250")
        );
        assert_eq!(
            extract_answer("3 + 4 = 7 and then 7.50").as_deref(),
            Some("7.5")
        );
        assert_eq!(
            extract_answer("the answer is -3 apples, not 5").as_deref(),
            Some("-3")
        );
        assert_eq!(extract_answer("no digits here"), None);
        assert_eq!(normalise_number("18.00"), "18");
        assert_eq!(cut_at_stop(" 5 + 3 = 8.\n\nQuestion: next"), " 5 + 3 = 8.");
        assert_eq!(
            cut_at_stop("So the answer is 8.Question:"),
            "So the answer is 8."
        );
    }
}
