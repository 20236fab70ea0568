//! Sequence classification with an encoder: tokenised examples and their batches, the model as
//! burn-train trains it, evaluation (accuracy, F1, loss), the head's file, and the
//! [`Workload`] that fine-tunes a classifier on a built-in task.

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{
    ClassificationOutput, InferenceStep, SupervisedTraining, TrainOutput, TrainStep,
};
use gralora_models::weights::{SafetensorsFile, TensorSource};
use gralora_models::{
    Bert, BertClassifier, BertInput, Encoded, LoadedModel, ModelSource, Pooling, TextTokenizer,
};

use super::builtin::Task;
use crate::data::{Example, Items, labelled_items, subset_items};
use crate::error::{Result, TrainError};
use crate::trainer::{
    Batching, DataSettings, ENCODER_TARGETS, EvalMetrics, LossGuard, Method, Report, RunNames,
    SeededLoader, Session, TrainConfig, Workload, guarded_step, len_multiple, trainable,
    write_json,
};

/// One tokenised example.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Item {
    /// Token ids and segment ids.
    pub encoded: Encoded,
    /// Class index.
    pub label: usize,
}

/// A padded batch.
#[derive(Debug, Clone)]
pub struct ClassBatch {
    /// Encoder input (ids, segments, mask), padded to the batch's longest example.
    pub input: BertInput,
    /// `[batch]` class indices.
    pub labels: Tensor<1, Int>,
    /// Real (unpadded) tokens in the batch.
    pub tokens: usize,
}

impl ClassBatch {
    /// Pad `items` into one batch on `device`.
    pub fn new(items: &[&Item], pad: u32, device: &Device) -> Self {
        Self::padded(items, pad, 1, device)
    }

    /// Pad `items` into one batch on `device`, to a length that is a multiple of `multiple`.
    pub fn padded(items: &[&Item], pad: u32, multiple: usize, device: &Device) -> Self {
        let encoded: Vec<Encoded> = items.iter().map(|i| i.encoded.clone()).collect();
        let labels: Vec<i64> = items.iter().map(|i| i.label as i64).collect();
        gralora::kernels::host_write(1);
        Self {
            input: BertInput::from_encoded_to(&encoded, pad, multiple, device),
            labels: Tensor::from_data(TensorData::new(labels, [items.len()]), device),
            tokens: encoded.iter().map(|e| e.ids.len()).sum(),
        }
    }
}

/// An encoder classifier as burn-train trains it.
#[derive(Module, Debug)]
pub struct TextClassifier {
    /// Encoder (frozen apart from its adapters, or fully trainable) and head.
    pub model: BertClassifier,
    /// The loss is multiplied by this before backward (1 / gradient-accumulation steps: burn-train
    /// sums accumulated gradients).
    pub loss_scale: f64,
    #[module(skip)]
    guard: LossGuard,
}

impl TextClassifier {
    /// Wrap a classifier; `guard` watches the training loss.
    pub fn new(model: BertClassifier, loss_scale: f64, guard: LossGuard) -> Self {
        Self {
            model,
            loss_scale,
            guard,
        }
    }

    /// Logits, loss and targets of one batch.
    pub fn forward_classification(&self, batch: ClassBatch) -> ClassificationOutput {
        let logits = self.model.forward(&batch.input);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.labels.clone());
        ClassificationOutput::new(loss, logits, batch.labels)
    }
}

impl TrainStep for TextClassifier {
    type Input = ClassBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ClassBatch) -> TrainOutput<ClassificationOutput> {
        let item = self.forward_classification(batch);
        guarded_step(self, &self.guard, item.loss.clone(), self.loss_scale, item)
    }
}

impl InferenceStep for TextClassifier {
    type Input = ClassBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ClassBatch) -> ClassificationOutput {
        self.forward_classification(batch)
    }
}

/// Batches of encoder examples: padded with `pad`, for [`SeededLoader`].
#[derive(Debug, Clone, Copy)]
pub struct ClassBatching {
    /// The tokenizer's padding id.
    pub pad: u32,
    /// Batches are padded to a multiple of this length (1: to their longest example).
    pub multiple: usize,
    /// The model's longest input: no batch is padded past it.
    pub max_len: usize,
}

impl ClassBatching {
    /// Padding to the longest example on the CPU (padding there is only extra work); on a GPU to
    /// a multiple of [`GPU_LEN_MULTIPLE`], so that a run meets a few lengths instead of dozens,
    /// each of which compiles and tunes its own kernels (measured on an H200 through Vulkan: the
    /// first steps of SST-2 ran at under 100 tokens/s while new lengths kept arriving).
    pub fn for_device(pad: u32, max_len: usize, device: &Device) -> Self {
        Self {
            pad,
            multiple: len_multiple(device),
            max_len,
        }
    }
}

