//! # gralora-train
//!
//! Fine-tuning with GraLoRA, GoRA and LoRA on burn-train, and the `gralora` command-line tool.
//! Imports run one way: [`experiments`] and [`bench`] → [`tasks`] → [`trainer`] → [`data`].
//!
//! - [`trainer`]: a run's settings, directory and metrics; one session for every task behind
//!   the [`trainer::Workload`] trait (seeding, adapters or GoRA, loaders, fit, checkpoints and
//!   exact resume, the loss guard, the files).
//! - [`tasks`]: encoder classification, decoder multiple choice, GSM8K evaluation.
//! - [`data`]: one reader per data source.
//! - [`experiments`]: the rank sweep and the gradient deviation, with tables and plots.
//! - [`bench`]: whole training steps timed round-robin.
//!
//! ```no_run
//! use gralora_train::trainer::{Method, TrainConfig};
//!
//! let config = TrainConfig::new("minilm", "sst2", Method::Gralora);
//! let home = gralora_models::assets::home();
//! let device = burn::tensor::Device::flex();
//! let done = gralora_train::tasks::train(&config, "runs/sst2".as_ref(), false, &device, &home, &mut |line| eprintln!("{line}"))?;
//! println!("dev accuracy {:.4}", done.metrics.eval.accuracy);
//! # Ok::<(), gralora_train::TrainError>(())
//! ```

pub mod bench;
pub mod data;
mod error;
pub mod experiments;
pub mod tasks;
pub mod trainer;

pub use error::{Result, TrainError};
