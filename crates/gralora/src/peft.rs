//! Adapter directories in Hugging Face PEFT's format: `adapter_config.json` +
//! `adapter_model.safetensors` (docs/METHODS.md §2 "PEFT file format").
//!
//! Keys are `base_model.model.<module path>.<name>` with PEFT's names (`lora_A.weight` `[r, in]`,
//! `lora_B.weight` `[out, r]`; `gralora_A` `[k, in/k, r]`, `gralora_B` `[k, r, out/k]`,
//! `gralora_A_general.weight` `[hybrid_r, in]`, `gralora_B_general.weight` `[out, hybrid_r]`), f32.
//! Loading validates every key against the model before anything is attached; saving writes to
//! temporary files and renames them into place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use burn::nn::DropoutConfig;
use burn::tensor::{Device, Tensor, TensorData};
use regex::Regex;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::{Value, json};

use crate::adapt::{AdaptReport, AdaptedLayer};
use crate::adapted_linear::AdapterHost;
use crate::adapter::Adapter;
use crate::config::{AdapterConfig, GraLoraConfig, Init, LoraConfig};
use crate::error::AdapterError;
use crate::io::{decode_floats, f32_bytes, transpose};
use crate::methods::gralora::GraLoraAdapter;
use crate::methods::lora::LoraAdapter;

/// The prefix PEFT puts before module paths.
pub const PREFIX: &str = "base_model.model.";
/// The config file of an adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file of an adapter directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

fn err(file: &Path, msg: impl std::fmt::Display) -> AdapterError {
    AdapterError::Peft(format!("{}: {msg}", file.display()))
}

