//! A user's dataset: the rows of [`super::table`] turned into classification examples (a text,
//! an optional second text, a label) or supervised fine-tuning examples (TRL's `text`,
//! `prompt`/`completion` and `messages` formats, and alpaca's `instruction`/`input`/`output`),
//! with a held-out split drawn by seed when no evaluation file is given. Every malformed row is
//! an error naming the file, the line (or row) and the field.

use std::collections::BTreeSet;
use std::path::Path;

use gralora_models::Message;
use serde_json::Value;

use super::files::{Example, data_err};
use super::table::{Location, Row, kind, row_err, rows};
use crate::error::Result;

/// Which columns hold a classification example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// The text (default `text`).
    pub text: String,
    /// The optional second text of a pair (default `text_pair`, used when present).
    pub pair: Option<String>,
    /// The label (default `label`).
    pub label: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            text: "text".into(),
            pair: None,
            label: "label".into(),
        }
    }
}

/// A label as the file holds it.
#[derive(Debug, Clone, PartialEq)]
enum RawLabel {
    Int(u64),
    Float(f64),
    Name(String),
}

impl RawLabel {
    fn name(&self) -> String {
        match self {
            Self::Int(v) => v.to_string(),
            Self::Float(v) => v.to_string(),
            Self::Name(s) => s.clone(),
        }
    }
}

struct RawExample {
    a: String,
    b: Option<String>,
    label: RawLabel,
    at: Location,
}

/// The field `name` of a row; a dotted name (`doc.question`) reaches into nested objects when no
/// field has that exact name.
pub fn field<'a>(row: &'a Row, name: &str) -> Option<&'a Value> {
    if let Some(v) = row.fields.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut v = row.fields.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

fn text_field(path: &Path, row: &Row, name: &str) -> Result<String> {
    match field(row, name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Null) | None => Err(row_err(
            path,
            row.at,
            format!("no field `{name}` (fields here: {})", field_names(row)),
        )),
        Some(other) => Err(row_err(
            path,
            row.at,
            format!("field `{name}` should be a string, found {}", kind(other)),
        )),
    }
}

fn field_names(row: &Row) -> String {
    let names: Vec<&str> = row.fields.keys().map(String::as_str).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn raw_label(path: &Path, row: &Row, name: &str) -> Result<RawLabel> {
    let bad = |what: String| row_err(path, row.at, format!("field `{name}` {what}"));
    match field(row, name) {
        None | Some(Value::Null) => Err(row_err(
            path,
            row.at,
            format!(
                "no field `{name}` (fields here: {}); name the label column with --label-column",
                field_names(row)
            ),
        )),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(RawLabel::Int(v)),
            (None, Some(v)) if v.is_finite() => Ok(RawLabel::Float(v)),
            _ => Err(bad(format!("is {n}, not a usable label"))),
        },
        Some(Value::Bool(b)) => Ok(RawLabel::Name(b.to_string())),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                return Err(bad("is empty".into()));
            }
            Ok(match (s.parse::<u64>(), s.parse::<f64>()) {
                (Ok(v), _) => RawLabel::Int(v),
                (_, Ok(v)) if v.is_finite() => RawLabel::Float(v),
                _ => RawLabel::Name(s.to_string()),
            })
        }
        Some(other) => Err(bad(format!(
            "should be a name or an integer, found {}",
            kind(other)
        ))),
    }
}

fn read_raw(path: &Path, columns: &Columns) -> Result<Vec<RawExample>> {
    let mut out = Vec::new();
    for row in rows(path)? {
        let row = row?;
        let pair_name = columns.pair.as_deref().unwrap_or("text_pair");
        let b = match field(&row, pair_name) {
            None | Some(Value::Null) if columns.pair.is_none() => None,
            _ => Some(text_field(path, &row, pair_name)?),
        };
        out.push(RawExample {
            a: text_field(path, &row, &columns.text)?,
            b,
            label: raw_label(path, &row, &columns.label)?,
            at: row.at,
        });
    }
    if out.is_empty() {
        return Err(data_err(path, "holds no rows"));
    }
    Ok(out)
}

/// A classification dataset: examples and the names of their classes.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledData {
    /// Training examples.
    pub train: Vec<Example>,
    /// Evaluation examples.
    pub eval: Vec<Example>,
    /// Class names, by class index.
    pub labels: Vec<String>,
}

