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
    /// `llama`, `mistral`, `qwen2` or `qwen3` (absent: from `architectures`, else `llama`).
    #[serde(default)]
    pub model_type: Option<String>,
    /// Class names (`Qwen2ForCausalLM`, ...).
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Bias on q, k and v (Llama's `attention_bias`; Qwen2 always has it).
    #[serde(default)]
    pub attention_bias: bool,
    /// Bias in the MLP (not supported: refused).
    #[serde(default)]
    pub mlp_bias: bool,
    /// The MLP's activation (only `silu`).
    #[serde(default = "silu_name")]
    pub hidden_act: String,
    /// RoPE's frequency rescaling (`rope_scaling`, or transformers 5's `rope_parameters`).
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Per-frequency divisors of a GGUF file's `rope_freqs.weight` (llama.cpp's form of Llama
    /// 3's rescaling).
    #[serde(skip)]
    pub rope_freq_factors: Option<Vec<f64>>,
}

/// RoPE frequency rescaling, as transformers' `rope_scaling`: `default` (none), `linear`
/// (every frequency / `factor`) and `llama3` (Llama 3.1+: low frequencies / `factor`, high ones
/// kept, a smooth blend between).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct RopeScaling {
    /// `default`, `linear` or `llama3`.
    pub rope_type: String,
    /// The rescaling factor.
    #[serde(default = "one")]
    pub factor: f64,
    /// `llama3`: wavelengths above `original_max_position_embeddings / low_freq_factor` are
    /// divided by `factor`.
    #[serde(default = "one")]
    pub low_freq_factor: f64,
    /// `llama3`: wavelengths below `original_max_position_embeddings / high_freq_factor` stay.
    #[serde(default = "four")]
    pub high_freq_factor: f64,
    /// `llama3`: the context length the model was pre-trained at.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

fn one() -> f64 {
    1.0
}
fn four() -> f64 {
    4.0
}
fn silu_name() -> String {
    "silu".into()
}

