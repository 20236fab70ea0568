//! Models: loaders, layouts, errors, and the real pretrained models against independent references.
//!
//! The reference numbers in tests/fixtures were computed by scripts/reference_models.py with
//! sentence-transformers (MiniLM) and Hugging Face transformers' GGUF loader (SmolLM2).
//! Tests that need the real models skip when they are not fetched, unless
//! `GRALORA_REQUIRE_ASSETS=1` (CI), where a missing asset fails.

mod asset_cache;
#[path = "../common/mod.rs"]
mod common;
mod families;
mod fuzz;
#[path = "../common/fuzz.rs"]
mod fuzz_support;
mod layouts;
mod real_models;

#[global_allocator]
static ALLOCATOR: fuzz_support::Bounded = fuzz_support::Bounded;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{Rng, Scratch, devices, host};
use gralora::{AdaptOptions, GraLoraConfig, LoraConfig, Targets, attach_adapters};
use gralora_models::assets;
use gralora_models::gguf::GgufFile;
use gralora_models::source::{LoadedModel, ModelSource};
use gralora_models::weights::SafetensorsFile;
use gralora_models::{
    Bert, BertClassifier, BertConfig, BertInput, KvCache, Llama, LlamaConfig, ModelError, Pooling,
    Sampler,
};
use serde_json::Value;

// ---------------------------------------------------------------- helpers

fn tmp_dir(name: &str) -> Scratch {
    Scratch::new(&format!("test-{name}"))
}

fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    gralora_models::weights::write_safetensors(path, &tensors.to_vec()).unwrap();
}

