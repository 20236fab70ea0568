//! Models: loaders, layouts, errors, and the real pretrained models against independent references.
//!
//! The reference numbers in tests/fixtures were computed by scripts/reference_models.py with
//! sentence-transformers (MiniLM) and Hugging Face transformers' GGUF loader (SmolLM2).
//! Tests that need the real models skip when they are not fetched, unless
//! `GRALORA_REQUIRE_ASSETS=1` (CI), where a missing asset fails.

mod common;

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

// ---------------------------------------------------------------- layouts

#[test]
fn gguf_llama_matches_the_same_weights_from_hf_safetensors() {
    let dir = tmp_dir("llama-layout");
    let weights = tiny_llama_weights();
    std::fs::write(dir.join("config.json"), TINY_LLAMA).unwrap();
    write_safetensors(&dir.join("model.safetensors"), &weights);
    let gguf_path = dir.join("tiny.gguf");
    tiny_llama_gguf(&gguf_path, &weights);
    let raw_dir = dir.join("raw");
    std::fs::create_dir_all(&raw_dir).unwrap();
    std::fs::write(raw_dir.join("config.json"), TINY_LLAMA).unwrap();
    let raw: Vec<_> = weights
        .iter()
        .map(|(n, s, d)| {
            let heads = if n.ends_with("q_proj.weight") {
                4
            } else if n.ends_with("k_proj.weight") {
                2
            } else {
                0
            };
            let d = if heads > 0 {
                llama_cpp_permute(d, s[0], s[1], heads)
            } else {
                d.clone()
            };
            (n.clone(), s.clone(), d)
        })
        .collect();
    write_safetensors(&raw_dir.join("model.safetensors"), &raw);
    for (name, device) in devices() {
        let (_, hf) = Llama::from_dir(&dir, &device).unwrap();
        let (config, gg) = Llama::from_gguf(GgufFile::open(&gguf_path).unwrap(), &device).unwrap();
        assert_eq!(config.kv_heads(), 2);
        assert!(config.tie_word_embeddings);
        let tokens = [3i64, 17, 5, 39, 0, 22, 8];
        let a = host(hf.forward(ids(&tokens, &device), None));
        let b = host(gg.forward(ids(&tokens, &device), None));
        assert!(
            max_abs_diff(&a, &b) < 1e-5,
            "{name}: GGUF (un-permuted) vs HF logits"
        );
        // The layout matters: q/k rows left in llama.cpp's order (what a loader without the
        // un-permutation would use) give different logits.
        let (_, raw) = Llama::from_dir(&raw_dir, &device).unwrap();
        let c = host(raw.forward(ids(&tokens, &device), None));
        assert!(
            max_abs_diff(&a, &c) > 1e-3,
            "{name}: q/k row order has no effect?"
        );
    }
}

#[test]
fn kv_cache_continuation_equals_a_full_forward() {
    let dir = tmp_dir("llama-cache");
    std::fs::write(dir.join("config.json"), TINY_LLAMA).unwrap();
    write_safetensors(&dir.join("model.safetensors"), &tiny_llama_weights());
    for (name, device) in devices() {
        let (_, model) = Llama::from_dir(&dir, &device).unwrap();
        let tokens = [1i64, 2, 3, 4, 5, 6];
        let full = host(model.forward(ids(&tokens, &device), None)); // [1, 6, 40]
        let mut cache = KvCache::new();
        let h1 = model.forward_hidden(ids(&tokens[..4], &device), None, Some(&mut cache));
        let h2 = model.forward_hidden(ids(&tokens[4..5], &device), None, Some(&mut cache));
        let h3 = model.forward_hidden(ids(&tokens[5..], &device), None, Some(&mut cache));
        assert_eq!(cache.len(), 6);
        let inc: Vec<f32> = [h1, h2, h3]
            .into_iter()
            .flat_map(|h| host(model.logits(h)))
            .collect();
        assert!(
            max_abs_diff(&full, &inc) < 1e-4,
            "{name}: cached decoding diverges"
        );
        // Causality: the first 4 positions do not depend on later tokens.
        let other = host(model.forward(ids(&[1, 2, 3, 4, 9, 9], &device), None));
        assert!(max_abs_diff(&full[..4 * 40], &other[..4 * 40]) < 1e-5);
        assert!(max_abs_diff(&full[4 * 40..], &other[4 * 40..]) > 1e-4);
    }
}

