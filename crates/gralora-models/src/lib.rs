//! # gralora-models
//!
//! Pretrained transformers with [`gralora`] adapters: a BERT-family encoder and a Llama-family
//! decoder, loaded from Hugging Face snapshot directories (`config.json`, `model.safetensors`,
//! `tokenizer.json`) or GGUF files, plus fetching the pinned assets the project trains on.
//!
//! Every linear layer is a [`gralora::AdaptedLinear`] under its Hugging Face module path, so
//! adapters are attached by PEFT-style target names with [`gralora::attach_adapters`]:
//!
//! ```no_run
//! use gralora::{AdaptOptions, GraLoraConfig, Targets, attach_adapters};
//! use gralora_models::Bert;
//!
//! let device = burn::tensor::Device::flex();
//! let (_config, mut bert) = Bert::from_dir("/path/to/all-MiniLM-L6-v2", &device)?;
//! let options = AdaptOptions::new(GraLoraConfig::new(16, 2), Targets::names(["query", "value"]));
//! let report = attach_adapters(&mut bert, &options)?;
//! println!("{report}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod assets;
pub mod bert;
pub mod chat;
mod error;
pub mod export;
pub mod fastmath;
pub mod gguf;
pub mod llama;
pub mod ops;
pub mod source;
pub mod tokenizer;
pub mod weights;

pub use bert::{Bert, BertClassifier, BertConfig, BertInput, Pooling};
pub use chat::{ChatTemplate, ChatTokens, Message};
pub use error::{ModelError, Result};
pub use llama::{Generation, KvCache, Llama, LlamaConfig, Sampler};
pub use source::{LoadedModel, ModelSource};
pub use tokenizer::{Encoded, TextTokenizer};
