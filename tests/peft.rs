//! PEFT adapter directories: fixtures made by Hugging Face PEFT (scripts/peft_fixtures.py, B non-zero)
//! load into MiniLM and reproduce PEFT's outputs; gralora's own files round-trip; bad files fail
//! with errors naming the key and the shapes, attaching nothing.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use common::{Scratch, host};
use gralora::{load_peft, save_peft};
use gralora_models::{Bert, BertInput, TextTokenizer, assets};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::Value;

fn minilm() -> Option<PathBuf> {
    let home = assets::home();
    let a = assets::find("minilm").unwrap();
    if assets::is_present(&home, a) {
        return Some(assets::dir(&home, a));
    }
    if std::env::var("GRALORA_REQUIRE_ASSETS").as_deref() == Ok("1") {
        panic!("GRALORA_REQUIRE_ASSETS=1 but minilm is not fetched; run `gralora fetch minilm`");
    }
    eprintln!("minilm: skipped (not fetched)");
    None
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/peft")
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn embed(bert: &Bert, dir: &Path, sentences: &[String], device: &Device) -> Vec<Vec<f32>> {
    let tok = TextTokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let enc: Vec<_> = sentences
        .iter()
        .map(|s| tok.encode(s, true).unwrap())
        .collect();
    let flat = host(bert.embed(&BertInput::from_encoded(&enc, 0, device)));
    flat.chunks(flat.len() / sentences.len())
        .map(<[f32]>::to_vec)
        .collect()
}

fn compare(got: &[Vec<f32>], want: &[Vec<f32>]) -> (f64, f32) {
    let mut min_cos = 1.0f64;
    let mut max_err = 0f32;
    for (g, w) in got.iter().zip(want) {
        let dot: f64 = g.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum();
        let ng: f64 = g.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        let nw: f64 = w.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        min_cos = min_cos.min(dot / (ng * nw));
        max_err = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(max_err, f32::max);
    }
    (min_cos, max_err)
}

const FIXTURES: &[(&str, usize)] = &[
    // (name, adapted layers)
    ("lora", 12),
    ("lora_rslora_patterns", 2 * 5), // layers 2, 3: query, key, 3 × dense
    ("gralora_k2", 12),
    ("gralora_k4", 2 * 3),
    ("gralora_hybrid", 2 * 3), // layers 1, 4: key, attention.output.dense, output.dense
];

#[test]
fn peft_fixtures_reproduce_peft_outputs() {
    let Some(dir) = minilm() else { return };
    let sentences: Vec<String> = json(&fixtures().join("lora/outputs.json"))["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let base_out = rows(&json(&fixtures().join("base_outputs.json"))["embeddings"]);
    for (name, device) in common::devices() {
        for (fixture, n_layers) in FIXTURES {
            let fdir = fixtures().join(fixture);
            let (_, mut bert) = Bert::from_dir(&dir, &device).unwrap();
            let report = load_peft(&mut bert, &fdir).unwrap();
            assert_eq!(report.layers.len(), *n_layers, "{fixture}");
            let want = rows(&json(&fdir.join("outputs.json"))["embeddings"]);
            let got = embed(&bert, &dir, &sentences, &device);
            let (cos, err) = compare(&got, &want);
            assert!(
                cos >= 0.9999 && err <= 1e-4,
                "{name}/{fixture}: cosine {cos}, max abs error {err}"
            );
            // The adapter really changes the model (B is non-zero in these fixtures).
            let (_, moved) = compare(&want, &base_out);
            assert!(
                moved > 1e-3,
                "{fixture}: PEFT output equals the base model's"
            );
        }
    }
}

#[test]
fn rslora_and_patterns_give_per_layer_rank_and_scale() {
    let Some(dir) = minilm() else { return };
    let device = Device::flex();
    let (_, mut bert) = Bert::from_dir(&dir, &device).unwrap();
    let report = load_peft(&mut bert, fixtures().join("lora_rslora_patterns")).unwrap();
    let find = |p: &str| {
        report
            .layers
            .iter()
            .find(|l| l.path == p)
            .unwrap()
            .config
            .clone()
    };
    assert_eq!(find("encoder.layer.2.attention.self.query").rank(), 8);
    assert_eq!(find("encoder.layer.2.attention.self.key").rank(), 4);
    // rsLoRA: alpha / sqrt(r); alpha_pattern 2 on layer 3's output.dense.
    assert!((find("encoder.layer.2.attention.self.key").scale() - 8.0 / 2.0).abs() < 1e-12);
    assert!((find("encoder.layer.3.output.dense").scale() - 2.0 / 2.0).abs() < 1e-12);
    assert!(
        (find("encoder.layer.2.attention.self.query").scale() - 8.0 / 8f64.sqrt()).abs() < 1e-12
    );
    assert!(
        bert.layers[0].query.adapter.is_none(),
        "layers_to_transform [2, 3]"
    );
}

#[test]
fn saved_adapters_round_trip_and_keep_peft_names() {
    let Some(dir) = minilm() else { return };
    let device = Device::flex();
    let sentences = vec!["A saved adapter must come back exactly.".to_string()];
    for (fixture, _) in FIXTURES {
        let (_, mut bert) = Bert::from_dir(&dir, &device).unwrap();
        load_peft(&mut bert, fixtures().join(fixture)).unwrap();
        let before = embed(&bert, &dir, &sentences, &device);
        let scratch = Scratch::new(&format!("peft-save-{fixture}"));
        let out = scratch.join("adapter");
        save_peft(
            &mut bert,
            &out,
            Some("sentence-transformers/all-MiniLM-L6-v2"),
        )
        .unwrap();
        // Same keys and shapes as PEFT's own file.
        let theirs =
            std::fs::read(fixtures().join(fixture).join("adapter_model.safetensors")).unwrap();
        let ours = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
        let (theirs, ours) = (
            SafeTensors::deserialize(&theirs).unwrap(),
            SafeTensors::deserialize(&ours).unwrap(),
        );
        let mut a: Vec<_> = theirs
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.shape().to_vec()))
            .collect();
        let mut b: Vec<_> = ours
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.shape().to_vec()))
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{fixture}");
        for (k, v) in theirs.tensors() {
            assert_eq!(
                ours.tensor(&k).unwrap().data(),
                v.data(),
                "{fixture}: {k} bytes"
            );
        }
        let cfg = json(&out.join("adapter_config.json"));
        let want = json(&fixtures().join(fixture).join("adapter_config.json"));
        assert_eq!(cfg["peft_type"], want["peft_type"]);
        let (_, mut again) = Bert::from_dir(&dir, &device).unwrap();
        load_peft(&mut again, &out).unwrap();
        let after = embed(&again, &dir, &sentences, &device);
        let (cos, err) = compare(&after, &before);
        assert!(cos > 0.999_999 && err < 1e-6, "{fixture}: {cos} {err}");
        // No temporary files left behind.
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["adapter_config.json", "adapter_model.safetensors"]);
    }
}