#[test]
fn greedy_generation_follows_argmax_and_stops_at_eos() {
    let dir = tmp_dir("llama-gen");
    std::fs::write(dir.join("config.json"), TINY_LLAMA).unwrap();
    write_safetensors(&dir.join("model.safetensors"), &tiny_llama_weights());
    let device = Device::flex();
    let (_, model) = Llama::from_dir(&dir, &device).unwrap();
    let prompt = [5u32, 6, 7];
    let g = model
        .generate(&prompt, 6, &mut Sampler::greedy(), &[], &device, |_| {})
        .unwrap();
    assert_eq!(g.tokens.len(), 6);
    // Each greedy token is the argmax of a full forward over everything before it.
    let mut seq: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    for &t in &g.tokens {
        let logits = host(model.forward(ids(&seq, &device), None));
        let last = &logits[(seq.len() - 1) * 40..];
        let argmax = last
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(t as usize, argmax);
        seq.push(t as i64);
    }
    // Stopping: the first generated token as the stop token ends generation after one token.
    let stop = [g.tokens[0]];
    let g2 = model
        .generate(&prompt, 6, &mut Sampler::greedy(), &stop, &device, |_| {})
        .unwrap();
    assert_eq!(g2.tokens, vec![g.tokens[0]]);
    // Sampling with a seed is reproducible and stays in the vocabulary.
    let sample = |seed| {
        let mut sampler = Sampler::sampling(1.0, 0.9, seed);
        model
            .generate(&prompt, 5, &mut sampler, &[], &device, |_| {})
            .unwrap()
    };
    let (s1, s2) = (sample(42), sample(42));
    assert_eq!(s1.tokens, s2.tokens);
    assert!(s1.tokens.iter().all(|&t| t < 40));
    assert!(matches!(
        model.generate(&[], 3, &mut Sampler::greedy(), &[], &device, |_| {}),
        Err(ModelError::Input(_))
    ));
}

#[test]
fn adapters_attach_by_peft_names_and_base_stays_frozen() {
    let dir = tmp_dir("llama-adapt");
    std::fs::write(dir.join("config.json"), TINY_LLAMA).unwrap();
    write_safetensors(&dir.join("model.safetensors"), &tiny_llama_weights());
    let device = Device::flex();
    let (_, mut model) = Llama::from_dir(&dir, &device).unwrap();
    let before = host(model.forward(ids(&[1, 2, 3], &device), None));
    let options = AdaptOptions::new(
        GraLoraConfig::new(4, 2),
        Targets::names(["q_proj", "v_proj", "down_proj"]),
    );
    let report = attach_adapters(&mut model, &options).unwrap();
    let paths: Vec<&str> = report.layers.iter().map(|l| l.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.v_proj",
            "model.layers.0.mlp.down_proj",
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.self_attn.v_proj",
            "model.layers.1.mlp.down_proj",
        ]
    );
    // (in + out) · r per layer.
    assert_eq!(
        report.trainable_params(),
        2 * ((16 + 16) * 4 + (16 + 8) * 4 + (24 + 16) * 4)
    );
    // B = 0 at init: the adapted model computes exactly what the base did.
    let after = host(model.forward(ids(&[1, 2, 3], &device), None));
    assert_eq!(before, after);
    // Only adapter parameters are trainable.
    let trainable: usize = model
        .layers
        .iter()
        .flat_map(|l| {
            [
                &l.q_proj,
                &l.k_proj,
                &l.v_proj,
                &l.o_proj,
                &l.gate_proj,
                &l.up_proj,
                &l.down_proj,
            ]
        })
        .map(|l| l.num_trainable_params())
        .sum();
    assert_eq!(trainable, report.trainable_params());
    // Layer selection (PEFT layers_to_transform) and a per-layer rank map (rank_pattern).
    let (_, mut fresh) = Llama::from_dir(&dir, &device).unwrap();
    let options = AdaptOptions::new(LoraConfig::new(4), Targets::names(["q_proj", "up_proj"]))
        .with_layers([1])
        .with_rank_for(r"layers\.1\.mlp\.up_proj", 8);
    let report = attach_adapters(&mut fresh, &options).unwrap();
    let got: Vec<(&str, usize)> = report
        .layers
        .iter()
        .map(|l| (l.path.as_str(), l.config.rank()))
        .collect();
    assert_eq!(
        got,
        [
            ("model.layers.1.self_attn.q_proj", 4),
            ("model.layers.1.mlp.up_proj", 8)
        ]
    );
    assert_eq!(fresh.layers[0].q_proj.num_trainable_params(), 0);
    assert_eq!(
        fresh.layers[1].up_proj.num_trainable_params(),
        (16 + 24) * 8
    );
    // A k that does not divide kv width 8 is refused up front, naming the layer.
    let bad = AdaptOptions::new(GraLoraConfig::new(3, 3), Targets::names(["k_proj"]));
    let err = attach_adapters(&mut model, &bad).unwrap_err().to_string();
    assert!(err.contains("model.layers.0.self_attn.k_proj"), "{err}");
}