/// The decoder families a `config.json` may name.
pub const DECODER_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// transformers 5 writes `rope_theta` and the rescaling inside `rope_parameters`, older versions
/// at the top level (the rescaling as `rope_scaling`, its kind as `type` or `rope_type`): one form.
fn normalise_rope(config: &mut serde_json::Value) {
    let Some(obj) = config.as_object_mut() else {
        return;
    };
    if let Some(params) = obj
        .get("rope_parameters")
        .cloned()
        .filter(|p| p.is_object())
    {
        if !obj.contains_key("rope_theta")
            && let Some(t) = params.get("rope_theta")
        {
            obj.insert("rope_theta".into(), t.clone());
        }
        if obj.get("rope_scaling").is_none_or(|s| s.is_null()) {
            obj.insert("rope_scaling".into(), params);
        }
    }
    if let Some(s) = obj.get_mut("rope_scaling").and_then(|s| s.as_object_mut()) {
        let kind = s.remove("type");
        if !s.contains_key("rope_type")
            && let Some(k) = kind
        {
            s.insert("rope_type".into(), k);
        }
        s.remove("rope_theta");
    }
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
            "rope_scaling": self.rope_scaling,
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": bos,
            "eos_token_id": eos.first(),
            "torch_dtype": "float32",
        })
    }

    /// The family (`llama` when the config names none).
    pub fn family(&self) -> &str {
        if let Some(t) = &self.model_type {
            return t;
        }
        let arch = self.architectures.first().map_or("", String::as_str);
        [
            ("Mistral", "mistral"),
            ("Qwen2", "qwen2"),
            ("Qwen3", "qwen3"),
        ]
        .iter()
        .find(|(prefix, _)| arch.starts_with(prefix))
        .map_or("llama", |(_, t)| t)
    }
    /// Whether q, k and v have a bias (Qwen2, or `attention_bias`).
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.family() == "qwen2"
    }
    /// Whether q and k get a per-head RMSNorm before RoPE (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.family() == "qwen3"
    }

    /// RoPE's inverse frequencies `[head_dim / 2]`, rescaled as the config says (transformers'
    /// `_compute_default_rope_parameters`, `_compute_linear_scaling_rope_parameters`,
    /// `_compute_llama3_parameters`).
    pub fn inv_freq(&self) -> Vec<f64> {
        let hd = self.head_dim();
        let mut f: Vec<f64> = (0..hd / 2)
            .map(|i| self.rope_theta.powf(-(2.0 * i as f64) / hd as f64))
            .collect();
        if let Some(s) = &self.rope_scaling {
            match s.rope_type.as_str() {
                "linear" => f.iter_mut().for_each(|x| *x /= s.factor),
                "llama3" => {
                    let old = s.original_max_position_embeddings.unwrap_or(8192) as f64;
                    let (low_wl, high_wl) = (old / s.low_freq_factor, old / s.high_freq_factor);
                    for x in &mut f {
                        let wl = 2.0 * std::f64::consts::PI / *x;
                        if wl > low_wl {
                            *x /= s.factor;
                        } else if wl >= high_wl {
                            let smooth = (old / wl - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            *x = (1.0 - smooth) * *x / s.factor + smooth * *x;
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(factors) = &self.rope_freq_factors {
            f.iter_mut().zip(factors).for_each(|(x, d)| *x /= d);
        }
        f
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
        let mut value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(path, format!("not JSON: {e}")))?;
        normalise_rope(&mut value);
        let config: Self = serde_json::from_value(value)
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
            model_type: None,
            architectures: Vec::new(),
            attention_bias: false,
            mlp_bias: false,
            hidden_act: silu_name(),
            rope_scaling: match file.metadata.get("llama.rope.scaling.type") {
                Some(t) if t.as_str() != Some("none") => Some(RopeScaling {
                    rope_type: t.as_str().unwrap_or("?").to_string(),
                    factor: file.meta_f64("llama.rope.scaling.factor").unwrap_or(1.0),
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: None,
                }),
                _ => None,
            },
            // Llama 3's rescaling, as llama.cpp stores it: divisors of each frequency.
            rope_freq_factors: match file.tensors.contains_key("rope_freqs.weight") {
                true => Some(
                    file.dequantize("rope_freqs.weight")?
                        .data
                        .iter()
                        .map(|&v| v as f64)
                        .collect(),
                ),
                false => None,
            },
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
        if !DECODER_TYPES.contains(&self.family()) {
            return Err(ModelError::config(
                path,
                format!(
                    "model_type `{}` is not a supported decoder ({} are)",
                    self.family(),
                    DECODER_TYPES.join(", ")
                ),
            ));
        }
        if self.mlp_bias {
            return Err(ModelError::config(
                path,
                "mlp_bias = true is not supported (Llama-family MLPs without bias are)",
            ));
        }
        if self.hidden_act != "silu" {
            return Err(ModelError::config(
                path,
                format!(
                    "hidden_act `{}` is not supported (the Llama family's silu is)",
                    self.hidden_act
                ),
            ));
        }
        if let Some(s) = &self.rope_scaling {
            if !["default", "linear", "llama3"].contains(&s.rope_type.as_str()) {
                return Err(ModelError::config(
                    path,
                    format!(
                        "rope_scaling type `{}` is not supported (default, linear and llama3 are)",
                        s.rope_type
                    ),
                ));
            }
            let bad = !(s.factor.is_finite() && s.factor > 0.0)
                || (s.rope_type == "llama3"
                    && (s.high_freq_factor - s.low_freq_factor).partial_cmp(&0.0)
                        != Some(std::cmp::Ordering::Greater));
            if bad {
                return Err(ModelError::config(
                    path,
                    format!(
                        "rope_scaling: factor {} must be positive (and high_freq_factor {} above low_freq_factor {} for llama3)",
                        s.factor, s.high_freq_factor, s.low_freq_factor
                    ),
                ));
            }
        }
        if let Some(f) = &self.rope_freq_factors
            && (f.len() != self.head_dim() / 2 || f.iter().any(|v| !(v.is_finite() && *v > 0.0)))
        {
            return Err(ModelError::config(
                path,
                format!(
                    "rope_freqs.weight must hold {} positive numbers (head_dim / 2)",
                    self.head_dim() / 2
                ),
            ));
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
    /// `self_attn.q_norm` (Qwen3): RMSNorm over each head of q before RoPE.
    pub q_norm: Option<RmsNorm>,
    /// `self_attn.k_norm` (Qwen3).
    pub k_norm: Option<RmsNorm>,
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
    /// RoPE's inverse frequencies `[head_dim / 2]` ([`LlamaConfig::inv_freq`]).
    pub inv_freq: Vec<f64>,
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
        let adapted_b = |name: String, i: usize, o: usize, bias: bool| -> Result<AdaptedLinear> {
            Ok(AdaptedLinear::new(loader.linear(&name, i, o, bias)?))
        };
        let adapted = |name: String, i: usize, o: usize| adapted_b(name, i, o, false);
        let qkv_bias = c.qkv_bias();
        let head_norm = |name: String| -> Result<Option<RmsNorm>> {
            c.qk_norm()
                .then(|| rms(&loader, &name, hd, eps))
                .transpose()
        };
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            layers.push(LlamaLayer {
                input_norm: rms(&loader, &format!("{p}.input_layernorm"), d, eps)?,
                q_proj: adapted_b(format!("{p}.self_attn.q_proj"), d, q_out, qkv_bias)?,
                k_proj: adapted_b(format!("{p}.self_attn.k_proj"), d, kv_out, qkv_bias)?,
                v_proj: adapted_b(format!("{p}.self_attn.v_proj"), d, kv_out, qkv_bias)?,
                o_proj: adapted(format!("{p}.self_attn.o_proj"), q_out, d)?,
                q_norm: head_norm(format!("{p}.self_attn.q_norm"))?,
                k_norm: head_norm(format!("{p}.self_attn.k_norm"))?,
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
            inv_freq: c.inv_freq(),
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
            for (name, norm) in [("q_norm", &layer.q_norm), ("k_norm", &layer.k_norm)] {
                if let Some(n) = norm {
                    export_rms_norm(&mut out, &format!("{p}.self_attn.{name}"), n)?;
                }
            }
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
                let inv = self.inv_freq[i];
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
            let head_norm = |z: Tensor<4>, norm: &Option<RmsNorm>| match norm {
                Some(n) => n.forward(z),
                None => z,
            };
            let q = head_norm(
                layer.q_proj.forward(y.clone()).reshape([b, t, h, hd]),
                &layer.q_norm,
            )
            .swap_dims(1, 2);
            let k = head_norm(
                layer.k_proj.forward(y.clone()).reshape([b, t, kv, hd]),
                &layer.k_norm,
            )
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
