//! The real pretrained models against sentence-transformers and transformers, and the CPU
//! elementwise ops against burn's.

use super::*;

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

/// SmolLM2 from its GGUF file with random GraLoRA adapters (B non-zero) on q, k and down, one
/// layer at another rank and one at another alpha.
fn smollm2_with_gralora(dir: &Path, device: &Device) -> (PathBuf, LlamaConfig, Llama) {
    let base_path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let (config, mut model) =
        Llama::from_gguf(GgufFile::open(&base_path).unwrap(), device).unwrap();
    device.seed(33); // the same adapters every run
    let options = AdaptOptions::new(
        GraLoraConfig::new(8, 2)
            .with_alpha(16.0)
            .with_init(gralora::Init::Random),
        Targets::names(["q_proj", "k_proj", "down_proj"]),
    )
    .with_rank_for("layers.1.self_attn.q_proj", 16) // s · rank = 1 · 32: the common alpha
    .with_alpha_for("layers.2.mlp.down_proj", 5.0); // s · rank = 10: folded into lora_b
    attach_adapters(&mut model, &options).unwrap();
    (base_path, config, model)
}

/// The adapted SmolLM2 merged into a GGUF file at each matrix type, read back by gralora's GGUF
/// loader: the same logits as the adapted model within each type's rounding, every metadata key of
/// the source file carried over with its type and bytes, the tensors the merge does not touch
/// unchanged, and each matrix exactly the type's encoding of the merged weight (F16: IEEE
/// rounding; Q8_0: llama.cpp's reference quantiser, checked against the `gguf` package by
/// `scripts/gguf_check.py` on the files kept with `GRALORA_KEEP_EXPORT=DIR`).
#[test]
fn smollm2_merged_into_gguf_reads_back_with_the_merged_logits() {
    use gralora_models::gguf::GgmlType;
    use std::collections::HashMap;
    let Some(dir) = asset("smollm2") else { return };
    let device = Device::flex();
    let (base_path, config, model) = smollm2_with_gralora(&dir, &device);
    let source = GgufFile::open(&base_path).unwrap();
    let ids: Vec<i64> = vec![504, 3575, 282, 7158, 314, 1345, 28, 216];
    let run = |m: &Llama| {
        host(m.forward(
            Tensor::from_data(TensorData::new(ids.clone(), [1, ids.len()]), &device),
            None,
        ))
    };
    let want = run(&model);
    let (_, plain) = Llama::from_gguf(GgufFile::open(&base_path).unwrap(), &device).unwrap();
    let moved = max_abs_diff(&want, &run(&plain));
    assert!(
        moved > 1.0,
        "the adapters must change the logits (by {moved})"
    );
    let merged = model.export().unwrap();
    let scratch = Scratch::new("smollm2-merged-gguf");
    let keep = std::env::var_os("GRALORA_KEEP_EXPORT").map(PathBuf::from);
    let out = keep.unwrap_or_else(|| scratch.join("x"));
    std::fs::create_dir_all(&out).unwrap();
    // (type, file_type, (max, mean) |logit error| allowed): about twice what was measured. F32's
    // error is summation order alone, and that depends on the CPU's BLAS kernels: a mean of
    // 2.10e-5 (max 9.8e-5) on OpenBLAS's Haswell kernels, about half that on the first machine.
    for (ty, file_type, tolerance) in [
        (GgmlType::F32, 0, (2e-4, 4e-5)),
        (GgmlType::F16, 1, (0.07, 0.01)),
        (GgmlType::Q8_0, 7, (2.5, 0.2)),
    ] {
        let path = out.join(format!("merged-{}.gguf", format!("{ty:?}").to_lowercase()));
        let _ = std::fs::remove_file(&path);
        let written =
            gralora_models::export::write_merged_gguf(&source, &merged, &config, ty, &path)
                .unwrap();
        assert_eq!(written.tensors, source.tensors.len());
        let file = GgufFile::open(&path).unwrap();
        // Metadata: every source key, same type and bytes; file type and alignment set anew.
        let keys: HashMap<&str, (u32, &[u8])> =
            file.metadata_raw().map(|(k, t, b)| (k, (t, b))).collect();
        let mut carried = 0;
        for (k, t, b) in source.metadata_raw() {
            if k == "general.file_type" || k == "general.alignment" {
                continue;
            }
            assert_eq!(keys.get(k), Some(&(t, b)), "metadata `{k}`");
            carried += 1;
        }
        assert_eq!(written.metadata, carried);
        assert!(carried > 20, "{carried} keys");
        assert_eq!(file.meta_u64("general.file_type").unwrap(), file_type);
        assert_eq!(
            file.meta("tokenizer.ggml.tokens").unwrap(),
            source.meta("tokenizer.ggml.tokens").unwrap()
        );
        // Tensors: matrices at the type, norms f32 and equal to the source's.
        let by_hf: HashMap<String, &Vec<f32>> = merged
            .iter()
            .map(|(n, _, d)| (gralora_models::gguf::gguf_tensor_name(n).unwrap(), d))
            .collect();
        for name in source.tensor_order() {
            let (t, _) = file.raw_tensor(name).unwrap();
            let info = &file.tensors[name];
            assert_eq!(info.shape(), source.tensors[name].shape(), "{name}");
            if info.ggml_dims.len() == 1 {
                assert_eq!(t, GgmlType::F32, "{name}");
                assert_eq!(
                    file.dequantize(name).unwrap().data,
                    source.dequantize(name).unwrap().data,
                    "{name}"
                );
            } else {
                assert_eq!(t, ty, "{name}");
            }
        }
        // One adapted matrix: its stored values are the type's rounding of the merged weight
        // (q rows in llama.cpp's order: the test's own permutation).
        let name = "blk.1.attn_q.weight";
        let w = by_hf[name];
        let [rows, cols] = source.tensors[name].shape()[..] else {
            panic!()
        };
        let permuted = llama_cpp_permute(w, rows, cols, config.num_attention_heads);
        let stored = file.dequantize(name).unwrap().data;
        let mut worst = 0f32;
        for (r, (row, exact_row)) in stored.chunks(cols).zip(permuted.chunks(cols)).enumerate() {
            for (c, (v, exact)) in row.iter().zip(exact_row).enumerate() {
                // Q8_0: half a step of its 32-value block, d = max |x| / 127 (+ d's f16 rounding).
                let block = &exact_row[c / 32 * 32..(c / 32 + 1) * 32];
                let d = block.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                let bound = match ty {
                    GgmlType::F32 => 0.0,
                    GgmlType::F16 => exact.abs() / 2048.0 + 6e-8,
                    _ => d * 0.5 + 127.0 * d / 2048.0,
                };
                worst = worst.max((v - exact).abs());
                assert!(
                    (v - exact).abs() <= bound * 1.0001,
                    "{name}[{r}, {c}] as {ty:?}: {v} for {exact}"
                );
            }
        }
        assert!(ty != GgmlType::F32 || worst == 0.0);
        // The file runs: logits as the adapted model's.
        let (_, again) = Llama::from_gguf(file, &device).unwrap();
        let got = run(&again);
        let err = max_abs_diff(&want, &got);
        let mean = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / got.len() as f32;
        eprintln!(
            "{ty:?}: |logit error| max {err:.2e}, mean {mean:.2e} (the adapters move logits by up \
             to {moved:.2})"
        );
        assert!(err < tolerance.0, "{ty:?}: max |logit error| {err}");
        assert!(mean < tolerance.1, "{ty:?}: mean |logit error| {mean}");
    }
}

