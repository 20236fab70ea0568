//! A user's dataset: the rows of [`super::table`] turned into classification examples (a text,
//! an optional second text, a label) or supervised fine-tuning examples (TRL's `text`,
//! `prompt`/`completion` and `messages` formats, and alpaca's `instruction`/`input`/`output`),
//! with a held-out split drawn by seed when no evaluation file is given. Every malformed row is
//! an error naming the file, the line (or row) and the field.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use gralora_models::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::files::{Example, data_err};
use super::items::{Items, Spillable};
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

/// The rows of a classification or regression file, streamed into a spill file: each row's
/// texts stay on disk (as an [`Example`] whose `label` is the id of its raw label), and memory
/// keeps 16 bytes a row (the spill index and the label id) plus the distinct labels.
struct Streamed {
    rows: Items<Example>,
    /// Per row, in file order: its label's id (an index into `names`).
    label_ids: Vec<u32>,
    /// The distinct raw labels, by id.
    names: Vec<RawLabel>,
    /// The first row whose label is a score (a non-integer number), and that label.
    first_score: Option<(Location, String)>,
}

/// More distinct labels than this in a classification file is an error (a text column read as
/// the label); a regression file is not interned.
const MAX_CLASSES: usize = 10_000;

fn pair_text(path: &Path, row: &Row, columns: &Columns) -> Result<Option<String>> {
    let pair_name = columns.pair.as_deref().unwrap_or("text_pair");
    Ok(match field(row, pair_name) {
        None | Some(Value::Null) if columns.pair.is_none() => None,
        _ => Some(text_field(path, row, pair_name)?),
    })
}

fn stream_labelled(path: &Path, columns: &Columns) -> Result<Streamed> {
    let mut label_ids = Vec::new();
    let mut names: Vec<RawLabel> = Vec::new();
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut first_score = None;
    let rows = rows(path)?.map(|row| -> Result<Example> {
        let row = row?;
        let b = pair_text(path, &row, columns)?;
        let a = text_field(path, &row, &columns.text)?;
        let label = raw_label(path, &row, &columns.label)?;
        let name = label.name();
        if matches!(label, RawLabel::Float(_)) && first_score.is_none() {
            first_score = Some((row.at, name.clone()));
        }
        let id = match ids.get(&name) {
            Some(&id) => id,
            None => {
                if names.len() == MAX_CLASSES {
                    return Err(row_err(
                        path,
                        row.at,
                        format!(
                            "field `{}` has over {MAX_CLASSES} distinct values; name the class column with --label-column (scores train as a regression: --regression)",
                            columns.label
                        ),
                    ));
                }
                let id = names.len() as u32;
                ids.insert(name, id);
                names.push(label);
                id
            }
        };
        label_ids.push(id);
        Ok(Example {
            a,
            b,
            label: id as usize,
        })
    });
    let rows = Items::spilled_rows(rows)?;
    if rows.is_empty() {
        return Err(data_err(path, "holds no rows"));
    }
    Ok(Streamed {
        rows,
        label_ids,
        names,
        first_score,
    })
}

