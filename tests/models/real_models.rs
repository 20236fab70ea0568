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
