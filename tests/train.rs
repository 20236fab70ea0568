//! The trainer: data loaders on committed excerpts (expected values computed by
//! scripts/data_excerpts.py with pyarrow and Python's own parsing), training on Flex lowers the
//! loss, a SIGKILLed run resumed with --resume ends where an uninterrupted run ends, bad inputs.
//!
//! Training tests need the MiniLM asset; they skip when it is not fetched, unless
//! `GRALORA_REQUIRE_ASSETS=1` (CI).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::Scratch;
use gralora_train::data::{self, Task};
use gralora_train::train::{Method, RunMetrics, TrainConfig, evaluate, pad_id, tokenize, train};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tmp_dir(name: &str) -> Scratch {
    Scratch::new(&format!("train-{name}"))
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// `path` inside the asset cache, or None (skip) when it is not there, unless
/// `GRALORA_REQUIRE_ASSETS=1`, where that is a failure.
fn fetched(asset: &str, path: &str) -> Option<PathBuf> {
    let p = gralora_models::assets::home().join(path);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("GRALORA_REQUIRE_ASSETS").as_deref() == Ok("1") {
        panic!("GRALORA_REQUIRE_ASSETS=1 but {asset} is not fetched; run `gralora fetch {asset}`");
    }
    eprintln!("skipped: {asset} not fetched (gralora fetch {asset})");
    None
}

/// A GRALORA_HOME with the data excerpts and (linked) the real MiniLM, or None to skip.
fn excerpt_home(name: &str) -> Option<Scratch> {
    fetched("minilm", "minilm/model.safetensors")?;
    let real = gralora_models::assets::home().join("minilm");
    let home = tmp_dir(name);
    copy_tree(&fixtures(), &home);
    std::os::unix::fs::symlink(&real, home.join("minilm")).unwrap();
    Some(home)
}

fn labels(v: &[data::Example]) -> Vec<u64> {
    v.iter().map(|e| e.label as u64).collect()
}

fn json_u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

// ---------------------------------------------------------------- data

#[test]
fn sst2_loaders_match_the_python_reading() {
    let exp = expected();
    let home = fixtures();
    let dev = data::read_sst2_arrow(&home.join(data::SST2_DEV)).unwrap();
    assert_eq!(dev.len() as u64, exp["sst2_dev"]["count"].as_u64().unwrap());
    assert_eq!(labels(&dev), json_u64s(&exp["sst2_dev"]["labels"]));
    assert_eq!(dev[0].a, exp["sst2_dev"]["first"].as_str().unwrap());

    let rt = data::read_rotten_tomatoes(&home.join(data::RT_FILE)).unwrap();
    let e = &exp["rt"];
    assert_eq!(rt.len() as u64, e["train_before_overlap"].as_u64().unwrap());
    assert_eq!(
        e["rated_lines"].as_u64().unwrap() - e["zero_ratings"].as_u64().unwrap(),
        rt.len() as u64,
        "zero ratings are dropped"
    );
    let data = Task::Sst2.load(&home).unwrap();
    assert_eq!(
        data.train.len() as u64,
        e["train_after_overlap"].as_u64().unwrap()
    );
    assert_eq!(
        data.train.iter().filter(|x| x.label == 1).count() as u64,
        e["positives_after_overlap"].as_u64().unwrap()
    );
    // No evaluation sentence survives in training, even with different punctuation and case.
    let held: Vec<String> = data.eval.iter().map(|x| data::normalise(&x.a)).collect();
    assert!(
        data.train
            .iter()
            .all(|x| !held.contains(&data::normalise(&x.a)))
    );
    assert!(
        data.train.len() < rt.len(),
        "the excerpt contains dev sentences to remove"
    );
}

#[test]
fn pair_task_loaders_match_the_python_reading() {
    let exp = expected();
    let home = fixtures();
    for (file, key) in [
        (data::SNLI_TRAIN, "snli_1.0_train_subset.jsonl"),
        (data::SNLI_TEST, "snli_1.0_test.jsonl"),
    ] {
        let v = data::read_snli(&home.join(file)).unwrap();
        assert_eq!(labels(&v), json_u64s(&exp["snli"][key]), "{file}");
        assert!(v.iter().all(|x| x.b.is_some()));
    }
    for (file, key) in [
        (data::BOOLQ_TRAIN, "train_rc_5shot"),
        (data::BOOLQ_VAL, "val_rc_5shot"),
    ] {
        let v = data::read_boolq(&home.join(file)).unwrap();
        assert_eq!(
            labels(&v),
            json_u64s(&exp["boolq"][key]["labels"]),
            "{file}: one example per doc"
        );
        assert_eq!(
            v[0].a,
            exp["boolq"][key]["first_question"].as_str().unwrap()
        );
        assert!(
            v[0].b.as_ref().unwrap().starts_with("Persian language") || key != "train_rc_5shot"
        );
    }
}

#[test]
fn real_sst2_dev_set_has_the_glue_counts() {
    let Some(path) = fetched("glue", data::SST2_DEV) else {
        return;
    };
    let exp = expected();
    let dev = data::read_sst2_arrow(&path).unwrap();
    assert_eq!(
        dev.len() as u64,
        exp["sst2_full_dev"]["count"].as_u64().unwrap()
    );
    assert_eq!(
        dev.iter().filter(|x| x.label == 1).count() as u64,
        exp["sst2_full_dev"]["positives"].as_u64().unwrap()
    );
}

#[test]
fn bad_data_files_are_clear_errors() {
    let dir = tmp_dir("bad-data");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "id\tsentiment\ttext\n").unwrap();
    let e = data::read_rotten_tomatoes(&empty).unwrap_err().to_string();
    assert!(
        e.contains("empty.txt") && e.contains("no usable examples"),
        "{e}"
    );
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "id\tsentiment\ttext\n1\tgreat\tA film.\n").unwrap();
    let e = data::read_rotten_tomatoes(&bad).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("not a number"), "{e}");
    let e = data::read_sst2_arrow(&bad).unwrap_err().to_string();
    assert!(e.contains("not an Arrow IPC stream"), "{e}");
    let e = data::read_snli(&dir.join("missing.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gralora fetch"), "{e}");
    let e = "mnli".parse::<Task>().unwrap_err().to_string();
    assert!(
        e.contains("unknown task `mnli`") && e.contains("sst2"),
        "{e}"
    );
}

