//! Model arguments: an alias of a fetched asset (`minilm`, `smollm2`), a Hugging Face snapshot
//! directory (`config.json`, `model.safetensors`, `tokenizer.json`), or a `.gguf` file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use serde::Deserialize;

use crate::assets;
use crate::bert::{Bert, BertConfig};
use crate::chat::ChatTemplate;
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
            assets::verify(home, asset)?;
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
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
            {
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
                let (config, model) = Llama::from_gguf(file, device)?;
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
                let kind = probe.model_type.clone().unwrap_or_else(|| {
                    // No model_type: the class name (`BertModel`, `LlamaForCausalLM`, ...).
                    let arch = probe.architectures.first().map_or("", String::as_str);
                    let known = [
                        ("XLMRoberta", "xlm-roberta"),
                        ("Roberta", "roberta"),
                        ("Camembert", "camembert"),
                        ("Bert", "bert"),
                        ("Llama", "llama"),
                        ("Mistral", "mistral"),
                        ("Qwen2", "qwen2"),
                        ("Qwen3", "qwen3"),
                    ];
                    known
                        .iter()
                        .find(|(prefix, _)| arch.starts_with(prefix))
                        .map_or(arch.to_ascii_lowercase(), |(_, t)| t.to_string())
                });
                let encoder = crate::bert::ENCODER_TYPES.contains(&kind.as_str());
                if !encoder && !crate::llama::DECODER_TYPES.contains(&kind.as_str()) {
                    return Err(ModelError::config(
                        &config_path,
                        format!(
                            "model_type `{kind}` is not supported (encoders: {}; decoders: {})",
                            crate::bert::ENCODER_TYPES.join(", "),
                            crate::llama::DECODER_TYPES.join(", ")
                        ),
                    ));
                }
                let mut tokenizer = TextTokenizer::from_file(dir.join("tokenizer.json"))?;
                tokenizer.chat_template = ChatTemplate::from_hf_dir(dir)?;
                if encoder {
                    let (config, model) = Bert::from_dir(dir, device)?;
                    Self::Encoder {
                        config,
                        model,
                        tokenizer,
                    }
                } else {
                    let (config, model) = Llama::from_dir(dir, device)?;
                    Self::Decoder {
                        config,
                        model,
                        tokenizer,
                    }
                }
            }
        };
        Ok(Loaded {
            model,
            load_time: start.elapsed(),
        })
    }
}

/// Files of a Hugging Face snapshot that travel unchanged into a merged snapshot.
const CARRIED: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "generation_config.json",
];

impl LoadedModel {
    /// Load a PEFT adapter directory into the model (see [`gralora::load_peft`]).
    pub fn load_adapter(&mut self, dir: &Path) -> Result<gralora::AdaptReport> {
        Ok(match self {
            Self::Encoder { model, .. } => gralora::load_peft(model, dir)?,
            Self::Decoder { model, .. } => gralora::load_peft(model, dir)?,
        })
    }

    /// Write the model (adapters merged into the weights) as a Hugging Face snapshot directory
    /// `out`: `model.safetensors` with HF names, `config.json`, the tokenizer. The directory is
    /// assembled beside `out` and renamed into place; `out` must not exist yet.
    pub fn write_snapshot(&self, source: &ModelSource, out: &Path) -> Result<()> {
        if out.exists() {
            return Err(ModelError::Source(format!(
                "{}: already exists; choose a new directory for the merged model",
                out.display()
            )));
        }
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
        let name = out
            .file_name()
            .map_or("merged".into(), |n| n.to_string_lossy().to_string());
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        let result = self
            .write_snapshot_into(source, &tmp)
            .and_then(|()| std::fs::rename(&tmp, out).map_err(|e| ModelError::io(out, e)));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    /// The model (its adapters merged) as a GGUF file llama.cpp runs, matrices as `ty` (see
    /// [`crate::export::write_merged_gguf`]). The source must be the GGUF file the decoder was
    /// loaded from: its metadata and tokenizer are carried over. `out` must not exist.
    pub fn write_gguf(
        &self,
        source: &ModelSource,
        out: &Path,
        ty: crate::gguf::GgmlType,
    ) -> Result<crate::export::MergedGguf> {
        if out.exists() {
            return Err(ModelError::Source(format!(
                "{}: already exists; choose a new file for the merged model",
                out.display()
            )));
        }
        let Self::Decoder { model, config, .. } = self else {
            return Err(ModelError::Source(
                "a GGUF model file holds a Llama-family decoder, and this model is an encoder; \
                 merge it to a Hugging Face snapshot (leave out --format)"
                    .into(),
            ));
        };
        let ModelSource::Gguf(src) = source else {
            return Err(ModelError::Source(
                "--format gguf carries the metadata and tokenizer of a .gguf base, and this base \
                 is a Hugging Face snapshot; pass its .gguf file as --model, or merge to a snapshot \
                 and convert that with llama.cpp's convert_hf_to_gguf.py"
                    .into(),
            ));
        };
        let file = crate::gguf::GgufFile::open(src)?;
        let tensors = model.export()?;
        crate::export::write_merged_gguf(&file, &tensors, config, ty, out)
    }

    fn write_snapshot_into(&self, source: &ModelSource, dir: &Path) -> Result<()> {
        let tensors = match self {
            Self::Encoder { model, .. } => model.export()?,
            Self::Decoder { model, .. } => model.export()?,
        };
        match source {
            ModelSource::HfDir(src) => {
                // Tensors the model does not use (a pooler, buffers) travel unchanged.
                let src_weights = src.join("model.safetensors");
                let map = crate::weights::mmap(&src_weights)?;
                let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| {
                    ModelError::format(&src_weights, format!("not a valid safetensors file: {e}"))
                })?;
                let ours: std::collections::HashSet<&str> =
                    tensors.iter().map(|t| t.0.as_str()).collect();
                let extra: Vec<_> = st
                    .tensors()
                    .into_iter()
                    .filter(|(name, _)| {
                        let bare = name
                            .strip_prefix("bert.")
                            .or_else(|| name.strip_prefix("roberta."))
                            .unwrap_or(name);
                        !ours.contains(name.as_str()) && !ours.contains(bare)
                    })
                    .collect();
                crate::weights::write_safetensors_with(
                    &dir.join("model.safetensors"),
                    &tensors,
                    extra,
                )?;
                for f in CARRIED {
                    let from = src.join(f);
                    if from.is_file() {
                        std::fs::copy(&from, dir.join(f)).map_err(|e| ModelError::io(&from, e))?;
                    }
                }
            }
            ModelSource::Gguf(_) => {
                crate::weights::write_safetensors(&dir.join("model.safetensors"), &tensors)?;
                let Self::Decoder {
                    config, tokenizer, ..
                } = self
                else {
                    return Err(ModelError::Source("a GGUF file holds a decoder".into()));
                };
                if config.rope_freq_factors.is_some() {
                    return Err(ModelError::Source(
                        "this GGUF file rescales RoPE by a `rope_freqs.weight` table, which a \
                         config.json cannot state; merge it with --format gguf"
                            .into(),
                    ));
                }
                let json = config.to_hf_json(tokenizer.bos, &tokenizer.eos);
                let text = serde_json::to_string_pretty(&json).unwrap_or_default() + "\n";
                crate::weights::write_atomic(&dir.join("config.json"), text.as_bytes())?;
                tokenizer.save(&dir.join("tokenizer.json"))?;
            }
        }
        Ok(())
    }
}