// ---------------------------------------------------------------- errors

#[test]
fn bad_files_give_errors_naming_the_file_and_tensor() {
    let dir = tmp_dir("errors");
    let weights = tiny_llama_weights();
    write_safetensors(&dir.join("model.safetensors"), &weights);
    std::fs::write(dir.join("config.json"), TINY_LLAMA).unwrap();
    let device = Device::flex();

    // Truncated safetensors.
    let full = std::fs::read(dir.join("model.safetensors")).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &full[..full.len() - 100]).unwrap();
    let e = SafetensorsFile::open(&cut).err().unwrap().to_string();
    assert!(
        e.contains("cut.safetensors") && e.contains("truncated"),
        "{e}"
    );

    // A tensor of the wrong shape.
    let mut wrong = weights.clone();
    let i = wrong
        .iter()
        .position(|w| w.0 == "model.layers.1.mlp.up_proj.weight")
        .unwrap();
    wrong[i] = (wrong[i].0.clone(), vec![16, 24], wrong[i].2.clone());
    let wdir = dir.join("wrong");
    std::fs::create_dir_all(&wdir).unwrap();
    std::fs::write(wdir.join("config.json"), TINY_LLAMA).unwrap();
    write_safetensors(&wdir.join("model.safetensors"), &wrong);
    let e = Llama::from_dir(&wdir, &device).err().unwrap().to_string();
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight")
            && e.contains("[16, 24]")
            && e.contains("[24, 16]"),
        "{e}"
    );

    // A missing tensor.
    let missing: Vec<_> = weights
        .iter()
        .filter(|w| w.0 != "model.norm.weight")
        .cloned()
        .collect();
    write_safetensors(&wdir.join("model.safetensors"), &missing);
    let e = Llama::from_dir(&wdir, &device).err().unwrap().to_string();
    assert!(
        e.contains("model.norm.weight") && e.contains("missing"),
        "{e}"
    );

    // A config with a missing field.
    let cfg = dir.join("bad_config.json");
    std::fs::write(&cfg, r#"{"vocab_size": 10, "num_hidden_layers": 2}"#).unwrap();
    let e = LlamaConfig::from_file(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("bad_config.json") && e.contains("hidden_size"),
        "{e}"
    );
    let e = BertConfig::from_file(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("bad_config.json") && e.contains("hidden_size"),
        "{e}"
    );

    // A missing tokenizer: the snapshot is refused, naming what is missing.
    let e = ModelSource::resolve(dir.to_str().unwrap(), &dir)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    let e = gralora_models::TextTokenizer::from_file(dir.join("tokenizer.json"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("not found"),
        "{e}"
    );

    // An unknown model argument.
    let e = ModelSource::resolve("no-such-model", &dir)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no-such-model") && e.contains("minilm"), "{e}");

    // GGUF: truncated, and an unknown quantisation type.
    let gguf = dir.join("tiny.gguf");
    tiny_llama_gguf(&gguf, &weights);
    let bytes = std::fs::read(&gguf).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 64]).unwrap();
    let e = GgufFile::open(&cut).err().unwrap().to_string();
    assert!(
        e.contains("cut.gguf") && e.contains("truncated") && e.contains("tensor `"),
        "{e}"
    );
    std::fs::write(&cut, &bytes[..40]).unwrap();
    let e = GgufFile::open(&cut).err().unwrap().to_string();
    assert!(e.contains("cut.gguf") && e.contains("truncated"), "{e}");
    let q6k = dir.join("q6k.gguf");
    write_gguf(
        &q6k,
        &[("general.architecture", Meta::Str("llama"))],
        &[(
            "blk.0.attn_q.weight".into(),
            vec![256, 2],
            14,
            vec![0u8; 2 * 210],
        )],
    );
    let file = GgufFile::open(&q6k).unwrap();
    let e = file
        .dequantize("blk.0.attn_q.weight")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("q6k.gguf") && e.contains("blk.0.attn_q.weight") && e.contains("Q6_K"),
        "{e}"
    );
    let e = LlamaConfig::from_gguf(&file).unwrap_err().to_string();
    assert!(e.contains("llama.") && e.contains("missing"), "{e}");
}

