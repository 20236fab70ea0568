//! Regression with an encoder, for STS-B-like data whose labels are scores: a one-output head
//! trained with the mean squared error; evaluation reports the MSE and the Pearson and Spearman
//! correlations of predictions and targets.

use std::sync::Arc;

use burn::module::Module;
use burn::nn::loss::{MseLoss, Reduction};
use burn::tensor::{Device, Tensor, TensorData};
use burn::train::metric::LossMetric;
use burn::train::{InferenceStep, RegressionOutput, SupervisedTraining, TrainOutput, TrainStep};
use gralora_models::{
    Bert, BertClassifier, BertInput, Encoded, ModelSource, Pooling, TextTokenizer,
};

use super::classification::{Labels, pad_id, save_encoder, save_head};
use crate::data::{Items, Scored, ScoredItems, subset_items};
use crate::error::{Result, TrainError};
use crate::trainer::{
    Batching, ENCODER_TARGETS, EvalMetrics, LossGuard, Method, Report, RunNames, SeededLoader,
    Session, TrainConfig, Workload, guarded_step, len_multiple, trainable, write_json,
};

/// One tokenised scored example.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ScoreItem {
    /// Token ids and segment ids.
    pub encoded: Encoded,
    /// The target score.
    pub score: f32,
}

/// A padded batch of scored examples.
#[derive(Debug, Clone)]
pub struct ScoreBatch {
    /// Encoder input.
    pub input: BertInput,
    /// `[batch, 1]` targets.
    pub targets: Tensor<2>,
}

/// Padding of scored examples (as [`super::classification::ClassBatching`]).
#[derive(Debug, Clone, Copy)]
pub struct ScoreBatching {
    /// The padding id.
    pub pad: u32,
    /// Length multiple.
    pub multiple: usize,
    /// The model's longest input.
    pub max_len: usize,
}

impl Batching for ScoreBatching {
    type Item = ScoreItem;
    type Batch = ScoreBatch;
    fn tokens(item: &ScoreItem) -> usize {
        item.encoded.ids.len()
    }
    fn batch(&self, items: &[&ScoreItem], device: &Device) -> ScoreBatch {
        let longest = items.iter().map(|i| i.encoded.ids.len()).max().unwrap_or(1);
        let multiple = if longest.next_multiple_of(self.multiple.max(1)) <= self.max_len {
            self.multiple
        } else {
            1
        };
        score_batch(items, self.pad, multiple, device)
    }
}

fn score_batch(items: &[&ScoreItem], pad: u32, multiple: usize, device: &Device) -> ScoreBatch {
    let encoded: Vec<Encoded> = items.iter().map(|i| i.encoded.clone()).collect();
    let scores: Vec<f32> = items.iter().map(|i| i.score).collect();
    gralora::kernels::host_write(1);
    ScoreBatch {
        input: BertInput::from_encoded_to(&encoded, pad, multiple, device),
        targets: Tensor::from_data(TensorData::new(scores, [items.len(), 1]), device),
    }
}

/// An encoder with a one-output head, as burn-train trains it.
#[derive(Module, Debug)]
pub struct TextRegressor {
    /// Encoder and head.
    pub model: BertClassifier,
    /// Loss multiplier (1 / gradient accumulation).
    pub loss_scale: f64,
    #[module(skip)]
    guard: LossGuard,
}

impl TextRegressor {
    fn forward_regression(&self, batch: ScoreBatch) -> RegressionOutput {
        let output = self.model.forward(&batch.input);
        let loss = MseLoss::new().forward(output.clone(), batch.targets.clone(), Reduction::Mean);
        RegressionOutput::new(loss, output, batch.targets)
    }
}

impl TrainStep for TextRegressor {
    type Input = ScoreBatch;
    type Output = RegressionOutput;
    fn step(&self, batch: ScoreBatch) -> TrainOutput<RegressionOutput> {
        let item = self.forward_regression(batch);
        guarded_step(self, &self.guard, item.loss.clone(), self.loss_scale, item)
    }
}

impl InferenceStep for TextRegressor {
    type Input = ScoreBatch;
    type Output = RegressionOutput;
    fn step(&self, batch: ScoreBatch) -> RegressionOutput {
        self.forward_regression(batch)
    }
}

/// Tokenise scored examples (truncated to `max_len`) one at a time, into memory or a spill
/// file as `examples` are kept.
pub fn tokenize_scored(
    tokenizer: &mut TextTokenizer,
    examples: &Items<Scored>,
    max_len: usize,
) -> Result<Items<ScoreItem>> {
    tokenizer.set_max_len(Some(max_len))?;
    let items = examples.iter().map(|e| -> Result<ScoreItem> {
        let e = e?;
        Ok(ScoreItem {
            encoded: super::classification::encode_text(tokenizer, &e.a, e.b.as_deref())?,
            score: e.score,
        })
    });
    examples.collect_like(items, ScoreBatching::tokens)
}

/// Pearson's correlation of `x` and `y` (0 when either is constant).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len()) as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Ranks of `x` (1-based, ties given their mean rank, as scipy's `rankdata`).
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation of `x` and `y`.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Predicted scores of `model` for `items`, in their order.
pub fn predict(
    model: &BertClassifier,
    items: &Items<ScoreItem>,
    pad: u32,
    batch_size: usize,
) -> Result<Vec<f32>> {
    let device = model.classifier.weight.val().device();
    let mut out = vec![0f32; items.len()];
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items.tokens(i));
    for chunk in order.chunks(batch_size.max(1)) {
        let batch = items.fetch_ref(chunk)?;
        let batch: Vec<&ScoreItem> = batch.iter().map(|i| &**i).collect();
        let b = score_batch(&batch, pad, 1, &device);
        let values = gralora::io::read_f32(model.forward(&b.input))?;
        for (&i, v) in chunk.iter().zip(values) {
            out[i] = v;
        }
    }
    Ok(out)
}