/// GraLoRA on SmolLM2 written as a llama.cpp LoRA adapter (docs/METHODS.md §2 "As a plain
/// LoRA", crates/gralora-models/src/export.rs): each layer's output computed the way llama.cpp
/// computes it — the base weight as stored in the GGUF file (q/k rows permuted), plus
/// `alpha / rank · x Aᵀ Bᵀ` from the adapter file — equals gralora's adapted layer, with its rows
/// permuted by the converter's rule (an implementation in this test, not the library's).
/// With `GRALORA_KEEP_EXPORT=DIR` the adapter and the layers' inputs and outputs are kept in DIR
/// for `scripts/gguf_check.py`, which repeats the check with llama.cpp's `gguf` package.
#[test]
fn smollm2_gralora_as_a_llama_cpp_adapter_reproduces_each_layer() {
    let Some(dir) = asset("smollm2") else { return };
    let device = Device::flex();
    let (base_path, config, mut model) = smollm2_with_gralora(&dir, &device);
    let t = 3;
    // (layer, module, llama.cpp tensor, heads of its permutation)
    let probes = [
        (0, "q", "attn_q", config.num_attention_heads),
        (1, "q", "attn_q", config.num_attention_heads),
        (4, "k", "attn_k", config.kv_heads()),
        (2, "down", "ffn_down", 0),
    ];
    let mut kept = Vec::new();
    for (i, &(l, module, tensor, heads)) in probes.iter().enumerate() {
        let layer = &model.layers[l];
        let lin = match module {
            "q" => &layer.q_proj,
            "k" => &layer.k_proj,
            _ => &layer.down_proj,
        };
        let (d_in, d_out) = lin.dims();
        let x = Rng::new(40 + i as u64).vec(t * d_in);
        let y = host(lin.forward(common::tensor(&x, [1, t, d_in], &device)));
        kept.push((l, tensor, heads, d_in, d_out, x, y));
    }
    let (bytes, summary) = gralora_models::export::gguf_lora_bytes(&mut model, &config).unwrap();
    let n_layers = config.num_hidden_layers;
    assert_eq!(summary.layers, 3 * n_layers);
    assert_eq!(summary.alpha, 32.0);
    assert_eq!(summary.folded, 1);
    let scratch = Scratch::new("smollm2-gguf-lora");
    let keep = std::env::var_os("GRALORA_KEEP_EXPORT").map(PathBuf::from);
    let out = keep.clone().unwrap_or_else(|| scratch.join("x"));
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("adapter.gguf");
    std::fs::write(&path, &bytes).unwrap();
    if keep.is_some() {
        // The same adapter as PEFT files, for `gralora infer` beside llama.cpp
        // (scripts/gguf_check.py --llama-cpp).
        gralora::save_peft(&mut model, out.join("peft"), Some("smollm2")).unwrap();
    }

    let adapter = GgufFile::open(&path).unwrap();
    let base = GgufFile::open(&base_path).unwrap();
    assert_eq!(adapter.meta_str("general.architecture").unwrap(), "llama");
    assert_eq!(adapter.meta_str("general.type").unwrap(), "adapter");
    assert_eq!(adapter.meta_str("adapter.type").unwrap(), "lora");
    assert_eq!(adapter.tensors.len(), 2 * 3 * n_layers);
    let alpha = adapter.meta_f64("adapter.lora.alpha").unwrap();
    let mut record = Vec::new();
    for (l, tensor, heads, d_in, d_out, x, y) in kept {
        let name = format!("blk.{l}.{tensor}.weight");
        let w = base.dequantize(&name).unwrap(); // [out, in] as llama.cpp holds it
        let a = adapter.dequantize(&format!("{name}.lora_a")).unwrap();
        let b = adapter.dequantize(&format!("{name}.lora_b")).unwrap();
        let rank = a.shape[0];
        assert_eq!(a.shape, [rank, d_in], "{name}.lora_a");
        assert_eq!(b.shape, [d_out, rank], "{name}.lora_b");
        let s = alpha / rank as f64;
        let mut y_cpp = vec![0f32; t * d_out]; // [t, out], llama.cpp's row order
        let mut delta_max = 0f64;
        for ti in 0..t {
            let xt = &x[ti * d_in..(ti + 1) * d_in];
            let h: Vec<f64> = (0..rank)
                .map(|r| {
                    (0..d_in)
                        .map(|i| xt[i] as f64 * a.data[r * d_in + i] as f64)
                        .sum()
                })
                .collect();
            for o in 0..d_out {
                let base_term: f64 = (0..d_in)
                    .map(|i| xt[i] as f64 * w.data[o * d_in + i] as f64)
                    .sum();
                let delta: f64 = s
                    * (0..rank)
                        .map(|r| h[r] * b.data[o * rank + r] as f64)
                        .sum::<f64>();
                delta_max = delta_max.max(delta.abs());
                y_cpp[ti * d_out + o] = (base_term + delta) as f32;
            }
        }
        // gralora's output in llama.cpp's row order: permute the output features.
        let mut y_ours = y.clone();
        if heads > 0 {
            let yt: Vec<f32> = (0..d_out * t).map(|k| y[(k % t) * d_out + k / t]).collect();
            let p = llama_cpp_permute(&yt, d_out, t, heads);
            y_ours = (0..t * d_out)
                .map(|k| p[(k % d_out) * t + k / d_out])
                .collect();
        }
        let scale = y_cpp.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = max_abs_diff(&y_ours, &y_cpp) / scale;
        assert!(err < 1e-5, "{name}: relative error {err}");
        assert!(
            delta_max > 1e-2 * scale as f64,
            "{name}: the adapter must change the output"
        );
        record.push(serde_json::json!({
            "tensor": name, "tokens": t, "x": x, "y": y_ours,
        }));
    }
    if keep.is_some() {
        let text = serde_json::to_string(&serde_json::json!({
            "base": base_path, "layers": record,
        }))
        .unwrap();
        std::fs::write(out.join("layers.json"), text).unwrap();
    }
}

