//! Decoder tasks: the commonsense suite as multiple choice. Training uses the causal-LM loss on
//! the gold answer after the prompt (the loss is masked to the answer tokens); evaluation picks
//! the choice with the highest per-token-normalised log-likelihood.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, ExecutionError, Int, Tensor, TensorData};
use burn::train::metric::{Adaptor, ItemLazy, LossInput};
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use gralora_models::{Llama, TextTokenizer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Deserialize;

use crate::classify::LossGuard;
use crate::data::data_err;
use crate::error::{Result, TrainError};
use crate::steps::{Batching, ResumePoint, SeededLoader};

/// A multiple-choice task of the commonsense suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McTask {
    /// BoolQ (yes/no after a passage).
    Boolq,
    /// PIQA.
    Piqa,
    /// Social IQa.
    Siqa,
    /// HellaSwag.
    Hellaswag,
    /// WinoGrande (partial evaluation: the option fills the blank, the rest is scored).
    Winogrande,
    /// ARC-Easy.
    ArcE,
    /// ARC-Challenge.
    ArcC,
    /// OpenBookQA.
    Obqa,
}

/// Names `--task` accepts for decoders (`commonsense` = all eight mixed).
pub const MC_TASKS: &[&str] = &[
    "boolq",
    "piqa",
    "siqa",
    "hellaswag",
    "winogrande",
    "arc-e",
    "arc-c",
    "obqa",
    "commonsense",
];

impl FromStr for McTask {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "boolq" => Self::Boolq,
            "piqa" => Self::Piqa,
            "siqa" | "socialiqa" => Self::Siqa,
            "hellaswag" => Self::Hellaswag,
            "winogrande" => Self::Winogrande,
            "arc-e" | "arc_easy" | "arc-easy" => Self::ArcE,
            "arc-c" | "arc_challenge" | "arc-challenge" => Self::ArcC,
            "obqa" | "openbookqa" => Self::Obqa,
            other => {
                return Err(TrainError::Usage(format!(
                    "unknown decoder task `{other}`; use one of {}",
                    MC_TASKS.join(", ")
                )));
            }
        })
    }
}

impl McTask {
    /// All eight, in the papers' order.
    pub const ALL: [McTask; 8] = [
        Self::Boolq,
        Self::Piqa,
        Self::Siqa,
        Self::Hellaswag,
        Self::Winogrande,
        Self::ArcE,
        Self::ArcC,
        Self::Obqa,
    ];

    /// Directory under `commonsense/` in the asset cache.
    pub fn dir(self) -> &'static str {
        match self {
            Self::Boolq => "boolq",
            Self::Piqa => "piqa",
            Self::Siqa => "socialiqa",
            Self::Hellaswag => "hellaswag",
            Self::Winogrande => "winogrande",
            Self::ArcE => "arc_easy",
            Self::ArcC => "arc_challenge",
            Self::Obqa => "openbookqa",
        }
    }

    /// The train and validation files (OLMo's 5-shot requests; only each example's `doc` is used).
    pub fn files(self) -> [String; 2] {
        let d = self.dir();
        [
            format!("commonsense/{d}/train_rc_5shot/requests.jsonl.gz"),
            format!("commonsense/{d}/val_rc_5shot/requests.jsonl.gz"),
        ]
    }
}

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
    let reader = crate::data::json_lines(path)?;
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

/// Train and validation examples of `tasks` (several: mixed and shuffled by the loader).
pub fn load(tasks: &[McTask], home: &Path) -> Result<(Vec<McExample>, Vec<McExample>)> {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for t in tasks {
        let [a, b] = t.files();
        train.extend(read_mc(&home.join(a))?);
        val.extend(read_mc(&home.join(b))?);
    }
    Ok((train, val))
}

/// A tokenised training sequence: prompt + gold answer; loss on the answer only.
#[derive(Debug, Clone)]
pub struct LmItem {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Index of the first answer token.
    pub answer_start: usize,
}

fn encode_choice(
    tok: &TextTokenizer,
    context: &str,
    continuation: &str,
    max_len: usize,
) -> Result<(Vec<u32>, usize)> {
    let mut ids = tok.encode(context, true)?.ids;
    let cont = tok.encode(continuation, false)?.ids;
    let cont = &cont[..cont.len().min(max_len / 2).max(1).min(cont.len())];
    // Keep the end of a long prompt.
    let room = max_len.saturating_sub(cont.len()).max(1);
    if ids.len() > room {
        ids.drain(..ids.len() - room);
    }
    let start = ids.len();
    ids.extend_from_slice(cont);
    Ok((ids, start))
}