impl Batching for ClassBatching {
    type Item = Item;
    type Batch = ClassBatch;
    fn tokens(item: &Item) -> usize {
        item.encoded.ids.len()
    }
    fn batch(&self, items: &[&Item], device: &Device) -> ClassBatch {
        let longest = items.iter().map(|i| i.encoded.ids.len()).max().unwrap_or(1);
        let multiple = if longest.next_multiple_of(self.multiple.max(1)) <= self.max_len {
            self.multiple
        } else {
            1
        };
        ClassBatch::padded(items, self.pad, multiple, device)
    }
}

/// The encoder tasks' loader.
pub type EpochLoader = SeededLoader<ClassBatching>;

/// A text, or a text pair, as the tokenizer's truncation settings leave it.
pub fn encode_text(tokenizer: &TextTokenizer, a: &str, b: Option<&str>) -> Result<Encoded> {
    Ok(match b {
        Some(b) => tokenizer.encode_pair(a, b)?,
        None => tokenizer.encode(a, true)?,
    })
}

/// Tokenise examples (truncated to `max_len`).
pub fn tokenize(
    tokenizer: &mut TextTokenizer,
    examples: &[Example],
    max_len: usize,
) -> Result<Vec<Item>> {
    tokenizer.set_max_len(Some(max_len))?;
    examples
        .iter()
        .map(|e| {
            Ok(Item {
                encoded: encode_text(tokenizer, &e.a, e.b.as_deref())?,
                label: e.label,
            })
        })
        .collect()
}

/// Tokenise examples (truncated to `max_len`) one at a time, into memory or a spill file as
/// `examples` are kept, counting the examples truncated and the tokens they lost.
pub fn tokenize_counted(
    tokenizer: &mut TextTokenizer,
    examples: &Items<Example>,
    max_len: usize,
) -> Result<(Items<Item>, (usize, usize))> {
    let (mut n, mut lost) = (0, 0);
    let items = examples.iter().map(|e| -> Result<Item> {
        let e = e?;
        let mut encode = |max: Option<usize>| -> Result<Encoded> {
            tokenizer.set_max_len(max)?;
            encode_text(tokenizer, &e.a, e.b.as_deref())
        };
        let whole = encode(None)?.ids.len();
        let encoded = encode(Some(max_len))?;
        if whole > encoded.ids.len() {
            n += 1;
            lost += whole - encoded.ids.len();
        }
        Ok(Item {
            encoded,
            label: e.label,
        })
    });
    let items = examples.collect_like(items, ClassBatching::tokens)?;
    Ok((items, (n, lost)))
}

/// The class names of a classifier trained on the user's data (`labels.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Labels {
    /// Names by class index (a regression: `["score"]`).
    pub labels: Vec<String>,
    /// The head predicts a score, not classes.
    #[serde(default)]
    pub regression: bool,
}

impl Labels {
    /// A regression head's file.
    pub fn regression() -> Self {
        Self {
            labels: vec!["score".into()],
            regression: true,
        }
    }

    /// Read `labels.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Data {
            path: path.to_path_buf(),
            msg: format!("not a labels file: {e}"),
        })
    }
}

/// The token id used for padding (`[PAD]`, else 0).
pub fn pad_id(tokenizer: &TextTokenizer) -> u32 {
    tokenizer
        .token_to_id("[PAD]")
        .or_else(|| tokenizer.token_to_id("<pad>"))
        .unwrap_or(0)
}

/// Accuracy, F1 (binary) and loss of `model` on `items`, in batches sorted by length.
pub fn evaluate(
    model: &BertClassifier,
    items: &Items<Item>,
    pad: u32,
    batch_size: usize,
) -> Result<EvalMetrics> {
    let device = model.classifier.weight.val().device();
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items.tokens(i));
    let (mut correct, mut tp, mut fp, mut fneg, mut loss_sum) =
        (0usize, 0usize, 0usize, 0usize, 0f64);
    let mut classes = 0;
    for chunk in order.chunks(batch_size.max(1)) {
        let batch = items.fetch_ref(chunk)?;
        let batch: Vec<&Item> = batch.iter().map(|i| &**i).collect();
        let b = ClassBatch::new(&batch, pad, &device);
        let logits = model.forward(&b.input);
        let [n, c] = logits.dims();
        classes = c;
        let logp = burn::tensor::activation::log_softmax(logits, 1);
        let values = gralora::io::read_f32(logp)?;
        for (row, item) in batch.iter().enumerate().take(n) {
            let r = &values[row * c..(row + 1) * c];
            let pred = (0..c).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap_or(0);
            loss_sum -= r[item.label.min(c - 1)] as f64;
            correct += usize::from(pred == item.label);
            match (pred == 1, item.label == 1) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fneg += 1,
                _ => {}
            }
        }
    }
    let n = items.len().max(1) as f64;
    let f1 = (classes == 2).then(|| {
        let d = (2 * tp + fp + fneg) as f64;
        if d == 0.0 { 0.0 } else { 2.0 * tp as f64 / d }
    });
    Ok(EvalMetrics {
        examples: items.len(),
        accuracy: correct as f64 / n,
        f1,
        loss: loss_sum / n,
        perplexity: None,
        pearson: None,
        spearman: None,
    })
}

