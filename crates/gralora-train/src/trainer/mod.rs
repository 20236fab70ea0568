//! The trainer, which knows nothing of any task: a run's settings ([`TrainConfig`]), its
//! directory and metrics ([`RunDir`], [`RunMetrics`]), one session for every task behind the
//! [`Workload`] trait, burn-train's fit with LoRA+ groups and a warmup + cosine schedule, the
//! seeded loader, mid-epoch checkpoints and exact resume, the loss guard, and GoRA's gradient
//! measurement.

pub mod card;
mod checkpoint;
mod config;
mod fit;
pub mod gora;
mod guard;
mod loader;
mod metric;
mod renderer;
mod run_dir;
mod session;

pub use checkpoint::{ResumePoint, StepStrategy, complete_checkpoints};
pub use config::{
    DECODER_TARGETS, DataSettings, ENCODER_TARGETS, GoraSettings, Method, MethodOptions,
    TrainConfig,
};
pub use fit::{Fit, Fitted, fit, schedule};
pub use guard::{GPU_LOSS_CHECK_EVERY, LossGuard, guarded_step};
pub use loader::{Batching, GPU_LEN_MULTIPLE, SeededLoader, len_multiple, seed_device};
pub use metric::TokensPerSecond;
pub use renderer::{LineRenderer, Report};
pub use run_dir::{
    EvalMetrics, RunDir, RunLock, RunMetrics, check_out_dir, peak_rss_mib, rss_mib, write_json,
};
pub use session::{
    BatchOf, ItemOf, RunNames, Session, Workload, b_param_ids, trainable, trainable_params,
};