// ---------------------------------------------------------------- real models

#[test]
fn minilm_matches_sentence_transformers() {
    let Some(dir) = asset("minilm") else { return };
    let reference = fixture("minilm_reference.json");
    let sentences: Vec<&str> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let tokenizer = gralora_models::TextTokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let encoded: Vec<_> = sentences
        .iter()
        .map(|s| tokenizer.encode(s, true).unwrap())
        .collect();
    for (e, r) in encoded
        .iter()
        .zip(reference["token_ids"].as_array().unwrap())
    {
        assert_eq!(e.ids, u32s(r), "token ids differ from the HF tokenizer's");
    }
    for (name, device) in devices() {
        let (_, bert) = Bert::from_dir(&dir, &device).unwrap();
        // All sentences in one padded batch: padding must not change any embedding.
        let input = BertInput::from_encoded(&encoded, 0, &device);
        let emb = host(bert.embed(&input));
        let d = 384;
        // Padded further, to a length multiple (as GPU batches are): the same embeddings.
        let longer = BertInput::from_encoded_to(&encoded, 0, 32, &device);
        assert_eq!(longer.ids.dims()[1] % 32, 0);
        assert!(
            longer.ids.dims()[1] > input.ids.dims()[1],
            "the test pads further"
        );
        let padded = host(bert.embed(&longer));
        let worst = emb
            .iter()
            .zip(&padded)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-5,
            "{name}: extra padding moved an embedding by {worst}"
        );
        for (i, r) in reference["embeddings"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let c = cosine(&emb[i * d..(i + 1) * d], &f32s(r));
            assert!(c >= 0.9999, "{name}: sentence {i} cosine {c}");
        }
        let cos = |a: usize, b: usize| cosine(&emb[a * d..(a + 1) * d], &emb[b * d..(b + 1) * d]);
        let para = reference["cosine_paraphrase_0_1"].as_f64().unwrap();
        let unrel = reference["cosine_unrelated_0_2"].as_f64().unwrap();
        assert!(
            (cos(0, 1) - para).abs() < 1e-3 && para > 0.6,
            "{name}: paraphrase {} vs {para}",
            cos(0, 1)
        );
        assert!(
            (cos(0, 2) - unrel).abs() < 1e-3 && unrel < 0.1,
            "{name}: unrelated {} vs {unrel}",
            cos(0, 2)
        );
    }
}

