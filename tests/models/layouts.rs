//! Layouts and errors on small models written here: GGUF against safetensors, the KV cache,
//! generation, adapters by PEFT names, and bad files.

use super::*;

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

    // A NaN or an infinity in a weight is refused at load, naming the tensor.
    for (bad, shown) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let mut poisoned = weights.clone();
        let i = poisoned
            .iter()
            .position(|w| w.0 == "model.layers.1.self_attn.v_proj.weight")
            .unwrap();
        poisoned[i].2[5] = bad;
        write_safetensors(&wdir.join("model.safetensors"), &poisoned);
        let e = Llama::from_dir(&wdir, &device).err().unwrap().to_string();
        assert!(
            e.contains("model.layers.1.self_attn.v_proj.weight")
                && e.contains(&format!("holds {shown} at element 5"))
                && e.contains("corrupt"),
            "{e}"
        );
        let gguf = dir.join("poisoned.gguf");
        tiny_llama_gguf(&gguf, &poisoned);
        let e = Llama::from_gguf(GgufFile::open(&gguf).unwrap(), &device)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("poisoned.gguf") && e.contains(shown), "{e}");
    }

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