/// GraLoRA exported as a plain LoRA (docs/METHODS.md §2 "As a plain LoRA"): PEFT's GraLoRA
/// fixtures, and per-layer ranks and alphas as GoRA leaves them, saved as a `LORA` directory of
/// rank k·r + hybrid_r per layer that reproduces the GraLoRA adapter and PEFT's outputs.
#[test]
fn gralora_exported_as_plain_lora_reproduces_the_adapter() {
    let Some(dir) = minilm() else { return };
    let device = Device::flex();
    let sentences: Vec<String> = json(&fixtures().join("lora/outputs.json"))["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    // (name, its PEFT outputs if PEFT made it)
    let mut cases: Vec<(&str, Option<Vec<Vec<f32>>>)> =
        ["gralora_k2", "gralora_k4", "gralora_hybrid"]
            .iter()
            .map(|f| {
                (
                    *f,
                    Some(rows(
                        &json(&fixtures().join(f).join("outputs.json"))["embeddings"],
                    )),
                )
            })
            .collect();
    cases.push(("per-layer ranks", None));
    for (case, peft_out) in cases {
        let (_, mut bert) = Bert::from_dir(&dir, &device).unwrap();
        if peft_out.is_some() {
            load_peft(&mut bert, fixtures().join(case)).unwrap();
        } else {
            let options = gralora::AdaptOptions::new(
                gralora::GraLoraConfig::new(8, 2)
                    .with_alpha(16.0)
                    .with_init(gralora::Init::Random),
                gralora::Targets::names(["query", "value"]),
            )
            .with_rank_for("layer.1.attention.self.query", 4)
            .with_rank_for("layer.2.attention.self.value", 16)
            .with_alpha_for("layer.3.attention.self.query", 5.0);
            gralora::attach_adapters(&mut bert, &options).unwrap();
        }
        let before = embed(&bert, &dir, &sentences, &device);
        let mut ranks = std::collections::BTreeMap::new();
        let mut scales = std::collections::BTreeMap::new();
        gralora::AdapterHost::for_each_linear_mut(&mut bert, &mut |path, l| {
            if let Some(gralora::Adapter::GraLora(g)) = &l.adapter {
                let (k, _, r, _) = g.dims();
                let hr = g.general.as_ref().map_or(0, gralora::LoraAdapter::rank);
                ranks.insert(path.to_string(), k * r + hr);
                scales.insert(path.to_string(), g.scale);
            }
        });
        assert_eq!(
            gralora::convert_to_lora(&mut bert).unwrap(),
            ranks.len(),
            "{case}"
        );
        let scratch = Scratch::new("peft-export-lora");
        let out = scratch.join("lora");
        save_peft(&mut bert, &out, None).unwrap();
        let cfg = json(&out.join("adapter_config.json"));
        assert_eq!(cfg["peft_type"], "LORA", "{case}");
        // Every layer's rank and scale, read back through PEFT's rules (r / rank_pattern,
        // lora_alpha / alpha_pattern) by the loader.
        let (_, mut again) = Bert::from_dir(&dir, &device).unwrap();
        let report = load_peft(&mut again, &out).unwrap();
        assert_eq!(report.layers.len(), ranks.len(), "{case}");
        for l in &report.layers {
            assert_eq!(l.config.rank(), ranks[&l.path], "{case}: {}", l.path);
            let (got, want) = (l.config.scale(), scales[&l.path]);
            assert!(
                (got - want).abs() < 1e-12 * want,
                "{case}: {} scale {got} vs {want}",
                l.path
            );
            assert!(matches!(l.config, gralora::AdapterConfig::Lora(_)));
        }
        let after = embed(&again, &dir, &sentences, &device);
        let (cos, err) = compare(&after, &before);
        eprintln!("{case}: exported LoRA vs GraLoRA: cosine {cos}, max abs error {err:.1e}");
        assert!(
            cos > 0.999_999 && err <= 1e-5,
            "{case}: LoRA vs GraLoRA: cosine {cos}, max abs error {err}"
        );
        if let Some(want) = peft_out {
            let (cos, err) = compare(&after, &want);
            assert!(
                cos >= 0.9999 && err <= 1e-4,
                "{case}: vs PEFT's GraLoRA: cosine {cos}, max abs error {err}"
            );
        }
    }
}

/// Copy a fixture, rewriting its tensors with `edit` and its config with `edit_cfg`.
fn altered(
    fixture: &str,
    tag: &str,
    edit: impl Fn(&str, Vec<usize>) -> (String, Vec<usize>),
    edit_cfg: impl Fn(&mut Value),
) -> Scratch {
    let src = fixtures().join(fixture);
    let out = Scratch::new(&format!("peft-bad-{tag}"));
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let (k2, shape) = edit(&k, v.shape().to_vec());
            let n: usize = shape.iter().product();
            let mut data = v.data().to_vec();
            data.resize(n * 4, 0);
            (k2, shape, data)
        })
        .collect();
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(k, s, d)| {
            (
                k.clone(),
                TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &out.join("adapter_model.safetensors")).unwrap();
    let mut cfg = json(&src.join("adapter_config.json"));
    edit_cfg(&mut cfg);
    std::fs::write(out.join("adapter_config.json"), cfg.to_string()).unwrap();
    out
}

