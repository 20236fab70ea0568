//! # gralora-train
//!
//! burn-train learners that fine-tune encoders with GraLoRA, LoRA or fully on GLUE-style tasks,
//! evaluation, a training-step benchmark, and the `gralora` command-line tool built on them.
//!
//! ```no_run
//! use gralora_train::train::{Method, TrainConfig, train};
//!
//! let config = TrainConfig::new("minilm", "sst2", Method::Gralora);
//! let home = gralora_models::assets::home();
//! let device = burn::tensor::Device::flex();
//! let done = train(&config, "runs/sst2".as_ref(), false, &device, &home, &mut |line| eprintln!("{line}"))?;
//! println!("dev accuracy {:.4}", done.metrics.eval.accuracy);
//! # Ok::<(), gralora_train::TrainError>(())
//! ```

pub mod classify;
pub mod data;
mod error;
pub mod experiment;
pub mod gora;
pub mod gsm8k;
pub mod lm;
pub mod plot;
pub mod renderer;
pub mod steps;
pub mod train;

pub use error::{Result, TrainError};