/// Where row `i` (0-based, in file order) of `path` is, for an error found after streaming.
fn location_of(path: &Path, i: usize) -> Result<Location> {
    match rows(path)?.nth(i) {
        Some(row) => Ok(row?.at),
        None => Err(data_err(path, format!("row {i} vanished while reading"))),
    }
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

/// A classification dataset kept in spill files ([`Items`]): what [`labelled_items`] reads.
#[derive(Debug, Clone)]
pub struct LabelledItems {
    /// Training examples.
    pub train: Items<Example>,
    /// Evaluation examples.
    pub eval: Items<Example>,
    /// Class names, by class index.
    pub labels: Vec<String>,
}

/// The label set of the training rows: integers `0..=max` when every label is an integer, else
/// the distinct names sorted (as `datasets`' `class_encode_column`).
fn label_set(path: &Path, train: &[&RawLabel]) -> Result<Vec<String>> {
    let ints: Option<Vec<u64>> = train
        .iter()
        .map(|l| match l {
            RawLabel::Int(v) => Some(*v),
            _ => None,
        })
        .collect();
    let labels: Vec<String> = match ints {
        Some(v) => {
            let max = v.iter().copied().max().unwrap_or(0);
            if max >= MAX_CLASSES as u64 {
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
            .map(|l| l.name())
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

/// Rows `picked` of `s` (read from `path`) with their labels made class indices of `labels`; a
/// label outside them is an error naming its row (the first such in `picked`'s order).
fn resolve(
    path: &Path,
    s: &Streamed,
    picked: &[usize],
    labels: &[String],
) -> Result<Items<Example>> {
    let class: Vec<Option<usize>> = s
        .names
        .iter()
        .map(|n| {
            let name = n.name();
            labels.iter().position(|l| *l == name)
        })
        .collect();
    if let Some(&i) = picked
        .iter()
        .find(|&&i| class[s.label_ids[i] as usize].is_none())
    {
        let name = s.names[s.label_ids[i] as usize].name();
        return Err(row_err(
            path,
            location_of(path, i)?,
            format!(
                "label `{name}` does not occur in the training data (labels: {})",
                labels.join(", ")
            ),
        ));
    }
    let class: Vec<usize> = class.into_iter().map(|c| c.unwrap_or(0)).collect();
    Ok(s.rows.select(picked).map_on_read(move |mut e| {
        e.label = class[e.label];
        e
    }))
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// A regression dataset kept in spill files: what [`scored_items`] reads.
#[derive(Debug, Clone)]
pub struct ScoredItems {
    /// Training examples.
    pub train: Items<Scored>,
    /// Evaluation examples.
    pub eval: Items<Scored>,
}

fn stream_scored(path: &Path, columns: &Columns) -> Result<Items<Scored>> {
    let rows = rows(path)?.map(|row| -> Result<Scored> {
        let row = row?;
        let b = pair_text(path, &row, columns)?;
        let a = text_field(path, &row, &columns.text)?;
        let score = match raw_label(path, &row, &columns.label)? {
            RawLabel::Int(v) => v as f64,
            RawLabel::Float(v) => v,
            RawLabel::Name(s) => {
                return Err(row_err(
                    path,
                    row.at,
                    format!("label `{s}` is not a number; a regression needs numeric labels"),
                ));
            }
        };
        Ok(Scored {
            a,
            b,
            score: score as f32,
        })
    });
    let items = Items::spilled_rows(rows)?;
    if items.is_empty() {
        return Err(data_err(path, "holds no rows"));
    }
    Ok(items)
}

/// Read a regression dataset (numeric labels) into spill files: `train`, and `eval` or a
/// seeded `eval_split`.
pub fn scored_items(
    train: &Path,
    eval: Option<&Path>,
    eval_split: f64,
    seed: u64,
    columns: &Columns,
) -> Result<ScoredItems> {
    let all = stream_scored(train, columns)?;
    let (train, eval) = match eval {
        Some(p) => (all, stream_scored(p, columns)?),
        None => split_items(&all, eval_split, seed),
    };
    Ok(ScoredItems { train, eval })
}

/// Read a regression dataset (numeric labels): `train`, and `eval` or a seeded `eval_split`.
pub fn read_scored(
    train: &Path,
    eval: Option<&Path>,
    eval_split: f64,
    seed: u64,
    columns: &Columns,
) -> Result<ScoredData> {
    let d = scored_items(train, eval, eval_split, seed, columns)?;
    Ok(ScoredData {
        train: d.train.to_vec()?,
        eval: d.eval.to_vec()?,
    })
}

/// The examples of `path` labelled with the class names `labels` (those of a trained run; a
/// label outside them is an error), kept in a spill file.
pub fn items_with_labels(
    path: &Path,
    columns: &Columns,
    labels: &[String],
) -> Result<Items<Example>> {
    let s = stream_labelled(path, columns)?;
    let all: Vec<usize> = (0..s.rows.len()).collect();
    resolve(path, &s, &all, labels)
}

/// The examples of `path` labelled with the class names `labels` (those of a trained run; a
/// label outside them is an error).
pub fn read_with_labels(path: &Path, columns: &Columns, labels: &[String]) -> Result<Vec<Example>> {
    Ok(items_with_labels(path, columns, labels)?.to_vec()?)
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

/// [`split_off`] of a spilled list: the same rows as `split_off` of the list in memory.
pub fn split_items<T: Spillable>(
    items: &Items<T>,
    fraction: f64,
    seed: u64,
) -> (Items<T>, Items<T>) {
    let (t, e) = split_off((0..items.len()).collect(), fraction, seed);
    (items.select(&t), items.select(&e))
}

/// Read a classification dataset into spill files: `train`, and `eval` or a seeded
/// `eval_split` of `train`. Labels are taken from the training rows; one seen only in `eval` is
/// an error.
pub fn labelled_items(
    train: &Path,
    eval: Option<&Path>,
    eval_split: f64,
    seed: u64,
    columns: &Columns,
) -> Result<LabelledItems> {
    let s = stream_labelled(train, columns)?;
    if let Some((at, name)) = &s.first_score {
        return Err(row_err(
            train,
            *at,
            format!(
                "label `{name}` is a score, not a class; scores are a regression (read them with read_scored)"
            ),
        ));
    }
    let n = s.rows.len();
    let (train_rows, eval_rows) = match eval {
        Some(_) => ((0..n).collect(), Vec::new()),
        None => {
            if n < 2 {
                return Err(data_err(
                    train,
                    "holds one row; a held-out split needs at least two (or pass --eval-data)",
                ));
            }
            split_off((0..n).collect(), eval_split, seed)
        }
    };
    let present: BTreeSet<u32> = train_rows.iter().map(|&i| s.label_ids[i]).collect();
    let train_labels: Vec<&RawLabel> = present.iter().map(|&id| &s.names[id as usize]).collect();
    let labels = label_set(train, &train_labels)?;
    let eval_items = match eval {
        Some(p) => {
            let e = stream_labelled(p, columns)?;
            let all: Vec<usize> = (0..e.rows.len()).collect();
            resolve(p, &e, &all, &labels)?
        }
        None => resolve(train, &s, &eval_rows, &labels)?,
    };
    Ok(LabelledItems {
        train: resolve(train, &s, &train_rows, &labels)?,
        eval: eval_items,
        labels,
    })
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
    let d = labelled_items(train, eval, eval_split, seed, columns)?;
    Ok(LabelledData {
        train: d.train.to_vec()?,
        eval: d.eval.to_vec()?,
        labels: d.labels,
    })
}

/// One supervised fine-tuning example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// Read an SFT dataset into spill files: `(train, eval)`, the latter from `eval` or a seeded
/// `eval_split`.
pub fn sft_items(
    train: &Path,
    eval: Option<&Path>,
    eval_split: f64,
    seed: u64,
    columns: &SftColumns,
) -> Result<(Items<SftExample>, Items<SftExample>)> {
    let all = sft_file_items(train, columns)?;
    match eval {
        Some(p) => Ok((all, sft_file_items(p, columns)?)),
        None if all.len() < 2 => Err(data_err(
            train,
            "holds one row; a held-out split needs at least two (or pass --eval-data)",
        )),
        None => Ok(split_items(&all, eval_split, seed)),
    }
}

/// Read an SFT dataset: `(train, eval)`, the latter from `eval` or a seeded `eval_split`.
pub fn read_sft(
    train: &Path,
    eval: Option<&Path>,
    eval_split: f64,
    seed: u64,
    columns: &SftColumns,
) -> Result<(Vec<SftExample>, Vec<SftExample>)> {
    let (t, e) = sft_items(train, eval, eval_split, seed, columns)?;
    Ok((t.to_vec()?, e.to_vec()?))
}

/// Every row of an SFT file, kept in a spill file.
pub fn sft_file_items(path: &Path, columns: &SftColumns) -> Result<Items<SftExample>> {
    let rows = rows(path)?.map(|row| sft_example(path, &row?, columns));
    let items = Items::spilled_rows(rows)?;
    if items.is_empty() {
        return Err(data_err(path, "holds no rows"));
    }
    Ok(items)
}

/// Every row of an SFT file.
pub fn read_sft_file(path: &Path, columns: &SftColumns) -> Result<Vec<SftExample>> {
    Ok(sft_file_items(path, columns)?.to_vec()?)
}