/// The class probabilities `model` gives one text (or text pair), truncated to `max_len`.
pub fn class_probabilities(
    model: &BertClassifier,
    tokenizer: &mut TextTokenizer,
    text: &str,
    pair: Option<&str>,
    max_len: usize,
) -> Result<Vec<f32>> {
    let logits = class_scores(model, tokenizer, text, pair, max_len)?;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    Ok(exp.into_iter().map(|e| e / sum).collect())
}

/// The head's raw outputs (logits; a regression head: the score) for one text or text pair.
pub fn class_scores(
    model: &BertClassifier,
    tokenizer: &mut TextTokenizer,
    text: &str,
    pair: Option<&str>,
    max_len: usize,
) -> Result<Vec<f32>> {
    let example = Example {
        a: text.to_string(),
        b: pair.map(str::to_string),
        label: 0,
    };
    let items = tokenize(tokenizer, &[example], max_len)?;
    let device = model.classifier.weight.val().device();
    let batch = ClassBatch::new(&[&items[0]], 0, &device);
    Ok(gralora::io::read_f32(model.forward(&batch.input))?)
}

/// Write a trained encoder into the run directory: its adapter in PEFT's format, or (full
/// fine-tuning) a Hugging Face snapshot in `model/`. The head is saved by [`save_head`].
pub fn save_encoder(
    model: &mut BertClassifier,
    tokenizer: &TextTokenizer,
    source: &ModelSource,
    session: &Session<'_>,
) -> Result<()> {
    match session.config.method {
        Method::Full => {
            let ModelSource::HfDir(dir) = source else {
                return Err(TrainError::Usage(
                    "GGUF models cannot be fine-tuned on encoder tasks".into(),
                ));
            };
            let snapshot = LoadedModel::Encoder {
                config: gralora_models::BertConfig::from_file(dir.join("config.json"))?,
                model: model.bert.clone(),
                tokenizer: tokenizer.clone(),
            };
            snapshot.write_snapshot(source, &session.out.join("model"))?;
        }
        _ => gralora::save_peft(&mut model.bert, session.out, Some(&session.config.model))?,
    }
    Ok(())
}

/// Save the classification head as `classifier.safetensors` (PyTorch layout).
pub fn save_head(model: &BertClassifier, path: &Path) -> Result<()> {
    let w = model.classifier.weight.val();
    let [hidden, classes] = w.dims();
    let w = gralora::io::read_f32(w)?;
    let wt = gralora::io::transpose(&w, hidden, classes);
    let mut tensors = vec![("classifier.weight".to_string(), vec![classes, hidden], wt)];
    if let Some(b) = &model.classifier.bias {
        let b = gralora::io::read_f32(b.val())?;
        tensors.push(("classifier.bias".to_string(), vec![classes], b));
    }
    Ok(gralora_models::weights::write_safetensors(path, &tensors)?)
}

/// Load a head saved by [`save_head`] onto a fresh classifier over `bert`.
pub fn load_head(bert: Bert, path: &Path, pooling: Pooling) -> Result<BertClassifier> {
    let file = SafetensorsFile::open(path)?;
    let shape = file
        .shape("classifier.weight")
        .ok_or_else(|| TrainError::Data {
            path: path.to_path_buf(),
            msg: "no tensor `classifier.weight`".into(),
        })?;
    let [classes, hidden] = shape[..] else {
        return Err(TrainError::Data {
            path: path.to_path_buf(),
            msg: format!("`classifier.weight` has shape {shape:?}, expected [classes, hidden]"),
        });
    };
    if hidden != bert.hidden_size() {
        return Err(TrainError::Data {
            path: path.to_path_buf(),
            msg: format!(
                "head expects hidden size {hidden}, the model has {}; was it trained on another model?",
                bert.hidden_size()
            ),
        });
    }
    let mut model = BertClassifier::new(bert, classes, pooling, 0.0);
    let device = model.classifier.weight.val().device();
    let loader = gralora_models::weights::Loader::new(&file, &device);
    model.classifier = loader.linear(
        "classifier",
        hidden,
        classes,
        file.shape("classifier.bias").is_some(),
    )?;
    Ok(model)
}