#[test]
fn minilm_takes_adapters_on_peft_target_names() {
    let Some(dir) = asset("minilm") else { return };
    let device = Device::flex();
    let (config, mut bert) = Bert::from_dir(&dir, &device).unwrap();
    let options = AdaptOptions::new(
        LoraConfig::new(8),
        Targets::names(["query", "value", "dense"]),
    );
    let report = attach_adapters(&mut bert, &options).unwrap();
    // Per layer: query, value, attention.output.dense, intermediate.dense, output.dense.
    assert_eq!(report.layers.len(), 5 * config.num_hidden_layers);
    let all = AdaptOptions::new(LoraConfig::new(8), Targets::AllLinear);
    let (_, mut fresh) = Bert::from_dir(&dir, &device).unwrap();
    assert_eq!(
        attach_adapters(&mut fresh, &all).unwrap().layers.len(),
        6 * 6
    );
    // The classification head reads the pooled vector: with CLS pooling, logits = h[:, 0] W + b.
    let tokenizer = gralora_models::TextTokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let enc = vec![
        tokenizer.encode("a short one", true).unwrap(),
        tokenizer
            .encode_pair("a premise here", "and a hypothesis")
            .unwrap(),
    ];
    assert!(enc[1].type_ids.contains(&1), "pairs carry segment ids");
    let input = BertInput::from_encoded(&enc, 0, &device);
    let clf = BertClassifier::new(fresh, 3, Pooling::Cls, 0.0);
    let logits = host(clf.forward(&input));
    assert_eq!(logits.len(), 2 * 3);
    let states = host(clf.bert.forward(&input)); // [2, len, 384]
    let len = states.len() / (2 * 384);
    let w = host(clf.classifier.weight.val()); // [384, 3]
    let b = host(clf.classifier.bias.as_ref().unwrap().val());
    for row in 0..2 {
        let cls = &states[row * len * 384..row * len * 384 + 384];
        for c in 0..3 {
            let want: f32 = b[c] + (0..384).map(|i| cls[i] * w[i * 3 + c]).sum::<f32>();
            assert!((logits[row * 3 + c] - want).abs() < 1e-4);
        }
    }
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let Some(dir) = asset("smollm2") else { return };
    let reference = fixture("smollm2_reference.json");
    let source = ModelSource::resolve("smollm2", &assets::home()).unwrap();
    assert_eq!(
        source,
        ModelSource::Gguf(dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"))
    );
    for (name, device) in devices() {
        let loaded = LoadedModel::load(&source, &device).unwrap();
        let LoadedModel::Decoder {
            model, tokenizer, ..
        } = loaded.model
        else {
            panic!("smollm2 is a decoder")
        };
        let paragraph = reference["paragraph"].as_str().unwrap();
        let ids = tokenizer.encode(paragraph, true).unwrap().ids;
        assert_eq!(
            ids,
            u32s(&reference["paragraph_ids"]),
            "{name}: BPE from GGUF vs transformers"
        );
        // Perplexity on Flex; on wgpu the prompt check below exercises the same kernels (lavapipe
        // compiles every new shape, ~1 min per forward, so one forward is what CI can afford).
        if name == "flex" {
            let logp = model.token_log_probs(&ids, &device).unwrap();
            let ppl = (-logp.iter().map(|&v| v as f64).sum::<f64>() / logp.len() as f64).exp();
            let want = reference["perplexity"].as_f64().unwrap();
            assert!(
                (ppl / want - 1.0).abs() < 0.02,
                "{name}: perplexity {ppl} vs transformers {want}"
            );
        }

        let prompt = reference["prompt"].as_str().unwrap();
        let pids = tokenizer.encode(prompt, true).unwrap().ids;
        assert_eq!(pids, u32s(&reference["prompt_ids"]));
        // Next-token distribution after the prompt, from one full forward (no per-step shapes,
        // which lavapipe would compile one by one); cached generation is checked on Flex below.
        let logits = host(model.forward(
            Tensor::from_data(
                TensorData::new(
                    pids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                    [1, pids.len()],
                ),
                &device,
            ),
            None,
        ));
        let v = logits.len() / pids.len();
        let last = &logits[(pids.len() - 1) * v..];
        let max = last.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = last.iter().map(|&x| ((x - max) as f64).exp()).sum();
        let probs: Vec<f64> = last.iter().map(|&x| ((x - max) as f64).exp() / z).collect();
        let top = (0..v)
            .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
            .unwrap();
        assert_eq!(tokenizer.token_text(top as u32), " Rome", "{name}");
        for t in reference["top5"].as_array().unwrap() {
            let id = t["id"].as_u64().unwrap() as usize;
            let p = t["prob"].as_f64().unwrap();
            let got = probs[id];
            assert!(
                (got - p).abs() < 0.01,
                "{name}: p({:?}) = {got} vs {p}",
                t["token"]
            );
        }
        if name == "flex" {
            let g = model
                .generate(
                    &pids,
                    8,
                    &mut Sampler::greedy(),
                    &tokenizer.eos,
                    &device,
                    |_| {},
                )
                .unwrap();
            assert_eq!(
                tokenizer.decode(&g.tokens).unwrap(),
                reference["greedy_8"].as_str().unwrap()
            );
        }
    }
}

#[test]
fn smollm2_written_as_a_hf_snapshot_loads_back_with_the_same_logits() {
    let Some(_) = asset("smollm2") else { return };
    let device = Device::flex();
    let source = ModelSource::resolve("smollm2", &assets::home()).unwrap();
    let loaded = LoadedModel::load(&source, &device).unwrap().model;
    let scratch = Scratch::new("smollm2-hf");
    let out = scratch.join("snapshot");
    loaded.write_snapshot(&source, &out).unwrap();
    let hf = ModelSource::resolve(out.to_str().unwrap(), &out).unwrap();
    let again = LoadedModel::load(&hf, &device).unwrap().model;
    let (
        LoadedModel::Decoder {
            model: a,
            tokenizer: ta,
            ..
        },
        LoadedModel::Decoder {
            model: b,
            tokenizer: tb,
            ..
        },
    ) = (&loaded, &again)
    else {
        panic!("decoders expected")
    };
    let text = "The capital of Italy is";
    let ids = ta.encode(text, true).unwrap().ids;
    assert_eq!(
        tb.encode(text, true).unwrap().ids,
        ids,
        "tokenizer.json written from GGUF metadata"
    );
    let t: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let la = host(a.forward(
        Tensor::from_data(TensorData::new(t.clone(), [1, t.len()]), &device),
        None,
    ));
    let lb = host(b.forward(
        Tensor::from_data(TensorData::new(t.clone(), [1, t.len()]), &device),
        None,
    ));
    assert!(max_abs_diff(&la, &lb) < 1e-4);
    let _ = std::fs::remove_dir_all(&out);
}

/// The GELU extension op (fast erf on Flex, burn's kernels on wgpu, its own autodiff backward)
/// against burn's built-in GELU on the same device: values and gradients.
#[test]
fn gelu_op_and_its_gradient_agree_with_burns_gelu_on_every_device() {
    let n = 20_000;
    let xs: Vec<f32> = (0..n).map(|i| -6.0 + 12.0 * i as f32 / n as f32).collect();
    for (name, device) in devices() {
        let device = device.autodiff();
        let run = |f: &dyn Fn(Tensor<2>) -> Tensor<2>| {
            let x = Tensor::<2>::from_data(TensorData::new(xs.clone(), [100, n / 100]), &device)
                .require_grad();
            let y = f(x.clone());
            let grads = (y.clone() * y.clone()).sum().backward();
            (host(y), host(x.grad(&grads).unwrap()))
        };
        let (y, g) = run(&|x| gralora_models::gelu::gelu(x));
        let (y_ref, g_ref) = run(&|x| burn::tensor::activation::gelu(x));
        for i in 0..n {
            // The fast erf is within 4e-7 of erf: gelu within 0.5·|x|·4e-7 plus rounding.
            let tol = 4e-7 * (1.0 + xs[i].abs());
            assert!(
                (y[i] - y_ref[i]).abs() <= tol,
                "{name}: gelu({}) {} vs {}",
                xs[i],
                y[i],
                y_ref[i]
            );
            assert!(
                (g[i] - g_ref[i]).abs() <= 2.5 * tol + 1e-6 * g_ref[i].abs(),
                "{name}: d/dx at {}: {} vs {}",
                xs[i],
                g[i],
                g_ref[i]
            );
        }
    }
}

/// The attention softmax extension op (one pass per row on Flex, burn's tensor ops on wgpu, its
/// own autodiff backward) against burn's `softmax(scale · x + bias)` on the same device.
#[test]
fn scaled_softmax_op_and_its_gradient_agree_with_burns_softmax_on_every_device() {
    let [b, h, q, k] = [3, 2, 7, 45];
    let n = b * h * q * k;
    let xs: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 50.0 - 10.0)
        .collect();
    let ws: Vec<f32> = (0..n)
        .map(|i| ((i * 104729) % 997) as f32 / 997.0 - 0.5)
        .collect();
    // Batch 1 pads its last 10 keys with BERT's additive mask.
    let bias: Vec<f32> = (0..b * k)
        .map(|i| if i / k == 1 && i % k >= 35 { -1e9 } else { 0.0 })
        .collect();
    let scale = 0.125f32;
    for (name, device) in devices() {
        let device = device.autodiff();
        let run = |f: &dyn Fn(Tensor<4>, Tensor<4>) -> Tensor<4>| {
            let x = Tensor::<4>::from_data(TensorData::new(xs.clone(), [b, h, q, k]), &device)
                .require_grad();
            let bt = Tensor::<4>::from_data(TensorData::new(bias.clone(), [b, 1, 1, k]), &device);
            let w = Tensor::<4>::from_data(TensorData::new(ws.clone(), [b, h, q, k]), &device);
            let y = f(x.clone(), bt);
            let grads = (y.clone() * w).sum().backward();
            (host(y), host(x.grad(&grads).unwrap()))
        };
        let (y, g) = run(&|x, bias| gralora_models::softmax::scaled_softmax(x, bias, scale));
        let (y_ref, g_ref) =
            run(&|x, bias| burn::tensor::activation::softmax(x.mul_scalar(scale) + bias, 3));
        for i in 0..n {
            assert!(
                (y[i] - y_ref[i]).abs() <= 1e-6,
                "{name}: y[{i}] {} vs {}",
                y[i],
                y_ref[i]
            );
            assert!(
                (g[i] - g_ref[i]).abs() <= 1e-6,
                "{name}: g[{i}] {} vs {}",
                g[i],
                g_ref[i]
            );
        }
    }
}
