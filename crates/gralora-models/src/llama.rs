//! Llama-family decoder (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU, optionally
//! tied embeddings), from a Hugging Face snapshot or a GGUF file. Linear layers are
//! [`AdaptedLinear`]s under Hugging Face module paths (`model.layers.0.self_attn.q_proj`, ...).
//!
//! Rotary embeddings use Hugging Face's rotate-half layout; GGUF q/k rows are un-permuted on load
//! (see [`crate::gguf::unpermute_rows`]), so adapters line up with PEFT's on HF weights.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use gralora::{AdaptedLinear, AdapterHost};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, GgufLlama};
use crate::weights::{Loader, SafetensorsFile, TensorSource};

/// Llama hyper-parameters (Hugging Face `config.json` names).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head size; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "rms_eps")]
    pub rms_norm_eps: f64,
    /// Rotary base.
    #[serde(default = "rope_theta")]
    pub rope_theta: f64,
    /// Context length.
    #[serde(default = "ctx")]
    pub max_position_embeddings: usize,
    /// Whether the output projection is the embedding table.
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn rms_eps() -> f64 {
    1e-6
}
fn rope_theta() -> f64 {
    10000.0
}
fn ctx() -> usize {
    2048
}

impl LlamaConfig {
    /// A Hugging Face `config.json` for this model (f32 weights).
    pub fn to_hf_json(&self, bos: Option<u32>, eos: &[u32]) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.kv_heads(),
            "head_dim": self.head_dim(),
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": bos,
            "eos_token_id": eos.first(),
            "torch_dtype": "float32",
        })
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    /// Per-head size.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Read and check a Hugging Face `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(path, format!("not a Llama config: {e}")))?;
        config.check(path)?;
        Ok(config)
    }

    /// The config stored in a GGUF file's `llama.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.meta_str("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::config(
                file.path(),
                format!("architecture `{arch}` is not supported (only `llama`)"),
            ));
        }
        let u = |k: &str| file.meta_u64(&format!("llama.{k}")).map(|v| v as usize);
        let heads = u("attention.head_count")?;
        let vocab = match file.metadata.get("llama.vocab_size") {
            Some(v) => v.as_u64().unwrap_or(0) as usize,
            None => file
                .meta("tokenizer.ggml.tokens")?
                .as_array()
                .map_or(0, <[_]>::len),
        };
        let config = Self {
            vocab_size: vocab,
            hidden_size: u("embedding_length")?,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers: u("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: Some(u("attention.head_count_kv").unwrap_or(heads)),
            head_dim: u("rope.dimension_count").ok(),
            rms_norm_eps: file.meta_f64("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: file.meta_f64("llama.rope.freq_base").unwrap_or(10000.0),
            max_position_embeddings: u("context_length").unwrap_or(2048),
            tie_word_embeddings: !file.tensors.contains_key("output.weight"),
        };
        config.check(file.path())?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let (h, kv) = (self.num_attention_heads, self.kv_heads());
        if h == 0 || kv == 0 || h % kv != 0 {
            return Err(ModelError::config(
                path,
                format!(
                    "num_attention_heads {h} must be a positive multiple of num_key_value_heads {kv}"
                ),
            ));
        }
        for (field, v) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ModelError::config(
                    path,
                    format!("{field} {v} must be a positive number"),
                ));
            }
        }
        if !self.head_dim().is_multiple_of(2) || self.head_dim() == 0 {
            return Err(ModelError::config(
                path,
                format!(
                    "head_dim {} must be even for rotary embeddings",
                    self.head_dim()
                ),
            ));
        }
        Ok(())
    }
}