/// The label set of the training rows: integers `0..=max` when every label is an integer, else
/// the distinct names sorted (as `datasets`' `class_encode_column`).
fn label_set(path: &Path, train: &[RawExample]) -> Result<Vec<String>> {
    let ints: Option<Vec<u64>> = train
        .iter()
        .map(|e| match e.label {
            RawLabel::Int(v) => Some(v),
            _ => None,
        })
        .collect();
    let labels: Vec<String> = match ints {
        Some(v) => {
            let max = v.iter().copied().max().unwrap_or(0);
            if max >= 10_000 {
                return Err(data_err(
                    path,
                    format!(
                        "the largest integer label is {max}; class labels are 0..n-1 for n classes"
                    ),
                ));
            }
            (0..=max).map(|i| i.to_string()).collect()
        }
        None => train
            .iter()
            .map(|e| e.label.name())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    if labels.len() < 2 {
        return Err(data_err(
            path,
            format!(
                "every row has the label `{}`; classification needs at least two classes",
                labels.first().map_or("", String::as_str)
            ),
        ));
    }
    Ok(labels)
}

fn resolve(path: &Path, raw: Vec<RawExample>, labels: &[String]) -> Result<Vec<Example>> {
    raw.into_iter()
        .map(|e| {
            let name = e.label.name();
            let label = labels.iter().position(|l| *l == name).ok_or_else(|| {
                row_err(
                    path,
                    e.at,
                    format!(
                        "label `{name}` does not occur in the training data (labels: {})",
                        labels.join(", ")
                    ),
                )
            })?;
            Ok(Example {
                a: e.a,
                b: e.b,
                label,
            })
        })
        .collect()
}

/// Whether any label of `path` is a score (a non-integer number), making the file a regression.
pub fn has_scores(path: &Path, columns: &Columns) -> Result<bool> {
    for row in rows(path)? {
        let row = row?;
        if let RawLabel::Float(_) = raw_label(path, &row, &columns.label)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One example with a score to regress on.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The text (for pairs: the first).
    pub a: String,
    /// The second text of a pair.
    pub b: Option<String>,
    /// The target.
    pub score: f32,
}

/// A regression dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredData {
    /// Training examples.
    pub train: Vec<Scored>,
    /// Evaluation examples.
    pub eval: Vec<Scored>,
}

fn scores(path: &Path, raw: Vec<RawExample>) -> Result<Vec<Scored>> {
    raw.into_iter()
        .map(|e| {
            let score = match e.label {
                RawLabel::Int(v) => v as f64,
                RawLabel::Float(v) => v,
                RawLabel::Name(s) => {
                    return Err(row_err(
                        path,
                        e.at,
                        format!("label `{s}` is not a number; a regression needs numeric labels"),
                    ));
                }
            };
            Ok(Scored {
                a: e.a,
                b: e.b,
                score: score as f32,
            })
        })
        .collect()
}

/// Read a regression dataset (numeric labels): `train`, and `eval` or a seeded `eval_split`.
pub fn read_scored(
    train: &Path,
    eval: Option<&Path>,
    eval_split: f64,
    seed: u64,
    columns: &Columns,
) -> Result<ScoredData> {
    let raw_train = read_raw(train, columns)?;
    let (t, e, eval_path) = match eval {
        Some(p) => (raw_train, read_raw(p, columns)?, p),
        None => {
            let (t, e) = split_off(raw_train, eval_split, seed);
            (t, e, train)
        }
    };
    Ok(ScoredData {
        train: scores(train, t)?,
        eval: scores(eval_path, e)?,
    })
}

/// The examples of `path` labelled with the class names `labels` (those of a trained run; a
/// label outside them is an error).
pub fn read_with_labels(path: &Path, columns: &Columns, labels: &[String]) -> Result<Vec<Example>> {
    resolve(path, read_raw(path, columns)?, labels)
}

/// A seeded split of `items`: `(train, held-out)`, the held-out part `fraction` of them (at
/// least one, and at least one left to train on).
pub fn split_off<T>(mut items: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    items.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_e7a1));
    let n = items.len();
    let held = ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1).max(1));
    let eval = items.split_off(n - held);
    (items, eval)
}

/// Read a classification dataset: `train`, and `eval` or a seeded `eval_split` of `train`.
/// Labels are taken from the training rows; one seen only in `eval` is an error.
pub fn read_labelled(
    train: &Path,
    eval: Option<&Path>,
    eval_split: f64,
    seed: u64,
    columns: &Columns,
) -> Result<LabelledData> {
    let raw_train = read_raw(train, columns)?;
    if let Some(e) = raw_train
        .iter()
        .find(|e| matches!(e.label, RawLabel::Float(_)))
    {
        return Err(row_err(
            train,
            e.at,
            format!(
                "label `{}` is a score, not a class; scores are a regression (read them with read_scored)",
                e.label.name()
            ),
        ));
    }
    let (raw_train, raw_eval, eval_path) = match eval {
        Some(p) => (raw_train, read_raw(p, columns)?, p),
        None => {
            if raw_train.len() < 2 {
                return Err(data_err(
                    train,
                    "holds one row; a held-out split needs at least two (or pass --eval-data)",
                ));
            }
            let (t, e) = split_off(raw_train, eval_split, seed);
            (t, e, train)
        }
    };
    let labels = label_set(train, &raw_train)?;
    Ok(LabelledData {
        train: resolve(train, raw_train, &labels)?,
        eval: resolve(eval_path, raw_eval, &labels)?,
        labels,
    })
}

/// One supervised fine-tuning example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SftExample {
    /// Plain text: causal language modelling on every token.
    Text(String),
    /// A prompt and its completion (plain text, no template): loss on the completion.
    Completion {
        /// The prompt.
        prompt: String,
        /// The completion.
        completion: String,
    },
    /// A conversation, rendered with the chat template: loss on the assistant's turns.
    Chat(Vec<Message>),
}