struct HostArray {
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn read_tensors(path: &Path) -> Result<BTreeMap<String, HostArray>, AdapterError> {
    let bytes = std::fs::read(path).map_err(|e| err(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        err(
            path,
            format!("not a valid safetensors file ({e}); is it truncated?"),
        )
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = decode_floats(view.dtype(), view.data()).ok_or_else(|| {
            err(
                path,
                format!(
                    "`{name}` has dtype {:?}; F32, F16 or BF16 expected",
                    view.dtype()
                ),
            )
        })?;
        out.insert(
            name,
            HostArray {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// Which factor of a layer's adapter a key holds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Slot {
    A,
    B,
    /// Hybrid GraLoRA's LoRA pair.
    GeneralA,
    GeneralB,
}

/// `(key suffix, slot, whether it is a LoRA key)`; longer GraLoRA suffixes first.
const SUFFIXES: &[(&str, Slot, bool)] = &[
    (".lora_A.weight", Slot::A, true),
    (".lora_B.weight", Slot::B, true),
    (".gralora_A_general.weight", Slot::GeneralA, false),
    (".gralora_B_general.weight", Slot::GeneralB, false),
    (".gralora_A", Slot::A, false),
    (".gralora_B", Slot::B, false),
];

fn pattern_value<'a, T>(patterns: &'a [(Regex, T)], path: &str) -> Option<&'a T> {
    patterns
        .iter()
        .find(|(re, _)| re.is_match(path))
        .map(|(_, v)| v)
}

fn compile_patterns<T: Clone>(
    file: &Path,
    obj: Option<&Value>,
    parse: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<(Regex, T)>, AdapterError> {
    let Some(Value::Object(map)) = obj else {
        return Ok(Vec::new());
    };
    map.iter()
        .map(|(k, v)| {
            let re = Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
                .map_err(|e| err(file, format!("pattern key `{k}` is not a regex: {e}")))?;
            let v =
                parse(v).ok_or_else(|| err(file, format!("pattern `{k}` has a bad value {v}")))?;
            Ok((re, v))
        })
        .collect()
}

struct Layer {
    d_in: usize,
    d_out: usize,
    device: Device,
}

/// Load a PEFT adapter directory into a model's [`AdaptedLinear`](crate::AdaptedLinear) layers.
///
/// Every key must name a linear layer of the model with the shapes its dimensions imply; any
/// mismatch is an error naming the key and both shapes, and then nothing is attached.
/// Supported: `peft_type` `LORA` (incl. `use_rslora`, `rank_pattern`, `alpha_pattern`) and
/// `GRALORA` (incl. `hybrid_r`).
pub fn load_peft<M: AdapterHost>(
    model: &mut M,
    dir: impl AsRef<Path>,
) -> Result<AdaptReport, AdapterError> {
    let dir = dir.as_ref();
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| err(&cfg_path, e))?;
    let cfg: Value =
        serde_json::from_str(&text).map_err(|e| err(&cfg_path, format!("not JSON: {e}")))?;
    // A field that is present must have its type: `"r": "eight"` is an error saying so.
    let typed = |k: &str, what: &str| {
        err(
            &cfg_path,
            format!("field `{k}` must be {what}, found {}", cfg[k]),
        )
    };
    let present = |k: &str| cfg.get(k).filter(|v| !v.is_null());
    let get_f = |k: &str| {
        present(k)
            .map(|v| v.as_f64().ok_or_else(|| typed(k, "a number")))
            .transpose()
    };
    let get_u = |k: &str| {
        present(k)
            .map(|v| {
                v.as_u64()
                    .map(|v| v as usize)
                    .ok_or_else(|| typed(k, "a whole number"))
            })
            .transpose()
    };
    let get_b = |k: &str| {
        present(k)
            .map(|v| v.as_bool().ok_or_else(|| typed(k, "true or false")))
            .transpose()
    };
    let peft_type = match present("peft_type") {
        None => "",
        Some(v) => v.as_str().ok_or_else(|| typed("peft_type", "a string"))?,
    };
    let is_lora = match peft_type {
        "LORA" => true,
        "GRALORA" => false,
        other => {
            return Err(err(
                &cfg_path,
                format!("peft_type `{other}` is not supported (LORA and GRALORA are)"),
            ));
        }
    };
    if get_b("fan_in_fan_out")? == Some(true) {
        return Err(err(
            &cfg_path,
            "fan_in_fan_out = true (Conv1D weights) is not supported",
        ));
    }
    if get_b("use_dora")? == Some(true) {
        return Err(err(&cfg_path, "use_dora = true is not supported"));
    }
    if let Some(b) = cfg
        .get("bias")
        .and_then(Value::as_str)
        .filter(|b| *b != "none")
    {
        return Err(err(
            &cfg_path,
            format!("bias = \"{b}\" is not supported (only \"none\")"),
        ));
    }
    match cfg.get("modules_to_save") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(v) => {
            return Err(err(
                &cfg_path,
                format!("modules_to_save = {v} is not supported yet"),
            ));
        }
    }
    let r_cfg = get_u("r")?.ok_or_else(|| err(&cfg_path, "field `r` is missing"))?;
    if r_cfg == 0 {
        return Err(err(&cfg_path, "field `r` must be at least 1, found 0"));
    }
    let dropout_key = if is_lora {
        "lora_dropout"
    } else {
        "gralora_dropout"
    };
    let dropout = get_f(dropout_key)?.unwrap_or(0.0);
    if !(0.0..1.0).contains(&dropout) {
        return Err(err(
            &cfg_path,
            format!("field `{dropout_key}` = {dropout} must lie in [0, 1)"),
        ));
    }
    let rslora = get_b("use_rslora")?.unwrap_or(false);
    let alpha_default = if is_lora {
        get_f("lora_alpha")?.unwrap_or(8.0)
    } else {
        get_f("alpha")?.ok_or_else(|| err(&cfg_path, "field `alpha` is missing"))?
    };
    let k_cfg = get_u("gralora_k")?.unwrap_or(2);
    let hybrid_cfg = get_u("hybrid_r")?.unwrap_or(0);
    let alpha_patterns = compile_patterns(&cfg_path, cfg.get("alpha_pattern"), Value::as_f64)?;
    let rank_patterns = compile_patterns(&cfg_path, cfg.get("rank_pattern"), |v| {
        v.as_u64().map(|r| r as usize)
    })?;
    // Which layers the file says it adapts: PEFT refuses tensors outside them.
    let targets = match present("target_modules") {
        None => None,
        Some(Value::String(s)) if s == "all-linear" => Some(crate::Targets::AllLinear),
        Some(Value::String(s)) => Some(crate::Targets::pattern(s.clone())),
        Some(Value::Array(a)) => Some(crate::Targets::names(
            a.iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| typed("target_modules", "a list of names or a regex"))?,
        )),
        Some(_) => return Err(typed("target_modules", "a list of names or a regex")),
    };
    let target_matcher = targets.as_ref().map(crate::Targets::matcher).transpose()?;
    let layers_to_transform: Option<Vec<usize>> = match present("layers_to_transform") {
        None => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|v| v.as_u64().map(|i| i as usize))
                .collect::<Option<_>>()
                .ok_or_else(|| typed("layers_to_transform", "a layer index or a list of them"))?,
        ),
        Some(v) => Some(vec![
            v.as_u64()
                .ok_or_else(|| typed("layers_to_transform", "a layer index or a list of them"))?
                as usize,
        ]),
    };

    // The model's linear layers.
    let mut layers: HashMap<String, Layer> = HashMap::new();
    let mut order = Vec::new();
    model.for_each_linear_mut(&mut |path, l| {
        let (d_in, d_out) = l.dims();
        layers.insert(
            path.to_string(),
            Layer {
                d_in,
                d_out,
                device: l.device(),
            },
        );
        order.push(path.to_string());
    });
    let example = order.first().cloned().unwrap_or_default();

    let w_path = dir.join(WEIGHTS_FILE);
    let tensors = read_tensors(&w_path)?;
    if tensors.is_empty() {
        return Err(err(&w_path, "holds no tensors"));
    }
    // Group keys by module path.
    let mut groups: BTreeMap<String, HashMap<Slot, (String, HostArray)>> = BTreeMap::new();
    for (key, t) in tensors {
        let Some(rest) = key.strip_prefix(PREFIX) else {
            return Err(err(
                &w_path,
                format!("key `{key}` does not start with `{PREFIX}`"),
            ));
        };
        let Some((suffix, slot, lora_key)) = SUFFIXES.iter().find(|(s, _, _)| rest.ends_with(s))
        else {
            return Err(err(
                &w_path,
                format!("key `{key}` is not a LoRA/GraLoRA weight this loader knows"),
            ));
        };
        if is_lora != *lora_key {
            return Err(err(
                &w_path,
                format!("key `{key}` does not belong to a {peft_type} adapter"),
            ));
        }
        let path = rest[..rest.len() - suffix.len()].to_string();
        if !layers.contains_key(&path) {
            return Err(err(
                &w_path,
                format!(
                    "key `{key}`: `{path}` is not a linear layer of this model (its paths look like `{example}`)"
                ),
            ));
        }
        groups.entry(path).or_default().insert(*slot, (key, t));
    }

    let shape_err = |key: &str, found: &[usize], want: &[usize], path: &str, l: &Layer| {
        err(
            &w_path,
            format!(
                "`{key}` has shape {found:?}, layer `{path}` (in {}, out {}) needs {want:?}",
                l.d_in, l.d_out
            ),
        )
    };
    let mut built: HashMap<String, (Adapter, AdapterConfig)> = HashMap::new();
    for (path, mut g) in groups {
        let l = &layers[&path];
        let (Some((key_a, a)), Some((key_b, b))) = (g.remove(&Slot::A), g.remove(&Slot::B)) else {
            return Err(err(
                &w_path,
                format!("layer `{path}` has only one of its A/B tensors"),
            ));
        };
        let alpha = *pattern_value(&alpha_patterns, &path).unwrap_or(&alpha_default);
        if let (Some(t), Some(m)) = (&targets, &target_matcher)
            && !m.matches(&path)
        {
            return Err(err(
                &cfg_path,
                format!("layer `{path}` has tensors, but target_modules {t} does not select it"),
            ));
        }
        if let Some(layers) = &layers_to_transform
            && !crate::layer_index(&path).is_some_and(|i| layers.contains(&i))
        {
            return Err(err(
                &cfg_path,
                format!(
                    "layer `{path}` has tensors, but layers_to_transform {layers:?} does not include it"
                ),
            ));
        }
        // The rank the config gives this layer must be its tensors' rank (PEFT refuses the file).
        let r_want = *pattern_value(&rank_patterns, &path).unwrap_or(&r_cfg);
        let rank_err = |r: usize| {
            let field = if pattern_value(&rank_patterns, &path).is_some() {
                "rank_pattern"
            } else {
                "r"
            };
            err(
                &cfg_path,
                format!("layer `{path}`: `{field}` says rank {r_want}, its tensors have rank {r}"),
            )
        };
        if is_lora {
            let r = a.shape.first().copied().unwrap_or(0);
            if r != 0 && a.shape.len() == 2 && r != r_want {
                return Err(rank_err(r));
            }
            if a.shape != [r, l.d_in] || r == 0 {
                return Err(shape_err(&key_a, &a.shape, &[r.max(1), l.d_in], &path, l));
            }
            if b.shape != [l.d_out, r] {
                return Err(shape_err(&key_b, &b.shape, &[l.d_out, r], &path, l));
            }
            let scale = if rslora {
                alpha / (r as f64).sqrt()
            } else {
                alpha / r as f64
            };
            let at = Tensor::from_data(
                TensorData::new(transpose(&a.data, r, l.d_in), [l.d_in, r]),
                &l.device,
            );
            let bt = Tensor::from_data(
                TensorData::new(transpose(&b.data, l.d_out, r), [r, l.d_out]),
                &l.device,
            );
            let config = LoraConfig::new(r)
                .with_alpha(alpha)
                .with_rslora(rslora)
                .with_dropout(dropout)
                .with_init(Init::Random);
            built.insert(
                path,
                (
                    Adapter::Lora(LoraAdapter::from_tensors(at, bt, scale)),
                    config.into(),
                ),
            );
        } else {
            let k = k_cfg;
            if k == 0 || !l.d_in.is_multiple_of(k) || !l.d_out.is_multiple_of(k) {
                return Err(err(
                    &cfg_path,
                    format!(
                        "gralora_k = {k} does not divide in = {} and out = {} of layer `{path}`",
                        l.d_in, l.d_out
                    ),
                ));
            }
            let (ib, ob) = (l.d_in / k, l.d_out / k);
            if a.shape.len() == 3 && a.shape[0] != k {
                return Err(err(
                    &cfg_path,
                    format!(
                        "layer `{path}`: `gralora_k` says {k}, its tensors have k = {}",
                        a.shape[0]
                    ),
                ));
            }
            let r = a.shape.get(2).copied().unwrap_or(0);
            if r != 0 && a.shape.len() == 3 && r != r_want {
                return Err(rank_err(r));
            }
            if a.shape != [k, ib, r] || r == 0 || r % k != 0 {
                return Err(shape_err(&key_a, &a.shape, &[k, ib, r.max(k)], &path, l));
            }
            if b.shape != [k, r, ob] {
                return Err(shape_err(&key_b, &b.shape, &[k, r, ob], &path, l));
            }
            let general = match (g.remove(&Slot::GeneralA), g.remove(&Slot::GeneralB)) {
                (None, None) => None,
                (Some((key_ga, ga)), Some((key_gb, gb))) => {
                    let hr = ga.shape.first().copied().unwrap_or(0);
                    if ga.shape != [hr, l.d_in] || hr == 0 {
                        return Err(shape_err(
                            &key_ga,
                            &ga.shape,
                            &[hybrid_cfg.max(1), l.d_in],
                            &path,
                            l,
                        ));
                    }
                    if gb.shape != [l.d_out, hr] {
                        return Err(shape_err(&key_gb, &gb.shape, &[l.d_out, hr], &path, l));
                    }
                    Some((hr, ga, gb))
                }
                _ => {
                    return Err(err(
                        &w_path,
                        format!("layer `{path}` has only one of its hybrid A/B tensors"),
                    ));
                }
            };
            let hr = general.as_ref().map_or(0, |g| g.0);
            if hr != hybrid_cfg {
                return Err(err(
                    &cfg_path,
                    format!(
                        "layer `{path}`: `hybrid_r` says {hybrid_cfg}, its tensors have hybrid rank {hr}"
                    ),
                ));
            }
            let scale = alpha / (r + hr) as f64;
            let general = general.map(|(hr, ga, gb)| {
                let at = Tensor::from_data(
                    TensorData::new(transpose(&ga.data, hr, l.d_in), [l.d_in, hr]),
                    &l.device,
                );
                let bt = Tensor::from_data(
                    TensorData::new(transpose(&gb.data, l.d_out, hr), [hr, l.d_out]),
                    &l.device,
                );
                LoraAdapter::from_tensors(at, bt, scale)
            });
            let at = Tensor::from_data(TensorData::new(a.data, [k, ib, r]), &l.device);
            let bt = Tensor::from_data(TensorData::new(b.data, [k, r, ob]), &l.device);
            let config = GraLoraConfig::new(r, k)
                .with_alpha(alpha)
                .with_hybrid_r(hr)
                .with_dropout(dropout)
                .with_init(Init::Random);
            built.insert(
                path,
                (
                    Adapter::GraLora(GraLoraAdapter::from_tensors(at, bt, general, scale)),
                    config.into(),
                ),
            );
        }
    }

    // Everything checked: attach.
    let mut report = AdaptReport::default();
    let mut state_err = None;
    model.for_each_linear_mut(&mut |path, layer| {
        if let Some((adapter, config)) = built.remove(path) {
            if layer.merged {
                state_err.get_or_insert_with(|| {
                    AdapterError::State(format!(
                        "layer `{path}` is merged; unmerge it before loading an adapter"
                    ))
                });
                return;
            }
            let (d_in, d_out) = layer.dims();
            layer.adapter = Some(adapter);
            layer.dropout = (dropout > 0.0).then(|| DropoutConfig::new(dropout).init());
            report.layers.push(AdaptedLayer {
                path: path.to_string(),
                d_in,
                d_out,
                config,
            });
        }
    });
    if let Some(e) = state_err {
        return Err(e);
    }
    Ok(report)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AdapterError> {
    crate::io::write_atomic(path, bytes).map_err(|e| err(path, e))
}

