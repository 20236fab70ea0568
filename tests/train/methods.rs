//! Decoders, GoRA, the gradient-deviation experiment and the step benchmark.

use super::*;

#[test]
fn answer_log_probs_equal_the_full_forward_of_smollm2() {
    use gralora_train::tasks::multiple_choice::{LmBatch, LmItem, answer_log_probs};
    let Some(path) = fetched("smollm2", "smollm2") else {
        return;
    };
    let gguf = std::fs::read_dir(&path).ok().and_then(|mut d| {
        d.find_map(|e| {
            e.ok()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        })
    });
    let gguf = gguf.expect("the smollm2 asset holds a .gguf file");
    let device = burn::tensor::Device::flex();
    let file = gralora_models::gguf::GgufFile::open(&gguf).unwrap();
    let tok = gralora_models::TextTokenizer::from_gguf(&file).unwrap();
    let (_, model) = gralora_models::Llama::from_gguf(file, &device).unwrap();
    // Two sequences of different lengths in one right-padded batch.
    let a = tok
        .encode(
            "Question: What do plants need to grow?\nAnswer: sunlight and water",
            true,
        )
        .unwrap()
        .ids;
    let b = tok
        .encode("The capital of Italy is Rome", true)
        .unwrap()
        .ids;
    let items = [
        LmItem::answer(a.clone(), a.len() - 4),
        LmItem::answer(b.clone(), b.len() - 1),
    ];
    let batch = LmBatch::new(&items.iter().collect::<Vec<_>>(), &device);
    let rows = batch.rows.clone();
    let got: Vec<f32> = answer_log_probs(&model, batch)
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap();
    assert_eq!(rows, vec![0, 0, 0, 0, 1]);
    // Reference: each sequence alone, every next-token log-probability (tested against transformers).
    let ra = model.token_log_probs(&a, &device).unwrap();
    let rb = model.token_log_probs(&b, &device).unwrap();
    let want: Vec<f32> = ra[ra.len() - 4..]
        .iter()
        .chain(&rb[rb.len() - 1..])
        .copied()
        .collect();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-3, "{got:?} vs {want:?}");
    }
}

// ---------------------------------------------------------------- GoRA

#[test]
fn gora_estimation_leaves_weights_alone_and_its_init_descends() {
    use burn::module::Module;
    use gralora::AdapterHost;
    use gralora::gora::{Feature, GoraConfig, Importance};
    let Some(home) = excerpt_home("gora") else {
        return;
    };
    let device = burn::tensor::Device::flex();
    let ad = device.clone().autodiff();
    let (_, bert) = gralora_models::Bert::from_dir(home.join("minilm"), &device).unwrap();
    ad.seed(1);
    let mut clf = gralora_models::BertClassifier::new(
        bert.train().no_grad(),
        2,
        gralora_models::Pooling::Mean,
        0.0,
    );
    let mut tok =
        gralora_models::TextTokenizer::from_file(home.join("minilm/tokenizer.json")).unwrap();
    let data = Task::Sst2.load(&home).unwrap();
    let items = tokenize(&mut tok, &data.train[..32], 48).unwrap();
    let snapshot = |m: &mut gralora_models::BertClassifier| {
        let mut w = Vec::new();
        m.for_each_linear_mut(&mut |p, l| {
            let v: Vec<f32> = l
                .base
                .weight
                .val()
                .into_data()
                .convert::<f32>()
                .try_to_vec()
                .unwrap();
            w.push((
                p.to_string(),
                v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>(),
            ));
        });
        w
    };
    let before = snapshot(&mut clf);
    let dev = ad.clone();
    let loss = |m: &gralora_models::BertClassifier, b: usize| {
        let refs: Vec<&gralora_train::tasks::classification::Item> =
            items[b * 16..(b + 1) * 16].iter().collect();
        dev.seed(100 + b as u64);
        let batch = gralora_train::tasks::classification::ClassBatch::new(&refs, 0, &dev);
        burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&dev)
            .forward(m.forward(&batch.input), batch.labels)
    };
    for (k, feature) in [(1, Feature::Identity), (2, Feature::Sqrt)] {
        let mut m = clf.clone();
        let config = GoraConfig {
            r_ref: 8,
            r_min: 2,
            r_max: 32,
            feature,
            importance: Importance::MeanAbs,
            alpha: 16.0,
            gamma: 5e-2,
        };
        let targets = gralora::Targets::names(["query", "value", "intermediate.dense"]);
        let live = crate::fuzz_support::heap_live();
        let r =
            gralora_train::trainer::gora::attach(&mut m, targets, &config, k, 2, 7, &loss).unwrap();
        // What the estimation leaves allocated is the adapters, not the batches' graphs (a
        // forward on the adapted model that is never backpropagated keeps its activations).
        let kept = crate::fuzz_support::heap_live() - live;
        assert!(
            kept < (r.params * 4 + (4 << 20)) as isize,
            "k = {k}: GoRA left {kept} bytes allocated for {} adapter parameters",
            r.params
        );
        // The base weights are bit-for-bit what they were; only adapters were added.
        assert_eq!(snapshot(&mut m), before, "k = {k}");
        assert_eq!(r.layers.len(), 18);
        assert!(
            r.layers
                .iter()
                .all(|l| (2..=32).contains(&l.rank) && l.rank % k == 0),
            "{r}"
        );
        if feature == Feature::Identity {
            let slack: usize = r.layers.iter().map(|l| (l.d_in + l.d_out) * k).sum();
            assert!(r.params.abs_diff(r.lora_params_at_r_ref) <= slack, "{r}");
        }
        assert!(r.loss_after < r.loss_before, "k = {k}: {r}");
        // Adapters are trainable, the base is not.
        let trainable = gralora_train::trainer::trainable_params(&m);
        let head = 384 * 2 + 2;
        assert_eq!(trainable, r.params + head, "k = {k}");
    }
}