/// Tokenise the gold choice of each example.
pub fn training_items(
    tok: &TextTokenizer,
    examples: &[McExample],
    max_len: usize,
) -> Result<Vec<LmItem>> {
    examples
        .iter()
        .map(|e| {
            let (ids, answer_start) =
                encode_choice(tok, &e.contexts[e.gold], &e.continuations[e.gold], max_len)?;
            Ok(LmItem { ids, answer_start })
        })
        .collect()
}

/// A right-padded batch. Only the answer positions reach the vocabulary projection.
#[derive(Debug, Clone)]
pub struct LmBatch {
    /// `[b, t]` inputs (sequence minus its last token).
    pub ids: Tensor<2, Int>,
    /// `[b, t]` 1 for real tokens.
    pub mask: Tensor<2>,
    /// `[n]` flat indices `row·t + j` of the positions whose next token is an answer token.
    pub positions: Tensor<1, Int>,
    /// `[n]` the answer tokens predicted there.
    pub targets: Tensor<1, Int>,
    /// The row of each of the `n` positions.
    pub rows: Vec<usize>,
}

impl LmBatch {
    /// Pad `items` into a batch as long as its longest input.
    pub fn new(items: &[&LmItem], device: &Device) -> Self {
        Self::padded(items, 1, usize::MAX, device)
    }

    /// Pad `items` into a batch whose length is the longest input rounded up to a multiple of
    /// `multiple`, unless that would pass `max_len` (then the longest input's own length).
    /// Padding is masked and predicts nothing.
    pub fn padded(items: &[&LmItem], multiple: usize, max_len: usize, device: &Device) -> Self {
        let longest = items
            .iter()
            .map(|i| i.ids.len() - 1)
            .max()
            .unwrap_or(1)
            .max(1);
        let rounded = longest.next_multiple_of(multiple.max(1));
        let t = if rounded <= max_len { rounded } else { longest };
        let b = items.len();
        let mut ids = vec![0i64; b * t];
        let mut mask = vec![0f32; b * t];
        let (mut pos, mut tg, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        for (r, item) in items.iter().enumerate() {
            for j in 0..item.ids.len() - 1 {
                ids[r * t + j] = item.ids[j] as i64;
                mask[r * t + j] = 1.0;
                if j + 1 >= item.answer_start {
                    pos.push((r * t + j) as i64);
                    tg.push(item.ids[j + 1] as i64);
                    rows.push(r);
                }
            }
        }
        let n = pos.len();
        Self {
            ids: Tensor::from_data(TensorData::new(ids, [b, t]), device),
            mask: Tensor::from_data(TensorData::new(mask, [b, t]), device),
            positions: Tensor::from_data(TensorData::new(pos, [n]), device),
            targets: Tensor::from_data(TensorData::new(tg, [n]), device),
            rows,
        }
    }
}

/// `[n]` log-probabilities of the batch's answer tokens.
pub fn answer_log_probs(model: &Llama, batch: LmBatch) -> Tensor<1> {
    let hidden = model.forward_hidden(batch.ids, Some(batch.mask), None);
    let [b, t, d] = hidden.dims();
    let picked: Tensor<2> = hidden.reshape([b * t, d]).select(0, batch.positions);
    let logp = log_softmax(model.logits(picked), 1);
    let n = batch.rows.len();
    logp.gather(1, batch.targets.reshape([n, 1])).reshape([n])
}

/// The training item burn-train's metrics see.
pub struct LmOutput {
    /// Mean loss over answer tokens.
    pub loss: Tensor<1>,
}

impl ItemLazy for LmOutput {
    fn sync(self) -> std::result::Result<Self, ExecutionError> {
        self.loss.device().flush()?;
        Ok(Self {
            loss: self.loss.without_autodiff(),
        })
    }
}

impl Adaptor<LossInput> for LmOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

/// A decoder trained with the answer-masked causal-LM loss.
#[derive(Module, Debug)]
pub struct CausalLm {
    /// The decoder.
    pub model: Llama,
    /// Loss multiplier (1 / gradient accumulation).
    pub loss_scale: f64,
    #[module(skip)]
    guard: LossGuard,
}

impl CausalLm {
    /// Wrap a decoder.
    pub fn new(model: Llama, loss_scale: f64, guard: LossGuard) -> Self {
        Self {
            model,
            loss_scale,
            guard,
        }
    }

