//! Model families against transformers: tiny random-weight models of each family that
//! transformers built from a config and saved, with its outputs for fixed token ids
//! (`scripts/family_fixtures.py` → `tests/fixtures/families/<name>`). Norm weights and biases are
//! random too, so a weight in the wrong place or a missing bias shows.

use super::*;

fn family_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/families")
        .join(name)
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(floats).collect(),
        other => vec![other.as_f64().unwrap() as f32],
    }
}

fn ids_of(v: &Value) -> (Vec<i64>, usize, usize) {
    let rows = v.as_array().unwrap();
    let t = rows[0].as_array().unwrap().len();
    let ids = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()))
        .collect();
    (ids, rows.len(), t)
}

/// Llama, Llama 3.1+ (RoPE's llama3 rescaling, tied head), Qwen2 (q/k/v bias), Qwen3 (per-head
/// q/k RMSNorm, explicit head_dim): logits within 1e-4 of transformers' on every device.
#[test]
fn decoder_families_match_transformers() {
    for name in ["llama", "llama3", "qwen2", "qwen3"] {
        let out = fixture(&format!("families/{name}/outputs.json"));
        let (ids, b, t) = ids_of(&out["ids"]);
        let want = floats(&out["logits"]);
        for (device_name, device) in devices() {
            let (config, model) = Llama::from_dir(family_dir(name), &device).unwrap();
            assert_eq!(config.qkv_bias(), name == "qwen2", "{name}");
            assert_eq!(config.qk_norm(), name == "qwen3", "{name}");
            let got = host(model.forward(
                Tensor::from_data(TensorData::new(ids.clone(), [b, t]), &device),
                None,
            ));
            let err = max_abs_diff(&got, &want);
            assert!(err < 1e-4, "{name} on {device_name}: max abs error {err}");
        }
    }
}

/// RoBERTa: positions numbered after the padding index over non-padding tokens, one token type,
/// a padded second row; the last hidden state within 1e-4 of transformers' `RobertaModel`.
#[test]
fn roberta_matches_transformers() {
    let out = fixture("families/roberta/outputs.json");
    let (ids, b, t) = ids_of(&out["ids"]);
    let (mask, _, _) = ids_of(&out["mask"]);
    let want = floats(&out["hidden"]);
    for (device_name, device) in devices() {
        let (config, model) = Bert::from_dir(family_dir("roberta"), &device).unwrap();
        assert_eq!(config.roberta_pad(), Some(1));
        assert_eq!(model.max_len, 130 - 2);
        let input = BertInput {
            ids: Tensor::from_data(TensorData::new(ids.clone(), [b, t]), &device),
            type_ids: Tensor::zeros([b, t], &device),
            mask: Tensor::from_data(
                TensorData::new(mask.iter().map(|&m| m as f32).collect::<Vec<_>>(), [b, t]),
                &device,
            ),
        };
        let got = host(model.forward(&input));
        let err = max_abs_diff(&got, &want);
        assert!(err < 1e-4, "roberta on {device_name}: max abs error {err}");
    }
}

/// Adapters attach under PEFT's names on the new families, and a merged export holds the
/// families' extra tensors (Qwen2's q/k/v biases, Qwen3's q/k norms) under transformers' names.
#[test]
fn adapters_attach_to_the_new_families_and_export_keeps_their_tensors() {
    let device = Device::flex();
    for (name, extra) in [
        ("qwen2", "model.layers.1.self_attn.k_proj.bias"),
        ("qwen3", "model.layers.1.self_attn.q_norm.weight"),
    ] {
        let (_, mut model) = Llama::from_dir(family_dir(name), &device).unwrap();
        let report = attach_adapters(
            &mut model,
            &AdaptOptions::new(
                GraLoraConfig::new(4, 2).with_init(gralora::Init::Random),
                Targets::names(["q_proj", "k_proj", "v_proj"]),
            ),
        )
        .unwrap();
        assert_eq!(report.layers.len(), 3 * 2, "{name}");
        let names: Vec<String> = model.export().unwrap().into_iter().map(|t| t.0).collect();
        assert!(
            names.iter().any(|n| n == extra),
            "{name}: {extra} not exported"
        );
    }
    let (_, mut roberta) = Bert::from_dir(family_dir("roberta"), &device).unwrap();
    let report = attach_adapters(
        &mut roberta,
        &AdaptOptions::new(LoraConfig::new(4), Targets::names(["query", "value"])),
    )
    .unwrap();
    assert_eq!(report.layers.len(), 2 * 2);
}