// ---------------------------------------------------------------- training

fn small_config(method: Method) -> TrainConfig {
    let mut c = TrainConfig::new("minilm", "sst2", method);
    c.rank = 8;
    c.alpha = 16.0;
    c.k = 2;
    c.targets = vec!["query".into(), "value".into()];
    c.epochs = 2;
    c.batch_size = 8;
    c.max_len = 48;
    c.lr = 2e-3;
    c.max_train = Some(96);
    c.head_dropout = 0.0;
    c
}

#[test]
fn a_few_gralora_steps_on_flex_lower_the_loss_and_write_a_complete_run() {
    let Some(home) = excerpt_home("lowers") else {
        return;
    };
    let device = burn::tensor::Device::flex();
    let config = small_config(Method::Gralora);
    // The untrained model: the base encoder and a fresh head (adapters start as zero updates).
    let (_, bert) = gralora_models::Bert::from_dir(home.join("minilm"), &device).unwrap();
    let mut tok =
        gralora_models::TextTokenizer::from_file(home.join("minilm/tokenizer.json")).unwrap();
    let data = Task::Sst2.load(&home).unwrap();
    let items = tokenize(&mut tok, &data.eval, config.max_len).unwrap();
    let train_items = tokenize(&mut tok, &data.train, config.max_len).unwrap();
    let fresh = gralora_models::BertClassifier::new(bert, 2, gralora_models::Pooling::Mean, 0.0);
    let before = evaluate(&fresh, &items, pad_id(&tok), 16);
    let before_train = evaluate(&fresh, &train_items, pad_id(&tok), 16);

    let out = home.join("run");
    let done = train(&config, &out, false, &device, &home, &mut |_| {}).unwrap();
    let m = &done.metrics;
    let after_train = evaluate(done.model.as_ref().unwrap(), &train_items, pad_id(&tok), 16);
    assert!(
        after_train.loss < before_train.loss - 0.03,
        "training-set loss {} -> {}",
        before_train.loss,
        after_train.loss
    );
    assert!(
        m.eval.loss < before.loss,
        "eval loss {} -> {}",
        before.loss,
        m.eval.loss
    );
    assert!(m.eval.accuracy > 0.6, "eval accuracy {}", m.eval.accuracy);
    assert_eq!(m.eval.examples, items.len());
    assert_eq!(m.train_examples, 96);
    assert_eq!(m.epochs, 2);
    assert!(m.tokens_per_s > 0.0 && m.peak_rss_mb.unwrap() > 0.0);
    // The run directory: PEFT adapter, head, config, metrics.
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "classifier.safetensors",
        "train_config.json",
        "metrics.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let peft: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(peft["peft_type"], "GRALORA");
    assert_eq!(peft["gralora_k"], 2);
    // eval reloads adapter + head and reproduces the final metrics.
    let again =
        gralora_train::train::eval("minilm", Some(&out), "sst2", None, None, 16, &device, &home)
            .unwrap();
    assert_eq!(again.examples, m.eval.examples);
    assert!((again.accuracy - m.eval.accuracy).abs() < 1e-9);
    assert!(
        (again.loss - m.eval.loss).abs() < 1e-4,
        "{} vs {}",
        again.loss,
        m.eval.loss
    );
    // A second run into the same directory is refused, nothing overwritten.
    let e = train(&config, &out, false, &device, &home, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not empty"), "{e}");
}

fn gralora(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gralora"))
        .args(args)
        .env("GRALORA_HOME", home)
        .output()
        .unwrap()
}

fn metrics(dir: &Path) -> RunMetrics {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
}

#[test]
fn a_sigkilled_run_resumed_ends_like_an_uninterrupted_one() {
    let Some(home) = excerpt_home("resume") else {
        return;
    };
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--model",
            "minilm",
            "--task",
            "sst2",
            "--method",
            "lora",
            "--rank",
            "8",
            "--targets",
            "query,value",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--max-len",
            "48",
            "--max-train",
            "160",
            "--max-eval",
            "24",
            "--lr",
            "2e-3",
            "--device",
            "flex",
            "--seed",
            "7",
            "--checkpoint-every",
            "3",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .collect()
    };
    let full = home.join("full");
    let a: Vec<String> = args(&full);
    let o = gralora(&a.iter().map(String::as_str).collect::<Vec<_>>(), &home);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    assert!(
        !full.join("run/steps").exists(),
        "a finished run drops its mid-epoch checkpoints"
    );
    assert!(full.join("run/checkpoint/model-3.bpk").is_file());

    // The same run, killed with SIGKILL once a mid-epoch checkpoint of epoch 2 exists (160
    // examples in batches of 8: 20 batches per epoch, a checkpoint every 3 optimiser steps).
    let cut = home.join("cut");
    let a = args(&cut);
    let mut child = Command::new(env!("CARGO_BIN_EXE_gralora"))
        .args(&a)
        .env("GRALORA_HOME", &home)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let steps = cut.join("run/steps");
    let start = Instant::now();
    loop {
        let in_epoch_2 = gralora_train::steps::complete_checkpoints(&steps)
            .last()
            .is_some_and(|&k| k > 20);
        if in_epoch_2 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(start.elapsed() < Duration::from_secs(600));
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !cut.join("metrics.json").exists(),
        "a killed run must not look complete"
    );
    assert!(!cut.join("run/checkpoint/model-3.bpk").exists());
    let at = *gralora_train::steps::complete_checkpoints(&steps)
        .last()
        .unwrap();
    assert!(
        !at.is_multiple_of(20) && at < 40,
        "killed mid-epoch 2, at batch {at}"
    );

    let o = gralora(
        &[
            "train",
            "--out",
            cut.to_str().unwrap(),
            "--resume",
            "--device",
            "flex",
        ],
        &home,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (x, y) = (metrics(&full), metrics(&cut));
    assert_eq!(y.resumed_from_epoch, Some(1));
    assert_eq!(
        y.resumed_from_batch,
        Some(at),
        "resumed from the newest step checkpoint"
    );
    assert_eq!(x.resumed_from_batch, None);
    assert!(y.tokens_per_s > 0.0 && x.tokens_per_s > 0.0);
    assert_eq!(x.epochs, 3);
    assert_eq!(y.epochs, 3);
    assert_eq!(x.eval.accuracy, y.eval.accuracy);
    assert!(
        (x.eval.loss - y.eval.loss).abs() < 1e-5,
        "{} vs {}",
        x.eval.loss,
        y.eval.loss
    );
    // And the adapters are the same tensors.
    let ta = std::fs::read(full.join("adapter_model.safetensors")).unwrap();
    let tb = std::fs::read(cut.join("adapter_model.safetensors")).unwrap();
    let (sa, sb) = (
        safetensors::SafeTensors::deserialize(&ta).unwrap(),
        safetensors::SafeTensors::deserialize(&tb).unwrap(),
    );
    for (name, view) in sa.tensors() {
        let other = sb.tensor(&name).unwrap();
        let (p, q): (Vec<f32>, Vec<f32>) = (
            view.data()
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            other
                .data()
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        );
        let d = p
            .iter()
            .zip(&q)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "{name}: max diff {d}");
    }
}

