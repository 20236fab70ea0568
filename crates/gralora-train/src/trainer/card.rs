//! The model card (`README.md`) of every adapter directory gralora writes, in the Hugging Face
//! format PEFT writes: a YAML header (`base_model`, `library_name`, `tags`, `pipeline_tag`) and
//! a body with the training settings, the data and the measured metrics.
//!
//! The header's values are written as JSON strings, which YAML reads as the same strings
//! whatever characters a path or a task name holds.

use std::fmt::Write as _;
use std::path::Path;

use super::config::{Method, TrainConfig};
use super::run_dir::RunMetrics;
use crate::error::{Result, TrainError};

/// The model card's file name in an adapter directory.
pub const CARD_FILE: &str = "README.md";

/// What kind of directory the card describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardKind {
    /// A `gralora train` output: the adapter as trained (GraLoRA, LoRA, GoRA).
    Trained,
    /// A `gralora export --to lora` output: a plain LoRA of rank k·r + hybrid_r per layer.
    PlainLora,
    /// A `gralora export --to gguf-lora` output: a llama.cpp LoRA adapter file.
    GgufLora,
}

/// The Hugging Face Hub id of a built-in model alias; anything else is given as it was passed.
pub fn hub_id(model: &str) -> &str {
    match model {
        "minilm" => "sentence-transformers/all-MiniLM-L6-v2",
        "smollm2" => "HuggingFaceTB/SmolLM2-135M-Instruct",
        other => other,
    }
}

fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// The card of an adapter directory: `config` is the run's `train_config.json` (absent for an
/// adapter gralora did not train: the card then has no training section), `metrics` its
/// `metrics.json`, `model` the base model argument, `decoder` whether the base is a decoder.
pub fn model_card(
    kind: CardKind,
    model: &str,
    config: Option<&TrainConfig>,
    metrics: Option<&RunMetrics>,
    decoder: bool,
) -> String {
    let Some(config) = config else {
        return bare_card(kind, model, decoder);
    };
    let base = hub_id(model);
    let method = match config.method {
        Method::Lora => "LoRA",
        Method::Gralora if config.hybrid_r > 0 => "Hybrid GraLoRA",
        Method::Gralora => "GraLoRA",
        Method::Gora => "GoRA",
        Method::GoraGralora => "GoRA on GraLoRA",
        Method::Full => "full fine-tuning",
    };
    let full = config.method == Method::Full;
    let (library, method_tag) = match (kind, config.method) {
        (_, Method::Full) => ("transformers", "full-fine-tuning"),
        (CardKind::GgufLora, _) => ("gguf", "lora"),
        (CardKind::PlainLora, _) | (_, Method::Lora | Method::Gora) => ("peft", "lora"),
        (CardKind::Trained, _) => ("peft", "gralora"),
    };
    let pipeline = if decoder {
        "text-generation"
    } else {
        "text-classification"
    };
    let data = match &config.data {
        Some(d) => {
            let mut s = format!("the file `{}`", d.train.display());
            match &d.eval {
                Some(e) => write!(s, ", evaluated on `{}`", e.display()).unwrap(),
                None => {
                    write!(s, ", {:.0} % held out for evaluation", d.eval_split * 100.0).unwrap()
                }
            }
            s
        }
        None => format!("the built-in task `{}`", config.task),
    };

    let mut c = String::new();
    c.push_str("---\n");
    writeln!(c, "base_model: {}", q(base)).unwrap();
    writeln!(c, "library_name: {library}").unwrap();
    c.push_str("tags:\n");
    let mut tags = vec![];
    if !full {
        tags.push(format!("base_model:adapter:{base}"));
    }
    tags.extend([method_tag.to_string(), "gralora".to_string()]);
    if kind == CardKind::Trained && config.method.is_gora() {
        tags.push("gora".into());
    }
    tags.dedup();
    for t in &tags {
        writeln!(c, "- {}", q(t)).unwrap();
    }
    writeln!(c, "pipeline_tag: {pipeline}").unwrap();
    c.push_str("---\n\n");

    let what = match kind {
        CardKind::Trained if full => format!("{base} fine-tuned in full"),
        CardKind::Trained => format!("A {method} adapter for {base}"),
        CardKind::PlainLora => format!("A {method} adapter for {base}, exported as a plain LoRA"),
        CardKind::GgufLora => {
            format!("A {method} adapter for {base}, exported as a llama.cpp LoRA adapter")
        }
    };
    writeln!(c, "# {what}\n").unwrap();
    writeln!(
        c,
        "Trained with gralora on {data} ({} task).\n",
        if decoder {
            "instruction tuning / multiple choice"
        } else {
            "classification"
        }
    )
    .unwrap();
    match kind {
        CardKind::PlainLora if config.method != Method::Lora && config.method != Method::Gora => {
            c.push_str(
                "GraLoRA's k × k block adapters are written as one LoRA pair per layer of rank \
                 k·r + hybrid_r whose factors are block-sparse; it computes exactly the trained \
                 update, and any LoRA runtime (PEFT, vLLM, TGI) loads it. `rank_pattern` and \
                 `alpha_pattern` carry per-layer ranks and scales.\n\n",
            );
        }
        CardKind::GgufLora => {
            c.push_str(
                "`adapter.gguf` is a llama.cpp LoRA adapter (`general.type = adapter`, \
                 `adapter.type = lora`) for the base model's GGUF file: \
                 `llama-cli -m base.gguf --lora adapter.gguf`. Each layer's scale is folded \
                 into its `lora_b`, so the file's `adapter.lora.alpha` gives every layer the scale \
                 it was trained with.\n\n",
            );
        }
        _ => {}
    }

    if kind != CardKind::GgufLora && !full {
        c.push_str("## How to use\n\n```python\nfrom peft import PeftModel\n");
        if decoder {
            c.push_str("from transformers import AutoModelForCausalLM\n\n");
            writeln!(
                c,
                "model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({}), \"path/to/this/directory\")",
                q(base)
            )
            .unwrap();
        } else {
            c.push_str("from transformers import AutoModel\n\n");
            writeln!(
                c,
                "model = PeftModel.from_pretrained(AutoModel.from_pretrained({}), \"path/to/this/directory\")",
                q(base)
            )
            .unwrap();
        }
        c.push_str("```\n\n");
        if kind == CardKind::Trained && matches!(config.method, Method::Gralora) {
            c.push_str(
                "PEFT reads GraLoRA from version 0.18 on; `gralora export --to lora` writes a plain \
                 LoRA for older versions and other runtimes.\n",
            );
        }
        if !decoder {
            c.push_str(
                "The classification head is `classifier.safetensors` (`classifier.weight` \
                 `[classes, hidden]`, `classifier.bias`), its labels in `labels.json`; PEFT loads the \
                 encoder's adapter, gralora both:\n",
            );
        }
        let task = match &config.data {
            Some(d) => format!("--data {}", d.train.display()),
            None => format!("--task {}", config.task),
        };
        writeln!(
            c,
            "\n```sh\ngralora eval --model {} --adapter path/to/this/directory {task}\n```\n",
            config.model
        )
        .unwrap();
    }

    c.push_str("## Training\n\n| setting | value |\n| --- | --- |\n");
    let mut row = |k: &str, v: String| writeln!(c, "| {k} | {v} |").unwrap();
    row("method", method.to_string());
    if !full {
        row("rank r", config.rank.to_string());
        if matches!(config.method, Method::Gralora | Method::GoraGralora) {
            row("k", config.k.to_string());
            if config.hybrid_r > 0 {
                row("hybrid_r", config.hybrid_r.to_string());
            }
        }
        row("alpha", config.alpha.to_string());
        row("dropout", config.dropout.to_string());
        row(
            "target modules",
            if config.targets.is_empty() {
                "every linear layer of the blocks".into()
            } else {
                config.targets.join(", ")
            },
        );
    }
    row("epochs", config.epochs.to_string());
    row("learning rate", config.lr.to_string());
    if !full && config.b_lr_ratio != 1.0 {
        row(
            "LoRA+ ratio (B's learning rate / A's)",
            config.b_lr_ratio.to_string(),
        );
    }
    row("batch size", config.batch_size.to_string());
    if config.grad_accum > 1 {
        row("gradient accumulation", config.grad_accum.to_string());
    }
    row("max length", config.max_len.to_string());
    row("seed", config.seed.to_string());
    if let Some(m) = metrics {
        row("training examples", m.train_examples.to_string());
        row("device", m.device.clone());
        row("trainable parameters", m.trainable_params.to_string());
        if let Some(g) = &m.gora {
            let ranks: Vec<usize> = g.layers.iter().map(|l| l.rank).collect();
            if let (Some(lo), Some(hi)) = (ranks.iter().min(), ranks.iter().max()) {
                row("GoRA's ranks per layer", format!("{lo} to {hi}"));
            }
        }
    }

    if let Some(m) = metrics {
        let e = &m.eval;
        c.push_str("\n## Results\n\n");
        writeln!(c, "On `{}` ({} examples):\n", m.eval_split, e.examples).unwrap();
        c.push_str("| metric | value |\n| --- | --- |\n");
        let mut row = |k: &str, v: String| writeln!(c, "| {k} | {v} |").unwrap();
        if let Some(p) = e.pearson {
            row("Pearson", format!("{p:.4}"));
            if let Some(s) = e.spearman {
                row("Spearman", format!("{s:.4}"));
            }
            row("mean squared error", format!("{:.4}", e.loss));
        } else if let Some(p) = e.perplexity {
            row("loss per target token", format!("{:.4}", e.loss));
            row("perplexity", format!("{p:.3}"));
        } else {
            row("accuracy", format!("{:.4}", e.accuracy));
            if let Some(f1) = e.f1 {
                row("F1", format!("{f1:.4}"));
            }
            row("loss", format!("{:.4}", e.loss));
            if let Some(b) = m.baseline_accuracy {
                row("accuracy before training", format!("{b:.4}"));
            }
        }
    }
    c
}

fn bare_card(kind: CardKind, model: &str, decoder: bool) -> String {
    let base = hub_id(model);
    let (library, what) = match kind {
        CardKind::GgufLora => ("gguf", "a llama.cpp LoRA adapter"),
        _ => ("peft", "a plain LoRA adapter"),
    };
    // No head is known without a run: an encoder adapter is one for embeddings.
    let pipeline = if decoder {
        "text-generation"
    } else {
        "feature-extraction"
    };
    format!(
        "---\nbase_model: {}\nlibrary_name: {library}\ntags:\n- {}\n- \"lora\"\n- \"gralora\"\n\
         pipeline_tag: {pipeline}\n---\n\n# An adapter for {base}, exported as {what}\n\n\
         Exported by `gralora export` from an adapter gralora did not train: no training \
         settings or metrics are known.\n",
        q(base),
        q(&format!("base_model:adapter:{base}")),
    )
}

/// Write `card` as `dir/README.md`, atomically.
pub fn write_card(dir: &Path, card: &str) -> Result<()> {
    let path = dir.join(CARD_FILE);
    gralora::io::write_atomic(&path, card.as_bytes()).map_err(|e| TrainError::io(&path, e))
}