#[test]
fn gora_training_saves_its_ranks_and_reloads() {
    let Some(home) = excerpt_home("gora-run") else {
        return;
    };
    let out = home.join("run");
    let o = gralora(
        &[
            "train",
            "--model",
            "minilm",
            "--task",
            "sst2",
            "--method",
            "gora-gralora",
            "--rank",
            "8",
            "--k",
            "2",
            "--r-min",
            "2",
            "--r-max",
            "16",
            "--gora-steps",
            "2",
            "--targets",
            "query,value",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--max-len",
            "48",
            "--max-train",
            "32",
            "--device",
            "flex",
            "--out",
            out.to_str().unwrap(),
        ],
        &home,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = metrics(&out);
    let gora = m.gora.as_ref().expect("GoRA report in metrics.json");
    assert!(gora.loss_after < gora.loss_before);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "GRALORA");
    let ranks: std::collections::BTreeSet<usize> = gora.layers.iter().map(|l| l.rank).collect();
    if ranks.len() > 1 {
        assert!(
            !cfg["rank_pattern"].as_object().unwrap().is_empty(),
            "per-layer ranks are saved"
        );
    }
    let o = gralora(
        &[
            "eval",
            "--model",
            "minilm",
            "--adapter",
            out.to_str().unwrap(),
            "--task",
            "sst2",
            "--device",
            "flex",
            "--json",
        ],
        &home,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!((e["accuracy"].as_f64().unwrap() - m.eval.accuracy).abs() < 1e-9);
}

#[test]
fn a_decoder_trains_on_a_commonsense_task_and_its_adapter_reloads() {
    let Some(home) = excerpt_home("decoder") else {
        return;
    };
    let Some(real) = fetched("smollm2", "smollm2") else {
        return;
    };
    std::os::unix::fs::symlink(&real, home.join("smollm2")).unwrap();
    // The excerpt has validation questions only: train on them too (this checks the mechanics).
    let dir = home.join("commonsense/arc_easy");
    std::fs::create_dir_all(dir.join("train_rc_5shot")).unwrap();
    std::fs::copy(
        dir.join("val_rc_5shot/requests.jsonl.gz"),
        dir.join("train_rc_5shot/requests.jsonl.gz"),
    )
    .unwrap();
    let out = home.join("run");
    let o = gralora(
        &[
            "train",
            "--model",
            "smollm2",
            "--task",
            "arc-e",
            "--method",
            "gralora",
            "--rank",
            "8",
            "--k",
            "2",
            "--targets",
            "q_proj,v_proj",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--max-eval",
            "3",
            "--device",
            "flex",
            "--out",
            out.to_str().unwrap(),
        ],
        &home,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = metrics(&out);
    assert_eq!(m.train_examples, 4, "4 distinct questions in the excerpt");
    assert!(m.baseline_accuracy.is_some());
    assert_eq!(m.eval.examples, 3);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "GRALORA");
    let o = gralora(
        &[
            "eval",
            "--model",
            "smollm2",
            "--adapter",
            out.to_str().unwrap(),
            "--task",
            "arc-e",
            "--max-eval",
            "3",
            "--device",
            "flex",
            "--json",
        ],
        &home,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!((e["accuracy"].as_f64().unwrap() - m.eval.accuracy).abs() < 1e-9);
    assert!((e["loss"].as_f64().unwrap() - m.eval.loss).abs() < 1e-4);
}

#[test]
fn grad_deviation_at_init_matches_the_random_projection_law() {
    // At initialisation (B = 0) the update direction of LoRA is D = s² A Aᵀ G with A random, so
    // E‖AᵀG‖² / (‖AAᵀG‖ ‖G‖) gives cos(D, G) ≈ √(r / (in + r + 1)) whatever G is; GraLoRA's
    // blocks give the same law (r/k of in/k per block). The command must reproduce it.
    let Some(home) = excerpt_home("deviation") else {
        return;
    };
    let out = home.join("dev");
    let spec = gralora_train::experiments::DeviationSpec {
        model: "minilm".into(),
        task: "sst2".into(),
        ranks: vec![8, 64],
        methods: vec![Method::Lora, Method::Gralora],
        k: None,
        layer: None,
        batches: 2,
        batch_size: 4,
        max_len: 64,
        seed: 3,
        from: None,
    };
    let device = burn::tensor::Device::flex();
    let r = gralora_train::experiments::grad_deviation(&spec, &out, &device, &home, &mut |_| {})
        .unwrap();
    assert!(r.layer.ends_with(".output.dense") && !r.layer.contains("attention"));
    assert_eq!(r.channels.d_in, 1536);
    assert!(r.channels.outlier_ratio > 1.0);
    assert_eq!(r.rows.len(), 4);
    for row in &r.rows {
        let law = (row.rank as f64 / (1536.0 + row.rank as f64 + 1.0)).sqrt();
        assert!(
            (row.cosine - law).abs() < 0.15 * law,
            "{} r{}: cos {} vs {law}",
            row.method,
            row.rank,
            row.cosine
        );
        assert!((row.deviation - (2.0 - 2.0 * row.cosine).sqrt()).abs() < 1e-12);
        assert_eq!(
            row.k,
            if row.method == "gralora" {
                if row.rank == 8 { 2 } else { 4 }
            } else {
                1
            }
        );
    }
    for f in [
        "deviation.csv",
        "deviation.md",
        "deviation.json",
        "channels.csv",
        "grad-deviation.svg",
        "grad-deviation.png",
        "channels.svg",
        "channels.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let channels = std::fs::read_to_string(out.join("channels.csv")).unwrap();
    assert_eq!(channels.lines().count(), 1 + 1536);
    // A layer that does not exist is a clear error.
    let mut bad = spec.clone();
    bad.layer = Some("encoder.layer.9.output.dense".into());
    let err = gralora_train::experiments::grad_deviation(&bad, &out, &device, &home, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no linear layer `encoder.layer.9.output.dense`"),
        "{err}"
    );
}

/// `bench step` with two methods: one JSON line each with the keys, consistent numbers
/// (tokens/s from the median, ratios to the first), equal trainable counts at equal r, and the
/// counts of a CPU step.
#[test]
fn bench_step_prints_consistent_json_per_method() {
    let Some(home) = excerpt_home("bench-step") else {
        return;
    };
    let o = gralora(
        &[
            "bench",
            "step",
            "--method",
            "lora,gralora",
            "--batch-size",
            "2",
            "--seq-len",
            "16",
            "--warmup",
            "1",
            "--iters",
            "3",
            "--device",
            "flex",
            "--json",
        ],
        &home,
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let ms: Vec<f64> = lines
        .iter()
        .map(|v| v["ms_per_step"].as_f64().unwrap())
        .collect();
    for (v, method) in lines.iter().zip(["lora", "gralora"]) {
        assert_eq!(v["method"], method);
        let ms = v["ms_per_step"].as_f64().unwrap();
        assert!(ms > 0.0);
        let tps = v["tokens_per_s"].as_f64().unwrap();
        assert!((tps - 32.0 / (ms / 1e3)).abs() < 1e-6 * tps, "{v}");
        assert!(v["peak_rss_mb"].as_f64().unwrap() > 50.0, "{v}");
        // The counts: Flex runs no cubecl kernel and no Fusion; the loss guard reads every
        // step's loss on the CPU; each step uploads its batch (ids, segments, mask, labels) and
        // the CPU dropout masks.
        assert_eq!(v["warm_ms_per_step"], v["ms_per_step"], "{v}");
        assert!(v["first_step_ms"].as_f64().unwrap() > 0.0, "{v}");
        assert_eq!(v["launches_per_step"], 0, "{v}");
        assert_eq!(v["fusion_blocks_per_step"], 0, "{v}");
        assert_eq!(v["opaque_ops_per_step"], 0, "{v}");
        assert_eq!(v["host_reads_per_step"], 1, "{v}");
        assert!(v["host_writes_per_step"].as_u64().unwrap() >= 4, "{v}");
        assert_eq!(v["kernels_compiled"], 0, "{v}");
    }
    assert_eq!(lines[0]["time_ratio_to_first"].as_f64().unwrap(), 1.0);
    let ratio = lines[1]["time_ratio_to_first"].as_f64().unwrap();
    assert!((ratio - ms[1] / ms[0]).abs() < 1e-9);
    assert_eq!(lines[0]["trainable_params"], lines[1]["trainable_params"]);
}