enum Meta {
    U32(u32),
    F32(f32),
    Str(&'static str),
}

/// A minimal GGUF v3 writer: metadata, then tensors `(name, ggml dims, type id, raw bytes)`.
fn write_gguf(path: &Path, meta: &[(&str, Meta)], tensors: &[(String, Vec<usize>, u32, Vec<u8>)]) {
    let mut out = Vec::new();
    let s = |out: &mut Vec<u8>, text: &str| {
        out.extend((text.len() as u64).to_le_bytes());
        out.extend(text.as_bytes());
    };
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        s(&mut out, k);
        match v {
            Meta::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::Str(x) => {
                out.extend(8u32.to_le_bytes());
                s(&mut out, x);
            }
        }
    }
    let mut offset = 0usize;
    let mut offsets = Vec::new();
    for (_, _, _, bytes) in tensors {
        offsets.push(offset);
        offset += bytes.len().div_ceil(32) * 32;
    }
    for ((name, dims, ty, _), off) in tensors.iter().zip(&offsets) {
        s(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(ty.to_le_bytes());
        out.extend((*off as u64).to_le_bytes());
    }
    while out.len() % 32 != 0 {
        out.push(0);
    }
    for (_, _, _, bytes) in tensors {
        out.extend(bytes);
        while out.len() % 32 != 0 {
            out.push(0);
        }
    }
    std::fs::write(path, out).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// llama.cpp's converter permutation of q/k rows (HF rotate-half -> interleaved).
fn llama_cpp_permute(w: &[f32], out: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = out / n_head;
    let mut p = vec![0f32; w.len()];
    for h in 0..n_head {
        for two in 0..2 {
            for i in 0..hd / 2 {
                let src = h * hd + two * (hd / 2) + i;
                let dst = h * hd + i * 2 + two;
                p[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    p
}

const TINY_LLAMA: &str = r#"{"model_type": "llama", "vocab_size": 40, "hidden_size": 16,
  "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
  "max_position_embeddings": 64, "tie_word_embeddings": true}"#;

/// Random tiny-Llama weights with HF names and shapes.
fn tiny_llama_weights() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = Rng::new(7);
    let (v, d, f, hd) = (40, 16, 24, 4);
    let mut t = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![v, d],
        rng.vec(v * d),
    )];
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        let mut add = |n: &str, s: Vec<usize>, scale: f32| {
            let n_el = s.iter().product();
            let data: Vec<f32> = rng.vec(n_el).iter().map(|x| x * scale).collect();
            t.push((format!("{p}.{n}"), s, data));
        };
        add("input_layernorm.weight", vec![d], 1.0);
        add("self_attn.q_proj.weight", vec![4 * hd, d], 0.5);
        add("self_attn.k_proj.weight", vec![2 * hd, d], 0.5);
        add("self_attn.v_proj.weight", vec![2 * hd, d], 0.5);
        add("self_attn.o_proj.weight", vec![d, 4 * hd], 0.5);
        add("post_attention_layernorm.weight", vec![d], 1.0);
        add("mlp.gate_proj.weight", vec![f, d], 0.5);
        add("mlp.up_proj.weight", vec![f, d], 0.5);
        add("mlp.down_proj.weight", vec![d, f], 0.5);
    }
    t.push(("model.norm.weight".to_string(), vec![d], rng.vec(d)));
    t
}

/// The same weights as a llama.cpp GGUF (GGUF names, reversed dims, permuted q/k).
fn tiny_llama_gguf(path: &Path, weights: &[(String, Vec<usize>, Vec<f32>)]) {
    let meta = [
        ("general.architecture", Meta::Str("llama")),
        ("llama.block_count", Meta::U32(2)),
        ("llama.embedding_length", Meta::U32(16)),
        ("llama.feed_forward_length", Meta::U32(24)),
        ("llama.attention.head_count", Meta::U32(4)),
        ("llama.attention.head_count_kv", Meta::U32(2)),
        ("llama.rope.dimension_count", Meta::U32(4)),
        ("llama.rope.freq_base", Meta::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5)),
        ("llama.context_length", Meta::U32(64)),
        ("llama.vocab_size", Meta::U32(40)),
    ];
    let tensors: Vec<(String, Vec<usize>, u32, Vec<u8>)> = weights
        .iter()
        .map(|(name, shape, data)| {
            let gg = name
                .replace("model.embed_tokens", "token_embd")
                .replace("model.norm", "output_norm")
                .replace("model.layers.", "blk.")
                .replace("input_layernorm", "attn_norm")
                .replace("post_attention_layernorm", "ffn_norm")
                .replace("self_attn.q_proj", "attn_q")
                .replace("self_attn.k_proj", "attn_k")
                .replace("self_attn.v_proj", "attn_v")
                .replace("self_attn.o_proj", "attn_output")
                .replace("mlp.gate_proj", "ffn_gate")
                .replace("mlp.up_proj", "ffn_up")
                .replace("mlp.down_proj", "ffn_down");
            let data = if gg.ends_with("attn_q.weight") {
                llama_cpp_permute(data, shape[0], shape[1], 4)
            } else if gg.ends_with("attn_k.weight") {
                llama_cpp_permute(data, shape[0], shape[1], 2)
            } else {
                data.clone()
            };
            let dims: Vec<usize> = shape.iter().rev().copied().collect();
            (gg, dims, 0u32, f32_bytes(&data))
        })
        .collect();
    write_gguf(path, &meta, &tensors);
}

fn ids(v: &[i64], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [1, v.len()]), device)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The cache with the real models, or `None` (skip) when they are not fetched.
fn asset(name: &str) -> Option<PathBuf> {
    let home = assets::home();
    let a = assets::find(name).unwrap();
    if assets::is_present(&home, a) {
        return Some(assets::dir(&home, a));
    }
    if std::env::var("GRALORA_REQUIRE_ASSETS").as_deref() == Ok("1") {
        panic!(
            "GRALORA_REQUIRE_ASSETS=1 but asset `{name}` is not in {}; run `gralora fetch {name}`",
            home.display()
        );
    }
    eprintln!("{name}: skipped (not fetched; run `gralora fetch {name}`)");
    None
}

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}