/// A family that is not supported, or a RoPE rescaling that is not, is refused naming what is —
/// never loaded as the nearest family.
#[test]
fn unsupported_families_and_rope_rescalings_are_refused_naming_what_is() {
    let device = Device::flex();
    let scratch = Scratch::new("families-refused");
    let base: Value = serde_json::from_str(
        &std::fs::read_to_string(family_dir("llama").join("config.json")).unwrap(),
    )
    .unwrap();
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "gemma2",
            serde_json::json!({"model_type": "gemma2"}),
            vec!["gemma2", "qwen3"],
        ),
        (
            "deberta",
            serde_json::json!({"model_type": "deberta-v2"}),
            vec!["deberta-v2", "roberta"],
        ),
        (
            "distilbert",
            serde_json::json!({"model_type": null, "architectures": ["DistilBertModel"]}),
            vec!["distilbertmodel", "bert"],
        ),
        (
            "yarn",
            serde_json::json!({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}),
            vec!["yarn", "llama3"],
        ),
        (
            "mlp-bias",
            serde_json::json!({"mlp_bias": true}),
            vec!["mlp_bias"],
        ),
        (
            "gelu",
            serde_json::json!({"hidden_act": "gelu"}),
            vec!["hidden_act", "silu"],
        ),
    ];
    for (case, patch, needles) in cases {
        let dir = scratch.join(case);
        std::fs::create_dir(&dir).unwrap();
        let mut config = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            config[k] = v.clone();
        }
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        std::fs::copy(
            family_dir("llama").join("model.safetensors"),
            dir.join("model.safetensors"),
        )
        .unwrap();
        // Families are told apart before anything else is read; a decoder's settings when its
        // config is read.
        let e = match LoadedModel::load(&ModelSource::HfDir(dir.clone()), &device) {
            Err(e) if !e.to_string().contains("tokenizer.json") => e.to_string(),
            _ => Llama::from_dir(&dir, &device).expect_err(case).to_string(),
        };
        for n in needles {
            assert!(e.contains(n), "{case}: `{n}` not in: {e}");
        }
    }
}

/// transformers 5 writes `rope_theta` inside `rope_parameters`; older files at the top level,
/// the rescaling as `rope_scaling` with `type`: both read to the same config.
#[test]
fn both_forms_of_the_rope_settings_read_alike() {
    let scratch = Scratch::new("families-rope");
    let new: Value = serde_json::from_str(
        &std::fs::read_to_string(family_dir("llama3").join("config.json")).unwrap(),
    )
    .unwrap();
    let mut old = new.clone();
    let params = old
        .as_object_mut()
        .unwrap()
        .remove("rope_parameters")
        .unwrap();
    old["rope_theta"] = params["rope_theta"].clone();
    let mut scaling = params.clone();
    scaling.as_object_mut().unwrap().remove("rope_theta");
    let kind = scaling
        .as_object_mut()
        .unwrap()
        .remove("rope_type")
        .unwrap();
    scaling["type"] = kind;
    old["rope_scaling"] = scaling;
    let path = scratch.join("config.json");
    std::fs::write(&path, old.to_string()).unwrap();
    let a = LlamaConfig::from_file(&path).unwrap();
    let b = LlamaConfig::from_file(family_dir("llama3").join("config.json")).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.rope_theta, 500000.0);
    let s = a.rope_scaling.as_ref().unwrap();
    assert_eq!((s.rope_type.as_str(), s.factor), ("llama3", 8.0));
    // The rescaling at work (head_dim 16, original context 64): wavelength 2π < 64 / 4 kept,
    // 2π·500000^(1/8) ≈ 32.6 between 16 and 64 blended, the longer ones divided by the factor.
    let plain = LlamaConfig {
        rope_scaling: None,
        ..a.clone()
    }
    .inv_freq();
    let scaled = a.inv_freq();
    assert_eq!(scaled[0], plain[0]);
    assert!(scaled[1] < plain[1] && scaled[1] > plain[1] / 8.0);
    for i in 2..plain.len() {
        assert!(
            (scaled[i] - plain[i] / 8.0).abs() <= 1e-15 * plain[i],
            "{i}"
        );
    }
}
