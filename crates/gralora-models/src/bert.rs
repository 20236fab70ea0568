//! BERT-family encoder (Hugging Face `BertModel`), driven by `config.json`, with every linear layer an
//! [`AdaptedLinear`] under its Hugging Face module path (`encoder.layer.0.attention.self.query`, ...).

use std::path::Path;

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use gralora::{AdaptedLinear, AdapterHost};
use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::weights::{Loader, SafetensorsFile, TensorSource};

/// The fields of a Hugging Face BERT `config.json` this model uses.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Number of layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward size.
    pub intermediate_size: usize,
    /// Position table size.
    pub max_position_embeddings: usize,
    /// Segment table size.
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "bert_eps")]
    pub layer_norm_eps: f64,
    /// Activation: `gelu` (erf), `gelu_new`/`gelu_pytorch_tanh` (tanh approximation) or `relu`.
    #[serde(default = "gelu_name")]
    pub hidden_act: String,
    /// Dropout on hidden states (training only).
    #[serde(default = "p01")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training only).
    #[serde(default = "p01")]
    pub attention_probs_dropout_prob: f64,
    /// `bert`, or a RoBERTa type (`roberta`, `xlm-roberta`, `camembert`).
    #[serde(default)]
    pub model_type: Option<String>,
    /// The padding token (RoBERTa numbers positions after it).
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    /// Class names (`RobertaModel`, ...), the family when `model_type` is absent.
    #[serde(default)]
    pub architectures: Vec<String>,
}

/// The encoder families a `config.json` may name; the last three are RoBERTa's.
pub const ENCODER_TYPES: &[&str] = &["bert", "roberta", "xlm-roberta", "camembert"];

fn two() -> usize {
    2
}
fn bert_eps() -> f64 {
    1e-12
}
fn gelu_name() -> String {
    "gelu".into()
}
fn p01() -> f64 {
    0.1
}

impl BertConfig {
    /// RoBERTa's padding index, when this is a RoBERTa: its positions are numbered from
    /// `pad + 1` over the non-padding tokens (transformers' `create_position_ids_from_input_ids`),
    /// padding sits at position `pad`.
    pub fn roberta_pad(&self) -> Option<usize> {
        matches!(self.family(), "roberta" | "xlm-roberta" | "camembert")
            .then(|| self.pad_token_id.unwrap_or(1))
    }

    /// `model_type`, else the family its class name says, else `bert`.
    pub fn family(&self) -> &str {
        if let Some(t) = &self.model_type {
            return t;
        }
        let arch = self.architectures.first().map_or("", String::as_str);
        [
            ("XLMRoberta", "xlm-roberta"),
            ("Roberta", "roberta"),
            ("Camembert", "camembert"),
        ]
        .iter()
        .find(|(prefix, _)| arch.starts_with(prefix))
        .map_or("bert", |(_, t)| t)
    }

    /// Read and check a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(path, format!("not a BERT config: {e}")))?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let family = self.family();
        if !ENCODER_TYPES.contains(&family) {
            return Err(ModelError::config(
                path,
                format!(
                    "model_type `{family}` is not a supported encoder ({} are)",
                    ENCODER_TYPES.join(", ")
                ),
            ));
        }
        if let Some(pad) = self.roberta_pad()
            && pad + 2 > self.max_position_embeddings
        {
            return Err(ModelError::config(
                path,
                format!(
                    "max_position_embeddings {} leaves no position after the padding index {pad}",
                    self.max_position_embeddings
                ),
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(ModelError::config(
                path,
                format!(
                    "hidden_size {} is not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(ModelError::config(
                path,
                format!(
                    "layer_norm_eps {} must be a positive number",
                    self.layer_norm_eps
                ),
            ));
        }
        if !matches!(
            self.hidden_act.as_str(),
            "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu"
        ) {
            return Err(ModelError::config(
                path,
                format!(
                    "hidden_act `{}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)",
                    self.hidden_act
                ),
            ));
        }
        Ok(())
    }
}

/// How token states become one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// Mean over real (unmasked) tokens, as sentence-transformers.
    #[default]
    Mean,
    /// The first (`[CLS]`) token.
    Cls,
}

/// One transformer layer.
#[derive(Module, Debug)]
pub struct BertLayer {
    /// `attention.self.query`.
    pub query: AdaptedLinear,
    /// `attention.self.key`.
    pub key: AdaptedLinear,
    /// `attention.self.value`.
    pub value: AdaptedLinear,
    /// `attention.output.dense`.
    pub attn_out: AdaptedLinear,
    /// `attention.output.LayerNorm`.
    pub attn_norm: LayerNorm,
    /// `intermediate.dense`.
    pub intermediate: AdaptedLinear,
    /// `output.dense`.
    pub output: AdaptedLinear,
    /// `output.LayerNorm`.
    pub out_norm: LayerNorm,
    /// Dropout on hidden states.
    pub dropout: Dropout,
    /// Dropout on attention probabilities.
    pub attn_dropout: Dropout,
    /// Attention heads.
    pub n_heads: usize,
    /// Activation name (see [`BertConfig::hidden_act`]).
    pub act: String,
}

impl BertLayer {
    fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let d = x.dims()[2];
        let (h, dh) = (self.n_heads, d / self.n_heads);
        let q = self.query.forward(x.clone());
        let k = self.key.forward(x.clone());
        let v = self.value.forward(x.clone());
        let scores = gralora::ops::head_scores(q, k, h);
        let probs = crate::ops::softmax::scaled_softmax(scores, bias, 1.0 / (dh as f32).sqrt());
        let probs = crate::ops::dropout::apply(&self.attn_dropout, probs);
        let ctx = gralora::ops::head_context(probs, v);
        let a = crate::ops::dropout::apply(&self.dropout, self.attn_out.forward(ctx));
        let x = self.attn_norm.forward(a + x);
        let inner = self.intermediate.forward(x.clone());
        let inner = match self.act.as_str() {
            "relu" => burn::tensor::activation::relu(inner),
            "gelu_new" | "gelu_pytorch_tanh" => burn::tensor::activation::gelu_approximate(inner),
            _ => crate::ops::gelu::gelu(inner),
        };
        let o = crate::ops::dropout::apply(&self.dropout, self.output.forward(inner));
        self.out_norm.forward(o + x)
    }
}