#[test]
fn bad_training_arguments_are_one_line_errors() {
    let home = tmp_dir("bad-args");
    let out = home.join("out");
    let o_str = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "train", "--model", "minilm", "--task", "mnli", "--out", o_str,
            ],
            "unknown task `mnli`",
        ),
        (
            vec![
                "train", "--model", "minilm", "--task", "sst2", "--rank", "6", "--k", "4", "--out",
                o_str,
            ],
            "divisible",
        ),
        (
            vec![
                "train", "--model", "minilm", "--task", "sst2", "--method", "dora", "--out", o_str,
            ],
            "unknown method",
        ),
        (
            vec!["train", "--out", o_str, "--resume"],
            "no run to resume",
        ),
    ];
    for (args, needle) in cases {
        let o = gralora(&args, &home);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        assert!(!out.exists(), "{args:?} left {o_str} behind");
    }
    // Missing assets and no way to fetch them: one line saying what to do.
    let o = Command::new(env!("CARGO_BIN_EXE_gralora"))
        .args([
            "train", "--model", "minilm", "--task", "sst2", "--out", o_str,
        ])
        .env("GRALORA_HOME", &home)
        .env("GRALORA_PYTHON", "/nonexistent/python3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.lines().last().unwrap().starts_with("error:"), "{err}");
    assert!(!out.exists());
}

