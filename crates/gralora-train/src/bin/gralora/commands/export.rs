//! `gralora export`: a trained adapter for runtimes that do not read GraLoRA — an exact plain
//! LoRA in PEFT's format, or a llama.cpp LoRA adapter (GGUF).
//!
//! The export is assembled in a temporary directory beside `--out` and renamed into place, so
//! `--out` is either complete or absent.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gralora_models::assets;
use gralora_models::source::{LoadedModel, ModelSource};
use gralora_train::trainer::card::{CardKind, hub_id, model_card, write_card};
use gralora_train::trainer::{RunDir, RunMetrics};

use crate::args::{ExportArgs, ExportFormat};
use crate::usage;

/// Files of a `gralora train` output that travel with its adapter (when present).
const CARRIED: &[&str] = &[
    "train_config.json",
    "metrics.json",
    "classifier.safetensors",
    "labels.json",
    "chat_template.jinja",
];

pub fn run(args: ExportArgs) -> Result<()> {
    if args.out.exists() {
        return Err(usage(format!(
            "{}: already exists; choose a new directory for the export",
            args.out.display()
        )));
    }
    if !gralora::is_peft_dir(&args.adapter) {
        return Err(usage(format!(
            "{}: no adapter here (adapter_config.json + adapter_model.safetensors); pass the --out \
             directory of a `gralora train` with an adapter method",
            args.adapter.display()
        )));
    }
    let run = RunDir(args.adapter.clone());
    let saved = run
        .config()
        .is_file()
        .then(|| run.read_config())
        .transpose()?;
    let metrics: Option<RunMetrics> = run
        .metrics()
        .is_file()
        .then(|| -> Result<RunMetrics> {
            let text = std::fs::read_to_string(run.metrics())
                .with_context(|| run.metrics().display().to_string())?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not a gralora metrics.json", run.metrics().display()))
        })
        .transpose()?;
    let model_arg = match (&args.model, &saved) {
        (Some(m), _) => m.clone(),
        (None, Some(c)) => c.model.clone(),
        (None, None) => match peft_base_model(&args.adapter) {
            Some(base) => base,
            None => {
                return Err(usage(format!(
                    "{} is not a `gralora train` output and its adapter_config.json names no base \
                     model found here; pass --model",
                    args.adapter.display()
                )));
            }
        },
    };
    let source = ModelSource::resolve(&model_arg, &assets::home())?;
    // A path to a fetched model is named by its alias (the card then names its Hub id).
    let model_arg = gralora_models::source::ALIASES
        .iter()
        .map(|a| a.0)
        .find(|alias| ModelSource::resolve(alias, &assets::home()).ok().as_ref() == Some(&source))
        .map_or(model_arg, str::to_string);
    let device = burn::tensor::Device::flex();
    let mut loaded = LoadedModel::load(&source, &device)?;
    let report = loaded.model.load_adapter(&args.adapter)?;
    let decoder = matches!(loaded.model, LoadedModel::Decoder { .. });

    let tmp = temp_beside(&args.out)?;
    let result = (|| -> Result<String> {
        let (kind, what) = match args.to {
            ExportFormat::Lora => {
                let converted = match &mut loaded.model {
                    LoadedModel::Encoder { model, .. } => gralora::convert_to_lora(model)?,
                    LoadedModel::Decoder { model, .. } => gralora::convert_to_lora(model)?,
                };
                match &mut loaded.model {
                    LoadedModel::Encoder { model, .. } => {
                        gralora::save_peft(model, &tmp, Some(hub_id(&model_arg)))?
                    }
                    LoadedModel::Decoder { model, .. } => {
                        gralora::save_peft(model, &tmp, Some(hub_id(&model_arg)))?
                    }
                }
                let what = if converted > 0 {
                    format!(
                        "{} adapted layers as a plain LoRA ({converted} GraLoRA layers at rank k·r + hybrid_r)",
                        report.layers.len()
                    )
                } else {
                    format!("{} LoRA layers", report.layers.len())
                };
                (CardKind::PlainLora, what)
            }
            ExportFormat::GgufLora => {
                let LoadedModel::Decoder { model, config, .. } = &mut loaded.model else {
                    return Err(usage(format!(
                        "--to gguf-lora writes llama.cpp adapters for Llama-family decoders, and \
                         `{model_arg}` is an encoder; use --to lora"
                    )));
                };
                let path = tmp.join("adapter.gguf");
                let summary = gralora_models::export::write_gguf_lora(model, config, &path)?;
                (
                    CardKind::GgufLora,
                    format!(
                        "{} adapted weights as a llama.cpp LoRA adapter (alpha {}, {} scales folded into lora_b)",
                        summary.layers, summary.alpha, summary.folded
                    ),
                )
            }
        };
        for name in CARRIED {
            let from = args.adapter.join(name);
            if from.is_file() {
                std::fs::copy(&from, tmp.join(name))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
        }
        let card = model_card(kind, &model_arg, saved.as_ref(), metrics.as_ref(), decoder);
        write_card(&tmp, &card)?;
        std::fs::rename(&tmp, &args.out).with_context(|| args.out.display().to_string())?;
        Ok(what)
    })();
    match result {
        Ok(what) => {
            eprintln!("exported {what} to {}", args.out.display());
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// The adapter's `base_model_name_or_path`, when it names a model this machine has.
fn peft_base_model(adapter: &Path) -> Option<String> {
    let text = std::fs::read_to_string(adapter.join("adapter_config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let base = config.get("base_model_name_or_path")?.as_str()?.to_string();
    ModelSource::resolve(&base, &assets::home())
        .is_ok()
        .then_some(base)
}

/// A new empty directory beside `out` (same file system, so the final rename is atomic).
fn temp_beside(out: &Path) -> Result<PathBuf> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    let name = out
        .file_name()
        .map_or("export".into(), |n| n.to_string_lossy().to_string());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| tmp.display().to_string())?;
    Ok(tmp)
}