/// One decoder block.
#[derive(Module, Debug)]
pub struct LlamaLayer {
    /// `input_layernorm`.
    pub input_norm: RmsNorm,
    /// `self_attn.q_proj`.
    pub q_proj: AdaptedLinear,
    /// `self_attn.k_proj`.
    pub k_proj: AdaptedLinear,
    /// `self_attn.v_proj`.
    pub v_proj: AdaptedLinear,
    /// `self_attn.o_proj`.
    pub o_proj: AdaptedLinear,
    /// `post_attention_layernorm`.
    pub post_norm: RmsNorm,
    /// `mlp.gate_proj`.
    pub gate_proj: AdaptedLinear,
    /// `mlp.up_proj`.
    pub up_proj: AdaptedLinear,
    /// `mlp.down_proj`.
    pub down_proj: AdaptedLinear,
}

/// Keys and values of earlier positions, per layer: `[batch, kv_heads, len, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A Llama decoder.
#[derive(Module, Debug)]
pub struct Llama {
    /// `model.embed_tokens`.
    pub embed_tokens: Embedding,
    /// `model.layers.N`.
    pub layers: Vec<LlamaLayer>,
    /// `model.norm`.
    pub norm: RmsNorm,
    /// `lm_head`, or `None` when tied to the embeddings.
    pub lm_head: Option<Linear>,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Per-head size.
    pub head_dim: usize,
    /// Rotary base.
    pub rope_theta: f64,
    /// Context length.
    pub max_len: usize,
}

fn rms(loader: &Loader, name: &str, d: usize, eps: f64) -> Result<RmsNorm> {
    let mut norm = RmsNormConfig::new(d)
        .with_epsilon(eps)
        .init(loader.device());
    norm.gamma = Param::from_tensor(loader.tensor(&format!("{name}.weight"), [d])?);
    Ok(norm)
}