/// A BERT encoder.
#[derive(Module, Debug)]
pub struct Bert {
    /// `embeddings.word_embeddings`.
    pub word_embeddings: Embedding,
    /// `embeddings.position_embeddings`.
    pub position_embeddings: Embedding,
    /// `embeddings.token_type_embeddings`.
    pub token_type_embeddings: Embedding,
    /// `embeddings.LayerNorm`.
    pub embed_norm: LayerNorm,
    /// Dropout after the embeddings.
    pub dropout: Dropout,
    /// `encoder.layer.N`.
    pub layers: Vec<BertLayer>,
    /// Longest sequence the position table allows.
    pub max_len: usize,
    /// RoBERTa's padding index ([`BertConfig::roberta_pad`]); `None` for BERT.
    pub roberta_pad: Option<usize>,
}

/// A batch of tokenised texts, padded to one length.
#[derive(Debug, Clone)]
pub struct BertInput {
    /// `[batch, len]` token ids.
    pub ids: Tensor<2, Int>,
    /// `[batch, len]` segment ids.
    pub type_ids: Tensor<2, Int>,
    /// `[batch, len]`: 1 for real tokens, 0 for padding.
    pub mask: Tensor<2>,
}

impl BertInput {
    /// Pad encoded texts (with id `pad`) into one batch on `device`.
    pub fn from_encoded(encoded: &[crate::tokenizer::Encoded], pad: u32, device: &Device) -> Self {
        Self::from_encoded_to(encoded, pad, 1, device)
    }

    /// As [`BertInput::from_encoded`], with the padded length rounded up to a multiple of
    /// `multiple` (never past the longest text when that is already a multiple). Masked padding
    /// changes no output, and on a GPU fewer distinct lengths mean fewer kernels compiled and tuned.
    pub fn from_encoded_to(
        encoded: &[crate::tokenizer::Encoded],
        pad: u32,
        multiple: usize,
        device: &Device,
    ) -> Self {
        let len = encoded
            .iter()
            .map(|e| e.ids.len())
            .max()
            .unwrap_or(0)
            .max(1)
            .next_multiple_of(multiple.max(1));
        let n = encoded.len();
        let mut ids = vec![pad as i64; n * len];
        let mut types = vec![0i64; n * len];
        let mut mask = vec![0f32; n * len];
        for (row, e) in encoded.iter().enumerate() {
            for (j, (&id, &ty)) in e.ids.iter().zip(&e.type_ids).enumerate() {
                ids[row * len + j] = id as i64;
                types[row * len + j] = ty as i64;
                mask[row * len + j] = 1.0;
            }
        }
        gralora::kernels::host_write(3);
        Self {
            ids: Tensor::from_data(TensorData::new(ids, [n, len]), device),
            type_ids: Tensor::from_data(TensorData::new(types, [n, len]), device),
            mask: Tensor::from_data(TensorData::new(mask, [n, len]), device),
        }
    }
}