    /// Mean negative log-likelihood of the answer tokens.
    pub fn loss(&self, batch: LmBatch) -> Tensor<1> {
        answer_log_probs(&self.model, batch).mean().neg()
    }
}

impl TrainStep for CausalLm {
    type Input = LmBatch;
    type Output = LmOutput;
    fn step(&self, batch: LmBatch) -> TrainOutput<LmOutput> {
        let loss = self.loss(batch);
        self.guard.check(loss.clone().into_scalar());
        let scaled = if self.loss_scale == 1.0 {
            loss.clone()
        } else {
            loss.clone() * self.loss_scale
        };
        TrainOutput::new(self, scaled.backward(), LmOutput { loss })
    }
}

impl InferenceStep for CausalLm {
    type Input = LmBatch;
    type Output = LmOutput;
    fn step(&self, batch: LmBatch) -> LmOutput {
        LmOutput {
            loss: self.loss(batch),
        }
    }
}

/// Batches of [`LmItem`]s for [`SeededLoader`]: padded like the encoder's
/// ([`crate::classify::ClassBatching::for_device`]): to the longest input on the CPU, to a
/// multiple of [`crate::classify::GPU_LEN_MULTIPLE`] on a GPU (fewer distinct lengths, fewer
/// kernels to compile), never past the model's context.
#[derive(Debug, Clone, Copy)]
pub struct LmBatching {
    /// Batches are padded to a multiple of this length (1: to their longest input).
    pub multiple: usize,
    /// The model's context length: no batch is padded past it.
    pub max_len: usize,
}

impl LmBatching {
    /// The padding rule for `device` and a model of context `max_len`.
    pub fn for_device(max_len: usize, device: &Device) -> Self {
        Self {
            multiple: crate::classify::len_multiple(device),
            max_len,
        }
    }
}

impl Batching for LmBatching {
    type Item = LmItem;
    type Batch = LmBatch;
    fn tokens(item: &LmItem) -> usize {
        item.ids.len()
    }
    fn batch(&self, items: &[&LmItem], device: &Device) -> LmBatch {
        LmBatch::padded(items, self.multiple, self.max_len, device)
    }
}

/// The decoder tasks' loader.
pub type LmLoader = SeededLoader<LmBatching>;

/// Accuracy of choosing by per-token-normalised log-likelihood; `loss` is the mean per-token
/// negative log-likelihood of the gold choice.
pub fn evaluate_mc(
    model: &Llama,
    tok: &TextTokenizer,
    examples: &[McExample],
    max_len: usize,
    device: &Device,
) -> Result<crate::train::EvalMetrics> {
    let mut correct = 0usize;
    let mut nll = 0f64;
    for e in examples {
        let choices: Vec<(Vec<u32>, usize)> = e
            .contexts
            .iter()
            .zip(&e.continuations)
            .map(|(c, k)| encode_choice(tok, c, k, max_len))
            .collect::<Result<_>>()?;
        let items: Vec<LmItem> = choices
            .into_iter()
            .map(|(ids, answer_start)| LmItem { ids, answer_start })
            .collect();
        let refs: Vec<&LmItem> = items.iter().collect();
        let batch = LmBatch::new(&refs, device);
        let rows = batch.rows.clone();
        let values: Vec<f32> = answer_log_probs(model, batch)
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap_or_default();
        let mut sums = vec![0f64; items.len()];
        let mut counts = vec![0usize; items.len()];
        for (&r, &v) in rows.iter().zip(&values) {
            sums[r] += f64::from(v);
            counts[r] += 1;
        }
        let scores: Vec<f32> = sums
            .iter()
            .zip(&counts)
            .map(|(s, &c)| (s / c.max(1) as f64) as f32)
            .collect();
        let best = (0..scores.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap_or(0);
        correct += usize::from(best == e.gold);
        nll -= f64::from(scores.get(e.gold).copied().unwrap_or(f32::NAN));
    }
    let n = examples.len().max(1) as f64;
    Ok(crate::train::EvalMetrics {
        examples: examples.len(),
        accuracy: correct as f64 / n,
        f1: None,
        loss: nll / n,
    })
}

/// The tasks a decoder `--task` names (`commonsense` = all eight).
pub fn mc_tasks(name: &str) -> Result<Vec<McTask>> {
    if name.eq_ignore_ascii_case("commonsense") {
        Ok(McTask::ALL.to_vec())
    } else {
        Ok(vec![name.parse()?])
    }
}

/// Fine-tune a decoder on multiple-choice tasks (see [`crate::train::train`]).
pub(crate) fn train_decoder(
    run: crate::train::Run<'_>,
    llama: Llama,
    tok: TextTokenizer,
    report: crate::train::Report<'_>,
) -> Result<crate::train::Finished> {
    use crate::train::{
        DECODER_TARGETS, EvalMetrics, Finished, Method, RunMetrics, peak_rss_mib, trainable,
        write_json,
    };
    use burn::train::metric::LossMetric;
    use burn::train::{Interrupter, SupervisedTraining};
    use gralora::{AdaptOptions, attach_adapters};

    let config = run.config;
    let tasks = mc_tasks(&config.task).map_err(|_| {
        TrainError::Usage(format!(
            "{} is a decoder; the task `{}` is for encoders (e.g. --model minilm); decoder tasks: {}",
            config.model,
            config.task,
            MC_TASKS.join(", ")
        ))
    })?;
    if config.max_train == Some(0) {
        return Err(TrainError::Usage(
            "--max-train 0 leaves nothing to train on".into(),
        ));
    }
    let (train, val) = load(&tasks, run.home)?;
    let mixed = tasks.len() > 1;
    let train = crate::data::seeded_subset(train, config.max_train, config.seed, true);
    let val = crate::data::seeded_subset(val, config.max_eval, config.seed, mixed);
    report(&format!(
        "{}: {} train examples, {} validation examples",
        config.task,
        train.len(),
        val.len()
    ));
    let items = training_items(&tok, &train, config.max_len)?;
    let val_items = training_items(&tok, &val, config.max_len)?;
    std::fs::create_dir_all(run.out).map_err(|e| TrainError::io(run.out, e))?;
    if !run.resume && !run.dir.config().is_file() {
        write_json(&run.dir.config(), config)?;
    }
    // The untrained model's score, kept in the run directory for a resumed run.
    let baseline_path = run.out.join("baseline.json");
    let saved: Option<EvalMetrics> = run
        .resume
        .then(|| std::fs::read_to_string(&baseline_path).ok())
        .flatten()
        .and_then(|t| serde_json::from_str(&t).ok());
    let baseline = match saved {
        Some(m) => m,
        None => {
            let m = evaluate_mc(&llama, &tok, &val, config.max_len, run.device)?;
            report(&format!(
                "untrained accuracy {:.4} on {} examples",
                m.accuracy, m.examples
            ));
            write_json(&baseline_path, &m)?;
            m
        }
    };

    let ad = run.device.clone().autodiff();
    crate::steps::seed_device(run.device, config.seed);
    crate::steps::seed_device(&ad, config.seed);
    let mut llama = trainable(llama, config.method);
    let mut b_ids = Vec::new();
    if let Some(adapter) = config.adapter()? {
        let options = AdaptOptions::new(adapter, config.targets_or(DECODER_TARGETS));
        let r = attach_adapters(&mut llama, &options)?;
        report(format!("{r}").lines().last().unwrap_or_default());
        b_ids = crate::train::b_param_ids(&mut llama);
    }
    let mut gora_report = None;
    if config.method.is_gora() {
        let batches: Vec<Vec<usize>> = {
            let mut order: Vec<usize> = (0..items.len()).collect();
            order.shuffle(&mut StdRng::seed_from_u64(config.seed ^ 0x6f72));
            order
                .chunks(config.batch_size.max(1))
                .take(config.gora.steps)
                .map(<[usize]>::to_vec)
                .collect()
        };
        let adev = ad.clone();
        let items_ref = &items;
        let loss = move |m: &Llama, b: usize| {
            let refs: Vec<&LmItem> = batches[b % batches.len()]
                .iter()
                .map(|&i| &items_ref[i])
                .collect();
            crate::steps::seed_device(&adev, config.seed.wrapping_add(b as u64));
            answer_log_probs(m, LmBatch::new(&refs, &adev)).mean().neg()
        };
        let r = crate::gora::attach(
            &mut llama,
            config.targets_or(DECODER_TARGETS),
            &config.gora_config(),
            config.gora_k(),
            config.gora.steps,
            config.seed,
            &loss,
        )?;
        report(&r.to_string());
        b_ids = crate::train::b_param_ids(&mut llama);
        gora_report = Some(r);
    }
    let interrupter = Interrupter::new();
    let batching = LmBatching::for_device(llama.max_len, &ad);
    let loader = LmLoader::new(items, config.batch_size, Some(config.seed), batching, &ad);
    let batches_per_epoch = loader.num_batches();
    let resumed_from = run.dir.resume_point(run.resume, batches_per_epoch);
    let done = resumed_from.map_or(0, ResumePoint::epochs_done);
    let loader = loader.resume_from(resumed_from);
    let guard = LossGuard::new(interrupter.clone())
        .starting_at(resumed_from.map_or(0, |p| p.batches_done(batches_per_epoch)));
    let model = CausalLm::new(llama, 1.0 / config.grad_accum as f64, guard.clone());
    let trainable_params = crate::classify::trainable_params(&model);
    report(&format!("trainable parameters: {trainable_params}"));
    let train_examples = loader.items().len();
    let tokens = loader.token_count();
    let valid = LmLoader::new(val_items, config.batch_size, None, batching, run.device);
    let training = SupervisedTraining::new(run.dir.run(), Arc::new(loader), Arc::new(valid))
        .metrics((LossMetric::new(),));
    let fitted = crate::train::fit(
        training,
        model,
        crate::train::Fit {
            config,
            device: ad.clone(),
            batches_per_epoch,
            b_ids,
            interrupter,
            guard: &guard,
            resumed_from,
            dir: &run.dir,
            tokens,
        },
        report,
    )?;
    let epochs_done = run.dir.last_checkpoint().unwrap_or(config.epochs).max(done);
    let train_s = fitted.train_s;
    let tokens_per_s = fitted.tokens_per_s();
    let mut trained = fitted.result.model.model;
    let eval: EvalMetrics = evaluate_mc(&trained, &tok, &val, config.max_len, run.device)?;
    match config.method {
        Method::Full => {
            let source = gralora_models::ModelSource::resolve(&config.model, run.home)?;
            let cfg = match &source {
                gralora_models::ModelSource::Gguf(p) => gralora_models::LlamaConfig::from_gguf(
                    &gralora_models::gguf::GgufFile::open(p)?,
                )?,
                gralora_models::ModelSource::HfDir(d) => {
                    gralora_models::LlamaConfig::from_file(d.join("config.json"))?
                }
            };
            let snapshot = gralora_models::LoadedModel::Decoder {
                config: cfg,
                model: trained,
                tokenizer: tok,
            };
            snapshot.write_snapshot(&source, &run.out.join("model"))?;
        }
        _ => gralora::save_peft(&mut trained, run.out, Some(&config.model))?,
    }
    let metrics = RunMetrics {
        task: config.task.clone(),
        method: config.method,
        model: config.model.clone(),
        device: format!("{:?}", run.device),
        train_split: format!("{} train", config.task),
        train_examples,
        eval_split: format!("{} validation", config.task),
        eval,
        epochs: epochs_done,
        trainable_params,
        wall_s: run.started.elapsed().as_secs_f64(),
        train_s,
        tokens_per_s,
        peak_rss_mb: peak_rss_mib(),
        gora: gora_report,
        folds: None,
        accuracy_std: None,
        baseline_accuracy: Some(baseline.accuracy),
        resumed_from_epoch: resumed_from.map(ResumePoint::epochs_done),
        resumed_from_batch: resumed_from.map(|p| p.batches_done(batches_per_epoch)),
        seed: config.seed,
    };
    write_json(&run.dir.metrics(), &metrics)?;
    Ok(Finished {
        metrics,
        model: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(t: Tensor<1, Int>) -> Vec<i64> {
        t.into_data().convert::<i64>().try_to_vec().unwrap()
    }

    #[test]
    fn decoder_batches_pad_to_a_multiple_below_the_context_and_mask_the_padding() {
        let device = Device::flex();
        let items = [
            LmItem {
                ids: vec![5, 6, 7, 8],
                answer_start: 2,
            },
            LmItem {
                ids: vec![1, 2, 3, 4, 5, 6, 7],
                answer_start: 5,
            },
        ];
        let refs: Vec<&LmItem> = items.iter().collect();
        assert_eq!(LmBatching::for_device(2048, &device).multiple, 1, "CPU");

        let b = LmBatch::padded(&refs, 16, 2048, &device);
        assert_eq!(b.ids.dims(), [2, 16]);
        let mask: Vec<f32> = b.mask.into_data().convert::<f32>().try_to_vec().unwrap();
        assert_eq!(
            mask.iter().sum::<f32>(),
            3.0 + 6.0,
            "only real inputs count"
        );
        // Row 0 predicts ids[2..] from positions 1, 2; row 1 ids[5..] from positions 4, 5.
        assert_eq!(ints(b.positions), [1, 2, 16 + 4, 16 + 5]);
        assert_eq!(ints(b.targets), [7, 8, 6, 7]);
        assert_eq!(b.rows, [0, 0, 1, 1]);

        // Past the context, the batch keeps its longest input's length.
        let b = LmBatch::padded(&refs, 16, 10, &device);
        assert_eq!(b.ids.dims(), [2, 6]);
        assert_eq!(ints(b.positions), [1, 2, 6 + 4, 6 + 5]);
        assert_eq!(LmBatch::new(&refs, &device).ids.dims(), [2, 6]);
    }
}