/// Save the adapters of a model as a PEFT directory (`adapter_config.json` +
/// `adapter_model.safetensors`). The model is taken `&mut` only to walk its layers.
///
/// Per-layer ranks and scales of LoRA go to `rank_pattern`/`alpha_pattern` with exact module
/// paths; PEFT's GraLoRA has no such patterns, so GraLoRA layers must share k and hybrid_r, and
/// differing ranks (GoRA) are written as the same patterns, which only gralora reads back. `alpha` is written as `scale · rank`, which reproduces the scale in PEFT exactly.
pub fn save_peft<M: AdapterHost>(
    model: &mut M,
    dir: impl AsRef<Path>,
    base_model_name_or_path: Option<&str>,
) -> Result<(), AdapterError> {
    let dir = dir.as_ref();
    struct Entry {
        path: String,
        tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
        lora: bool,
        r: usize,
        k: usize,
        hr: usize,
        alpha: f64,
        dropout: f64,
    }
    let mut entries = Vec::new();
    let mut all_paths = Vec::new();
    let mut read_error = None;
    model.for_each_linear_mut(&mut |path, layer| {
        let mut host = |t: Tensor<3>| {
            crate::io::read_f32(t)
                .inspect_err(|e| {
                    read_error.get_or_insert(e.clone());
                })
                .unwrap_or_default()
        };
        all_paths.push(path.to_string());
        let Some(adapter) = &layer.adapter else {
            return;
        };
        let (d_in, d_out) = layer.dims();
        let dropout = layer.dropout.as_ref().map_or(0.0, |d| d.prob);
        let key = |s: &str| format!("{PREFIX}{path}.{s}");
        match adapter {
            Adapter::Lora(a) => {
                let r = a.rank();
                let av = host(a.a.val().unsqueeze()); // [in, r]
                let bv = host(a.b.val().unsqueeze()); // [r, out]
                entries.push(Entry {
                    path: path.to_string(),
                    tensors: vec![
                        (key("lora_A.weight"), vec![r, d_in], transpose(&av, d_in, r)),
                        (
                            key("lora_B.weight"),
                            vec![d_out, r],
                            transpose(&bv, r, d_out),
                        ),
                    ],
                    lora: true,
                    r,
                    k: 1,
                    hr: 0,
                    alpha: a.scale * r as f64,
                    dropout,
                });
            }
            Adapter::GraLora(g) => {
                let (k, ib, r, ob) = g.dims();
                let mut tensors = vec![
                    (key("gralora_A"), vec![k, ib, r], host(g.a.val())),
                    (key("gralora_B"), vec![k, r, ob], host(g.b.val())),
                ];
                let mut hr = 0;
                if let Some(gen_) = &g.general {
                    hr = gen_.rank();
                    let av = host(gen_.a.val().unsqueeze());
                    let bv = host(gen_.b.val().unsqueeze());
                    tensors.push((
                        key("gralora_A_general.weight"),
                        vec![hr, d_in],
                        transpose(&av, d_in, hr),
                    ));
                    tensors.push((
                        key("gralora_B_general.weight"),
                        vec![d_out, hr],
                        transpose(&bv, hr, d_out),
                    ));
                }
                entries.push(Entry {
                    path: path.to_string(),
                    tensors,
                    lora: false,
                    r,
                    k,
                    hr,
                    alpha: g.scale * (r + hr) as f64,
                    dropout,
                });
            }
        }
    });
    if let Some(e) = read_error {
        return Err(e);
    }
    let Some(first) = entries.first() else {
        return Err(AdapterError::State(
            "the model has no adapters to save".into(),
        ));
    };
    if entries.iter().any(|e| e.lora != first.lora) {
        return Err(AdapterError::State(
            "the model mixes LoRA and GraLoRA layers; a PEFT directory holds one adapter type"
                .into(),
        ));
    }
    let lora = first.lora;
    // Targets: the distinct last names if they select exactly the adapted layers, else a full-match regex.
    let adapted: BTreeSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let names: BTreeSet<&str> = adapted
        .iter()
        .map(|p| p.rsplit('.').next().unwrap_or(p))
        .collect();
    let covered: BTreeSet<&str> = all_paths
        .iter()
        .map(String::as_str)
        .filter(|p| names.iter().any(|n| p.rsplit('.').next() == Some(n)))
        .collect();
    let target_modules = if covered == adapted {
        json!(names.iter().collect::<Vec<_>>())
    } else {
        let alts: Vec<String> = adapted.iter().map(|p| regex::escape(p)).collect();
        json!(format!("^(?:{})$", alts.join("|")))
    };
    let dropout = first.dropout;
    let mut config = json!({
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "modules_to_save": null,
        "revision": null,
        "target_modules": target_modules,
        "task_type": null,
        "peft_version": "0.21.2",
    });
    let obj = config.as_object_mut().expect("object");
    // Most common (r, alpha) as the defaults; the rest per layer, by exact path (GoRA's ranks).
    let mut counts: BTreeMap<(usize, u64), usize> = BTreeMap::new();
    for e in &entries {
        *counts.entry((e.r, e.alpha.to_bits())).or_default() += 1;
    }
    let (&(r0, a0), _) = counts.iter().max_by_key(|(_, c)| **c).expect("non-empty");
    let a0 = f64::from_bits(a0);
    let mut rank_pattern = serde_json::Map::new();
    let mut alpha_pattern = serde_json::Map::new();
    for e in &entries {
        if e.r != r0 {
            rank_pattern.insert(regex::escape(&e.path), json!(e.r));
        }
        if e.alpha != a0 {
            alpha_pattern.insert(regex::escape(&e.path), json!(e.alpha));
        }
    }
    if lora {
        obj.insert("peft_type".into(), json!("LORA"));
        obj.insert("r".into(), json!(r0));
        obj.insert("lora_alpha".into(), json!(a0));
        obj.insert("lora_dropout".into(), json!(dropout));
        obj.insert("use_rslora".into(), json!(false));
        obj.insert("use_dora".into(), json!(false));
        obj.insert("init_lora_weights".into(), json!(true));
        obj.insert("rank_pattern".into(), Value::Object(rank_pattern));
        obj.insert("alpha_pattern".into(), Value::Object(alpha_pattern));
    } else {
        if let Some(e) = entries.iter().find(|e| (e.k, e.hr) != (first.k, first.hr)) {
            return Err(AdapterError::State(format!(
                "PEFT's GraLoRA stores one k/hybrid_r for all layers, but `{}` differs from `{}`",
                e.path, first.path
            )));
        }
        obj.insert("peft_type".into(), json!("GRALORA"));
        obj.insert("r".into(), json!(r0));
        obj.insert("alpha".into(), json!(a0));
        obj.insert("gralora_k".into(), json!(first.k));
        obj.insert("hybrid_r".into(), json!(first.hr));
        obj.insert("gralora_dropout".into(), json!(dropout));
        obj.insert("init_weights".into(), json!(true));
        // Per-layer ranks (GoRA) are a gralora extension: PEFT's GraLoRA has no patterns, so
        // such a file reloads here; with uniform ranks these stay empty and PEFT reads it as usual.
        if !rank_pattern.is_empty() || !alpha_pattern.is_empty() {
            obj.insert("rank_pattern".into(), Value::Object(rank_pattern));
            obj.insert("alpha_pattern".into(), Value::Object(alpha_pattern));
        }
    }

    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let all: Vec<&(String, Vec<usize>, Vec<f32>)> =
        entries.iter().flat_map(|e| &e.tensors).collect();
    let bytes: Vec<Vec<u8>> = all.iter().map(|(_, _, d)| f32_bytes(d)).collect();
    let views: Vec<(String, TensorView)> = all
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| err(&dir.join(WEIGHTS_FILE), e))
        })
        .collect::<Result<_, _>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let data =
        safetensors::serialize(views, Some(meta)).map_err(|e| err(&dir.join(WEIGHTS_FILE), e))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &data)?;
    let text = serde_json::to_string_pretty(&config).expect("json") + "\n";
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?;
    Ok(())
}

/// Whether `dir` looks like a PEFT adapter directory.
pub fn is_peft_dir(dir: impl AsRef<Path>) -> bool {
    let d = dir.as_ref();
    d.join(CONFIG_FILE).is_file() && d.join(WEIGHTS_FILE).is_file()
}