impl Bert {
    /// Load `config.json` + `model.safetensors` (HF names; a `bert.` prefix is accepted) onto `device`.
    pub fn load(config: &BertConfig, weights: &dyn TensorSource, device: &Device) -> Result<Self> {
        let mut loader = Loader::new(weights, device);
        if !loader.has("embeddings.word_embeddings.weight")
            && weights
                .shape("bert.embeddings.word_embeddings.weight")
                .is_some()
        {
            loader = loader.with_prefix("bert.");
        } else if !loader.has("embeddings.word_embeddings.weight")
            && weights
                .shape("roberta.embeddings.word_embeddings.weight")
                .is_some()
        {
            loader = loader.with_prefix("roberta.");
        }
        let c = config;
        let (d, eps) = (c.hidden_size, c.layer_norm_eps);
        let adapted = |name: &str, i: usize, o: usize| -> Result<AdaptedLinear> {
            Ok(AdaptedLinear::new(loader.linear(name, i, o, true)?))
        };
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(BertLayer {
                query: adapted(&format!("{p}.attention.self.query"), d, d)?,
                key: adapted(&format!("{p}.attention.self.key"), d, d)?,
                value: adapted(&format!("{p}.attention.self.value"), d, d)?,
                attn_out: adapted(&format!("{p}.attention.output.dense"), d, d)?,
                attn_norm: loader.layer_norm(&format!("{p}.attention.output.LayerNorm"), d, eps)?,
                intermediate: adapted(&format!("{p}.intermediate.dense"), d, c.intermediate_size)?,
                output: adapted(&format!("{p}.output.dense"), c.intermediate_size, d)?,
                out_norm: loader.layer_norm(&format!("{p}.output.LayerNorm"), d, eps)?,
                dropout: DropoutConfig::new(c.hidden_dropout_prob).init(),
                attn_dropout: DropoutConfig::new(c.attention_probs_dropout_prob).init(),
                n_heads: c.num_attention_heads,
                act: c.hidden_act.clone(),
            });
        }
        let model = Self {
            word_embeddings: loader.embedding("embeddings.word_embeddings", c.vocab_size, d)?,
            position_embeddings: loader.embedding(
                "embeddings.position_embeddings",
                c.max_position_embeddings,
                d,
            )?,
            token_type_embeddings: loader.embedding(
                "embeddings.token_type_embeddings",
                c.type_vocab_size,
                d,
            )?,
            embed_norm: loader.layer_norm("embeddings.LayerNorm", d, eps)?,
            dropout: DropoutConfig::new(c.hidden_dropout_prob).init(),
            layers,
            // RoBERTa spends `pad + 1` rows of its table before the first token.
            max_len: c.max_position_embeddings - c.roberta_pad().map_or(0, |p| p + 1),
            roberta_pad: c.roberta_pad(),
        };
        Ok(model.no_grad())
    }

    /// Load from a Hugging Face snapshot directory (`config.json`, `model.safetensors`).
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<(BertConfig, Self)> {
        let dir = dir.as_ref();
        let config = BertConfig::from_file(dir.join("config.json"))?;
        let weights = SafetensorsFile::open(dir.join("model.safetensors"))?;
        let model = Self::load(&config, &weights, device)?;
        Ok((config, model))
    }

    /// All weights under Hugging Face `BertModel` names, adapters merged into their layers.
    pub fn export(&self) -> crate::error::Result<crate::weights::Export> {
        use crate::weights::{export_embedding, export_layer_norm, export_linear};
        let mut out = Vec::new();
        export_embedding(
            &mut out,
            "embeddings.word_embeddings",
            &self.word_embeddings,
        )?;
        export_embedding(
            &mut out,
            "embeddings.position_embeddings",
            &self.position_embeddings,
        )?;
        export_embedding(
            &mut out,
            "embeddings.token_type_embeddings",
            &self.token_type_embeddings,
        )?;
        export_layer_norm(&mut out, "embeddings.LayerNorm", &self.embed_norm)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("encoder.layer.{l}");
            export_linear(&mut out, &format!("{p}.attention.self.query"), &layer.query)?;
            export_linear(&mut out, &format!("{p}.attention.self.key"), &layer.key)?;
            export_linear(&mut out, &format!("{p}.attention.self.value"), &layer.value)?;
            export_linear(
                &mut out,
                &format!("{p}.attention.output.dense"),
                &layer.attn_out,
            )?;
            export_layer_norm(
                &mut out,
                &format!("{p}.attention.output.LayerNorm"),
                &layer.attn_norm,
            )?;
            export_linear(
                &mut out,
                &format!("{p}.intermediate.dense"),
                &layer.intermediate,
            )?;
            export_linear(&mut out, &format!("{p}.output.dense"), &layer.output)?;
            export_layer_norm(&mut out, &format!("{p}.output.LayerNorm"), &layer.out_norm)?;
        }
        Ok(out)
    }

    /// Hidden size.
    pub fn hidden_size(&self) -> usize {
        self.word_embeddings.weight.shape().dims::<2>()[1]
    }

    /// Token states `[batch, len, hidden]`.
    pub fn forward(&self, input: &BertInput) -> Tensor<3> {
        let [b, t] = input.ids.dims();
        let device = input.ids.device();
        let positions = match self.roberta_pad {
            None => Tensor::<1, Int>::arange(0..t as i64, &device)
                .reshape([1, t])
                .expand([b, t]),
            Some(pad) => {
                // Non-padding tokens count up from pad + 1; padding sits at pad.
                let real = input.ids.clone().not_equal_elem(pad as i64).int();
                real.clone().cumsum(1) * real + pad as i64
            }
        };
        let x = self.word_embeddings.forward(input.ids.clone())
            + self.position_embeddings.forward(positions)
            + self.token_type_embeddings.forward(input.type_ids.clone());
        let mut x = crate::ops::dropout::apply(&self.dropout, self.embed_norm.forward(x));
        // Additive mask: 0 for real keys, -1e9 for padding; [b, 1, 1, t].
        let bias = (input.mask.clone() - 1.0)
            .mul_scalar(1e9)
            .reshape([b, 1, 1, t]);
        for layer in &self.layers {
            x = layer.forward(x, bias.clone());
        }
        x
    }

    /// One vector per text `[batch, hidden]`.
    pub fn pool(states: Tensor<3>, mask: &Tensor<2>, pooling: Pooling) -> Tensor<2> {
        let [b, t, d] = states.dims();
        match pooling {
            Pooling::Cls => states.slice([0..b, 0..1, 0..d]).reshape([b, d]),
            Pooling::Mean => {
                let m = mask.clone().reshape([b, t, 1]);
                let sum = (states * m.clone()).sum_dim(1).reshape([b, d]);
                let count = m.sum_dim(1).reshape([b, 1]).clamp_min(1e-9);
                sum / count
            }
        }
    }

    /// Mean-pooled, L2-normalised sentence embeddings `[batch, hidden]` (sentence-transformers).
    pub fn embed(&self, input: &BertInput) -> Tensor<2> {
        let pooled = Self::pool(self.forward(input), &input.mask, Pooling::Mean);
        let norm = pooled.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
        pooled / norm
    }
}