impl SftExample {
    /// Whether the example needs the model's chat template.
    pub fn is_chat(&self) -> bool {
        matches!(self, Self::Chat(_))
    }
}

fn messages(path: &Path, at: Location, field: &str, v: &Value) -> Result<Vec<Message>> {
    let Value::Array(items) = v else {
        return Err(row_err(
            path,
            at,
            format!(
                "field `{field}` should be a list of messages, found {}",
                kind(v)
            ),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let get = |key: &str| match m.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(row_err(
                    path,
                    at,
                    format!("`{field}[{i}].{key}` should be a string, found {}", kind(other)),
                )),
                None => Err(row_err(
                    path,
                    at,
                    format!("`{field}[{i}]` has no `{key}` (a message is {{\"role\": ..., \"content\": ...}})"),
                )),
            };
            Ok(Message::new(get("role")?, get("content")?))
        })
        .collect()
}

/// Which fields of an SFT row are its prompt and completion, when they are not named `prompt`
/// and `completion` (dotted names reach into nested objects).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SftColumns {
    /// The prompt's field.
    pub prompt: Option<String>,
    /// The completion's field.
    pub completion: Option<String>,
}

/// One row as an SFT example: with `columns` named, their prompt and completion; else by the
/// fields it has: `messages`; `prompt` + `completion` (strings, or lists of messages);
/// `instruction` + `output` (+ `input`, `system`: alpaca, made a conversation); `text`.
pub fn sft_example(path: &Path, row: &Row, columns: &SftColumns) -> Result<SftExample> {
    let f = &row.fields;
    let at = row.at;
    let string = |key: &str| text_field(path, row, key);
    if columns.prompt.is_some() || columns.completion.is_some() {
        return Ok(SftExample::Completion {
            prompt: string(columns.prompt.as_deref().unwrap_or("prompt"))?,
            completion: string(columns.completion.as_deref().unwrap_or("completion"))?,
        });
    }
    if let Some(m) = f.get("messages").or_else(|| f.get("conversations")) {
        let field = if f.contains_key("messages") {
            "messages"
        } else {
            "conversations"
        };
        let turns = messages(path, at, field, m)?;
        if !turns.iter().any(|t| t.role == "assistant") {
            return Err(row_err(
                path,
                at,
                format!("`{field}` has no assistant turn, so nothing would be learned"),
            ));
        }
        return Ok(SftExample::Chat(turns));
    }
    if f.contains_key("prompt") || f.contains_key("completion") {
        return match (f.get("prompt"), f.get("completion")) {
            (Some(p @ Value::Array(_)), Some(c @ Value::Array(_))) => {
                let mut turns = messages(path, at, "prompt", p)?;
                turns.extend(messages(path, at, "completion", c)?);
                Ok(SftExample::Chat(turns))
            }
            _ => Ok(SftExample::Completion {
                prompt: string("prompt")?,
                completion: string("completion")?,
            }),
        };
    }
    if f.contains_key("instruction") || f.contains_key("output") {
        let mut turns = Vec::new();
        if let Some(Value::String(s)) = f.get("system")
            && !s.is_empty()
        {
            turns.push(Message::new("system", s.clone()));
        }
        let mut user = string("instruction")?;
        match f.get("input") {
            Some(Value::String(s)) if !s.is_empty() => {
                user.push('\n');
                user.push_str(s);
            }
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(other) => {
                return Err(row_err(
                    path,
                    at,
                    format!("field `input` should be a string, found {}", kind(other)),
                ));
            }
        }
        turns.push(Message::new("user", user));
        turns.push(Message::new("assistant", string("output")?));
        return Ok(SftExample::Chat(turns));
    }
    if f.contains_key("text") {
        return Ok(SftExample::Text(string("text")?));
    }
    Err(row_err(
        path,
        at,
        format!(
            "no SFT fields (fields here: {}); give `text`, `prompt` and `completion`, `messages`, or `instruction` and `output`",
            field_names(row)
        ),
    ))
}

/// Read an SFT dataset: `(train, eval)`, the latter from `eval` or a seeded `eval_split`.
pub fn read_sft(
    train: &Path,
    eval: Option<&Path>,
    eval_split: f64,
    seed: u64,
    columns: &SftColumns,
) -> Result<(Vec<SftExample>, Vec<SftExample>)> {
    let all = read_sft_file(train, columns)?;
    match eval {
        Some(p) => Ok((all, read_sft_file(p, columns)?)),
        None if all.len() < 2 => Err(data_err(
            train,
            "holds one row; a held-out split needs at least two (or pass --eval-data)",
        )),
        None => Ok(split_off(all, eval_split, seed)),
    }
}

/// Every row of an SFT file.
pub fn read_sft_file(path: &Path, columns: &SftColumns) -> Result<Vec<SftExample>> {
    let mut out = Vec::new();
    for row in rows(path)? {
        out.push(sft_example(path, &row?, columns)?);
    }
    if out.is_empty() {
        return Err(data_err(path, "holds no rows"));
    }
    Ok(out)
}