#[test]
fn adapters_that_do_not_fit_fail_naming_key_and_shapes_and_attach_nothing() {
    let Some(dir) = minilm() else { return };
    let device = Device::flex();
    let check = |bad: Scratch, needles: &[&str]| {
        let (_, mut bert) = Bert::from_dir(&dir, &device).unwrap();
        let e = load_peft(&mut bert, &*bad).unwrap_err().to_string();
        for n in needles {
            assert!(e.contains(n), "`{n}` not in: {e}");
        }
        assert!(!e.contains('\n'), "one line: {e}");
        let attached = bert
            .layers
            .iter()
            .flat_map(|l| {
                [
                    &l.query,
                    &l.key,
                    &l.value,
                    &l.attn_out,
                    &l.intermediate,
                    &l.output,
                ]
            })
            .filter(|l| l.adapter.is_some())
            .count();
        assert_eq!(attached, 0, "partially applied: {e}");
    };
    let same = |k: &str, s: Vec<usize>| (k.to_string(), s);
    let keep = |_: &mut Value| {};
    // An unknown module path.
    check(
        altered(
            "lora",
            "path",
            |k, s| {
                (
                    k.replace(
                        "layer.5.attention.self.value",
                        "layer.5.attention.self.vlue",
                    ),
                    s,
                )
            },
            keep,
        ),
        &[
            "base_model.model.encoder.layer.5.attention.self.vlue.lora_A.weight",
            "not a linear layer",
        ],
    );
    // A wrong shape.
    check(
        altered(
            "lora",
            "shape",
            |k, s| {
                if k.ends_with("layer.3.attention.self.query.lora_B.weight") {
                    (k.to_string(), vec![383, 8])
                } else {
                    same(k, s)
                }
            },
            keep,
        ),
        &[
            "layer.3.attention.self.query.lora_B.weight",
            "[383, 8]",
            "[384, 8]",
        ],
    );
    // A GraLoRA block tensor of the wrong shape.
    check(
        altered(
            "gralora_k2",
            "gshape",
            |k, s| {
                if k.ends_with("layer.0.attention.self.value.gralora_B") {
                    (k.to_string(), vec![2, 8, 190])
                } else {
                    same(k, s)
                }
            },
            keep,
        ),
        &[
            "layer.0.attention.self.value.gralora_B",
            "[2, 8, 190]",
            "[2, 8, 192]",
        ],
    );
    // Unsupported peft_type.
    check(
        altered("lora", "type", same, |c| {
            c["peft_type"] = Value::from("IA3")
        }),
        &["adapter_config.json", "IA3", "not supported"],
    );
    // k that does not divide the dims (384 = 2^7 · 3; k = 5).
    check(
        altered("gralora_k2", "k", same, |c| c["gralora_k"] = Value::from(5)),
        &["gralora_k = 5", "384"],
    );
    // A LoRA key in a GraLoRA file.
    check(
        altered("gralora_k2", "mixed", same, |c| {
            c["peft_type"] = Value::from("LORA")
        }),
        &["gralora_A", "LORA"],
    );
    // A config that disagrees with its tensors (PEFT refuses these with a size mismatch or
    // "target modules not found"): its rank, its rank pattern, k, hybrid rank, targets, layers.
    check(
        altered("lora", "r16", same, |c| c["r"] = Value::from(16)),
        &["`r` says rank 16", "rank 8", "layer."],
    );
    check(
        altered("lora", "r0", same, |c| c["r"] = Value::from(0)),
        &["`r` must be at least 1"],
    );
    check(
        altered("lora_rslora_patterns", "pattern", same, |c| {
            c["rank_pattern"] = serde_json::json!({"layer.2.attention.self.query": 16})
        }),
        &[
            "layer.2.attention.self.query",
            "`rank_pattern` says rank 16",
            "rank 8",
        ],
    );
    check(
        altered("gralora_hybrid", "hybrid", same, |c| {
            c["hybrid_r"] = Value::from(2)
        }),
        &["`hybrid_r` says 2", "hybrid rank 4"],
    );
    check(
        altered("gralora_k4", "k4as2", same, |c| {
            c["gralora_k"] = Value::from(2)
        }),
        &["`gralora_k` says 2", "k = 4"],
    );
    check(
        altered("lora", "targets", same, |c| {
            c["target_modules"] = serde_json::json!(["dense"])
        }),
        &[
            "attention.self.query",
            "target_modules [dense] does not select it",
        ],
    );
    check(
        altered("lora", "layers", same, |c| {
            c["layers_to_transform"] = serde_json::json!([0])
        }),
        &["layers_to_transform [0] does not include it"],
    );
    // A field of the wrong type says so, instead of "missing".
    check(
        altered("lora", "rtype", same, |c| c["r"] = Value::from("eight")),
        &["field `r` must be a whole number, found \"eight\""],
    );
    check(
        altered("lora", "alphatype", same, |c| {
            c["lora_alpha"] = Value::from("16")
        }),
        &["field `lora_alpha` must be a number"],
    );
    // A dropout probability outside [0, 1) (burn's dropout would panic at 1).
    check(
        altered("lora", "dropout1", same, |c| {
            c["lora_dropout"] = Value::from(1.0)
        }),
        &["field `lora_dropout` = 1 must lie in [0, 1)"],
    );
    // A truncated weights file.
    let cut = altered("lora", "cut", same, keep);
    let w = cut.join("adapter_model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    check(cut, &["adapter_model.safetensors", "truncated"]);
    // A model without adapters has nothing to save.
    let (_, mut bert) = Bert::from_dir(&dir, &device).unwrap();
    let scratch = Scratch::new("peft-nothing");
    let e = save_peft(&mut bert, scratch.join("adapter"), None).unwrap_err();
    assert!(e.to_string().contains("no adapters"));
}

#[test]
fn merged_snapshot_loads_as_a_plain_model_with_the_adapters_outputs() {
    let Some(dir) = minilm() else { return };
    let device = Device::flex();
    let sentences: Vec<String> = json(&fixtures().join("gralora_hybrid/outputs.json"))["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let source =
        gralora_models::ModelSource::resolve(dir.to_str().unwrap(), &assets::home()).unwrap();
    let mut loaded = gralora_models::LoadedModel::load(&source, &device)
        .unwrap()
        .model;
    loaded
        .load_adapter(&fixtures().join("gralora_hybrid"))
        .unwrap();
    let scratch = Scratch::new("merged");
    let out = scratch.join("snapshot");
    loaded.write_snapshot(&source, &out).unwrap();
    let e = loaded
        .write_snapshot(&source, &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let (_, merged) = Bert::from_dir(&out, &device).unwrap();
    assert!(merged.layers.iter().all(|l| l.key.adapter.is_none()));
    let got = embed(&merged, &out, &sentences, &device);
    let want = rows(&json(&fixtures().join("gralora_hybrid/outputs.json"))["embeddings"]);
    let (cos, err) = compare(&got, &want);
    assert!(cos >= 0.9999 && err <= 1e-4, "merged: {cos} {err}");
    // Weight names are Hugging Face's: the same key set as the original snapshot.
    let names = |p: &Path| {
        let b = std::fs::read(p.join("model.safetensors")).unwrap();
        let mut n: Vec<String> = SafeTensors::deserialize(&b)
            .unwrap()
            .names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&out), names(&dir));
}