/// Fine-tuning an encoder with a new classification head, on a built-in task or the user's file.
pub struct ClassifierWorkload {
    names: (String, String, String),
    num_classes: usize,
    labels: Option<Vec<String>>,
    bert: Option<Bert>,
    tokenizer: TextTokenizer,
    source: ModelSource,
    pad: u32,
    pooling: Pooling,
    head_dropout: f64,
    batch_size: usize,
    train: Items<Item>,
    eval: Items<Item>,
}

impl ClassifierWorkload {
    /// Read and tokenise the task's data for `config` (its fold, if one is set; its subsets).
    pub fn new(
        config: &TrainConfig,
        task: Task,
        bert: Bert,
        tokenizer: TextTokenizer,
        source: ModelSource,
        home: &Path,
        report: Report<'_>,
    ) -> Result<Self> {
        let mut data = task.load(home)?;
        if let Some(fold) = config.fold {
            data = data.fold(config.seed, config.folds, fold);
        }
        let (train_name, eval_name) = task.split_names();
        let names = (task.name().into(), train_name.into(), eval_name.into());
        Self::build(
            config,
            (
                Items::untokenized(data.train),
                Items::untokenized(data.eval),
            ),
            names,
            task.num_classes(),
            None,
            bert,
            tokenizer,
            source,
            report,
        )
    }

    /// Read and tokenise the user's labelled files of `config.data`.
    pub fn from_files(
        config: &TrainConfig,
        data: &DataSettings,
        bert: Bert,
        tokenizer: TextTokenizer,
        source: ModelSource,
        report: Report<'_>,
    ) -> Result<Self> {
        let d = labelled_items(
            &data.train,
            data.eval.as_deref(),
            data.eval_split,
            config.seed,
            &data.columns(),
        )?;
        let name = data.task_name();
        let eval_name = data.eval_name();
        report(&format!(
            "{name}: {} classes ({})",
            d.labels.len(),
            d.labels.join(", ")
        ));
        Self::build(
            config,
            (d.train, d.eval),
            (name.clone(), name, eval_name),
            d.labels.len(),
            Some(d.labels),
            bert,
            tokenizer,
            source,
            report,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        config: &TrainConfig,
        (train, eval): (Items<Example>, Items<Example>),
        names: (String, String, String),
        num_classes: usize,
        labels: Option<Vec<String>>,
        bert: Bert,
        mut tokenizer: TextTokenizer,
        source: ModelSource,
        report: Report<'_>,
    ) -> Result<Self> {
        let train = subset_items(&train, config.max_train, config.seed, true);
        let eval = subset_items(&eval, config.max_eval, config.seed, false);
        let (train, t_train) = tokenize_counted(&mut tokenizer, &train, config.max_len)?;
        let (eval, t_eval) = tokenize_counted(&mut tokenizer, &eval, config.max_len)?;
        report(&format!(
            "{}: {} train examples ({}), {} eval examples ({})",
            names.0,
            train.len(),
            names.1,
            eval.len(),
            names.2
        ));
        for (split, t) in [("train", t_train), ("eval", t_eval)] {
            if t.0 > 0 {
                report(&format!(
                    "{split}: {} examples truncated to --max-len {} ({} tokens lost)",
                    t.0, config.max_len, t.1
                ));
            }
        }
        Ok(Self {
            names,
            num_classes,
            labels,
            bert: Some(bert),
            pad: pad_id(&tokenizer),
            tokenizer,
            source,
            pooling: config.pooling()?,
            head_dropout: config.head_dropout,
            batch_size: config.batch_size,
            train,
            eval,
        })
    }
}

impl Workload for ClassifierWorkload {
    type Model = BertClassifier;
    type Batching = ClassBatching;
    type Learner = TextClassifier;

    fn default_targets(&self) -> &'static [&'static str] {
        ENCODER_TARGETS
    }

    fn names(&self) -> RunNames {
        RunNames {
            task: self.names.0.clone(),
            train_split: self.names.1.clone(),
            eval_split: self.names.2.clone(),
        }
    }

    fn baseline(&mut self, _: &Session<'_>) -> Result<Option<EvalMetrics>> {
        Ok(None)
    }

    fn model(&mut self, method: Method) -> Result<BertClassifier> {
        let bert = self
            .bert
            .take()
            .ok_or_else(|| TrainError::Training("the encoder was already built".into()))?;
        Ok(BertClassifier::new(
            trainable(bert, method),
            self.num_classes,
            self.pooling,
            self.head_dropout,
        ))
    }

