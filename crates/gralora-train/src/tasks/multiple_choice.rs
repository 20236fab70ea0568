//! Decoder tasks: the commonsense suite as multiple choice. Training uses the causal-LM loss on
//! the gold answer after the prompt (the loss is masked to the answer tokens); evaluation picks
//! the choice with the highest per-token-normalised log-likelihood.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, ExecutionError, Int, Tensor, TensorData};
use burn::train::metric::{Adaptor, ItemLazy, LossInput, LossMetric};
use burn::train::{InferenceStep, SupervisedTraining, TrainOutput, TrainStep};
use gralora_models::gguf::GgufFile;
use gralora_models::{Llama, LlamaConfig, LoadedModel, ModelSource, TextTokenizer};

use crate::data::{Items, McExample, read_mc, seeded_subset};
use crate::error::{Result, TrainError};
use crate::trainer::{
    Batching, DECODER_TARGETS, EvalMetrics, LossGuard, Method, Report, RunNames, SeededLoader,
    Session, TrainConfig, Workload, guarded_step, len_multiple, trainable,
};

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

/// Train and validation examples of `tasks` (several: mixed and shuffled by the loader).
pub fn load(tasks: &[McTask], home: &Path) -> Result<(Vec<McExample>, Vec<McExample>)> {
    crate::data::verify_assets(home, &["commonsense"])?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for t in tasks {
        let [a, b] = t.files();
        train.extend(read_mc(&home.join(a))?);
        val.extend(read_mc(&home.join(b))?);
    }
    Ok((train, val))
}

/// A tokenised training sequence and the tokens that carry the loss (a prompt's answer, a
/// completion, the assistant's turns, or everything after the first token).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LmItem {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Ranges of token indices predicted with loss (sorted, disjoint; index 0 is never
    /// predicted).
    pub targets: Vec<std::ops::Range<usize>>,
    /// A packed sequence: where its second and later examples start (empty: one example).
    /// Each example attends only to itself, with positions from 0.
    pub starts: Vec<usize>,
}

impl LmItem {
    /// A prompt + answer: loss on the tokens from `answer_start` on.
    pub fn answer(ids: Vec<u32>, answer_start: usize) -> Self {
        let n = ids.len();
        Self {
            ids,
            targets: std::iter::once(answer_start..n).collect(),
            starts: Vec::new(),
        }
    }

    /// Loss where `mask` is true.
    pub fn masked(ids: Vec<u32>, mask: &[bool]) -> Self {
        let mut targets: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, &m) in mask.iter().enumerate() {
            if !m {
                continue;
            }
            match targets.last_mut() {
                Some(r) if r.end == i => r.end = i + 1,
                _ => targets.push(i..i + 1),
            }
        }
        Self {
            ids,
            targets,
            starts: Vec::new(),
        }
    }

    /// Tokens predicted with loss.
    pub fn target_count(&self) -> usize {
        let n = self.ids.len();
        self.targets
            .iter()
            .map(|r| (r.start.max(1)..r.end.min(n)).len())
            .sum()
    }

    fn is_target(&self, i: usize) -> bool {
        i >= 1 && self.targets.iter().any(|r| r.contains(&i))
    }
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
            Ok(LmItem::answer(ids, answer_start))
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
    /// Packed rows: where each row's later examples start (`None`: no row is packed).
    pub starts: Option<Vec<Vec<usize>>>,
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
                if item.is_target(j + 1) {
                    pos.push((r * t + j) as i64);
                    tg.push(item.ids[j + 1] as i64);
                    rows.push(r);
                }
            }
        }
        let n = pos.len();
        gralora::kernels::host_write(4);
        Self {
            ids: Tensor::from_data(TensorData::new(ids, [b, t]), device),
            mask: Tensor::from_data(TensorData::new(mask, [b, t]), device),
            positions: Tensor::from_data(TensorData::new(pos, [n]), device),
            targets: Tensor::from_data(TensorData::new(tg, [n]), device),
            rows,
            starts: items
                .iter()
                .any(|i| !i.starts.is_empty())
                .then(|| items.iter().map(|i| i.starts.clone()).collect()),
        }
    }
}