impl Llama {
    /// Build from named tensors (HF names) onto `device`.
    pub fn load(config: &LlamaConfig, weights: &dyn TensorSource, device: &Device) -> Result<Self> {
        let loader = Loader::new(weights, device);
        let c = config;
        let (d, hd, eps) = (c.hidden_size, c.head_dim(), c.rms_norm_eps);
        let (q_out, kv_out) = (c.num_attention_heads * hd, c.kv_heads() * hd);
        let adapted = |name: String, i: usize, o: usize| -> Result<AdaptedLinear> {
            Ok(AdaptedLinear::new(loader.linear(&name, i, o, false)?))
        };
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            layers.push(LlamaLayer {
                input_norm: rms(&loader, &format!("{p}.input_layernorm"), d, eps)?,
                q_proj: adapted(format!("{p}.self_attn.q_proj"), d, q_out)?,
                k_proj: adapted(format!("{p}.self_attn.k_proj"), d, kv_out)?,
                v_proj: adapted(format!("{p}.self_attn.v_proj"), d, kv_out)?,
                o_proj: adapted(format!("{p}.self_attn.o_proj"), q_out, d)?,
                post_norm: rms(&loader, &format!("{p}.post_attention_layernorm"), d, eps)?,
                gate_proj: adapted(format!("{p}.mlp.gate_proj"), d, c.intermediate_size)?,
                up_proj: adapted(format!("{p}.mlp.up_proj"), d, c.intermediate_size)?,
                down_proj: adapted(format!("{p}.mlp.down_proj"), c.intermediate_size, d)?,
            });
        }
        let lm_head = if c.tie_word_embeddings && !loader.has("lm_head.weight") {
            None
        } else {
            Some(loader.linear("lm_head", d, c.vocab_size, false)?)
        };
        let model = Self {
            embed_tokens: loader.embedding("model.embed_tokens", c.vocab_size, d)?,
            layers,
            norm: rms(&loader, "model.norm", d, eps)?,
            lm_head,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.kv_heads(),
            head_dim: hd,
            rope_theta: c.rope_theta,
            max_len: c.max_position_embeddings,
        };
        Ok(model.no_grad())
    }

    /// Load a Hugging Face snapshot directory (`config.json` + `model.safetensors`).
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<(LlamaConfig, Self)> {
        let dir = dir.as_ref();
        let config = LlamaConfig::from_file(dir.join("config.json"))?;
        let weights = SafetensorsFile::open(dir.join("model.safetensors"))?;
        let model = Self::load(&config, &weights, device)?;
        Ok((config, model))
    }

    /// Load a GGUF file (weights dequantised to f32).
    pub fn from_gguf(file: GgufFile, device: &Device) -> Result<(LlamaConfig, Self)> {
        let config = LlamaConfig::from_gguf(&file)?;
        let source = GgufLlama::new(file, config.num_attention_heads, config.kv_heads());
        let model = Self::load(&config, &source, device)?;
        Ok((config, model))
    }

    /// All weights under Hugging Face `LlamaForCausalLM` names, adapters merged into their layers
    /// (`lm_head.weight` only when the head is not tied).
    pub fn export(&self) -> crate::error::Result<crate::weights::Export> {
        use crate::weights::{export_embedding, export_linear, export_rms_norm};
        let mut out = Vec::new();
        export_embedding(&mut out, "model.embed_tokens", &self.embed_tokens)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            export_rms_norm(&mut out, &format!("{p}.input_layernorm"), &layer.input_norm)?;
            export_linear(&mut out, &format!("{p}.self_attn.q_proj"), &layer.q_proj)?;
            export_linear(&mut out, &format!("{p}.self_attn.k_proj"), &layer.k_proj)?;
            export_linear(&mut out, &format!("{p}.self_attn.v_proj"), &layer.v_proj)?;
            export_linear(&mut out, &format!("{p}.self_attn.o_proj"), &layer.o_proj)?;
            export_rms_norm(
                &mut out,
                &format!("{p}.post_attention_layernorm"),
                &layer.post_norm,
            )?;
            export_linear(&mut out, &format!("{p}.mlp.gate_proj"), &layer.gate_proj)?;
            export_linear(&mut out, &format!("{p}.mlp.up_proj"), &layer.up_proj)?;
            export_linear(&mut out, &format!("{p}.mlp.down_proj"), &layer.down_proj)?;
        }
        export_rms_norm(&mut out, "model.norm", &self.norm)?;
        if let Some(head) = &self.lm_head {
            let w = head.weight.val().transpose();
            let [v, d] = w.dims();
            let data = gralora::io::read_f32(w)?;
            out.push(("lm_head.weight".to_string(), vec![v, d], data));
        }
        Ok(out)
    }

    /// Rotary cos/sin tables `[len, head_dim]` for positions `start..start+len` (rotate-half layout).
    fn rope(&self, start: usize, len: usize, device: &Device) -> (Tensor<4>, Tensor<4>) {
        let positions: Vec<usize> = (start..start + len).collect();
        let (cos, sin) = self.rope_at(&positions, device);
        let hd = self.head_dim;
        (cos.reshape([1, 1, len, hd]), sin.reshape([1, 1, len, hd]))
    }

    /// cos and sin `[positions, head_dim]` of the rotary embedding at `positions`.
    fn rope_at(&self, positions: &[usize], device: &Device) -> (Tensor<2>, Tensor<2>) {
        let hd = self.head_dim;
        let half = hd / 2;
        let n = positions.len();
        let mut cos = vec![0f32; n * hd];
        let mut sin = vec![0f32; n * hd];
        for (p, &pos) in positions.iter().enumerate() {
            for i in 0..half {
                let inv = self.rope_theta.powf(-(2.0 * i as f64) / hd as f64);
                let angle = pos as f64 * inv;
                let (s, c) = angle.sin_cos();
                for j in [i, i + half] {
                    cos[p * hd + j] = c as f32;
                    sin[p * hd + j] = s as f32;
                }
            }
        }
        (
            Tensor::from_data(TensorData::new(cos, [n, hd]), device),
            Tensor::from_data(TensorData::new(sin, [n, hd]), device),
        )
    }

    /// `x` `[b, h, t, hd]` rotated by `cos`, `sin` `[1 or b, 1, t, hd]`.
    fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
        let [b, h, t, hd] = x.dims();
        let half = hd / 2;
        let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
        let x2 = x.clone().slice([0..b, 0..h, 0..t, half..hd]);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos.clone() + rotated * sin.clone()
    }

    /// Final hidden states of packed rows `ids` `[batch, len]`: row `r` holds several examples
    /// one after another, the second and later starting at `starts[r]` (sorted). Each example
    /// attends only to itself, causally, and its positions restart at 0 — the same states as
    /// each example run alone. Rows are right-padded; padding forms its row's last example.
    pub fn forward_hidden_packed(&self, ids: Tensor<2, Int>, starts: &[Vec<usize>]) -> Tensor<3> {
        let [b, t] = ids.dims();
        let device = ids.device();
        let hd = self.head_dim;
        let mut positions = Vec::with_capacity(b * t);
        let mut bias = vec![-1e9f32; b * t * t];
        for r in 0..b {
            let row_starts = starts.get(r).map_or(&[][..], Vec::as_slice);
            let mut segment = vec![0usize; t];
            let (mut seg, mut begin) = (0usize, 0usize);
            for (p, s) in segment.iter_mut().enumerate() {
                while seg < row_starts.len() && row_starts[seg] <= p {
                    begin = row_starts[seg];
                    seg += 1;
                }
                *s = seg;
                positions.push(p - begin);
            }
            for i in 0..t {
                for j in 0..=i {
                    if segment[j] == segment[i] {
                        bias[(r * t + i) * t + j] = 0.0;
                    }
                }
            }
        }
        let (cos, sin) = self.rope_at(&positions, &device);
        let bias: Tensor<4> = Tensor::from_data(TensorData::new(bias, [b, 1, t, t]), &device);
        self.blocks(
            ids,
            bias,
            (cos.reshape([b, 1, t, hd]), sin.reshape([b, 1, t, hd])),
            None,
        )
    }

    /// Final hidden states `[batch, len, hidden]` for `ids` `[batch, len]`, continuing `cache` if given.
    /// `mask` `[batch, cached + len]` marks real (1) and padding (0) keys.
    pub fn forward_hidden(
        &self,
        ids: Tensor<2, Int>,
        mask: Option<Tensor<2>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [b, t] = ids.dims();
        let device = ids.device();
        let past = cache.as_ref().map_or(0, |c| c.len);
        let total = past + t;
        let (cos, sin) = self.rope(past, t, &device);
        // Causal (and padding) additive bias [b or 1, 1, t, total].
        let mut causal = vec![0f32; t * total];
        for i in 0..t {
            for j in past + i + 1..total {
                causal[i * total + j] = -1e9;
            }
        }
        let mut bias: Tensor<4> =
            Tensor::<2>::from_data(TensorData::new(causal, [t, total]), &device)
                .reshape([1, 1, t, total]);
        if let Some(mask) = mask {
            bias = bias + (mask - 1.0).mul_scalar(1e9).reshape([b, 1, 1, total]);
        }
        self.blocks(ids, bias, (cos, sin), cache)
    }

    /// The blocks and the final norm over `ids` `[b, t]`, with the additive attention `bias`
    /// `[1 or b, 1, t, cached + t]` and the rotary `(cos, sin)` `[1 or b, 1, t, head_dim]`.
    fn blocks(
        &self,
        ids: Tensor<2, Int>,
        bias: Tensor<4>,
        (cos, sin): (Tensor<4>, Tensor<4>),
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [b, t] = ids.dims();
        let past = cache.as_ref().map_or(0, |c| c.len);
        let total = past + t;
        let (h, kv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let rep = h / kv;
        let mut x = self.embed_tokens.forward(ids);
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize(self.layers.len(), None);
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let y = layer.input_norm.forward(x.clone());
            let q = layer
                .q_proj
                .forward(y.clone())
                .reshape([b, t, h, hd])
                .swap_dims(1, 2);
            let k = layer
                .k_proj
                .forward(y.clone())
                .reshape([b, t, kv, hd])
                .swap_dims(1, 2);
            let v = layer
                .v_proj
                .forward(y)
                .reshape([b, t, kv, hd])
                .swap_dims(1, 2);
            let q = Self::apply_rope(q, &cos, &sin);
            let mut k = Self::apply_rope(k, &cos, &sin);
            let mut v = v;
            if let Some(c) = cache.as_deref_mut() {
                if let Some((pk, pv)) = c.layers[l].take() {
                    k = Tensor::cat(vec![pk, k], 2);
                    v = Tensor::cat(vec![pv, v], 2);
                }
                c.layers[l] = Some((k.clone(), v.clone()));
            }
            let expand = |z: Tensor<4>| -> Tensor<4> {
                if rep == 1 {
                    return z;
                }
                z.reshape([b, kv, 1, total, hd])
                    .expand([b, kv, rep, total, hd])
                    .reshape([b, h, total, hd])
            };
            let (k, v) = (expand(k), expand(v));
            let scores = q.matmul(k.swap_dims(2, 3));
            let scale = 1.0 / (hd as f32).sqrt();
            let ctx = crate::ops::softmax::scaled_softmax(scores, bias.clone(), scale)
                .matmul(v)
                .swap_dims(1, 2)
                .reshape([b, t, h * hd]);
            x = x + layer.o_proj.forward(ctx);
            let y = layer.post_norm.forward(x.clone());
            let mlp = silu(layer.gate_proj.forward(y.clone())) * layer.up_proj.forward(y);
            x = x + layer.down_proj.forward(mlp);
        }
        if let Some(c) = cache {
            c.len = total;
        }
        self.norm.forward(x)
    }

    /// Vocabulary logits for hidden states `[..., hidden]`.
    pub fn logits<const D: usize>(&self, hidden: Tensor<D>) -> Tensor<D> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let w = self.embed_tokens.weight.val(); // [vocab, d]
                let [v, d] = w.dims();
                let mut shape = hidden.dims();
                shape[D - 1] = v;
                let flat: Tensor<2> = hidden.reshape([-1, d as i32]);
                flat.matmul(w.transpose()).reshape(shape)
            }
        }
    }

    /// Logits `[batch, len, vocab]`.
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Option<Tensor<2>>) -> Tensor<3> {
        self.logits(self.forward_hidden(ids, mask, None))
    }

    /// Log-probability of each next token of `ids` (one sequence): `len - 1` values.
    pub fn token_log_probs(&self, ids: &[u32], device: &Device) -> Result<Vec<f32>> {
        if ids.len() < 2 {
            return Err(ModelError::Input(
                "perplexity needs at least two tokens of text".into(),
            ));
        }
        self.check_len(ids.len())?;
        let t = ids.len();
        let input = ids_tensor(&ids[..t - 1], device);
        let logp = log_softmax(self.forward(input, None), 2); // [1, t-1, V]
        let targets: Vec<i64> = ids[1..].iter().map(|&i| i as i64).collect();
        let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [1, t - 1, 1]), device);
        let picked = logp.gather(2, targets);
        to_host(picked)
    }

    fn check_len(&self, n: usize) -> Result<()> {
        if n > self.max_len {
            return Err(ModelError::Input(format!(
                "{n} tokens exceed the model's context of {} tokens",
                self.max_len
            )));
        }
        Ok(())
    }

    /// Continue `prompt` by up to `max_new` tokens, stopping after any of `stop`.
    /// `on_token` sees each new token as it is chosen.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        stop: &[u32],
        device: &Device,
        mut on_token: impl FnMut(u32),
    ) -> Result<Generation> {
        self.generate_while(prompt, max_new, sampler, stop, device, |t| {
            on_token(t);
            true
        })
    }

    /// As [`generate`](Self::generate), and also stops once `keep_going` returns `false` for a
    /// new token (e.g. when the decoded text reaches a stop sequence).
    pub fn generate_while(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        stop: &[u32],
        device: &Device,
        mut keep_going: impl FnMut(u32) -> bool,
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(ModelError::Input("the prompt is empty".into()));
        }
        self.check_len(prompt.len() + max_new)?;
        let mut cache = KvCache::new();
        let mut next_input = prompt.to_vec();
        let mut out = Vec::new();
        let mut first = None;
        for _ in 0..max_new {
            let hidden =
                self.forward_hidden(ids_tensor(&next_input, device), None, Some(&mut cache));
            let [_, t, d] = hidden.dims();
            let last = hidden.slice([0..1, t - 1..t, 0..d]).reshape([1, d]);
            let probs = to_host(softmax(self.logits(last), 1))?;
            if first.is_none() {
                first = Some(probs.clone());
            }
            let token = sampler.pick(&probs);
            out.push(token);
            if !keep_going(token) || stop.contains(&token) {
                break;
            }
            next_input = vec![token];
        }
        Ok(Generation {
            tokens: out,
            first_probs: first.unwrap_or_default(),
        })
    }
}