// ---------------------------------------------------------------- decoder tasks

#[test]
fn multiple_choice_loaders_match_the_python_reading() {
    use gralora_train::lm::{McTask, read_mc};
    let exp = expected();
    for (task, key) in [
        (McTask::ArcE, "arc_easy"),
        (McTask::Winogrande, "winogrande"),
    ] {
        let [_, val] = task.files();
        let got = read_mc(&fixtures().join(&val)).unwrap();
        let want = exp["mc"][key].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{key}: one example per document");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.gold as u64, w["gold"].as_u64().unwrap());
            let contexts: Vec<&str> = w["contexts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            if contexts.len() == 1 {
                assert!(g.contexts.iter().all(|c| c == contexts[0]), "{key}");
            } else {
                assert_eq!(g.contexts, contexts, "{key}: the option fills the blank");
            }
            assert_eq!(g.continuations[g.gold], w["continuation"].as_str().unwrap());
        }
    }
    let e = "mmlu".parse::<McTask>().unwrap_err().to_string();
    assert!(
        e.contains("unknown decoder task") && e.contains("arc-e"),
        "{e}"
    );
}

#[test]
fn answer_log_probs_equal_the_full_forward_of_smollm2() {
    use gralora_train::lm::{LmBatch, LmItem, answer_log_probs};
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
        LmItem {
            ids: a.clone(),
            answer_start: a.len() - 4,
        },
        LmItem {
            ids: b.clone(),
            answer_start: b.len() - 1,
        },
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

#[test]
fn glue_pairs_and_cross_validation_folds() {
    let exp = expected();
    for (task, file) in [("mrpc", data::MRPC_DEV), ("rte", data::RTE_DEV)] {
        let v = data::read_glue_pairs(&fixtures().join(file)).unwrap();
        assert_eq!(
            labels(&v),
            json_u64s(&exp["pairs"][task]["labels"]),
            "{task}"
        );
        assert_eq!(v[0].b.as_deref(), exp["pairs"][task]["first_b"].as_str());
    }
    let all = Task::Mrpc.load(&fixtures()).unwrap();
    assert!(all.train.is_empty() && all.eval.len() == 20);
    // 3 folds: disjoint held-out parts covering every example once; training = the rest.
    let mut held = Vec::new();
    for fold in 0..3 {
        let f = all.fold(7, 3, fold);
        assert_eq!(f.train.len() + f.eval.len(), 20);
        assert!((6..=7).contains(&f.eval.len()));
        assert!(f.eval.iter().all(|e| !f.train.contains(e)));
        held.extend(f.eval);
    }
    let mut a: Vec<String> = held.iter().map(|e| e.a.clone()).collect();
    let mut b: Vec<String> = all.eval.iter().map(|e| e.a.clone()).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert_ne!(
        all.fold(7, 3, 1).eval,
        all.fold(8, 3, 1).eval,
        "the seed picks the folds"
    );
}

#[test]
fn gsm8k_problems_and_reference_answers() {
    use gralora_train::gsm8k;
    let exp = expected();
    let got = gsm8k::read(&fixtures().join(gsm8k::GSM8K_TEST)).unwrap();
    let want = exp["gsm8k"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.answer, w["answer"].as_str().unwrap());
        assert!(g.prompt.ends_with(w["prompt_end"].as_str().unwrap()));
        assert!(
            g.prompt.trim_end().ends_with("Answer:"),
            "few-shot prompt ends at the answer"
        );
        // The reference's own worked answer style scores as correct.
        let worked = format!(" ... So the answer is {}.", g.answer);
        assert_eq!(
            gsm8k::extract_answer(&worked),
            Some(gsm8k::normalise_number(&g.answer))
        );
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
        let refs: Vec<&gralora_train::classify::Item> =
            items[b * 16..(b + 1) * 16].iter().collect();
        dev.seed(100 + b as u64);
        let batch = gralora_train::classify::ClassBatch::new(&refs, 0, &dev);
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
        let r = gralora_train::gora::attach(&mut m, targets, &config, k, 2, 7, &loss).unwrap();
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
        let trainable = gralora_train::classify::trainable_params(&m);
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

/// The full task files, when fetched: the sizes ASSETS.md and the datasets' cards give
/// (SNLI pairs without a gold label are dropped: 110 in the train subset, 176 in test).
#[test]
fn real_task_files_have_their_published_sizes() {
    let home = gralora_models::assets::home();
    if !home.join("commonsense/boolq").is_dir() || !home.join(data::SNLI_TEST).is_file() {
        eprintln!("skipped: commonsense and snli not fetched (CI does not fetch them)");
        return;
    }
    let boolq = Task::Boolq.load(&home).unwrap();
    assert_eq!((boolq.train.len(), boolq.eval.len()), (9427, 3270));
    let snli = Task::Snli.load(&home).unwrap();
    assert_eq!((snli.train.len(), snli.eval.len()), (99890, 9824));
    let (train, val) = gralora_train::lm::load(&[gralora_train::lm::McTask::ArcE], &home).unwrap();
    assert_eq!((train.len(), val.len()), (2251, 570));
    let (train, val) = gralora_train::lm::load(&[gralora_train::lm::McTask::Piqa], &home).unwrap();
    assert_eq!((train.len(), val.len()), (16113, 1838));
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
    let spec = gralora_train::experiment::DeviationSpec {
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
    let r = gralora_train::experiment::grad_deviation(&spec, &out, &device, &home, &mut |_| {})
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
    let err = gralora_train::experiment::grad_deviation(&bad, &out, &device, &home, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no linear layer `encoder.layer.9.output.dense`"),
        "{err}"
    );
}

/// `bench step` with two methods: one JSON line each with the keys, consistent numbers
/// (tokens/s from the median, ratios to the first) and equal trainable counts at equal r.
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
    }
    assert_eq!(lines[0]["time_ratio_to_first"].as_f64().unwrap(), 1.0);
    let ratio = lines[1]["time_ratio_to_first"].as_f64().unwrap();
    assert!((ratio - ms[1] / ms[0]).abs() < 1e-9);
    assert_eq!(lines[0]["trainable_params"], lines[1]["trainable_params"]);
}
