//! Experiments that check the papers' claims with the project's own training: a rank sweep
//! (metric vs rank, one line per method) and the gradient deviation of LoRA and GraLoRA from full
//! fine-tuning (GraLoRA paper, Fig. 3), with the input-channel outliers of the layer measured.
//!
//! Every result is a table (CSV and Markdown) and a chart (SVG and PNG) in the output directory.

pub mod grad_deviation;
pub mod plot;
pub mod rank_sweep;
mod ranks;
mod tables;

pub use grad_deviation::{DeviationResult, DeviationRow, DeviationSpec, compare, grad_deviation};
pub use rank_sweep::{RunStatus, SweepRow, SweepRun, SweepSpec, rank_sweep, sweep_markdown};
pub use ranks::paper_k;