/// The result of [`Llama::generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// New tokens (including a final stop token, if reached).
    pub tokens: Vec<u32>,
    /// The next-token distribution after the prompt.
    pub first_probs: Vec<f32>,
}

/// Token choice: greedy or temperature sampling with nucleus (top-p) truncation.
#[derive(Debug, Clone)]
pub struct Sampler {
    temperature: f64,
    top_p: f64,
    rng: StdRng,
}

impl Sampler {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            rng: StdRng::seed_from_u64(0),
        }
    }
    /// Sample at `temperature` from the smallest set of tokens holding `top_p` of the mass.
    pub fn sampling(temperature: f64, top_p: f64, seed: u64) -> Self {
        Self {
            temperature,
            top_p: top_p.clamp(0.0, 1.0),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Choose a token from next-token probabilities.
    pub fn pick(&mut self, probs: &[f32]) -> u32 {
        let argmax = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32);
        if self.temperature <= 0.0 {
            return argmax;
        }
        // p^(1/T), renormalised, restricted to the top-p nucleus.
        let inv_t = 1.0 / self.temperature;
        let mut weighted: Vec<(u32, f64)> = probs
            .iter()
            .enumerate()
            .map(|(i, &p)| (i as u32, (p as f64).max(0.0).powf(inv_t)))
            .filter(|(_, w)| *w > 0.0)
            .collect();
        weighted.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = weighted.iter().map(|w| w.1).sum();
        let mut kept = 0.0;
        let mut cut = weighted.len();
        for (i, w) in weighted.iter().enumerate() {
            kept += w.1 / total;
            if kept >= self.top_p {
                cut = i + 1;
                break;
            }
        }
        weighted.truncate(cut.max(1));
        let mass: f64 = weighted.iter().map(|w| w.1).sum();
        let mut u = self.rng.random::<f64>() * mass;
        for (id, w) in &weighted {
            if u < *w {
                return *id;
            }
            u -= w;
        }
        weighted.last().map_or(argmax, |w| w.0)
    }
}

fn to_host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    Ok(gralora::io::read_f32(t)?)
}

fn ids_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let v: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(v, [1, ids.len()]), device)
}

impl AdapterHost for Llama {
    fn for_each_linear_mut(&mut self, f: &mut dyn FnMut(&str, &mut AdaptedLinear)) {
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{l}");
            f(&format!("{p}.self_attn.q_proj"), &mut layer.q_proj);
            f(&format!("{p}.self_attn.k_proj"), &mut layer.k_proj);
            f(&format!("{p}.self_attn.v_proj"), &mut layer.v_proj);
            f(&format!("{p}.self_attn.o_proj"), &mut layer.o_proj);
            f(&format!("{p}.mlp.gate_proj"), &mut layer.gate_proj);
            f(&format!("{p}.mlp.up_proj"), &mut layer.up_proj);
            f(&format!("{p}.mlp.down_proj"), &mut layer.down_proj);
        }
    }
}