/// The MSE (as `loss`), Pearson and Spearman correlations of `model` on `items` (`accuracy`
/// is not defined for scores and is 0).
pub fn evaluate_scores(
    model: &BertClassifier,
    items: &Items<ScoreItem>,
    pad: u32,
    batch_size: usize,
) -> Result<EvalMetrics> {
    let pred: Vec<f64> = predict(model, items, pad, batch_size)?
        .into_iter()
        .map(f64::from)
        .collect();
    let gold: Vec<f64> = items
        .iter()
        .map(|i| i.map(|i| f64::from(i.score)))
        .collect::<crate::data::SpillResult<_>>()?;
    let n = items.len().max(1) as f64;
    let mse = pred
        .iter()
        .zip(&gold)
        .map(|(p, g)| (p - g).powi(2))
        .sum::<f64>()
        / n;
    Ok(EvalMetrics {
        examples: items.len(),
        accuracy: 0.0,
        f1: None,
        loss: mse,
        perplexity: None,
        pearson: Some(pearson(&pred, &gold)),
        spearman: Some(spearman(&pred, &gold)),
    })
}

/// Fine-tuning an encoder with a one-output head on the user's scored file.
pub struct RegressionWorkload {
    names: (String, String, String),
    bert: Option<Bert>,
    tokenizer: TextTokenizer,
    source: ModelSource,
    pad: u32,
    pooling: Pooling,
    head_dropout: f64,
    batch_size: usize,
    train: Items<ScoreItem>,
    eval: Items<ScoreItem>,
}

impl RegressionWorkload {
    /// Tokenise the scored examples of `data` for `config`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &TrainConfig,
        data: ScoredItems,
        names: (String, String, String),
        bert: Bert,
        mut tokenizer: TextTokenizer,
        source: ModelSource,
        report: Report<'_>,
    ) -> Result<Self> {
        let train = subset_items(&data.train, config.max_train, config.seed, true);
        let eval = subset_items(&data.eval, config.max_eval, config.seed, false);
        let train = tokenize_scored(&mut tokenizer, &train, config.max_len)?;
        let eval = tokenize_scored(&mut tokenizer, &eval, config.max_len)?;
        report(&format!(
            "{}: regression on scores, {} train examples, {} eval examples ({})",
            names.0,
            train.len(),
            eval.len(),
            names.2
        ));
        Ok(Self {
            names,
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

impl Workload for RegressionWorkload {
    type Model = BertClassifier;
    type Batching = ScoreBatching;
    type Learner = TextRegressor;

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
            1,
            self.pooling,
            self.head_dropout,
        ))
    }

    fn batching(&self, model: &BertClassifier, device: &Device) -> ScoreBatching {
        ScoreBatching {
            pad: self.pad,
            multiple: len_multiple(device),
            max_len: model.bert.max_len,
        }
    }

    fn train_items(&mut self) -> Items<ScoreItem> {
        std::mem::replace(&mut self.train, Items::empty())
    }

    fn valid_loader(
        &self,
        batching: ScoreBatching,
        device: &Device,
    ) -> SeededLoader<ScoreBatching> {
        let by_len = self.eval.by_tokens();
        SeededLoader::over(by_len, self.batch_size * 2, None, batching, device)
    }

    fn loss(&self, model: &BertClassifier, batch: ScoreBatch) -> Tensor<1> {
        MseLoss::new().forward(model.forward(&batch.input), batch.targets, Reduction::Mean)
    }

    fn learner(&self, model: BertClassifier, loss_scale: f64, guard: LossGuard) -> TextRegressor {
        TextRegressor {
            model,
            loss_scale,
            guard,
        }
    }

    fn training(
        &self,
        dir: std::path::PathBuf,
        train: Arc<SeededLoader<ScoreBatching>>,
        valid: Arc<SeededLoader<ScoreBatching>>,
    ) -> SupervisedTraining<TextRegressor> {
        SupervisedTraining::new(dir, train, valid).metrics((LossMetric::new(),))
    }

    fn trained(&self, learner: TextRegressor) -> BertClassifier {
        learner.model
    }

    fn evaluate(&mut self, model: &BertClassifier, _: &Session<'_>) -> Result<EvalMetrics> {
        evaluate_scores(model, &self.eval, self.pad, self.batch_size * 2)
    }

    fn save(&mut self, mut model: BertClassifier, session: &Session<'_>) -> Result<()> {
        save_encoder(&mut model, &self.tokenizer, &self.source, session)?;
        write_json(&session.dir.labels(), &Labels::regression())?;
        save_head(&model, &session.dir.head())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlations_match_scipy() {
        // scipy.stats.pearsonr / spearmanr of these (ties included), scipy 1.17.1.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 5.0];
        let y = [1.5, 1.0, 3.5, 3.0, 6.0, 4.0];
        assert!((pearson(&x, &y) - 0.858_332_507_759_988_6).abs() < 1e-12);
        assert!((spearman(&x, &y) - 0.869_656_553_478_672_7).abs() < 1e-12);
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0]);
        assert_eq!(
            pearson(&[1.0, 1.0], &[1.0, 2.0]),
            0.0,
            "a constant has no correlation"
        );
    }
}