    fn batching(&self, model: &BertClassifier, device: &Device) -> ClassBatching {
        ClassBatching::for_device(self.pad, model.bert.max_len, device)
    }

    fn train_items(&mut self) -> Items<Item> {
        std::mem::replace(&mut self.train, Items::empty())
    }

    fn valid_loader(&self, batching: ClassBatching, device: &Device) -> EpochLoader {
        // Validation order does not matter: by length, for less padding.
        let by_len = self.eval.by_tokens();
        EpochLoader::over(by_len, self.batch_size * 2, None, batching, device)
    }

    fn loss(&self, model: &BertClassifier, batch: ClassBatch) -> Tensor<1> {
        let logits = model.forward(&batch.input);
        CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, batch.labels)
    }

    fn learner(&self, model: BertClassifier, loss_scale: f64, guard: LossGuard) -> TextClassifier {
        TextClassifier::new(model, loss_scale, guard)
    }

    fn training(
        &self,
        dir: std::path::PathBuf,
        train: Arc<EpochLoader>,
        valid: Arc<EpochLoader>,
    ) -> SupervisedTraining<TextClassifier> {
        SupervisedTraining::new(dir, train, valid)
            .metrics((AccuracyMetric::new(), LossMetric::new()))
    }

    fn trained(&self, learner: TextClassifier) -> BertClassifier {
        learner.model
    }

    fn evaluate(&mut self, model: &BertClassifier, _: &Session<'_>) -> Result<EvalMetrics> {
        evaluate(model, &self.eval, self.pad, self.batch_size * 2)
    }

    fn save(&mut self, mut model: BertClassifier, session: &Session<'_>) -> Result<()> {
        save_encoder(&mut model, &self.tokenizer, &self.source, session)?;
        if let Some(labels) = &self.labels {
            write_json(
                &session.dir.labels(),
                &Labels {
                    labels: labels.clone(),
                    regression: false,
                },
            )?;
        }
        save_head(&model, &session.dir.head())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::GPU_LEN_MULTIPLE;
    use burn::data::dataloader::DataLoader;

    fn items(n: usize) -> Vec<Item> {
        (0..n)
            .map(|i| Item {
                encoded: Encoded {
                    ids: vec![101; 1 + i % 5],
                    type_ids: vec![0; 1 + i % 5],
                },
                label: i % 2,
            })
            .collect()
    }

    #[test]
    fn batches_are_padded_to_their_longest_example() {
        let device = Device::flex();
        let batching = ClassBatching::for_device(0, 512, &device);
        assert_eq!(batching.multiple, 1, "the CPU pads to the longest example");
        let c = EpochLoader::new(items(50), 8, None, batching, &device);
        let batches: Vec<ClassBatch> = c.iter().map(|x| x.unwrap()).collect();
        assert_eq!(batches.len(), 7);
        assert_eq!(batches[6].labels.dims(), [2]);
        assert_eq!(batches[0].input.ids.dims(), [8, 5]);
        assert_eq!(batches[0].tokens, 1 + 2 + 3 + 4 + 5 + 1 + 2 + 3);
        assert_eq!(labels(batches[0].clone()), [0, 1, 0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn gpu_batches_are_padded_to_a_length_multiple_below_the_models_limit() {
        let device = Device::flex();
        let batching = |max_len| ClassBatching {
            pad: 7,
            multiple: GPU_LEN_MULTIPLE,
            max_len,
        };
        let data = items(5); // lengths 1..=5
        let refs: Vec<&Item> = data.iter().collect();
        let b = batching(512).batch(&refs, &device);
        assert_eq!(b.input.ids.dims(), [5, 16]);
        assert_eq!(b.tokens, 1 + 2 + 3 + 4 + 5, "padding is not counted");
        let mask: Vec<f32> = values(b.input.mask.into_data());
        assert_eq!(mask.iter().sum::<f32>(), 15.0, "padding is masked");
        let ids: Vec<i64> = values(b.input.ids.into_data());
        assert_eq!(
            &ids[..16],
            &[101, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]
        );
        // A model that takes at most 10 tokens gets the batch's own length.
        assert_eq!(batching(10).batch(&refs, &device).input.ids.dims(), [5, 5]);
    }

    fn labels(b: ClassBatch) -> Vec<i64> {
        values(b.labels.into_data())
    }

    fn values<T: burn::tensor::Element>(data: TensorData) -> Vec<T> {
        data.convert::<T>().try_to_vec().unwrap()
    }
}