/// `[n]` log-probabilities of the batch's answer tokens.
pub fn answer_log_probs(model: &Llama, batch: LmBatch) -> Tensor<1> {
    let hidden = match &batch.starts {
        Some(starts) => model.forward_hidden_packed(batch.ids, starts),
        None => model.forward_hidden(batch.ids, Some(batch.mask), None),
    };
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
        let item = LmOutput { loss: loss.clone() };
        guarded_step(self, &self.guard, loss, self.loss_scale, item)
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
/// ([`super::classification::ClassBatching::for_device`]): to the longest input on the CPU, to a
/// multiple of [`crate::trainer::GPU_LEN_MULTIPLE`] on a GPU (fewer distinct lengths, fewer
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
            multiple: len_multiple(device),
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
) -> Result<EvalMetrics> {
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
            .map(|(ids, answer_start)| LmItem::answer(ids, answer_start))
            .collect();
        let refs: Vec<&LmItem> = items.iter().collect();
        let batch = LmBatch::new(&refs, device);
        let rows = batch.rows.clone();
        let values = gralora::io::read_f32(answer_log_probs(model, batch))?;
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
    Ok(EvalMetrics {
        examples: examples.len(),
        accuracy: correct as f64 / n,
        f1: None,
        loss: nll / n,
        perplexity: None,
        pearson: None,
        spearman: None,
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

/// Fine-tuning a decoder on multiple-choice tasks with the answer-masked causal-LM loss.
pub struct MultipleChoiceWorkload {
    name: String,
    llama: Option<Llama>,
    tokenizer: TextTokenizer,
    source: ModelSource,
    max_len: usize,
    batch_size: usize,
    train: Vec<LmItem>,
    val_items: Vec<LmItem>,
    val: Vec<McExample>,
}

impl MultipleChoiceWorkload {
    /// Read and tokenise `tasks` (several: mixed) for `config`.
    pub fn new(
        config: &TrainConfig,
        tasks: &[McTask],
        llama: Llama,
        tokenizer: TextTokenizer,
        source: ModelSource,
        home: &Path,
        report: Report<'_>,
    ) -> Result<Self> {
        let (train, val) = load(tasks, home)?;
        let mixed = tasks.len() > 1;
        let train = seeded_subset(train, config.max_train, config.seed, true);
        let val = seeded_subset(val, config.max_eval, config.seed, mixed);
        report(&format!(
            "{}: {} train examples, {} validation examples",
            config.task,
            train.len(),
            val.len()
        ));
        Ok(Self {
            name: config.task.clone(),
            train: training_items(&tokenizer, &train, config.max_len)?,
            val_items: training_items(&tokenizer, &val, config.max_len)?,
            val,
            llama: Some(llama),
            tokenizer,
            source,
            max_len: config.max_len,
            batch_size: config.batch_size,
        })
    }

    fn base(&self) -> Result<&Llama> {
        self.llama
            .as_ref()
            .ok_or_else(|| TrainError::Training("the decoder was already built".into()))
    }
}

impl Workload for MultipleChoiceWorkload {
    type Model = Llama;
    type Batching = LmBatching;
    type Learner = CausalLm;

    fn default_targets(&self) -> &'static [&'static str] {
        DECODER_TARGETS
    }

    fn names(&self) -> RunNames {
        RunNames {
            task: self.name.clone(),
            train_split: format!("{} train", self.name),
            eval_split: format!("{} validation", self.name),
        }
    }

    fn baseline(&mut self, session: &Session<'_>) -> Result<Option<EvalMetrics>> {
        let m = evaluate_mc(
            self.base()?,
            &self.tokenizer,
            &self.val,
            self.max_len,
            session.device,
        )?;
        Ok(Some(m))
    }

    fn model(&mut self, method: Method) -> Result<Llama> {
        let llama = self
            .llama
            .take()
            .ok_or_else(|| TrainError::Training("the decoder was already built".into()))?;
        Ok(trainable(llama, method))
    }

    fn batching(&self, model: &Llama, device: &Device) -> LmBatching {
        LmBatching::for_device(model.max_len, device)
    }

    fn train_items(&mut self) -> Items<LmItem> {
        Items::in_memory(std::mem::take(&mut self.train), LmBatching::tokens)
    }

    fn valid_loader(&self, batching: LmBatching, device: &Device) -> LmLoader {
        LmLoader::new(
            self.val_items.clone(),
            self.batch_size,
            None,
            batching,
            device,
        )
    }

    fn loss(&self, model: &Llama, batch: LmBatch) -> Tensor<1> {
        answer_log_probs(model, batch).mean().neg()
    }

    fn learner(&self, model: Llama, loss_scale: f64, guard: LossGuard) -> CausalLm {
        CausalLm::new(model, loss_scale, guard)
    }

    fn training(
        &self,
        dir: std::path::PathBuf,
        train: Arc<LmLoader>,
        valid: Arc<LmLoader>,
    ) -> SupervisedTraining<CausalLm> {
        SupervisedTraining::new(dir, train, valid).metrics((LossMetric::new(),))
    }

    fn trained(&self, learner: CausalLm) -> Llama {
        learner.model
    }

    fn evaluate(&mut self, model: &Llama, session: &Session<'_>) -> Result<EvalMetrics> {
        evaluate_mc(
            model,
            &self.tokenizer,
            &self.val,
            self.max_len,
            session.device,
        )
    }

    fn save(&mut self, model: Llama, session: &Session<'_>) -> Result<()> {
        save_decoder(model, &self.tokenizer, &self.source, session)
    }
}

/// Write a trained decoder into the run directory: its adapter in PEFT's format, or (full
/// fine-tuning) a Hugging Face snapshot in `model/`.
pub fn save_decoder(
    mut model: Llama,
    tokenizer: &TextTokenizer,
    source: &ModelSource,
    session: &Session<'_>,
) -> Result<()> {
    match session.config.method {
        Method::Full => {
            let config = match source {
                ModelSource::Gguf(p) => LlamaConfig::from_gguf(&GgufFile::open(p)?)?,
                ModelSource::HfDir(d) => LlamaConfig::from_file(d.join("config.json"))?,
            };
            let snapshot = LoadedModel::Decoder {
                config,
                model,
                tokenizer: tokenizer.clone(),
            };
            snapshot.write_snapshot(source, &session.out.join("model"))?;
        }
        _ => gralora::save_peft(&mut model, session.out, Some(&session.config.model))?,
    }
    Ok(())
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
            LmItem::answer(vec![5, 6, 7, 8], 2),
            LmItem::answer(vec![1, 2, 3, 4, 5, 6, 7], 5),
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

    #[test]
    fn masked_items_predict_only_their_target_tokens() {
        let device = Device::flex();
        // Two assistant turns: tokens 2..4 and 6; token 0 is never predicted.
        let item = LmItem::masked(
            vec![10, 11, 12, 13, 14, 15, 16],
            &[true, false, true, true, false, false, true],
        );
        assert_eq!(item.targets, [0..1, 2..4, 6..7]);
        assert_eq!(item.target_count(), 3);
        let b = LmBatch::new(&[&item], &device);
        assert_eq!(ints(b.positions), [1, 2, 5]);
        assert_eq!(ints(b.targets), [12, 13, 16]);
    }
}
