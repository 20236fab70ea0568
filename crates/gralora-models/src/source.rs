//! Model arguments: an alias of a fetched asset (`minilm`, `smollm2`), a Hugging Face snapshot
//! directory (`config.json`, `model.safetensors`, `tokenizer.json`), or a `.gguf` file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use serde::Deserialize;

use crate::assets;
use crate::bert::{Bert, BertConfig};
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::llama::{Llama, LlamaConfig};
use crate::tokenizer::TextTokenizer;

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face snapshot directory.
    HfDir(PathBuf),
    /// A GGUF file.
    Gguf(PathBuf),
}

/// Model aliases: `(alias, asset, file inside the asset directory or "" for the directory)`.
pub const ALIASES: &[(&str, &str, &str)] = &[
    ("minilm", "minilm", ""),
    ("smollm2", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
];

impl ModelSource {
    /// Resolve a model argument. Aliases look in `home` (see [`assets::home`]).
    pub fn resolve(arg: &str, home: &Path) -> Result<Self> {
        if let Some((alias, asset, file)) = ALIASES.iter().find(|(a, _, _)| *a == arg) {
            let asset = assets::find(asset)?;
            if !assets::is_present(home, asset) {
                return Err(ModelError::Source(format!(
                    "model `{alias}` is not fetched into {}; run `gralora fetch {}` first",
                    home.display(),
                    asset.name
                )));
            }
            let path = assets::dir(home, asset).join(file);
            return Self::from_path(&path);
        }
        let path = Path::new(arg);
        if !path.exists() {
            let aliases: Vec<&str> = ALIASES.iter().map(|a| a.0).collect();
            return Err(ModelError::Source(format!(
                "model `{arg}` is neither an alias ({}) nor an existing path",
                aliases.join(", ")
            )));
        }
        Self::from_path(path)
    }

    fn from_path(path: &Path) -> Result<Self> {
        if path.is_file() {
            if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
                return Ok(Self::Gguf(path.to_path_buf()));
            }
            return Err(ModelError::Source(format!(
                "{}: a model file must be .gguf; for Hugging Face weights give the snapshot directory",
                path.display()
            )));
        }
        let missing: Vec<&str> = ["config.json", "model.safetensors", "tokenizer.json"]
            .into_iter()
            .filter(|f| !path.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(ModelError::Source(format!(
                "{}: not a Hugging Face snapshot directory (missing {})",
                path.display(),
                missing.join(", ")
            )));
        }
        Ok(Self::HfDir(path.to_path_buf()))
    }
}

#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
}

/// A loaded model with its tokenizer.
pub enum LoadedModel {
    /// A BERT-family encoder.
    Encoder {
        /// Its config.
        config: BertConfig,
        /// The encoder.
        model: Bert,
        /// The tokenizer.
        tokenizer: TextTokenizer,
    },
    /// A Llama-family decoder.
    Decoder {
        /// Its config.
        config: LlamaConfig,
        /// The decoder.
        model: Llama,
        /// The tokenizer.
        tokenizer: TextTokenizer,
    },
}

/// A loaded model and how long loading took.
pub struct Loaded {
    /// The model.
    pub model: LoadedModel,
    /// Wall time of reading, decoding and uploading.
    pub load_time: Duration,
}

impl LoadedModel {
    /// Load whatever `source` holds onto `device`.
    pub fn load(source: &ModelSource, device: &Device) -> Result<Loaded> {
        let start = Instant::now();
        let model = match source {
            ModelSource::Gguf(path) => {
                let file = GgufFile::open(path)?;
                let tokenizer = TextTokenizer::from_gguf(&file)?;
                let (config, model, _) = Llama::from_gguf(file, device)?;
                Self::Decoder {
                    config,
                    model,
                    tokenizer,
                }
            }
            ModelSource::HfDir(dir) => {
                let config_path = dir.join("config.json");
                let text = std::fs::read_to_string(&config_path)
                    .map_err(|e| ModelError::io(&config_path, e))?;
                let probe: Probe = serde_json::from_str(&text)
                    .map_err(|e| ModelError::config(&config_path, format!("not JSON: {e}")))?;
                let kind = probe
                    .model_type
                    .clone()
                    .or_else(|| probe.architectures.first().cloned())
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                let tokenizer = TextTokenizer::from_file(dir.join("tokenizer.json"))?;
                if kind.contains("bert") {
                    let (config, model) = Bert::from_dir(dir, device)?;
                    Self::Encoder {
                        config,
                        model,
                        tokenizer,
                    }
                } else if kind.contains("llama") || kind.contains("mistral") {
                    let (config, model) = Llama::from_dir(dir, device)?;
                    Self::Decoder {
                        config,
                        model,
                        tokenizer,
                    }
                } else {
                    return Err(ModelError::config(
                        &config_path,
                        format!(
                            "model_type `{kind}` is not supported (BERT-family encoders and Llama-family decoders are)"
                        ),
                    ));
                }
            }
        };
        Ok(Loaded {
            model,
            load_time: start.elapsed(),
        })
    }
}