impl AdapterHost for Bert {
    fn for_each_linear_mut(&mut self, f: &mut dyn FnMut(&str, &mut AdaptedLinear)) {
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("encoder.layer.{l}");
            f(&format!("{p}.attention.self.query"), &mut layer.query);
            f(&format!("{p}.attention.self.key"), &mut layer.key);
            f(&format!("{p}.attention.self.value"), &mut layer.value);
            f(&format!("{p}.attention.output.dense"), &mut layer.attn_out);
            f(&format!("{p}.intermediate.dense"), &mut layer.intermediate);
            f(&format!("{p}.output.dense"), &mut layer.output);
        }
    }
}

/// A BERT encoder with a classification head on the pooled vector
/// (`classifier` — trainable; the encoder is frozen apart from its adapters).
#[derive(Module, Debug)]
pub struct BertClassifier {
    /// The encoder.
    pub bert: Bert,
    /// Dropout before the head.
    pub dropout: Dropout,
    /// `[hidden, classes]`.
    pub classifier: Linear,
    /// `true` for CLS pooling, `false` for mean pooling.
    pub cls_pooling: bool,
}

impl BertClassifier {
    /// A fresh head with `classes` outputs on top of `bert`.
    pub fn new(bert: Bert, classes: usize, pooling: Pooling, dropout: f64) -> Self {
        let device = bert.word_embeddings.weight.val().device();
        let classifier = LinearConfig::new(bert.hidden_size(), classes).init(&device);
        Self {
            bert,
            dropout: DropoutConfig::new(dropout).init(),
            classifier,
            cls_pooling: pooling == Pooling::Cls,
        }
    }

    /// Logits `[batch, classes]`.
    pub fn forward(&self, input: &BertInput) -> Tensor<2> {
        let pooling = if self.cls_pooling {
            Pooling::Cls
        } else {
            Pooling::Mean
        };
        let pooled = Bert::pool(self.bert.forward(input), &input.mask, pooling);
        self.classifier
            .forward(crate::ops::dropout::apply(&self.dropout, pooled))
    }
}

impl AdapterHost for BertClassifier {
    fn for_each_linear_mut(&mut self, f: &mut dyn FnMut(&str, &mut AdaptedLinear)) {
        self.bert.for_each_linear_mut(f);
    }
}