/// erf in f64 by Simpson's rule on 2/√π·e^(−t²) over [0, x] (4,000 intervals: error under 1e-9
/// for |x| ≤ 6), independent of every erf under test.
fn erf_f64(x: f64) -> f64 {
    let n = 4000;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(x);
    for i in 1..n {
        s += if i % 2 == 1 { 4.0 } else { 2.0 } * f(i as f64 * h);
    }
    s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

/// GELU (erf form) on every device — the extension op with its fast erf and own backward on
/// Flex, burn's fusable elementwise ops elsewhere — against the exact GELU and its derivative
/// in f64: `gelu(x) = x·Φ(x)`, `gelu'(x) = Φ(x) + x·φ(x)`.
#[test]
fn gelu_and_its_gradient_equal_the_exact_erf_form_on_every_device() {
    let n = 20_000;
    let xs: Vec<f32> = (0..n).map(|i| -6.0 + 12.0 * i as f32 / n as f32).collect();
    let exact: Vec<(f64, f64)> = xs
        .iter()
        .map(|&x| {
            let x = x as f64;
            let cdf = 0.5 * (1.0 + erf_f64(x / std::f64::consts::SQRT_2));
            let pdf = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
            (x * cdf, cdf + x * pdf)
        })
        .collect();
    for (name, device) in devices() {
        let device = device.autodiff();
        let x = Tensor::<2>::from_data(TensorData::new(xs.clone(), [100, n / 100]), &device)
            .require_grad();
        let y = gralora_models::ops::gelu::gelu(x.clone());
        let grads = (y.clone() * y.clone()).sum().backward();
        let (y, g) = (host(y), host(x.grad(&grads).unwrap()));
        for i in 0..n {
            let (want_y, want_d) = exact[i];
            // f32 rounding and the erf approximations (Flex's within 4e-7 of erf).
            let tol = 6e-7 * (1.0 + xs[i].abs() as f64);
            assert!(
                (y[i] as f64 - want_y).abs() <= tol,
                "{name}: gelu({}) {} vs {want_y}",
                xs[i],
                y[i]
            );
            // d(Σ y²)/dx = 2·gelu(x)·gelu'(x).
            let want_g = 2.0 * want_y * want_d;
            assert!(
                (g[i] as f64 - want_g).abs()
                    <= 4.0 * tol * (1.0 + want_d.abs()) + 1e-6 * want_g.abs(),
                "{name}: d/dx at {}: {} vs {want_g}",
                xs[i],
                g[i]
            );
        }
    }
}

/// The attention softmax (the extension op, one pass per row with its own backward, on Flex;
/// burn's fusable tensor ops elsewhere) against burn's `softmax(scale · x + bias)` on the same device.
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
        let (y, g) = run(&|x, bias| gralora_models::ops::softmax::scaled_softmax(x, bias, scale));
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
